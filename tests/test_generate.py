"""Generation: greedy identical across backends, sampling options, batching of unequal prompts, EOS, tokenizer,
and the `run` command."""

import dataclasses
import json

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import TINY
from ssd_deploy.cli import main
from ssd_deploy.errors import UserError
from ssd_deploy.generate import SamplingOptions, generate, sample
from ssd_deploy.onnx.export import ExportOptions, export
from ssd_deploy.presets import preset
from ssd_deploy.runtime.backends import open_backend

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
