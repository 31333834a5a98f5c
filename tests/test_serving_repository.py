"""Model repositories (ssd_deploy/serving/repository.py and the serve-repo command): layout per backend, the
engine's sidecar checks before anything is written, refusals, atomic writing."""

import dataclasses
import os

import pytest
from click.testing import CliRunner

from conftest import TINY
from ssd_deploy.cli import main
from ssd_deploy.errors import UserError
from ssd_deploy.interface import MODEL_FILE, read_metadata
from ssd_deploy.serving.pbtxt import ServeOptions
from ssd_deploy.serving.repository import write_repository
from ssd_deploy.tensorrt import sidecar as sc
from ssd_deploy.tensorrt.profiles import Profile, Range


def test_python_repository_layout(make_export, tmp_path):
    _, export_dir = make_export(TINY, "ort")
    repo = write_repository(export_dir, tmp_path / "repo", ServeOptions(max_batch=4))
    version = repo / "mamba2" / "1"
    assert sorted(p.name for p in repo.iterdir()) == ["README.md", "mamba2"]
    assert (version / "model.py").read_text().startswith('"""Triton python-backend model')
    assert (version / "export" / MODEL_FILE).read_bytes() == (export_dir / MODEL_FILE).read_bytes()
    assert read_metadata(version / "export") == read_metadata(export_dir)
    text = (repo / "mamba2" / "config.pbtxt").read_text()
    assert 'backend: "python"' in text and 'key: "model_dir"' in text and "max_batch_size: 4" in text
    assert "python -m ssd_deploy.serving.server" in (repo / "README.md").read_text()


def test_onnxruntime_repository_holds_the_graph_and_refuses_trt_graphs(make_export, tmp_path):
    _, export_dir = make_export(TINY, "portable")
    repo = write_repository(export_dir, tmp_path / "ort", ServeOptions(backend="onnxruntime"))
    assert sorted(p.name for p in (repo / "mamba2" / "1").iterdir()) == [MODEL_FILE]
    assert 'platform: "onnxruntime_onnx"' in (repo / "mamba2" / "config.pbtxt").read_text()
    _, trt_export = make_export(TINY, "trt")
    for backend in ("onnxruntime", "python"):
        with pytest.raises(UserError, match="plugin nodes"):
            write_repository(trt_export, tmp_path / backend, ServeOptions(backend=backend))
        assert not (tmp_path / backend).exists()


def test_torch_runtime_serves_a_checkpoint(make_checkpoint, tmp_path):
    ckpt = make_checkpoint(TINY)
    repo = write_repository(ckpt, tmp_path / "repo", ServeOptions(runtime="torch", provider="cuda"), dtype="bf16")
    assert (repo / "mamba2" / "1" / "checkpoint" / "config.json").is_file()
    text = (repo / "mamba2" / "config.pbtxt").read_text()
    assert 'string_value: "torch"' in text and 'string_value: "bf16"' in text and "KIND_GPU" in text
    with pytest.raises(UserError, match="checkpoint directory"):
        write_repository(tmp_path, tmp_path / "again", ServeOptions(runtime="torch"))


def test_existing_output_and_bad_paths_are_user_errors(make_export, tmp_path):
    _, export_dir = make_export(TINY, "ort")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    with pytest.raises(UserError, match="not an empty directory"):
        write_repository(export_dir, tmp_path / "full", ServeOptions())
    assert (tmp_path / "full" / "x").read_text() == "keep me"
    with pytest.raises(UserError, match="not a directory"):
        write_repository(tmp_path / "nope", tmp_path / "r", ServeOptions())
    with pytest.raises(UserError, match="--engine and --plugins are for --backend tensorrt"):
        write_repository(export_dir, tmp_path / "r", ServeOptions(), engine=tmp_path / "e")
    assert not (tmp_path / "r").exists()


# --- tensorrt: an engine stand-in with a sidecar as `ssd-deploy build` writes it (no TensorRT here) -------------

