"""The ssd-deploy CLI through click's runner: the main paths, and one clear message (no traceback) for bad input."""

import json

import pytest
from click.testing import CliRunner

from ssd_deploy.cli import main


@pytest.fixture
def cli():
    def invoke(*args):
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)

    return invoke


def test_new_export_validate_inspect(cli, tmp_path):
    r = cli("new", "-o", tmp_path / "ck", "--preset", "tiny", "--format", "mamba_ssm", "--seed", "3")
    assert r.exit_code == 0 and (tmp_path / "ck" / "pytorch_model.bin").is_file()
    r = cli("export", tmp_path / "ck", "-o", tmp_path / "ex")
    assert r.exit_code == 0 and (tmp_path / "ex" / "model.onnx").is_file()
    r = cli("validate", tmp_path / "ex", "--against", tmp_path / "ck", "--steps", "2", "--json")
    assert r.exit_code == 0
    report = json.loads(r.output)
    assert report["ok"] and len(report["errors"]) == 9
    r = cli("inspect", tmp_path / "ex")
    assert r.exit_code == 0 and "flavor: portable" in r.output and "MatMul" in r.output
    info = json.loads(cli("inspect", tmp_path / "ex", "--json").output)
    assert info["inputs"][0]["name"] == "input_ids"


def test_export_ort_with_chunked_prefill(cli, tmp_path):
    assert cli("new", "-o", tmp_path / "ck", "--preset", "tiny").exit_code == 0
    r = cli("export", tmp_path / "ck", "-o", tmp_path / "ex", "--flavor", "ort", "--prefill", "chunked")
    assert r.exit_code == 0, r.output
    info = json.loads(cli("inspect", tmp_path / "ex", "--json").output)
    # two per layer: the scan's (LinearAttention for one token, the chunked scan otherwise) and the conv's
    # (the contrib op for one token, the standard Conv otherwise; docs/flavors.md)
    assert info["metadata"]["prefill"] == "chunked" and info["ops"]["If"] == 4


def test_demo(cli, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the demo's temporary folder goes
    r = cli("demo")
    assert r.exit_code == 0, r.output
    assert "PASS" in r.output and "export:" in r.output
    assert "(removed " in r.output and not list(tmp_path.glob("ssd-deploy-demo-*")), "the demo left its folder"
    r = cli("demo", "--workdir", tmp_path / "kept")
    assert r.exit_code == 0 and (tmp_path / "kept" / "export" / "model.onnx").is_file()


def test_plugins_build_says_what_it_skipped(cli, monkeypatch, tmp_path):
    from ssd_deploy import kernels

    lib = tmp_path / kernels.LIB_NAME
    monkeypatch.setattr(kernels, "build_all", lambda build_dir, archs, log: kernels.Built(
        lib, None, "no TensorRT headers (set TensorRT_INCLUDE_DIR or TensorRT_ROOT); not built"))
    r = cli("plugins", "build")
    assert r.exit_code == 0 and f"built {lib}" in r.output
    assert "skipped the TensorRT plugin library" in r.output and "third_party/TensorRT/include" in r.output


@pytest.mark.parametrize("args,message", [
    (["export", "/nonexistent/ckpt", "-o", "{tmp}/o"], "not a directory"),
    (["new", "-o", "{tmp}/n", "--preset", "huge"], "unknown preset"),
    (["validate", "{tmp}", "--against", "{tmp}"], "no exported model"),
    (["inspect", "{tmp}"], "no exported model"),
    (["export", "/nonexistent/ckpt", "-o", "{tmp}/o", "--prefill", "chunked"], "option of the ort flavor"),
    (["bench", "{tmp}", "--steps", "0"], "'--steps': 0 is not in the range x>=1"),
    (["bench", "{tmp}", "--repeats", "0"], "'--repeats': 0 is not in the range x>=1"),
    (["validate", "{tmp}", "--against", "{tmp}", "--prompt-len", "-5"], "'--prompt-len': -5 is not in the range"),
    (["run", "{tmp}", "--input-ids", "1", "--max-new-tokens", "0"], "'--max-new-tokens': 0 is not in the range"),
])
def test_bad_input_is_one_message(cli, tmp_path, args, message):
    r = cli(*[a.format(tmp=tmp_path) for a in args])
    assert r.exit_code == 2
    assert message in r.output and "Traceback" not in r.output
    assert not (tmp_path / "o").exists()


def test_malformed_config_message(cli, tmp_path):
    (tmp_path / "config.json").write_text('{"d_model": 64}')
    r = cli("export", tmp_path, "-o", tmp_path / "o")
    assert r.exit_code == 2 and "lacks n_layer, vocab_size" in r.output
