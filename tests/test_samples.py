"""The samples in samples/ run, and say what they claim: the ONNX Runtime application without ssd-deploy gives
`ssd-deploy run`'s tokens; the Python API sample runs end to end."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import ssd_deploy
from conftest import TINY
from ssd_deploy.cli import main

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
# untied heads: a tied random model mostly echoes its input token, which would make a weak comparison
UNTIED = dataclasses.replace(TINY, tie_embeddings=False)
# the application must run where ssd-deploy, PyTorch and the onnx package are absent
BLOCKED = ("ssd_deploy", "torch", "onnx")
RUN_WITHOUT = ("import runpy, sys\n"
               "for m in {blocked!r}: sys.modules[m] = None  # import m now raises ImportError\n"
               "sys.argv = [{app!r}] + {args!r}\n"
               "runpy.run_path({app!r}, run_name='__main__')\n"
               "assert not set({blocked!r}) & {{m.split('.')[0] for m, v in sys.modules.items() if v is not None}}\n")


def run_app(args: list[str]) -> str:
    code = RUN_WITHOUT.format(blocked=BLOCKED, app=str(SAMPLES / "onnxruntime_app" / "app.py"), args=args)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout


def run_cli(args: list[str]) -> str:
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    return r.output


SAMPLING = [[], ["--temperature", "0.9", "--top-k", "20", "--top-p", "0.9", "--seed", "7"]]


@pytest.mark.slow
@pytest.mark.parametrize("flavor, options", [("portable", {}), ("ort", {}), ("portable", {"graph": "decode"}),
                                             ("portable", {"graph": "packed"})],
                         ids=["portable", "ort", "decode-graph", "packed-graph"])
def test_onnxruntime_app_equals_run(make_export, flavor, options):
    """Decode-only and packed graphs (the app feeds the prompt token by token, or with its offsets) against `run` on
    the unified graph of the same checkpoint."""
    _, export_dir = make_export(UNTIED, flavor, **options)
    _, run_dir = make_export(UNTIED, flavor)
    prompt = "5,6,7,8,9,10,11,40,41,42"
    for sampling in SAMPLING:
        common = ["--input-ids", prompt, "--max-new-tokens", "24", "--json", *sampling]
        app = json.loads(run_app([str(export_dir), *common]))["generated"]
        cli = json.loads(run_cli(["run", str(run_dir), "--backend", "ort", *common]))["generated"][0]
        assert len(app) == 24 and app == cli, sampling
        if not sampling:
            assert len(set(app)) > 4  # not a degenerate repetition


@pytest.mark.slow
def test_onnxruntime_app_text_with_tokenizer(tmp_path):
    """The trained tiny model shipped with the package and its tokenizer: the same text as `ssd-deploy run`."""
    model = ROOT / "ssd_deploy" / "data" / "tiny-stdlib"
    out = ssd_deploy.export(model, tmp_path / "out", flavor="ort", logits="last")
    args = [str(out), "--prompt", "def ", "--tokenizer", str(model / "tokenizer.json"), "--max-new-tokens", "24"]
    streamed = run_app(args)
    assert sum(c.isalpha() for c in streamed) > 10  # readable text, not ids
    assert streamed == run_cli(["run", "--backend", "ort", *args])


def test_onnxruntime_app_refuses_a_non_export(tmp_path):
    code = RUN_WITHOUT.format(blocked=BLOCKED, app=str(SAMPLES / "onnxruntime_app" / "app.py"),
                              args=[str(tmp_path), "--input-ids", "1"])
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "no such file" in r.stderr and "Traceback" not in r.stderr


def run_route(args, monkeypatch, capsys):
    import runpy

    monkeypatch.setattr(sys, "argv", ["tensorrt_route.py", *map(str, args)])
    runpy.run_path(str(SAMPLES / "tensorrt" / "tensorrt_route.py"), run_name="__main__")
    return capsys.readouterr().out


def steps_not_run(out: str) -> list[str]:
    """Titles of the steps the script reported as not run here."""
    titles, skipped = None, []
    for line in out.splitlines():
        if line.startswith("== "):
            titles = line[3:]
        elif "not run here" in line:
            skipped.append(titles.split(":")[0])
    return skipped


@pytest.mark.slow
def test_tensorrt_route_rtx_builds_ahead_of_time(tiny_ckpt, tmp_path, monkeypatch, capsys):
    """Without a GPU (or on one TensorRT-RTX does not target, such as compute 9.0) the engine is built and the run
    steps are reported as not run; on a GPU it targets, they run and pass."""
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed")
    from ssd_deploy.tensorrt.sidecar import gpu_compute_capability, load

    monkeypatch.setenv("SSD_DEPLOY_TENSORRT", "tensorrt_rtx")
    out = run_route([tiny_ckpt, tmp_path], monkeypatch, capsys)
    engine = tmp_path / "rtx" / "model.engine"
    assert engine.is_file() and (tmp_path / "rtx" / "model.engine.json").is_file()
    runs_here = gpu_compute_capability() in load(engine).compute_targets
    assert steps_not_run(out) == ([] if runs_here else ["validate the engine", "generate"])
    assert out.count("PASS") == (2 if runs_here else 1) and "FAIL" not in out


@pytest.mark.slow
def test_tensorrt_route_plugins_jetson_recipe_up_to_what_a_cpu_runs(tiny_ckpt, tmp_path, monkeypatch, capsys):
    import importlib.util

    if importlib.util.find_spec("tensorrt"):
        pytest.skip("TensorRT is installed: the route would build an engine (run the sample itself on that machine)")
    monkeypatch.delenv("SSD_DEPLOY_TENSORRT", raising=False)
    out = run_route([tiny_ckpt, tmp_path, "--route", "plugins", "--recipe", "trt-jetson-orin-fp16",
                     "--plugins", tmp_path / "absent.so"], monkeypatch, capsys)
    meta = ssd_deploy.inspect(tmp_path / "plugins")["metadata"]
    assert (meta["flavor"], meta["dtype"]) == ("trt", "fp16") and "PASS" in out
    assert steps_not_run(out) == ["build the plugin library", "build the TensorRT engine", "validate the engine",
                                  "generate"]
    assert not (tmp_path / "plugins" / "model.engine").exists()


@pytest.mark.slow
def test_python_api_sample(make_checkpoint, tmp_path):
    ckpt = make_checkpoint(UNTIED, "hf", seed=11)
    r = subprocess.run([sys.executable, str(SAMPLES / "python_api.py"), str(ckpt), str(tmp_path)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("validate: PASS")
    greedy = json.loads(lines[1].split(":", 1)[1])
    assert len(greedy) == 12 and len(set(greedy)) > 2
    assert len(json.loads(lines[2].split(":", 1)[1])) == 12
    rows = {ln.split()[0]: float(ln.rsplit(None, 1)[1]) for ln in lines[3:]}
    assert set(rows) == {"torch-cpu", "ort-ort-cpu"} and max(rows.values()) < 1e-4
    assert ssd_deploy.inspect(tmp_path / "cpu")["metadata"]["flavor"] == "ort"