@pytest.fixture
def engine(make_export, tmp_path):
    """(export dir, engine path, plugin library): an engine file of stand-in bytes whose sidecar records the real
    hashes of those bytes, of the export's ONNX and of a plugin library, as `ssd-deploy build` would."""
    _, export_dir = make_export(TINY, "trt")
    eng, lib = tmp_path / "model.engine", tmp_path / "libssd_trt_plugins.so"
    eng.write_bytes(os.urandom(256))
    lib.write_bytes(os.urandom(64))
    car = sc.Sidecar(tensorrt="tensorrt", tensorrt_version="10.13.0.35", compute_capability="9.0",
                     compute_targets=[], onnx_dir=str(export_dir),
                     profiles=[Profile("decode", Range(1, 16, 64), Range(1, 1, 1)),
                               Profile("prefill", Range(1, 1, 8), Range(1, 512, 2048))],
                     export=read_metadata(export_dir).to_props(),
                     onnx_sha256=sc.sha256_files(sc.onnx_files(export_dir)),
                     engine_file=eng.name, engine_sha256=sc.sha256_bytes(eng.read_bytes()),
                     plugins={"path": str(lib), "sha256": sc.sha256_files([lib])})
    sc.sidecar_path(eng).write_bytes(car.to_json())
    return export_dir, eng, lib


def test_tensorrt_repository_with_plugins(engine, tmp_path):
    export_dir, eng, lib = engine
    repo = write_repository(export_dir, tmp_path / "repo", ServeOptions(backend="tensorrt", instances=2),
                            engine=eng)
    assert (repo / "mamba2" / "1" / "model.plan").read_bytes() == eng.read_bytes()
    assert (repo / "plugins" / lib.name).read_bytes() == lib.read_bytes()
    text = (repo / "mamba2" / "config.pbtxt").read_text()
    assert 'platform: "tensorrt_plan"' in text and 'profile: [ "0", "1" ]' in text and "count: 2" in text
    readme = (repo / "README.md").read_text()
    assert f"LD_PRELOAD=/models/plugins/{lib.name}" in readme and "10.13.0.35" in readme and "9.0" in readme


@pytest.mark.parametrize("how, match", [
    ("engine", "another engine"), ("plugins", "another plugin library"), ("rtx", "Triton's tensorrt backend"),
    ("batch", "largest profile batch"), ("onnx", "another ONNX"), ("no-sidecar", "no sidecar"),
])
def test_tensorrt_sidecar_checks_run_before_anything_is_written(engine, make_export, tmp_path, how, match):
    export_dir, eng, lib = engine
    opts = ServeOptions(backend="tensorrt")
    if how == "engine":
        eng.write_bytes(os.urandom(256))
    elif how == "plugins":
        lib.write_bytes(os.urandom(64))
    elif how == "rtx":
        # rewritten as a build would write it (a hand edit is refused by the sidecar's digest)
        sc.sidecar_path(eng).write_bytes(dataclasses.replace(sc.load(eng), tensorrt="tensorrt_rtx").to_json())
    elif how == "batch":
        opts = ServeOptions(backend="tensorrt", max_batch=65)
    elif how == "onnx":
        _, export_dir = make_export(TINY, "trt", "fp16")
    else:
        sc.sidecar_path(eng).unlink()
    with pytest.raises(UserError, match=match):
        write_repository(export_dir, tmp_path / "repo", opts, engine=eng)
    assert not (tmp_path / "repo").exists()


def test_serve_repo_command(make_export, tmp_path):
    _, export_dir = make_export(TINY, "ort")
    out = tmp_path / "repo"
    r = CliRunner().invoke(main, ["serve-repo", str(export_dir), "-o", str(out), "--max-batch", "2",
                                  "--idle-timeout", "5", "--name", "m"])
    assert r.exit_code == 0, r.output
    assert "max_sequence_idle_microseconds: 5000000" in (out / "m" / "config.pbtxt").read_text()
    r = CliRunner().invoke(main, ["serve-repo", str(export_dir), "-o", str(tmp_path / "x"), "--strategy", "direct",
                                  "--max-sequences", "3"])
    assert r.exit_code == 2 and "error: --max-sequences is for --strategy oldest" in r.output
    assert not (tmp_path / "x").exists()
