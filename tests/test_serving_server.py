"""A real Triton server (the binary bundled in the nvidia-pytriton wheel) on a python-backend repository written by
serve-repo: concurrent sequences against each sequence run alone in-process, eviction, controls, disconnects and bad
requests (ssd_deploy/serving/server.py, python_model/model.py, client.py)."""

import dataclasses
import json
import shutil
import threading
import time

import numpy as np
import pytest

from conftest import TINY, rel_err
from ssd_deploy.errors import UserError
from ssd_deploy.generate import SamplingOptions
from ssd_deploy.serving import server as triton
from ssd_deploy.serving.pbtxt import ServeOptions
from ssd_deploy.serving.repository import write_repository

grpcclient = pytest.importorskip("tritonclient.grpc", reason="needs tritonclient[grpc]")
pytest.importorskip("pytriton", reason="needs nvidia-pytriton (the bundled tritonserver)")
from ssd_deploy.serving.client import SequenceClient  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

pytestmark = pytest.mark.slow

# untied heads: a tied random model mostly echoes its input token (a weak test of the states)
UNTIED = dataclasses.replace(TINY, tie_embeddings=False)
IDLE_S = 1.0  # the short idle timeout of the eviction model
N_SEQ, STEPS = 16, 8


@pytest.fixture(scope="module")
def served(make_export, tmp_path_factory):
    """One server, three models: `mamba2` (max batch 8, idle 60 s) and `short` (idle 1 s), both the ort flavor of
    a tiny untied model on ONNX Runtime, and `torch` (the checkpoint on the PyTorch model). Stopped by PID at the
    end."""
    ckpt, export_dir = make_export(UNTIED, "ort", logits="last")
    root = tmp_path_factory.mktemp("serving")
    repo = write_repository(export_dir, root / "repo", ServeOptions(max_batch=8, max_sequences=32))
    for name, model, opts in (("short", export_dir, ServeOptions(name="short", idle_timeout_s=IDLE_S)),
                              ("torch", ckpt, ServeOptions(name="torch", runtime="torch"))):
        shutil.move(str(write_repository(model, root / name, opts) / name), str(repo / name))
    srv = triton.start(repo, timeout_s=240, exit_timeout_s=1)
    try:
        yield srv, export_dir, ckpt
    finally:
        srv.stop()
        assert srv.process.returncode is not None


def alone(export_dir, prompt, steps, backend=None):
    """The sequence run alone in-process (on ONNX Runtime unless ``backend``): its greedy tokens and the logits of
    every call."""
    from ssd_deploy.runtime.backends import OrtBackend

    backend = backend or OrtBackend(export_dir)
    vocab = backend.config.vocab_size
    logits, states = backend.forward(np.array([prompt]), backend.zero_states(1))
    tokens, all_logits = [], [logits[0]]
    for _ in range(steps):
        tokens.append(int(np.argmax(logits[0, :vocab])))
        logits, states = backend.forward(np.array([[tokens[-1]]]), states)
        all_logits.append(logits[0])
    return tokens, all_logits


def drive(client, seq, prompt, steps):
    """The same through the server, one request per token; the last request ends the sequence."""
    out = client.step(seq, prompt, start=True, outputs=("logits", "next_token"))
    tokens, all_logits = [], [np.array(out["logits"][-1])]
    for i in range(steps):
        tokens.append(int(out["next_token"].reshape(-1)[0]))
        out = client.step(seq, [tokens[-1]], end=i == steps - 1, outputs=("logits", "next_token"))
        all_logits.append(np.array(out["logits"][-1]))
    return tokens, all_logits


def assert_same(got, ref):
    assert got[0] == ref[0]
    for g, r in zip(got[1], ref[1]):
        assert rel_err(g, r) < 1e-4


def test_concurrent_sequences_match_each_sequence_run_alone(served):
    srv, export_dir, _ = served
    rng = np.random.default_rng()
    prompts = [rng.integers(0, UNTIED.vocab_size, int(rng.integers(1, 50))).tolist() for _ in range(N_SEQ)]
    got, errors = {}, []
    start = threading.Barrier(N_SEQ)

    def one(i):
        try:
            with SequenceClient(srv.url, "mamba2") as c:
                start.wait()
                got[i] = drive(c, 1000 + i, prompts[i], STEPS)
        except Exception as e:  # surfaced below with the sequence it belongs to
            errors.append((i, e))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(N_SEQ)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i, prompt in enumerate(prompts):
        assert_same(got[i], alone(export_dir, prompt, STEPS))
    # the decode steps were batched: fewer model executions than requests
    c = grpcclient.InferenceServerClient(srv.url)
    stats = c.get_inference_statistics("mamba2").model_stats[0]
    c.close()
    assert stats.execution_count < stats.inference_count


