"""The public API (ssd_deploy/__init__.py): export -> validate -> open_backend -> generate end to end on a tiny
random checkpoint, the same results as the CLI, clear errors, and a cheap `import ssd_deploy`."""

import dataclasses
import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

import ssd_deploy
from conftest import TINY
from ssd_deploy.cli import main

UNTIED = dataclasses.replace(TINY, tie_embeddings=False)  # a tied random model mostly echoes its input


@pytest.fixture(scope="module")
def exported(make_checkpoint, tmp_path_factory):
    ckpt = make_checkpoint(UNTIED, "hf", seed=31)
    out = ssd_deploy.export(ckpt, tmp_path_factory.mktemp("api") / "out", recipe="cpu-fp32", logits="all")
    return ckpt, out


def cli(*args):
    r = CliRunner().invoke(main, [str(a) for a in args])
    return r.exit_code, r.output


@pytest.mark.slow
def test_end_to_end(exported):
    ckpt, out = exported
    assert (out / "model.onnx").is_file()
    meta = ssd_deploy.inspect(out)["metadata"]
    assert (meta["flavor"], meta["dtype"], meta["logits"]) == ("ort", "fp32", "all")  # recipe, then the override
    report = ssd_deploy.validate(out, ckpt, steps=3, seed=0)
    assert report.ok and {e.output for e in report.errors} == {"logits", "conv_state", "ssm_state"}
    assert ssd_deploy.load_config(out) == ssd_deploy.load_config(ckpt)

    prompts = [[5, 6, 7, 8, 9, 10, 11], [3, 4, 200, 17]]
    onnx_tokens = ssd_deploy.generate(ssd_deploy.open_backend(out, backend="ort"), prompts, max_new_tokens=32)
    torch_tokens = ssd_deploy.generate(ssd_deploy.open_backend(ckpt, backend="torch"), prompts,
                                       ssd_deploy.SamplingOptions(max_new_tokens=32))
    assert onnx_tokens == torch_tokens and all(len(t) == 32 for t in onnx_tokens)
    assert len(set(onnx_tokens[0])) > 4  # not a degenerate repetition

    streamed = []
    sampled = ssd_deploy.generate(ssd_deploy.open_backend(out), [prompts[0]], max_new_tokens=8, temperature=0.8,
                                  top_k=20, seed=1, on_tokens=lambda tokens, alive: streamed.append(int(tokens[0])))
    assert sampled == [streamed]


@pytest.mark.slow
def test_cli_gives_the_api_results(exported, tmp_path):
    ckpt, out = exported
    # export: the same options give the same bytes
    code, text = cli("export", ckpt, "-o", tmp_path / "cli", "--recipe", "cpu-fp32", "--logits", "all")
    assert code == 0, text
    assert (tmp_path / "cli" / "model.onnx").read_bytes() == (out / "model.onnx").read_bytes()
    # validate: the same report for the same seed
    code, text = cli("validate", out, "--against", ckpt, "--steps", "2", "--seed", "4", "--json")
    assert code == 0, text
    assert json.loads(text) == ssd_deploy.validate(out, ckpt, steps=2, seed=4).to_dict()
    # run: the same tokens, greedy and sampled
    for sampling in ({}, {"temperature": 0.7, "top_p": 0.9, "seed": 5}):
        flags = [x for k, v in sampling.items() for x in (f"--{k.replace('_', '-')}", v)]
        code, text = cli("run", out, "--input-ids", "5,6,7,8", "--max-new-tokens", 16, "--json", *flags)
        assert code == 0, text
        api = ssd_deploy.generate(ssd_deploy.open_backend(out), [[5, 6, 7, 8]], max_new_tokens=16, **sampling)
        assert json.loads(text)["generated"] == api
    # inspect
    code, text = cli("inspect", out, "--json")
    assert code == 0 and json.loads(text) == json.loads(json.dumps(ssd_deploy.inspect(out)))


def test_user_errors(tiny_ckpt, tmp_path, monkeypatch):
    with pytest.raises(ssd_deploy.UserError, match="unknown export options"):
        ssd_deploy.export(tiny_ckpt, tmp_path / "x", flavour="ort")
    with pytest.raises(ssd_deploy.UserError, match="unknown recipe"):
        ssd_deploy.export(tiny_ckpt, tmp_path / "x", recipe="no-such-recipe")
    assert not (tmp_path / "x").exists()
    with pytest.raises(ssd_deploy.UserError, match="config.json"):
        ssd_deploy.load_config(tmp_path / "nothing")
    backend = ssd_deploy.open_backend(tiny_ckpt, backend="torch")
    with pytest.raises(ssd_deploy.UserError, match="token-id lists"):
        ssd_deploy.generate(backend, ["hello"])
    with pytest.raises(ssd_deploy.UserError, match="unknown sampling options"):
        ssd_deploy.generate(backend, [[1]], temprature=1.0)
    with pytest.raises(ssd_deploy.UserError, match="unknown backend"):
        ssd_deploy.validate(tmp_path, tiny_ckpt, backend="tensorrt")


def test_build_without_tensorrt_is_a_user_error(tiny_export, monkeypatch):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here: its absence cannot be shown")
    except ImportError:
        pass
    monkeypatch.setenv("SSD_DEPLOY_TENSORRT", "tensorrt")
    with pytest.raises(ssd_deploy.UserError, match="no TensorRT for Python"):
        ssd_deploy.build(tiny_export)
    assert not (tiny_export / "model.engine").exists()


def test_import_is_cheap_and_the_functions_stay():
    code = ("import sys, ssd_deploy\n"
            "heavy = {'torch', 'onnx', 'onnxruntime', 'numpy', 'tensorrt', 'tensorrt_rtx'}\n"
            "assert not heavy & {m.split('.')[0] for m in sys.modules}, sorted(heavy & set(sys.modules))\n"
            "from ssd_deploy.validate import format_report\n"
            "import ssd_deploy.generate, ssd_deploy.inspect\n"
            "assert callable(ssd_deploy.validate) and ssd_deploy.validate.__module__ == 'ssd_deploy'\n"
            "assert ssd_deploy.generate.__module__ == ssd_deploy.inspect.__module__ == 'ssd_deploy'\n"
            "assert sys.modules['ssd_deploy.validate'].format_report is format_report\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert set(ssd_deploy.__all__) <= set(dir(ssd_deploy))


@pytest.mark.slow
def test_benchmark(exported):
    ckpt, out = exported
    seen = []
    points = ssd_deploy.benchmark(ckpt, ["torch"], exports=[out], batches=[2], lengths=[9], steps=2, repeats=1,
                                  progress=seen.append).points
    assert [p.backend for p in points] == ["torch-cpu", "ort-ort-cpu"] and seen == points
    assert all(p.batch == 2 and p.length == 9 and p.prefill_tok_s > 0 and p.decode_ms > 0 for p in points)
    assert max(max(p.prefill_err, p.decode_err) for p in points) < 1e-4
    with pytest.raises(ssd_deploy.UserError, match="choose among"):
        ssd_deploy.benchmark(ckpt, ["tensorrt"])
    with pytest.raises(ssd_deploy.UserError, match="provider cuda"):
        ssd_deploy.benchmark(ckpt, ["torch-graphs"])
