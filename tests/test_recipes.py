"""Export recipes: every shipped recipe loads and is documented; bad recipes and bad overrides fail with one clear
UserError before any work; command-line values override recipe values; the resolved recipe lands in the metadata."""

import re
from pathlib import Path

import pytest

from ssd_deploy import recipes
from ssd_deploy.errors import UserError
from ssd_deploy.onnx import export as export_mod
from ssd_deploy.onnx.export import ExportOptions, resolve_options
from ssd_deploy.interface import read_metadata

REPO = Path(__file__).resolve().parents[1]
SHIPPED = ["cpu-fp32", "ort-cuda-fp16", "trt-datacenter-bf16", "trt-jetson-orin-fp16"]

GOOD = """
target = "tensorrt"
[export]
flavor = "trt"
dtype = "fp16"
[shapes]
batch = [1, 8]
prefill = [1, 4096]
[tensorrt.profiles.decode]
batch = [1, 4, 8]
seq = [1, 1, 1]
[tensorrt.profiles.prefill]
batch = [1, 1, 2]
seq = [1, 512, 4096]
"""


def write(tmp_path, text, name="r") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def test_shipped_recipes_load_and_are_documented():
    assert set(SHIPPED) <= set(recipes.available())
    readme = (REPO / "export" / "README.md").read_text()
    for name in recipes.available():
        r = recipes.load(name)
        assert r.name == name and r.description
        assert f"`{name}`" in readme, f"{name} is not described in export/README.md"
        opts, resolved = resolve_options(name)
        assert opts.flavor == r.export["flavor"] and resolved["name"] == name


def test_package_ships_the_repository_recipes():
    """Installed or from the source tree (where ssd_deploy/export_recipes links to export/), the package's recipes
    are the files of export/."""
    files = sorted((REPO / "export").glob("*.toml"))
    assert [f.stem for f in files] == recipes.available()
    for f in files:
        assert (recipes.RECIPES_DIR / f.name).read_bytes() == f.read_bytes()


def test_tensorrt_recipes_have_decode_and_prefill_profiles():
    dc = recipes.load("trt-datacenter-bf16")
    assert dc.profiles["decode"].seq == (1, 1, 1)
    assert dc.export["dtype"] == "bf16" and dc.export["flavor"] == "trt"
    jetson = recipes.load("trt-jetson-orin-fp16")
    assert jetson.export["dtype"] == "fp16"
    assert jetson.profiles["prefill"].seq[2] <= dc.profiles["prefill"].seq[2]  # memory-conscious ranges
    assert jetson.profiles["decode"].batch[2] <= dc.profiles["decode"].batch[2]
    assert recipes.load("cpu-fp32").profiles == {}


def test_ort_recipes_choose_their_prefill():
    """ONNX Runtime's CUDA LinearAttention is a token-by-token recurrence: prompts take the chunked scan there; on
    the CPU LinearAttention prefills faster and stays."""
    assert resolve_options("ort-cuda-fp16")[0].prefill == "chunked"
    assert resolve_options("cpu-fp32")[0].prefill == "contrib"
    assert resolve_options("cpu-fp32")[0].companion == "none"  # the companion did not pay on a quiet CPU (RESULTS)
    assert resolve_options("cpu-fp32", companion="decode")[0].companion == "decode"
    opts, resolved = resolve_options("cpu-fp32", prefill="chunked")
    assert opts.prefill == "chunked" and resolved["export"]["prefill"] == "chunked"
    assert resolved["overrides"] == ["prefill"]


def test_load_by_path(tmp_path):
    r = recipes.load(write(tmp_path, GOOD, "mine"))
    assert r.name == "mine" and r.profiles["prefill"].seq == (1, 512, 4096)


