"""TensorRT without TensorRT: sidecar records and the checks that refuse mismatched engines, profile planning and
selection, feed checks of the runner, and the API shim's version differences (on stand-in modules)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from ssd_deploy.config import Mamba2Config
from ssd_deploy.errors import UserError
from ssd_deploy.interface import ExportMetadata
from ssd_deploy.tensorrt import api as trt_api
from ssd_deploy.tensorrt import sidecar as sc
from ssd_deploy.tensorrt.profiles import (DEFAULT_BATCH, DEFAULT_SEQ, Profile, Range, RecipeRanges, plan,
                                          recipe_ranges, select_profile)
from ssd_deploy.tensorrt.runner import NEEDS, TensorSpec, TrtRunner, check_feed

CFG = Mamba2Config(d_model=64, n_layer=2, vocab_size=250, d_state=16, headdim=16, ngroups=2, chunk_size=32)
META = ExportMetadata(config=CFG, flavor="portable", dtype="fp16", opset=18, exporter="test", checkpoint_sha256="c" * 64)
PROFILES = [Profile("decode", Range(1, 2, 8), Range(1, 1, 1)), Profile("prefill", Range(1, 2, 8), Range(1, 64, 512))]


def record(**kw) -> sc.Sidecar:
    base = dict(tensorrt="tensorrt", tensorrt_version="10.13.0.35", compute_capability="8.9", compute_targets=[],
                profiles=PROFILES, export=META.to_props(), onnx_sha256="a" * 64, onnx_dir="/exports/tiny",
                engine_sha256="e" * 64, engine_file="model.engine")
    return sc.Sidecar(**{**base, **kw})


def env(**kw) -> sc.Environment:
    base = dict(tensorrt="tensorrt", tensorrt_version="10.13.0.35", compute_capability="8.9", engine_sha256="e" * 64)
    return sc.Environment(**{**base, **kw})


# --- sidecar ----------------------------------------------------------------------------------------------------

def test_sidecar_round_trip_keeps_everything(tmp_path):
    car = record(plugins={"path": "/p/libssd_trt_plugins.so", "sha256": "f" * 64}, build_seconds=1.5)
    engine = tmp_path / "model.engine"
    sc.sidecar_path(engine).write_bytes(car.to_json())
    back = sc.load(engine)
    assert back == car
    d = json.loads(car.to_json())
    assert d["export"]["flavor"] == "portable" and d["export"]["dtype"] == "fp16"
    assert back.metadata.config == CFG and [s.name for s in back.metadata.states] == [s.name for s in META.states]


def test_matching_environment_passes():
    assert sc.problems(record(), env()) == []
    sc.check("e", record(), env())  # no exception


@pytest.mark.parametrize("car_kw, env_kw, expect", [
    ({}, {"tensorrt_version": "10.8.0.43"}, "built with TensorRT 10.13.0.35, but this is TensorRT 10.8.0.43"),
    ({}, {"tensorrt": "tensorrt_rtx", "tensorrt_version": "1.7.1.116"}, "this is TensorRT-RTX 1.7.1.116"),
    ({}, {"compute_capability": "9.0"}, "built for compute capability 8.9; this GPU is 9.0"),
    ({"tensorrt": "tensorrt_rtx", "tensorrt_version": "1.7", "compute_capability": sc.AHEAD_OF_TIME,
      "compute_targets": ["8.0", "8.6", "8.9", "12.0"]},
     {"tensorrt": "tensorrt_rtx", "tensorrt_version": "1.7", "compute_capability": "9.0"},
     "TensorRT-RTX cannot target it"),
    ({"plugins": {"path": "/p/lib.so", "sha256": "f" * 64}}, {}, "needs the plugin library it was built with"),
    ({"plugins": {"path": "/p/lib.so", "sha256": "f" * 64}}, {"plugins_sha256": "0" * 64, "plugins_path": "/q.so"},
     "built with another plugin library"),
    ({}, {"onnx_sha256": "b" * 64, "onnx_dir": "/exports/other"}, "built from another ONNX"),
    ({}, {"engine_sha256": "d" * 64}, "the engine was replaced without its sidecar"),
])
def test_each_mismatch_is_refused_with_its_reason(car_kw, env_kw, expect):
    car, here = record(**car_kw), env(**env_kw)
    found = sc.problems(car, here)
    assert len(found) == 1 and expect in found[0], found
    with pytest.raises(UserError, match="refusing to run this engine") as e:
        sc.check("model.engine", car, here)
    assert expect in str(e.value) and "ssd-deploy build /exports/tiny" in str(e.value)


def test_ahead_of_time_engine_runs_on_its_targets_and_all_reasons_are_listed():
    aot = record(tensorrt="tensorrt_rtx", tensorrt_version="1.7", compute_capability=sc.AHEAD_OF_TIME,
                 compute_targets=["8.6", "12.0"])
    assert sc.problems(aot, env(tensorrt="tensorrt_rtx", tensorrt_version="1.7", compute_capability="12.0")) == []
    several = sc.problems(record(), env(tensorrt_version="11.0", compute_capability="10.0", engine_sha256="0"))
    assert len(several) == 3


def test_unknown_compute_capability_and_plugins_given_to_a_plugin_free_engine_are_fine():
    assert sc.problems(record(), env(compute_capability=None, plugins_sha256="1" * 64, plugins_path="/x.so")) == []


def test_missing_malformed_or_foreign_sidecars_are_user_errors(tmp_path):
    engine = tmp_path / "model.engine"
    with pytest.raises(UserError, match="no sidecar model.engine.json"):
        sc.load(engine)
    side = sc.sidecar_path(engine)
    for text, match in [("{not json", "unreadable sidecar"), ("[]", "not a JSON object"),
                        (json.dumps({"format": 99}), "format 99"),
                        (json.dumps({"format": sc.FORMAT, "tensorrt": {}, "sidecar_sha256":
                                     sc.digest({"format": sc.FORMAT, "tensorrt": {}})}), "malformed engine sidecar")]:
        side.write_text(text)
        with pytest.raises(UserError, match=match):
            sc.load(engine)


def _edit_targets(d):
    d["gpu"]["targets"] = ["9.0"]


def _edit_profile(d):
    d["profiles"][1]["seq"][2] = 4096


def _edit_metadata(d):
    d["export"]["metadata"]["ssd_deploy.dtype"] = "fp32"


def _edit_engine_hash(d):
    d["engine_sha256"] = "d" * 64


def _edit_onnx_hash(d):
    d["onnx"]["sha256"] = "b" * 64


def _edit_plugins(d):
    d["plugins"] = None


def _edit_version(d):
    d["tensorrt"]["version"] = "10.8.0.43"


def _drop_digest(d):
    del d["sidecar_sha256"]


@pytest.mark.parametrize("change", [_edit_targets, _edit_profile, _edit_metadata, _edit_engine_hash, _edit_onnx_hash,
                                    _edit_plugins, _edit_version, _drop_digest])
def test_every_field_of_the_sidecar_is_covered(tmp_path, change):
    """Edits of metadata, profiles, targets or hashes (no field is outside the digest) are refused at load."""
    engine = tmp_path / "model.engine"
    side = sc.sidecar_path(engine)
    side.write_bytes(record(plugins={"path": "/p/lib.so", "sha256": "f" * 64}).to_json())
    sc.load(engine)  # as written: fine
    d = json.loads(side.read_text())
    change(d)
    side.write_text(json.dumps(d, indent=2))
    with pytest.raises(UserError, match="edited after the build"):
        sc.load(engine)


def test_engine_and_sidecar_are_bound(tmp_path):
    """New engine bytes with the engine hash recomputed in the sidecar: the digest no longer matches; a consistent
    sidecar of another engine file: refused by name; other bytes under the recorded hash: refused at the check."""
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"engine")
    side = sc.sidecar_path(engine)
    side.write_bytes(record(engine_sha256=sc.sha256_bytes(b"engine")).to_json())
    car = sc.load(engine)
    assert sc.problems(car, env(engine_sha256=sc.sha256_bytes(engine.read_bytes()))) == []
    engine.write_bytes(b"other engine")
    d = json.loads(side.read_text())
    d["engine_sha256"] = sc.sha256_bytes(b"other engine")
    side.write_text(json.dumps(d))
    with pytest.raises(UserError, match="edited after the build"):
        sc.load(engine)
    side.write_bytes(record(engine_sha256=sc.sha256_bytes(b"engine")).to_json())
    assert "the engine was replaced" in sc.problems(sc.load(engine), env(engine_sha256=sc.sha256_bytes(
        engine.read_bytes())))[0]
    other = tmp_path / "other.engine"
    sc.sidecar_path(other).write_bytes(record().to_json())  # the sidecar of model.engine, renamed
    with pytest.raises(UserError, match="the sidecar of engine 'model.engine', not of 'other.engine'"):
        sc.load(other)


def test_sha256_files_covers_names_and_bytes(tmp_path):
    a, b = tmp_path / "model.onnx", tmp_path / "model.onnx.data"
    a.write_bytes(b"graph")
    assert sc.onnx_files(tmp_path) == [a]
    h1 = sc.sha256_files(sc.onnx_files(tmp_path))
    b.write_bytes(b"weights")
    assert sc.onnx_files(tmp_path) == [a, b]
    h2 = sc.sha256_files(sc.onnx_files(tmp_path))
    b.write_bytes(b"weightz")
    assert len({h1, h2, sc.sha256_files(sc.onnx_files(tmp_path))}) == 3


# --- profiles ---------------------------------------------------------------------------------------------------

def test_range_parsing():
    assert Range.of("1,8,64", "b") == Range(1, 8, 64)
    assert Range.of("4", "b") == Range(4, 4, 4)
    assert Range.of([2, 3, 5], "b") == Range(2, 3, 5)
    for bad in ["0,1,2", "3,2,4", "1,2", "a,b,c", "1,2,3,4", ""]:
        with pytest.raises(UserError, match="MIN,OPT,MAX"):
            Range.of(bad, "--batch-range")


# a resolved recipe as the recipes module stores it in the export (Recipe.to_dict)
RECIPE = {"name": "edge", "target": "tensorrt", "export": {"flavor": "portable", "dtype": "fp16"},
          "batch": [1, 16], "prefill": [1, 1024], "workspace_mib": 512,
          "profiles": {"decode": {"batch": [1, 8, 16], "seq": [1, 1, 1]},
                       "prefill": {"batch": [1, 2, 4], "seq": [8, 128, 1024]}}}


def test_plan_defaults():
    both = plan(None, None, None, RecipeRanges(), "unified")
    assert [p.name for p in both] == ["decode", "prefill"]
    assert both[0].seq == Range(1, 1, 1) and both[1].seq == Range(*DEFAULT_SEQ)
    assert both[0].batch == both[1].batch == Range(*DEFAULT_BATCH)
    assert [p.name for p in plan(None, None, None, RecipeRanges(), "decode")] == ["decode"]


def test_plan_follows_the_recipe_and_flags_override_it():
    rec = recipe_ranges(RECIPE)
    assert rec.workspace_mib == 512
    assert [p.to_dict() for p in plan(None, None, None, rec, "unified")] == [
        {"name": "decode", "batch": [1, 8, 16], "seq": [1, 1, 1]},
        {"name": "prefill", "batch": [1, 2, 4], "seq": [8, 128, 1024]}]
    flags = plan("prefill", "2,2,2", "1,32,64", rec, "unified")
    assert [p.to_dict() for p in flags] == [{"name": "prefill", "batch": [2, 2, 2], "seq": [1, 32, 64]}]
    only_seq = plan(None, None, "1,16,32", rec, "unified")  # the recipe's batch ranges stay
    assert [(str(p.batch), str(p.seq)) for p in only_seq] == [("1,8,16", "1,1,1"), ("1,2,4", "1,16,32")]
    decode_only = recipe_ranges({**RECIPE, "profiles": {"decode": RECIPE["profiles"]["decode"]}})
    assert [p.name for p in plan(None, None, None, decode_only, "unified")] == ["decode"]
    assert [p.name for p in plan("both", None, None, decode_only, "unified")] == ["decode", "prefill"]


@pytest.mark.parametrize("args, match", [
    (("prefill", None, None, RecipeRanges(), "decode"), "single-token decode graph"),
    (("decode", None, "1,2,3", RecipeRanges(), "unified"), "decode-only engine"),
    (("all", None, None, RecipeRanges(), "unified"), "--profile must be one of"),
])
def test_plan_refusals(args, match):
    with pytest.raises(UserError, match=match):
        plan(*args)


@pytest.mark.parametrize("change, match", [
    ({"profiles": {"warmup": {"batch": [1, 1, 1], "seq": [1, 1, 1]}}}, "must map decode/prefill"),
    ({"profiles": {"prefill": {"batch": [4, 1, 2], "seq": [1, 2, 3]}}}, "profiles.prefill.batch"),
    ({"profiles": {"prefill": {"batch": [1, 1, 2]}}}, "exactly batch and seq"),
    ({"profiles": {"decode": {"batch": [1, 1, 2], "seq": [1, 2, 2]}}}, r"decode.seq must be \[1, 1, 1\]"),
    ({"workspace_mib": -1}, "workspace_mib"),
])
def test_bad_recipe_profiles_are_user_errors(change, match):
    with pytest.raises(UserError, match=match):
        recipe_ranges({**RECIPE, **change})


def test_profile_shapes_fill_only_batch_and_sequence():
    inputs = {"input_ids": (-1, -1), "conv_state.0": (-1, 192, 3), "ssm_state.0": (-1, 8, 16, 16)}
    shapes = PROFILES[1].shapes(inputs)
    assert shapes["input_ids"] == ((1, 1), (2, 64), (8, 512))
    assert shapes["ssm_state.0"] == ((1, 8, 16, 16), (2, 8, 16, 16), (8, 8, 16, 16))
    assert PROFILES[1].shapes({"input_ids": (-1, 1)})["input_ids"] == ((1, 1), (2, 1), (8, 1))  # decode graph
    with pytest.raises(UserError, match="dynamic axis 2"):
        PROFILES[1].shapes({"conv_state.0": (-1, 192, -1)})


def test_profile_selection():
    assert select_profile(PROFILES, 1, 1) == 0
    assert select_profile(PROFILES, 8, 1) == 0
    assert select_profile(PROFILES, 3, 2) == 1
    assert select_profile(PROFILES[::-1], 2, 1) == 1  # the decode profile wins wherever it is
    assert select_profile(PROFILES[1:], 2, 1) == 0  # a prefill-only engine takes single tokens too
    for batch, seq in [(9, 1), (9, 5), (2, 513), (0, 1)]:
        with pytest.raises(UserError, match="outside every optimization profile"):
            select_profile(PROFILES, batch, seq)


# --- runner (the parts that need no GPU) --------------------------------------------------------------------------

SPECS = [TensorSpec("input_ids", (-1, -1), "int64", True), TensorSpec("conv_state.0", (-1, 192, 3), "float32", True),
         TensorSpec("ssm_state.0", (-1, 8, 16, 16), "float32", True)]


def test_check_feed_accepts_a_good_feed_and_returns_batch_and_seq():
    feed = {"input_ids": ((2, 7), "int64"), "conv_state.0": ((2, 192, 3), "float32"),
            "ssm_state.0": ((2, 8, 16, 16), "float32")}
    assert check_feed(SPECS, feed) == (2, 7)
    assert SPECS[0].dims() == ("batch", "seq") and SPECS[2].dims() == ("batch", 8, 16, 16)


@pytest.mark.parametrize("change, match", [
    ({"ssm_state.0": None}, "missing input ssm_state.0"),
    ({"extra": ((2,), "float32")}, "unknown input extra"),
    ({"conv_state.0": ((2, 192, 3), "float16")}, "dtype float16, the engine wants float32"),
    ({"conv_state.0": ((2, 192, 4), "float32")}, r"shape \(2, 192, 4\)"),
    ({"input_ids": ((2, 7, 1), "int64")}, r"input_ids: shape \(2, 7, 1\)"),
    ({"ssm_state.0": ((3, 8, 16, 16), "float32")}, "disagree on the batch size"),
])
def test_check_feed_refusals(change, match):
    feed = {"input_ids": ((2, 7), "int64"), "conv_state.0": ((2, 192, 3), "float32"),
            "ssm_state.0": ((2, 8, 16, 16), "float32")}
    feed = {k: v for k, v in {**feed, **change}.items() if v is not None}
    with pytest.raises(UserError, match=match):
        check_feed(SPECS, feed)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where there is no GPU")
def test_runner_without_a_gpu_refuses_with_one_message(tmp_path):
    with pytest.raises(UserError, match=NEEDS):
        TrtRunner(tmp_path / "model.engine").activate()


# --- the API shim on stand-in modules (the differences between TensorRT 10, 11 and RTX) --------------------------

def fake_module(version, **extra):
    enum = SimpleNamespace(STRONGLY_TYPED=0)
    return SimpleNamespace(__version__=version, NetworkDefinitionCreationFlag=enum, **extra)


def test_strong_typing_flag_only_for_tensorrt_10():
    assert trt_api.TrtApi(fake_module("10.13.0.35"), "tensorrt").network_flags() == 1
    assert trt_api.TrtApi(fake_module("11.1.0"), "tensorrt").network_flags() == 0
    assert trt_api.TrtApi(fake_module("1.7.1.116"), "tensorrt_rtx").network_flags() == 0


def test_device_memory_size_naming():
    api = trt_api.TrtApi(fake_module("10.0.1"), "tensorrt")
    assert api.device_memory_size(SimpleNamespace(device_memory_size=5)) == 5  # 10.0
    assert api.device_memory_size(SimpleNamespace(device_memory_size=5, device_memory_size_v2=7)) == 7  # 10.1+, 11


def test_rtx_refuses_plugins_and_timing_cache_and_builds_ahead_of_time():
    rtx = trt_api.TrtApi(fake_module("1.7"), "tensorrt_rtx")
    with pytest.raises(UserError, match="does not support"):
        rtx.check_plugins("model.onnx (trt flavor)")
    with pytest.raises(UserError, match="does not support"):
        rtx.load_plugins(SimpleNamespace(), "lib.so")
    assert not rtx.supports_timing_cache and rtx.builds_ahead_of_time
    full = trt_api.TrtApi(fake_module("10.13"), "tensorrt")
    full.check_plugins("x")  # no exception
    assert full.supports_timing_cache and not full.builds_ahead_of_time and full.compute_targets(None) == []


def test_rtx_default_targets_come_from_its_compute_capability_enum():
    members = {n: SimpleNamespace(name=n) for n in ["NONE", "CURRENT", "SM75", "SM80", "SM86", "SM120"]}
    rtx = trt_api.TrtApi(fake_module("1.7", ComputeCapability=SimpleNamespace(__members__=members)), "tensorrt_rtx")
    assert rtx.compute_targets(SimpleNamespace(num_compute_capabilities=0)) == ["8.0", "8.6", "12.0"]
    chosen = SimpleNamespace(num_compute_capabilities=1, get_compute_capability=lambda i: members["SM75"])
    assert rtx.compute_targets(chosen) == ["7.5"]


def test_load_names_what_is_missing(monkeypatch):
    trt_api._load.cache_clear()
    monkeypatch.setattr(trt_api, "_import", lambda name: None)
    with pytest.raises(UserError, match="cannot import tensorrt or tensorrt_rtx"):
        trt_api.load()
    monkeypatch.setenv(trt_api.ENV_VAR, "tensorrt_rtx")
    with pytest.raises(UserError, match="cannot import tensorrt_rtx"):
        trt_api.load()
    monkeypatch.setenv(trt_api.ENV_VAR, "tensorflow")
    with pytest.raises(UserError, match="choose one of tensorrt, tensorrt_rtx"):
        trt_api.load()
    trt_api._load.cache_clear()


def test_load_prefers_tensorrt_and_honours_the_override(monkeypatch):
    trt_api._load.cache_clear()
    mods = {"tensorrt": fake_module("10.13"), "tensorrt_rtx": fake_module("1.7")}
    monkeypatch.setattr(trt_api, "_import", mods.get)
    assert trt_api.load().package == "tensorrt"
    monkeypatch.setenv(trt_api.ENV_VAR, "tensorrt_rtx")
    assert trt_api.load().package == "tensorrt_rtx"
    trt_api._load.cache_clear()
