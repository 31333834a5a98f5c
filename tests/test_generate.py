"""Generation: greedy identical across backends, sampling options, batching of unequal prompts, EOS, tokenizer,
and the `run` command."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import TINY, ort_cuda_available, ort_cuda_test, rel_err
from ssd_deploy.cli import main
from ssd_deploy.config import load_config
from ssd_deploy.errors import UserError
from ssd_deploy.generate import SamplingOptions, generate, sample
from ssd_deploy.onnx.export import ExportOptions, export
from ssd_deploy.presets import preset
from ssd_deploy.runtime.backends import OrtBackend, open_backend

# untied heads: with a tied head a random model mostly echoes its input token, which would make a weak test
UNTIED = dataclasses.replace(TINY, tie_embeddings=False)


@pytest.fixture(scope="module")
def untied(make_checkpoint, tmp_path_factory):
    ckpt = make_checkpoint(UNTIED, "hf", seed=21)
    root = tmp_path_factory.mktemp("gen")
    exports = {f: export(ckpt, root / f, ExportOptions(flavor=f)).parent for f in ("portable", "ort")}
    return ckpt, exports


def greedy_everywhere(ckpt, exports, prompts, n):
    opts = SamplingOptions(max_new_tokens=n)
    outs = {"torch": generate(open_backend(ckpt, "torch"), prompts, opts)}
    for flavor, path in exports.items():
        outs[flavor] = generate(open_backend(path, "ort"), prompts, opts)
    return outs


def test_greedy_identical_across_backends_tiny(untied):
    ckpt, exports = untied
    outs = greedy_everywhere(ckpt, exports, [[5, 6, 7, 8, 9, 10, 11], [3] * 40], 64)
    assert all(len(o) == 64 for o in outs["torch"])
    assert len(set(outs["torch"][0])) > 8  # not a degenerate repetition
    assert outs["portable"] == outs["torch"] and outs["ort"] == outs["torch"]


@pytest.mark.slow
def test_greedy_identical_across_backends_130m(make_checkpoint, tmp_path):
    cfg = dataclasses.replace(preset("130m"), tie_embeddings=False)
    ckpt = make_checkpoint(cfg, "hf", seed=22)
    exports = {f: export(ckpt, tmp_path / f, ExportOptions(flavor=f)).parent for f in ("portable", "ort")}
    prompt = np.random.default_rng(0).integers(0, cfg.vocab_size, 300).tolist()  # past one 256-token chunk
    outs = greedy_everywhere(ckpt, exports, [prompt], 64)
    assert outs["portable"] == outs["torch"] and outs["ort"] == outs["torch"]


@pytest.mark.parametrize("flavor", ["portable", "ort"])
def test_io_binding_matches_plain_run(untied, flavor, tmp_path):
    """The IO-binding path (the one ONNX Runtime's CUDA provider takes) on the CPU provider: same tokens as plain
    ``run`` for all-position and last-position logits, unequal prompts stacked as torch tensors."""
    ckpt, exports = untied
    last = export(ckpt, tmp_path / "last", ExportOptions(flavor=flavor, logits="last")).parent
    prompts = [[5, 6, 7, 8], list(range(20, 50))]
    opts = SamplingOptions(max_new_tokens=16)
    for path in (exports[flavor], last):
        plain = generate(OrtBackend(path, io_binding=False), prompts, opts)
        bound = OrtBackend(path, io_binding=True)
        assert generate(bound, prompts, opts) == plain
        logits, states = bound.forward(np.array([prompts[0]]), bound.zero_states(1))
        assert all(isinstance(t, torch.Tensor) for t in states.values())


def test_unequal_prompts_batch_like_separate_runs(untied):
    ckpt, exports = untied
    backend = open_backend(exports["portable"], "ort")
    prompts = [[1, 2, 3], list(range(10, 60)), [7]]
    together = generate(backend, prompts, SamplingOptions(max_new_tokens=12))
    alone = [generate(backend, [p], SamplingOptions(max_new_tokens=12))[0] for p in prompts]
    assert together == alone


def test_sampling_options():
    rng = np.random.default_rng(0)
    logits = np.random.default_rng().standard_normal((3, 50)).astype(np.float32)
    greedy = sample(logits, SamplingOptions(), rng)
    assert np.array_equal(greedy, logits.argmax(-1))
    assert np.array_equal(sample(logits, SamplingOptions(temperature=1.0, top_k=1), rng), greedy)
    assert np.array_equal(sample(logits, SamplingOptions(temperature=1.0, top_p=1e-6), rng), greedy)
    a = sample(logits, SamplingOptions(temperature=0.8, top_k=10), np.random.default_rng(5))
    b = sample(logits, SamplingOptions(temperature=0.8, top_k=10), np.random.default_rng(5))
    assert np.array_equal(a, b)
    top10 = np.argsort(-logits, -1)[:, :10]
    draws = np.stack([sample(logits, SamplingOptions(temperature=2.0, top_k=10), rng) for _ in range(50)])
    assert all(np.isin(draws[:, i], top10[i]).all() for i in range(3))
    assert len(np.unique(draws)) > 3  # temperature 2 actually samples
    with pytest.raises(UserError):
        SamplingOptions(top_p=0).check()


def test_eos_stops_a_sequence(untied):
    ckpt, _ = untied
    backend = open_backend(ckpt, "torch")
    free = generate(backend, [[4, 5, 6]], SamplingOptions(max_new_tokens=20))[0]
    eos = free[3]
    stopped = generate(backend, [[4, 5, 6]], SamplingOptions(max_new_tokens=20, eos_id=eos))[0]
    assert stopped == free[:free.index(eos) + 1]


def test_recipe_limits_are_enforced(untied, tmp_path):
    ckpt, _ = untied
    out = export(ckpt, tmp_path / "r", ExportOptions(), recipe=None).parent
    backend = open_backend(out, "ort")
    backend.recipe = {"prefill": [1, 16], "batch": [1, 2]}
    with pytest.raises(UserError, match="exceeds the export recipe's prefill range"):
        generate(backend, [list(range(17))], SamplingOptions(max_new_tokens=2))
    with pytest.raises(UserError, match="batch range"):
        generate(backend, [[1], [2], [3]], SamplingOptions(max_new_tokens=2))


@pytest.fixture
def word_tokenizer(untied):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(UNTIED.vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


def test_run_command(untied, word_tokenizer, tmp_path):
    ckpt, exports = untied
    word_tokenizer.save(str(tmp_path / "tokenizer.json"))
    runner = CliRunner()
    r = runner.invoke(main, ["run", str(exports["ort"]), "--prompt", "w5 w6 w7", "--tokenizer", str(tmp_path),
                             "--max-new-tokens", "8"], catch_exceptions=False)
    assert r.exit_code == 0
    words = r.output.split()
    assert len(words) >= 1 and all(w.startswith("w") for w in words)
    r = runner.invoke(main, ["run", str(ckpt), "--backend", "torch", "--input-ids", "5,6,7", "--max-new-tokens",
                             "8", "--json"], catch_exceptions=False)
    ids = json.loads(r.output)["generated"][0]
    assert len(ids) == 8
    (tmp_path / "prompts.txt").write_text("5,6,7\n1,2\n")
    r = runner.invoke(main, ["run", str(exports["portable"]), "--batch-file", str(tmp_path / "prompts.txt"),
                             "--max-new-tokens", "8"], catch_exceptions=False)
    assert r.output.splitlines()[0] == "5,6,7 -> " + ",".join(map(str, ids))


@pytest.mark.parametrize("args,message", [
    (["--prompt", "hello"], "needs a tokenizer"),
    (["--input-ids", "1,x"], "comma-separated integers"),
    ([], "exactly one of"),
    (["--input-ids", "1", "--backend", "torch"], "needs a checkpoint directory"),
])
def test_run_bad_input(untied, args, message):
    _, exports = untied
    r = CliRunner().invoke(main, ["run", str(exports["portable"]), *args])
    assert r.exit_code == 2 and message in r.output


@pytest.mark.parametrize("backend", ["ort", "torch"])
def test_token_ids_are_checked_against_the_vocabulary(untied, tmp_path, backend):
    """0 is a token; ids past the vocabulary (or past int64) are refused before any backend runs, for --input-ids and
    batch files alike."""
    ckpt, exports = untied
    model = str(ckpt if backend == "torch" else exports["ort"])
    run = ["run", model, "--backend", backend, "--max-new-tokens", "2"]
    r = CliRunner().invoke(main, [*run, "--input-ids", "0"])
    assert r.exit_code == 0, r.output
    vocab = load_config(ckpt)[0].vocab_size  # the HF format stores the padded size
    for ids in (str(vocab), "3," + str(2 ** 70), "-1"):
        r = CliRunner().invoke(main, [*run, "--input-ids", ids])
        assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
        assert ("outside the model's vocabulary" in r.output or ">= 0" in r.output)
    (tmp_path / "b.txt").write_text(f"1,2\n\n5,{vocab}\n")
    r = CliRunner().invoke(main, [*run, "--batch-file", str(tmp_path / "b.txt")])
    assert r.exit_code == 2 and f"prompt 2: token id {vocab} is outside the model's vocabulary" in r.output


def test_blank_batch_file_and_non_finite_sampling_options(untied, tmp_path):
    _, exports = untied
    (tmp_path / "blank.txt").write_text("\n   \n\n")
    run = ["run", str(exports["portable"])]
    r = CliRunner().invoke(main, [*run, "--batch-file", str(tmp_path / "blank.txt")])
    assert r.exit_code == 2 and "no prompts" in r.output
    for t in ("nan", "inf", "-1"):
        r = CliRunner().invoke(main, [*run, "--input-ids", "1", "--temperature", t])
        assert r.exit_code == 2 and "finite temperature" in r.output, r.output


class NaNBackend:
    """A backend whose model produced NaN (broken weights): generation must name it, never sample from it."""
    one_token_per_call, recipe = False, {}
    config = UNTIED

    def zero_states(self, batch):
        return None

    def forward(self, ids, states):
        return np.full((ids.shape[0], UNTIED.padded_vocab_size), np.nan, np.float32), None


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_nan_logits_are_named(temperature):
    with pytest.raises(UserError, match="NaN logits .after the prefill"):
        generate(NaNBackend(), [[1, 2]], SamplingOptions(max_new_tokens=3, temperature=temperature))


def test_decode_only_export_prefills_token_by_token(untied, tmp_path):
    """A --graph decode export given a multi-token prompt: fed one token per call, with a note saying so; the tokens
    are those of the unified graph."""
    ckpt, exports = untied
    out = export(ckpt, tmp_path / "decode", ExportOptions(graph="decode")).parent
    args = ["--input-ids", "5,6,7,8", "--max-new-tokens", "6", "--json"]
    expected = CliRunner().invoke(main, ["run", str(exports["portable"]), *args], catch_exceptions=False)
    r = CliRunner().invoke(main, ["run", str(out), *args], catch_exceptions=False)
    assert r.exit_code == 0 and json.loads(r.stdout) == json.loads(expected.output)
    assert "decode-only graph" in r.stderr and "one token per call" in r.stderr


@pytest.mark.slow
def test_run_command_on_an_export_with_a_decode_companion(untied, tmp_path):
    """`ssd-deploy export --recipe cpu-fp32 --companion decode` writes the decode companion; `run` on it (decode
    steps through the companion, batch of two unequal prompts) gives the tokens of the torch backend on the
    checkpoint."""
    ckpt, _ = untied
    r = CliRunner().invoke(main, ["export", str(ckpt), "-o", str(tmp_path / "cpu"), "--recipe", "cpu-fp32",
                                  "--companion", "decode"])
    assert r.exit_code == 0 and (tmp_path / "cpu" / "decode.onnx").is_file(), r.output
    (tmp_path / "prompts.txt").write_text("5,6,7,8\n9,10\n")
    args = ["--batch-file", str(tmp_path / "prompts.txt"), "--max-new-tokens", "6", "--json"]
    expected = CliRunner().invoke(main, ["run", str(ckpt), "--backend", "torch", *args], catch_exceptions=False)
    r = CliRunner().invoke(main, ["run", str(tmp_path / "cpu"), "--backend", "ort", *args], catch_exceptions=False)
    assert r.exit_code == 0 and json.loads(r.stdout) == json.loads(expected.stdout), r.output
    assert OrtBackend(tmp_path / "cpu").decode_session is not None


def test_run_missing_runtime(untied):
    """A provider or device this machine does not have gets one message (the other half runs on the GPU)."""
    ckpt, exports = untied
    args = ["--input-ids", "1,2", "--max-new-tokens", "2", "--provider", "cuda"]
    if not ort_cuda_available():
        r = CliRunner().invoke(main, ["run", str(exports["ort"]), *args])
        assert r.exit_code == 2 and "install onnxruntime-gpu" in r.output
    if not torch.cuda.is_available():
        r = CliRunner().invoke(main, ["run", str(ckpt), "--backend", "torch", *args])
        assert r.exit_code == 2 and "no CUDA device" in r.output


# ---------------------------------------------------------------- GPU

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("triton", [False, True], ids=["listings", "triton"])
def test_cuda_graph_decode_matches_eager(untied, triton):
    """Decode steps replayed from CUDA graphs give the eager steps' logits and states, one graph per batch size
    (and back to the first with new prompts); the prefill's states handed to the graphs are never written, and
    the steps after the first update the graph's own states in place (backends.py, decode_reuses_states)."""
    from ssd_deploy.runtime.backends import TorchBackend

    if triton:
        pytest.importorskip("triton", reason="the Triton kernels need triton")
    ckpt, _ = untied
    eager = TorchBackend(ckpt, "cuda", triton=triton)
    graphs = TorchBackend(ckpt, "cuda", triton=triton, cuda_graphs=True)
    assert graphs.decode_reuses_states and not eager.decode_reuses_states
    rng = np.random.default_rng()
    for batch in (1, 3, 1):
        ids = rng.integers(0, UNTIED.vocab_size, (batch, 9))
        expected, eager_states = eager.forward(ids, eager.zero_states(batch))
        _, prefilled = graphs.forward(ids, graphs.zero_states(batch))
        held = [t.clone() for t in (*prefilled[0], *prefilled[1])]
        states = prefilled
        for step in range(6):
            token = expected.argmax(-1)[:, None]
            expected, eager_states = eager.forward(token, eager_states)
            logits, states_next = graphs.forward(token, states)
            if step:
                assert all(a is b for a, b in zip((*states_next[0], *states_next[1]), (*states[0], *states[1])))
            assert rel_err(logits, expected) <= 1e-5
            states = states_next
        assert all(torch.equal(a, b) for a, b in zip(held, (*prefilled[0], *prefilled[1])))
        for mine, ref in zip((*states[0], *states[1]), (*eager_states[0], *eager_states[1])):
            assert rel_err(mine, ref) <= 1e-5
    assert sorted(graphs.graphs.captured) == [1, 3] and graphs.graphs.handovers == 3


# ---------------------------------------------------------------- GPU: ONNX Runtime's CUDA provider

@pytest.mark.parametrize("kernels", ["reference", "triton"])
@ort_cuda_test
def test_greedy_identical_on_cuda(untied, kernels):
    """PyTorch on CUDA and ONNX Runtime's CUDA provider (states bound on the device) pick the same 64 tokens as
    PyTorch on the CPU."""
    from ssd_deploy.runtime.backends import TorchBackend

    if kernels == "triton":
        pytest.importorskip("triton", reason="the Triton kernels need triton")
    ckpt, exports = untied
    prompts, opts = [[5, 6, 7, 8, 9, 10, 11], [3] * 40], SamplingOptions(max_new_tokens=64)
    expected = generate(open_backend(ckpt, "torch"), prompts, opts)
    assert generate(TorchBackend(ckpt, "cuda", triton=kernels == "triton"), prompts, opts) == expected
    for path in exports.values():
        backend = OrtBackend(path, "cuda")
        assert backend.io_binding and generate(backend, prompts, opts) == expected


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("flavor", ["portable", "ort"])
@ort_cuda_test
def test_half_precision_on_cuda(untied, flavor, dtype, tmp_path):
    """fp16/bf16 exports on ONNX Runtime's CUDA provider, against the fp32 PyTorch listings (docs/verification.md: ≤ 1e-2)."""
    from ssd_deploy import bench
    from ssd_deploy.runtime.backends import TorchBackend

    ckpt, _ = untied
    path = export(ckpt, tmp_path / flavor, ExportOptions(flavor=flavor, dtype=dtype, logits="last")).parent
    ids = np.random.default_rng(3).integers(0, UNTIED.vocab_size, (2, 77))
    expected = bench.reference_logits(TorchBackend(ckpt, "cuda", triton=False), ids)
    errs = bench.parity(OrtBackend(path, "cuda"), ids, expected)
    assert max(errs) <= 1e-2, errs  # NaN fails


@ort_cuda_test
def test_run_command_on_cuda(untied):
    ckpt, exports = untied
    args = ["--input-ids", "5,6,7", "--max-new-tokens", "12", "--json"]
    expected = CliRunner().invoke(main, ["run", str(ckpt), "--backend", "torch", *args], catch_exceptions=False)
    for model, backend in ((exports["ort"], "ort"), (ckpt, "torch")):  # torch on CUDA: Triton + CUDA graphs
        r = CliRunner().invoke(main, ["run", str(model), "--backend", backend, "--provider", "cuda", *args],
                               catch_exceptions=False)
        assert r.exit_code == 0 and json.loads(r.output) == json.loads(expected.output), backend


class CountingBackend:
    """Wraps a backend and counts its calls by the number of tokens each took (prefill vs decode)."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def forward(self, ids, states):
        self.calls.append(("forward", np.asarray(ids).shape))
        return self.inner.forward(ids, states)

    def forward_packed(self, prompts, states):
        self.calls.append(("packed", len(prompts)))
        return self.inner.forward_packed(prompts, states)


@pytest.fixture(scope="module")
def packed_exports(untied, tmp_path_factory):
    ckpt, _ = untied
    root = tmp_path_factory.mktemp("packed")
    return {f"{f}-{lg}": export(ckpt, root / f"{f}-{lg}", ExportOptions(flavor=f, graph="packed", logits=lg)).parent
            for f, lg in (("portable", "all"), ("ort", "last"))}


@pytest.mark.slow
def test_unequal_prompts_one_packed_prefill_equal_alone(untied, packed_exports):
    """Unequal prompts: one packed prefill call, then decode steps of the whole batch; greedy tokens equal to each
    prompt run alone (torch, and ONNX Runtime on packed graphs, plain and IO-bound)."""
    ckpt, exports = untied
    prompts = [[1, 2, 3], list(range(10, 60)), [7], [9, 8]]
    opts = SamplingOptions(max_new_tokens=12)
    alone = [generate(open_backend(exports["portable"], "ort"), [p], opts)[0] for p in prompts]
    backends = [open_backend(ckpt, "torch")] + [OrtBackend(path, io_binding=b) for path in packed_exports.values()
                                                for b in (False, True)]
    for backend in backends:
        assert backend.packed
        counted = CountingBackend(backend)
        assert generate(counted, prompts, opts) == alone, backend.name
        assert counted.calls[0] == ("packed", 4), backend.name
        assert all(kind == "forward" and shape == (4, 1) for kind, shape in counted.calls[1:]), backend.name
        assert generate(backend, [prompts[1]] * 2, opts) == [alone[1]] * 2  # equal lengths through a packed graph
