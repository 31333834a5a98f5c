"""ONNX Runtime CUDA-graph decode (runtime/ort_graphs.py, OrtBackend(cuda_graph=True)): on the CPU, the buffers,
bindings and ownership (a CPU session ignores the graph ids and runs the same bound steps) against plain runs, the
hand-over of states, and what is refused; on the GPU, the replayed steps against the plain ONNX Runtime steps and
the float32 PyTorch listings, at two batch sizes in one backend, from zero states and from a prefill's."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import TINY, assert_graph_decode_matches, ort_cuda_test, random_states, rel_err
from ssd_deploy.cli import main
from ssd_deploy.errors import UserError
from ssd_deploy.generate import SamplingOptions, generate
from ssd_deploy.interface import read_metadata
from ssd_deploy.runtime.backends import OrtBackend, TorchBackend, open_backend
from ssd_deploy.runtime.ort_graphs import OrtDecodeGraphs
from ssd_deploy.runtime.ort_runner import ort_session

# untied heads: with a tied head a random model mostly echoes its input token, which would make a weak test
UNTIED = dataclasses.replace(TINY, tie_embeddings=False)


@pytest.fixture(scope="module")
def decode_export(make_export):
    return make_export(UNTIED, "ort", graph="decode", logits="last")


def _torch(states: dict) -> dict:
    return {k: torch.from_numpy(np.asarray(v)) for k, v in states.items()}


def _ptrs(states: dict) -> set:
    return {t.data_ptr() for t in states.values()}


def test_bound_steps_and_ownership_on_cpu(decode_export):
    """Two batch sizes in one object, back to the first with new states: every step's logits and states are the
    plain session's; handed-over states are copied once and never written; a decode loop alternates between the
    two sides' buffers, copying nothing."""
    _, out = decode_export
    meta = read_metadata(out)
    plain = OrtBackend(out, "cpu")  # numpy feeds and fetches: the reference
    graphs = OrtDecodeGraphs(ort_session(out, "cpu"), meta, plain.vocab, torch.float32, device="cpu")
    rng = np.random.default_rng()
    for batch in (1, 3, 1):
        given = _torch(random_states(meta, batch, rng))
        held = {k: v.clone() for k, v in given.items()}
        expected_states, states, sides = {k: v.numpy().copy() for k, v in given.items()}, given, []
        for step in range(5):
            ids = rng.integers(0, UNTIED.vocab_size, (batch, 1))
            expected, expected_states = plain.forward(ids, expected_states)
            logits, states = graphs(ids, states)
            assert logits.shape == (batch, 1, plain.vocab)
            assert rel_err(logits[:, -1], expected) <= 1e-6
            sides.append(_ptrs(states))
        assert sides[0] == sides[2] == sides[4] and sides[1] == sides[3] and not sides[0] & sides[1]
        assert not _ptrs(given) & (sides[0] | sides[1])
        assert all(torch.equal(given[k], held[k]) for k in held)
        for k, ref in expected_states.items():
            assert rel_err(states[k], ref) <= 1e-6, k
    assert sorted(graphs.batches) == [1, 3] and graphs.handovers == 3


def test_generate_keeps_each_prompt_states_on_a_reusing_backend(decode_export):
    """Prompts of different lengths on a decode export are prefilled one by one at batch 1: on a backend whose
    steps reuse their buffers, each prompt's states must survive the next prompt's steps (generate copies them).
    The bookkeeping of OrtDecodeGraphs on a CPU session stands in for the CUDA graphs."""
    ckpt, out = decode_export
    prompts, opts = [[5, 6, 7, 8, 9], [3], [11, 12]], SamplingOptions(max_new_tokens=12)
    expected = generate(open_backend(ckpt, "torch"), prompts, opts)
    backend = OrtBackend(out, "cpu", io_binding=True)
    backend.graphs = OrtDecodeGraphs(backend.session, backend.meta, backend.vocab, torch.float32, device="cpu")
    backend.decode_reuses_states = True
    assert generate(backend, prompts, opts) == expected


def test_refused_where_it_cannot_run(decode_export, make_export):
    """CUDA graphs need the cuda provider and a decode export: one message each, before any session."""
    ckpt, out = decode_export
    with pytest.raises(UserError, match="cuda provider"):
        OrtBackend(out, "cpu", cuda_graph=True)
    with pytest.raises(UserError, match="IO binding off"):
        OrtBackend(out, "cuda", io_binding=False, cuda_graph=True)
    _, unified = make_export(UNTIED, "ort", logits="last")
    with pytest.raises(UserError, match="`unified` graph, provider cuda"):
        OrtBackend(unified, "cuda", cuda_graph=True)
    _, companion = make_export(UNTIED, "ort", logits="last", companion="decode")
    with pytest.raises(UserError, match="`unified` graph with a companion, provider cpu"):
        OrtBackend(companion, "cpu", cuda_graph=True)
    with pytest.raises(UserError, match="need the cuda provider"):
        ort_session(out, "cpu", cuda_graph=True)
    with pytest.raises(UserError, match="option of the ort backend"):
        open_backend(ckpt, "torch", cuda_graph=True)
    args = ["--input-ids", "1,2", "--max-new-tokens", "2", "--cuda-graph"]
    for cmd in (["run", str(out)], ["run", str(unified), "--provider", "cuda"],
                ["run", str(ckpt), "--backend", "torch"], ["run", "--backend", "triton"]):
        r = CliRunner().invoke(main, [*cmd, *args])
        assert r.exit_code == 2 and "Traceback" not in r.output and "CUDA graphs" in r.output, r.output