def test_request_without_start_is_refused(served):
    srv, _, _ = served
    with SequenceClient(srv.url, "mamba2") as c:
        with pytest.raises(UserError, match="START"):
            c.step(424242, [1])


def test_idle_sequence_is_released_and_its_id_starts_fresh(served):
    srv, export_dir, _ = served
    prompt = [3, 1, 4, 1, 5]
    with SequenceClient(srv.url, "short") as c:
        c.step(77, prompt, start=True)
        c.step(77, [9])  # never ended
        time.sleep(IDLE_S * 2.5)
        with pytest.raises(UserError, match="START"):  # Triton's sequence batcher has let it go ...
            c.step(77, [2])
        assert "sequence 77 released after" in srv.log_text()  # ... and so has the model, without any request
        assert_same(drive(c, 77, prompt, 3), alone(export_dir, prompt, 3))  # the same id again: from zero states


def test_server_keeps_serving_after_a_client_disconnects_mid_sequence(served):
    srv, export_dir, _ = served
    prompt = [7, 7, 2, 9, 11, 40]
    ref = alone(export_dir, prompt, 4)
    first = SequenceClient(srv.url, "mamba2")
    out = first.step(555, prompt, start=True, outputs=("next_token",))
    tokens = [int(out["next_token"].reshape(-1)[0])]
    first.close()  # gone mid-sequence, without END
    # the state lives on the server, keyed by the sequence id: another connection carries on
    with SequenceClient(srv.url, "mamba2") as second:
        for i in range(3):
            out = second.step(555, [tokens[-1]], end=i == 2, outputs=("next_token",))
            tokens.append(int(out["next_token"].reshape(-1)[0]))
        assert tokens == ref[0]
        # a client that gives up while its request is in flight
        impatient = grpcclient.InferenceServerClient(srv.url)
        ids = grpcclient.InferInput("input_ids", [1, 40], "INT64")
        ids.set_data_from_numpy(np.ones((1, 40), np.int64))
        with pytest.raises(InferenceServerException):
            impatient.infer("mamba2", [ids], sequence_id=556, sequence_start=True, client_timeout=1e-4)
        impatient.close()
        assert_same(drive(second, 557, prompt, 4), ref)


def raw(url, ids, dtype="INT64", **seq):
    c = grpcclient.InferenceServerClient(url)
    try:
        inp = grpcclient.InferInput("input_ids", list(ids.shape), dtype)
        inp.set_data_from_numpy(ids)
        return c.infer("mamba2", [inp], **seq)
    finally:
        c.close()


def test_bad_requests_get_a_clear_error_and_leave_other_sequences_alone(served):
    srv, export_dir, _ = served
    prompt = [5, 6, 7, 8]
    ref = alone(export_dir, prompt, 3)
    bad = [
        (np.array([[1, 2]], np.int32), "INT32", "data-type"),
        (np.array([[1, 1 << 20]], np.int64), "INT64", "outside the vocabulary"),
        (np.array([[-1]], np.int64), "INT64", "outside the vocabulary"),
        (np.ones((2, 3), np.int64), "INT64", "batch-size"),
        (np.ones((9, 1), np.int64), "INT64", "batch-size"),
    ]
    with SequenceClient(srv.url, "mamba2") as c:
        out = c.step(900, prompt, start=True, outputs=("logits", "next_token"))
        tokens, logits = [int(out["next_token"].reshape(-1)[0])], [np.array(out["logits"][-1])]
        for k, (ids, dtype, match) in enumerate(bad):
            with pytest.raises(InferenceServerException, match=match):  # a new sequence, and a live one
                raw(srv.url, ids, dtype, sequence_id=901 + k, sequence_start=True)
            with pytest.raises(InferenceServerException, match=match):
                raw(srv.url, ids, dtype, sequence_id=900)
        # a rejected step leaves its sequence as it was: it carries on exactly as if nothing had come
        for i in range(3):
            out = c.step(900, [tokens[-1]], end=i == 2, outputs=("logits", "next_token"))
            tokens.append(int(out["next_token"].reshape(-1)[0]))
            logits.append(np.array(out["logits"][-1]))
        assert_same((tokens[:3], logits), ref)