@pytest.mark.parametrize("text,message", [
    (GOOD + "\ncolour = 'red'\n", r"unknown keys \['colour'\]"),
    (GOOD.replace('dtype = "fp16"', 'dtype = "fp16"\nprecision = "x"'), r"\[export\]: unknown keys"),
    (GOOD.replace("batch = [1, 8]", "batch = [8, 1]"), r"shapes.batch = \[8, 1\] must satisfy"),
    (GOOD.replace("prefill = [1, 4096]", "prefill = [0, 4096]"), "must satisfy 1 <= min"),
    (GOOD.replace("seq = [1, 512, 4096]", "seq = [1, 8192, 4096]"), "min <= opt <= max"),
    (GOOD.replace("seq = [1, 512, 4096]", "seq = [1, 512, 8192]"), r"outside what it may serve .*\[1, 4096\]"),
    (GOOD.replace("seq = [1, 1, 1]", "seq = [1, 1, 2]"), "decode takes one token per call"),
    (GOOD.replace("batch = [1, 4, 8]", "batch = [1, 4, 16]"), "outside what it may serve"),
    (GOOD.replace("[tensorrt.profiles.prefill]\nbatch = [1, 1, 2]\nseq = [1, 512, 4096]", ""), "exactly the profiles"),
    (GOOD.replace('target = "tensorrt"', 'target = "cpu"').replace('flavor = "trt"', 'flavor = "ort"'),
     "tensorrt.profiles given for target cpu"),
    (GOOD.replace('flavor = "trt"', 'flavor = "ort"'), "flavor 'ort' does not run on target tensorrt"),
    (GOOD.replace('target = "tensorrt"', 'target = "tpu"'), "unknown target 'tpu'"),
    (GOOD.replace('dtype = "fp16"', 'dtype = "int8"'), "dtype 'int8' is not supported on target tensorrt"),
    (GOOD.replace("batch = [1, 8]", 'batch = "1-8"'), "must be a list of 2 integers"),
    (GOOD.replace('dtype = "fp16"', "dtype = 16"), "export.dtype must be a str"),
    (GOOD.replace('dtype = "fp16"', 'dtype = "fp16"\nprefill = true'), "export.prefill must be a str"),
    (GOOD.replace("[shapes]\nbatch = [1, 8]\nprefill = [1, 4096]", ""), r"missing keys \['shapes'\]"),
    ("target = \n", "malformed TOML"),
])
def test_bad_recipes_fail_clearly(tmp_path, text, message):
    with pytest.raises(UserError, match=message) as err:
        recipes.load(write(tmp_path, text))
    assert "recipe r" in str(err.value) or "malformed" in str(err.value)


def test_bf16_on_cpu_is_refused(tmp_path):
    text = GOOD.replace('target = "tensorrt"', 'target = "cpu"').replace('flavor = "trt"', 'flavor = "ort"')
    text = re.sub(r"\[tensorrt.*", "", text, flags=re.S).replace('dtype = "fp16"', 'dtype = "bf16"')
    with pytest.raises(UserError, match="dtype 'bf16' is not supported on target cpu"):
        recipes.load(write(tmp_path, text))


def test_unknown_recipe_names_the_choices():
    with pytest.raises(UserError, match="unknown recipe 'gpu-fast'.*cpu-fp32"):
        recipes.load("gpu-fast")
    with pytest.raises(UserError, match="no such recipe file"):
        recipes.load("/nonexistent/thing.toml")


def test_flags_override_recipe_and_are_checked_again():
    opts, resolved = resolve_options("trt-jetson-orin-fp16", dtype="fp32", logits="all", opset=None)
    assert (opts.flavor, opts.dtype, opts.logits) == ("trt", "fp32", "all")
    assert resolved["export"]["dtype"] == "fp32" and resolved["overrides"] == ["dtype", "logits"]
    with pytest.raises(UserError, match="dtype 'bf16' is not supported on target cpu"):
        resolve_options("cpu-fp32", dtype="bf16")
    with pytest.raises(UserError, match="flavor 'trt' does not run on target cpu"):
        resolve_options("cpu-fp32", flavor="trt")
    with pytest.raises(UserError, match="a decode graph for tensorrt needs exactly the profiles"):
        resolve_options("trt-datacenter-bf16", graph="decode")
    with pytest.raises(UserError, match="prefill 'chunked' is an option of the ort flavor"):
        resolve_options("trt-datacenter-bf16", prefill="chunked")


def test_without_recipe_flags_and_defaults():
    opts, resolved = resolve_options(None, flavor="ort", dtype=None)
    assert opts == ExportOptions(flavor="ort") and resolved == {}
    with pytest.raises(UserError, match="unknown flavor"):
        resolve_options(None, flavor="tflite")


def test_resolved_recipe_is_stored_in_metadata(tiny_ckpt, tmp_path):
    opts, resolved = resolve_options("cpu-fp32", logits="all")
    out = export_mod.export(tiny_ckpt, tmp_path / "e", opts, recipe=resolved).parent
    meta = read_metadata(out)
    assert meta.recipe == resolved and meta.recipe["name"] == "cpu-fp32"
    assert meta.flavor == "ort" and meta.logits == "all"


@pytest.mark.parametrize("recipe,flags", [
    ("cpu-fp32", {"dtype": "bf16"}),
    ("trt-datacenter-bf16", {"prefill": "chunked"}),
    (GOOD.replace('dtype = "fp16"', 'dtype = "fp16"\nprefill = "chunked"'), {}),  # a recipe file's text
])
def test_bad_recipe_fails_before_any_work(tmp_path, monkeypatch, recipe, flags):
    def no_work(*a, **k):
        raise AssertionError("the checkpoint was loaded")

    monkeypatch.setattr(export_mod, "Weights", no_work)
    if "\n" in recipe:
        recipe = write(tmp_path, recipe)
    with pytest.raises(UserError):
        opts, resolved = resolve_options(recipe, **flags)
        export_mod.export(tmp_path / "ckpt", tmp_path / "out", opts, recipe=resolved)
    assert not (tmp_path / "out").exists()