@pytest.mark.parametrize("companion", [False, True])
def test_the_one_token_session_is_the_capturing_one(make_export, monkeypatch, companion):
    """Option plumbing, without a GPU: the session that runs one-token calls (the decode export's, or the decode
    companion's) is created with `enable_cuda_graph` beside the fp32 setting, any other without it, and the graphs
    run on it. ONNX Runtime is asked for CUDA sessions that are made on the CPU provider instead."""
    import onnxruntime

    _, out = make_export(UNTIED, "ort", logits="last", **({"companion": "decode"} if companion else
                                                           {"graph": "decode"}))
    made = {}
    real = onnxruntime.InferenceSession

    def record(path, opts, providers, provider_options):
        made[Path(path).name] = dict(zip(providers, provider_options))
        return real(path, opts, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(onnxruntime, "InferenceSession", record)
    backend = OrtBackend(out, "cuda", cuda_graph=True)
    capturing = {name for name, opts in made.items() if opts["CUDAExecutionProvider"].get("enable_cuda_graph") == "1"}
    assert capturing == {"decode.onnx" if companion else "model.onnx"} and len(made) == 1 + companion
    assert all(opts["CUDAExecutionProvider"]["use_tf32"] == "0" for opts in made.values())
    assert backend.graphs.session is (backend.decode_session if companion else backend.session)
    assert backend.decode_reuses_states and backend.name == "ort-ort-cuda-graphs"


# ---------------------------------------------------------------- GPU: ONNX Runtime's CUDA provider

@ort_cuda_test
@pytest.mark.parametrize("flavor", ["ort", "portable"])
def test_graph_decode_matches_plain_decode_and_pytorch(make_export, flavor):
    """Steps replayed from ONNX Runtime's CUDA graphs, batch 1 then 3 then 1 again in one backend (new states each
    time), against the same export's plain CUDA steps (logits and states) and the float32 PyTorch listings
    (logits)."""
    ckpt, out = make_export(UNTIED, flavor, graph="decode", logits="last")
    plain, graphs = OrtBackend(out, "cuda"), OrtBackend(out, "cuda", cuda_graph=True)
    assert graphs.decode_reuses_states and graphs.name.endswith("-graphs") and not plain.decode_reuses_states
    assert_graph_decode_matches(plain, graphs, TorchBackend(ckpt, "cpu"))
    assert sorted(graphs.graphs.batches) == [1, 3] and graphs.graphs.handovers == 3


@ort_cuda_test
def test_prefill_states_handed_to_the_graphs(make_export):
    """A unified export's prefill (plain CUDA run) hands its states to the decode export's graphs: the steps match
    the unified export's own steps and the PyTorch listings, and the prefill's states are left as they were."""
    ckpt, unified = make_export(UNTIED, "ort", logits="last")
    _, decode = make_export(UNTIED, "ort", graph="decode", logits="last")
    prefill, graphs = OrtBackend(unified, "cuda"), OrtBackend(decode, "cuda", cuda_graph=True)
    reference = TorchBackend(ckpt, "cpu")
    rng = np.random.default_rng()
    for batch in (3, 1):
        ids = rng.integers(0, UNTIED.vocab_size, (batch, UNTIED.chunk_size + 9))
        _, prefilled = prefill.forward(ids, prefill.zero_states(batch))
        expected, s_ref = reference.forward(ids, reference.zero_states(batch))
        held = {k: v.clone() for k, v in prefilled.items()}
        s_unified, s_graph = prefilled, prefilled
        for step in range(5):
            token = expected.argmax(-1)[:, None]
            expected, s_ref = reference.forward(token, s_ref)
            logits_unified, s_unified = prefill.forward(token, s_unified)
            logits, s_graph = graphs.forward(token, s_graph)
            assert rel_err(logits, logits_unified) <= 1e-5 and rel_err(logits, expected) <= 1e-4, (batch, step)
        assert all(torch.equal(prefilled[k], held[k]) for k in held)
    assert graphs.graphs.handovers == 2


@ort_cuda_test
def test_run_command_with_cuda_graph(decode_export, tmp_path):
    """`ssd-deploy run --cuda-graph` picks PyTorch's tokens, prompts of different lengths included."""
    ckpt, out = decode_export
    expected = generate(open_backend(ckpt, "torch"), [[5, 6, 7], [9]], SamplingOptions(max_new_tokens=10))
    (tmp_path / "prompts.txt").write_text("5,6,7\n9\n")
    r = CliRunner().invoke(main, ["run", str(out), "--provider", "cuda", "--cuda-graph", "--batch-file",
                                  str(tmp_path / "prompts.txt"), "--max-new-tokens", "10", "--json"],
                           catch_exceptions=False)
    assert r.exit_code == 0 and json.loads(r.stdout)["generated"] == expected


@ort_cuda_test
def test_companion_steps_replayed_from_cuda_graphs(make_export):
    """A unified export with a decode companion: prompts on the unified graph, one-token calls replayed from CUDA
    graphs of the companion (the unified graph's session captures nothing): PyTorch's greedy tokens, and the plain
    backend's steps."""
    ckpt, out = make_export(UNTIED, "ort", logits="last", companion="decode")
    graphs = OrtBackend(out, "cuda", cuda_graph=True)
    assert graphs.graphs.session is graphs.decode_session
    prompts, opts = [[5, 6, 7, 8, 9, 10, 11], [3] * 40], SamplingOptions(max_new_tokens=32)
    assert generate(graphs, prompts, opts) == generate(open_backend(ckpt, "torch"), prompts, opts)
    assert_graph_decode_matches(OrtBackend(out, "cuda"), graphs, TorchBackend(ckpt, "cpu"))
