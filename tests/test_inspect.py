"""inspect: every artifact ssd-deploy writes is described, read without weights or TensorRT: an export (with its
stored recipe), an engine with its sidecar (and whether the files still match it), a Triton model repository."""

import json
import shutil

import pytest
from click.testing import CliRunner

from ssd_deploy.cli import main
from ssd_deploy.errors import UserError
from ssd_deploy.inspect import describe, format_description
from ssd_deploy.interface import read_metadata


def inspect_cli(*args):
    r = CliRunner().invoke(main, ["inspect", *map(str, args)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r.output


@pytest.fixture(scope="module")
def recipe_export(tiny_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("inspect") / "cpu"
    r = CliRunner().invoke(main, ["export", str(tiny_ckpt), "-o", str(out), "--recipe", "cpu-fp32", "--logits", "all"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return out


def test_export_shows_its_stored_recipe(recipe_export):
    info = json.loads(inspect_cli(recipe_export, "--json"))
    assert info["kind"] == "export" and info["recipe"] == read_metadata(recipe_export).recipe
    assert info["recipe"]["name"] == "cpu-fp32" and info["recipe"]["overrides"] == ["logits"]
    text = inspect_cli(recipe_export)
    assert "recipe: cpu-fp32 (target cpu) (flags changed logits)" in text and "LinearAttention" in text


def test_engine_with_sidecar(tiny_export, tmp_path):
    """An engine is described from its sidecar; a replaced engine or a re-exported ONNX shows up."""
    from ssd_deploy.tensorrt.profiles import Profile, Range
    from ssd_deploy.tensorrt.sidecar import Sidecar, onnx_files, sha256_bytes, sha256_files, sidecar_path

    export = tmp_path / "export"
    shutil.copytree(tiny_export, export)
    engine = export / "model.engine"
    engine.write_bytes(b"serialised engine bytes")
    car = Sidecar(tensorrt="tensorrt_rtx", tensorrt_version="1.7.0", compute_capability="8.9", compute_targets=[],
                  profiles=[Profile("decode", Range(1, 2, 4), Range(1, 1, 1))],
                  export=read_metadata(export).to_props(), onnx_sha256=sha256_files(onnx_files(export)),
                  engine_sha256=sha256_bytes(engine.read_bytes()), onnx_dir=str(export), build_seconds=1.5,
                  engine_file=engine.name)  # a format-2 sidecar names its engine
    sidecar_path(engine).write_bytes(car.to_json())
    for path in (engine, sidecar_path(engine)):  # the engine or its sidecar
        info = describe(path)
        assert info["kind"] == "engine" and info["engine_matches_sidecar"] and info["export_unchanged"]
        assert info["sidecar"]["profiles"] == [{"name": "decode", "batch": [1, 2, 4], "seq": [1, 1, 1]}]
    text = inspect_cli(engine)
    assert "tensorrt_rtx 1.7.0" in text and "profile decode" in text and "matches the sidecar: yes" in text
    assert f"engine: {engine}" in inspect_cli(export)  # the export points at the engine beside it
    engine.write_bytes(b"another engine")
    (export / "model.onnx").write_bytes((export / "model.onnx").read_bytes() + b"\0")
    info = describe(engine)
    assert not info["engine_matches_sidecar"] and info["export_unchanged"] is False
    assert "NO (rebuild)" in format_description(info)


def test_triton_repository(tiny_export, tmp_path):
    pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="parsing configs needs tritonclient[grpc]")
    from ssd_deploy.serving.pbtxt import ServeOptions
    from ssd_deploy.serving.repository import write_repository

    repo = write_repository(tiny_export, tmp_path / "repo", ServeOptions(name="mamba2", backend="onnxruntime",
                                                                         max_batch=4))
    info = json.loads(inspect_cli(repo, "--json"))
    assert info["kind"] == "triton-repository"
    [model] = info["models"]
    assert model["name"] == "mamba2" and model["backend"].startswith("onnxruntime") and model["max_batch_size"] == 4
    assert model["versions"] == [1] and model["sequence_batching"]["implicit_states"] == 4  # 2 layers x 2 states
    assert "sequence batching" in inspect_cli(repo)


def test_nothing_to_describe_is_one_message(tmp_path):
    with pytest.raises(UserError, match="no exported model"):
        describe(tmp_path)