def test_client_generate_matches_in_process_generation(served):
    from ssd_deploy.generate import generate
    from ssd_deploy.runtime.backends import OrtBackend

    srv, export_dir, _ = served
    prompt = [11, 12, 13, 14, 15, 16, 17]
    for opts in (SamplingOptions(max_new_tokens=6), SamplingOptions(max_new_tokens=1),
                 SamplingOptions(max_new_tokens=6, temperature=0.8, top_k=20, seed=3)):
        with SequenceClient(srv.url, "mamba2") as c:
            assert c.generate(prompt, opts) == generate(OrtBackend(export_dir), [prompt], opts)[0]


def test_unreachable_server_is_a_user_error():
    with pytest.raises(UserError, match="triton at 127.0.0.1:1"):
        SequenceClient("127.0.0.1:1", "mamba2")


def test_run_command_through_the_server(served):
    from click.testing import CliRunner

    from ssd_deploy.cli import main
    from ssd_deploy.generate import generate
    from ssd_deploy.runtime.backends import OrtBackend

    srv, export_dir, _ = served
    args = ["run", "--backend", "triton", "--url", srv.url, "--model", "mamba2", "--max-new-tokens", "5"]
    r = CliRunner().invoke(main, args + ["--input-ids", "4,5,6", "--json"])
    assert r.exit_code == 0, r.output
    prompts = [[4, 5, 6], [9] * 40]
    assert json.loads(r.output)["generated"] == generate(OrtBackend(export_dir), prompts[:1],
                                                          SamplingOptions(max_new_tokens=5))
    batch = export_dir.parent / "prompts.txt"
    batch.write_text("4,5,6\n" + ",".join(["9"] * 40) + "\n")
    r = CliRunner().invoke(main, args + ["--batch-file", str(batch), "--json"])
    assert r.exit_code == 0, r.output
    alone_each = [generate(OrtBackend(export_dir), [p], SamplingOptions(max_new_tokens=5))[0] for p in prompts]
    assert json.loads(r.output)["generated"] == alone_each
    r = CliRunner().invoke(main, args[:-4] + ["--model", "nope", "--input-ids", "1"])
    assert r.exit_code == 2 and "error: triton at" in r.output


def test_sample_client_gives_the_tokens_of_in_process_generation(served):
    import subprocess
    import sys
    from pathlib import Path

    from ssd_deploy.generate import generate
    from ssd_deploy.runtime.backends import OrtBackend

    srv, export_dir, _ = served
    sample = Path(__file__).resolve().parents[1] / "samples" / "serving" / "client.py"
    out = subprocess.run([sys.executable, str(sample), "--url", srv.url, "--model", "mamba2", "--input-ids",
                          "8,9,10,11", "--max-new-tokens", "6"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    expected = generate(OrtBackend(export_dir), [[8, 9, 10, 11]], SamplingOptions(max_new_tokens=6))[0]
    assert [int(t) for t in out.stdout.split()] == expected


def test_torch_runtime_serves_the_checkpoint(served):
    """The python model on the PyTorch model (the runtime the GPU route uses, here on the CPU): concurrent
    sequences equal each run alone in-process on the same backend."""
    from ssd_deploy.runtime.backends import TorchBackend

    srv, _, ckpt = served
    prompts = [[5, 9, 2], list(range(1, 41)), [7]]
    got = {}

    def one(i):
        with SequenceClient(srv.url, "torch") as c:
            got[i] = drive(c, 700 + i, prompts[i], 5)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    backend = TorchBackend(ckpt)
    for i, p in enumerate(prompts):
        assert_same(got[i], alone(None, p, 5, backend))


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_torch_runtime_on_cuda_matches_in_process(make_checkpoint, tmp_path):
    """The python model running the PyTorch model on the GPU (Triton kernels, CUDA-graph decode), 8 concurrent
    sequences against each run alone in-process on the same backend."""
    from ssd_deploy.runtime.backends import TorchBackend

    ckpt = make_checkpoint(UNTIED, "hf", seed=5)
    repo = write_repository(ckpt, tmp_path / "repo", ServeOptions(runtime="torch", provider="cuda", max_batch=8))
    srv = triton.start(repo, timeout_s=300, exit_timeout_s=1)
    try:
        backend = TorchBackend(ckpt, "cuda", "fp32", cuda_graphs=True)
        prompts = [[1 + i, 2 + i, 3 + i] * (i + 1) for i in range(8)]
        got = {}

        def one(i):
            with SequenceClient(srv.url, "mamba2") as c:
                got[i] = drive(c, 300 + i, prompts[i], 6)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for i, p in enumerate(prompts):
            assert_same(got[i], alone(None, p, 6, backend))
    finally:
        srv.stop()
