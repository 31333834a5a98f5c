"""Memory plans for Jetson targets (plan.py, targets.py): budgets checked against numbers worked out by hand from the
presets' dimensions, proposals, refusals (exit 2), and recipes for a device checked before export and build."""

import dataclasses
import json

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import TINY
from ssd_deploy import plan, recipes
from ssd_deploy.cli import main
from ssd_deploy.errors import UserError
from ssd_deploy.presets import preset
from ssd_deploy.targets import TARGETS, target

GIB, MIB = 2**30, 2**20


def test_targets_hold_the_jetson_facts():
    sm = {t.name: t.sm for t in TARGETS.values()}
    assert sm == {"orin-nano-8gb": 87, "orin-nx-16gb": 87, "agx-orin-32gb": 87, "agx-orin-64gb": 87,
                  "agx-thor-128gb": 110}
    assert {t.memory_gib for t in TARGETS.values()} == {8, 16, 32, 64, 128}
    orin = [t for t in TARGETS.values() if t.sm == 87]
    assert {(t.cuda, t.tensorrt) for t in orin} == {("12.6", "10.3")}
    assert (target("agx-thor-128gb").cuda, target("agx-thor-128gb").tensorrt) == ("13.0", "10.13")
    with pytest.raises(UserError, match="unknown target 'orin'"):
        target("orin")


def test_130m_fp16_on_orin_nano_by_hand():
    # 130m: d_model 768, 24 layers, vocab 50277 padded to 50288, d_state 128, headdim 64, 1 group, chunk 256, tied
    # → d_inner 1536, 24 heads, conv_dim 1536 + 2*128 = 1792, d_in_proj 2*1536 + 2*128 + 24 = 3352
    fp16_per_layer = 3352 * 768 + 768 * 1536 + 768  # in_proj, out_proj, block norm
    fp32_per_layer = 1792 * 4 + 1792 + 24 + 24 + 24 + 1536  # conv weight, conv bias, dt_bias, A_log, D, gated norm
    weights = 24 * (2 * fp16_per_layer + 4 * fp32_per_layer) + 2 * (50288 * 768 + 768)  # + embedding, norm_f
    states = 2 * 1 * 24 * (1792 * 3 + 24 * 64 * 128) * 4
    per_token = (3352 + 1792 + 1536 + 2 * 768) * 2 + 768 * 4
    per_chunk = 24 * (256 * 256 + 64 * 128) * 4
    activations = 2048 * per_token + 8 * per_chunk + 50288 * 2  # 8 chunks of 256; last-position logits
    p = plan.make_plan(preset("130m"), target("orin-nano-8gb"), "fp16", 1, 2048, "last", 1024)
    assert p.budget == plan.Budget(weights, states, activations, 1024 * MIB, 600 * MIB)
    assert p.budget.total == weights + states + activations + 1624 * MIB
    assert p.available == 8 * GIB - int(1.5 * GIB)
    assert p.fits and p.budget.build == 2 * weights + 1624 * MIB


def test_codestral_bf16_on_agx_orin_64gb_by_hand():
    # codestral: d_model 4096, 64 layers, vocab 32768, d_state 128, headdim 64, 8 groups, chunk 256, untied head
    # → d_inner 8192, 128 heads, conv_dim 8192 + 2*8*128 = 10240, d_in_proj 2*8192 + 2*8*128 + 128 = 18560
    bf16_per_layer = 18560 * 4096 + 4096 * 8192 + 4096
    fp32_per_layer = 10240 * 4 + 10240 + 3 * 128 + 8192
    weights = 64 * (2 * bf16_per_layer + 4 * fp32_per_layer) + 2 * (2 * 32768 * 4096 + 4096)
    states = 2 * 2 * 64 * (10240 * 3 + 128 * 64 * 128) * 4
    per_token = (18560 + 10240 + 8192 + 2 * 4096) * 2 + 4096 * 4
    per_chunk = 128 * (256 * 256 + 64 * 128) * 4
    activations = 2 * (8192 * per_token + 32 * per_chunk + 8192 * 32768 * 2)  # all-position logits
    p = plan.make_plan(preset("codestral"), target("agx-orin-64gb"), "bf16", 2, 8192, "all", 2048)
    assert p.budget == plan.Budget(weights, states, activations, 2048 * MIB, 600 * MIB)
    assert p.available == 61 * GIB
    assert p.fits == (p.budget.total <= 61 * GIB and p.budget.build <= 61 * GIB)


def test_130m_int4_on_orin_nano_by_hand():
    # as test_130m_fp16_on_orin_nano_by_hand, with in_proj [3352, 768], out_proj [768, 1536] and the tied head
    # [50288, 768] as K x N int4 values (half a byte each) + ceil(K / 128) x N fp16 scales (torch layout [N, K])
    in_proj = 768 * 3352 // 2 + 6 * 3352 * 2
    out_proj = 1536 * 768 // 2 + 12 * 768 * 2
    fp32_per_layer = 1792 * 4 + 1792 + 24 + 24 + 24 + 1536
    head = 768 * 50288 // 2 + 6 * 50288 * 2  # the quantized copy; the embedding keeps its fp16 table
    weights = 24 * (in_proj + out_proj + 768 * 2 + 4 * fp32_per_layer) + 2 * (50288 * 768 + 768) + head
    p = plan.make_plan(preset("130m"), target("orin-nano-8gb"), "fp16", 1, 2048, "last", 1024, "int4", 128)
    assert p.budget.weights == weights
    fp16 = plan.make_plan(preset("130m"), target("orin-nano-8gb"), "fp16", 1, 2048, "last", 1024)
    assert dataclasses.replace(p.budget, weights=fp16.budget.weights) == fp16.budget  # only the weights change
    assert p.quant == "int4" and p.quant_block == 128 and p.to_dict()["quant"] == "int4"


def test_codestral_int8_block_64_fp32_by_hand():
    # untied head; fp32 activations: scales in fp32
    in_proj = 4096 * 18560 + 64 * 18560 * 4
    out_proj = 8192 * 4096 + 128 * 4096 * 4
    fp32_per_layer = 10240 * 4 + 10240 + 3 * 128 + 8192
    head = 4096 * 32768 + 64 * 32768 * 4
    weights = 64 * (in_proj + out_proj + 4096 * 4 + 4 * fp32_per_layer) + 4 * (32768 * 4096 + 4096) + head
    assert plan.weights_bytes(preset("codestral"), "fp32", "int8", 64) == weights


def test_2_7b_fits_an_orin_nano_with_int4_weights_only():
    cfg, nano = preset("2.7b"), target("orin-nano-8gb")
    fp16 = plan.make_plan(cfg, nano, "fp16", 1, 2048)
    assert not fp16.fits and fp16.quantizations == ("int4",)
    assert "weight-only quantizations that fit at fp16: int4" in plan.refusal(fp16, "2.7b")
    int8 = plan.make_plan(cfg, nano, "fp16", 1, 2048, quant="int8")
    assert not int8.fits and int8.budget.build > int8.available > int8.budget.total
    int4 = plan.make_plan(cfg, nano, "fp16", 1, 2048, quant="int4")
    assert int4.fits and int4.precisions == ("fp32", "fp16")  # bf16 takes no quantization
    assert int4.budget.weights < fp16.budget.weights / 3


@pytest.mark.parametrize("args,message", [
    (dict(dtype="bf16", quant="int4"), "fp32 or fp16 activations"),
    (dict(dtype="fp16", quant="int2"), "unknown quantization 'int2'"),
    (dict(dtype="fp16", quant="int8", quant_block=48), "quant block 48 not supported"),
])
def test_plan_refuses_quantizations_the_export_refuses(args, message):
    with pytest.raises(UserError, match=message):
        plan.make_plan(preset("130m"), target("agx-thor-128gb"), batch=1, prefill=128, **args)


@pytest.mark.slow
@pytest.mark.parametrize("cfg,quant,block", [(TINY, "int4", 128), (dataclasses.replace(TINY, tie_embeddings=False),
                                                                      "int8", 32)])
def test_quantized_weights_are_what_the_dq_export_stores(make_export, cfg, quant, block):
    """The plan's quantized weight bytes against an export's: the dq export's initializers (int4 counted at half a
    byte, as TensorRT holds them) less the float export's equal the plan's difference. The tiny model's K = 192 is
    not a multiple of 128: ceil(K / block) scales per column."""
    import onnx

    bits = {onnx.TensorProto.INT4: 4, onnx.TensorProto.INT8: 8, onnx.TensorProto.FLOAT16: 16,
            onnx.TensorProto.FLOAT: 32, onnx.TensorProto.INT64: 64, onnx.TensorProto.BOOL: 8}

    def stored(export_dir):
        model = onnx.load(str(export_dir / "model.onnx"), load_external_data=False)
        return sum(-(-int(np.prod(t.dims)) * bits[t.data_type] // 8) for t in model.graph.initializer)

    _, floats = make_export(cfg, dtype="fp16")
    _, quantized = make_export(cfg, dtype="fp16", quant=quant, quant_block=block, quant_format="dq")
    assert stored(quantized) - stored(floats) == \
        plan.weights_bytes(cfg, "fp16", quant, block) - plan.weights_bytes(cfg, "fp16")


def test_2_7b_does_not_fit_an_orin_nano_at_any_float_precision():
    # 2.7b fp16 weights alone: ~5.0 GiB; building needs twice that on a module with 6.5 GiB left by the OS
    p = plan.make_plan(preset("2.7b"), target("orin-nano-8gb"), "fp16", 1, 2048)
    assert not p.fits and p.precisions == () and p.decode_batch == 0
    assert p.budget.build > p.available > p.budget.weights
    assert "does not fit on orin-nano-8gb" in plan.refusal(p, "2.7b")


def test_proposals_are_the_largest_that_fit():
    cfg, tgt = preset("130m"), target("orin-nano-8gb")
    p = plan.make_plan(cfg, tgt, "fp16", 1, 2048)
    assert p.precisions == ("fp32", "fp16", "bf16")
    for batch, prefill in p.profiles:
        assert plan.fits(plan.budget(cfg, tgt, "fp16", batch, prefill), tgt)
        if prefill < plan.PREFILLS[-1]:
            assert not plan.fits(plan.budget(cfg, tgt, "fp16", batch, 2 * prefill), tgt)
    assert plan.fits(plan.budget(cfg, tgt, "fp16", p.decode_batch, 1), tgt)


def write_config(tmp_path, name):
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps(preset(name).to_hf()))
    return d


def test_cli_plan_prints_json_and_refuses_with_exit_2(tmp_path):
    ckpt = write_config(tmp_path, "130m")
    r = CliRunner().invoke(main, ["plan", str(ckpt), "--target", "orin-nano-8gb", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["fits"] and d["budget"]["total"] == sum(d["budget"][k] for k in
                                                      ("weights", "states", "activations", "workspace", "overhead"))
    big = write_config(tmp_path, "2.7b")
    r = CliRunner().invoke(main, ["plan", str(big), "--target", "orin-nano-8gb"])
    assert r.exit_code == 2 and "DOES NOT FIT" in r.output and "error: " in r.output
    assert "Traceback" not in r.output
    r = CliRunner().invoke(main, ["plan", str(big), "--target", "agx-orin-32gb", "--dtype", "fp16"])
    assert r.exit_code == 0, r.output


def test_cli_plan_quant_from_the_flag_or_the_recipe(tmp_path):
    big = write_config(tmp_path, "2.7b")
    r = CliRunner().invoke(main, ["plan", str(big), "--target", "orin-nano-8gb", "--quant", "int4", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["fits"] and d["quant"] == "int4" and d["quant_block"] == 128
    assert d["budget"]["weights"] == plan.weights_bytes(preset("2.7b"), "fp16", "int4", 128)
    r = CliRunner().invoke(main, ["plan", str(big), "--target", "orin-nano-8gb", "--quant", "int4"])
    assert r.exit_code == 0 and "fp16 with int4 weights (block 128)" in r.output, r.output
    text = (recipes.RECIPES_DIR / "trt-jetson-orin-nano-fp16.toml").read_text()
    (tmp_path / "int4.toml").write_text(text.replace('external_data = "always"', 'external_data = "always"\n'
                                                     'quant = "int4"\nquant_block = 64'))
    r = CliRunner().invoke(main, ["plan", str(big), "--target", "orin-nano-8gb", "--recipe",
                                  str(tmp_path / "int4.toml"), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert (d["quant"], d["quant_block"]) == ("int4", 64)
    assert d["budget"]["weights"] == plan.weights_bytes(preset("2.7b"), "fp16", "int4", 64)
    # the recipe's quantization is what export and build check the device with
    plan.require(preset("2.7b"), recipes.load(tmp_path / "int4.toml").to_dict(), "2.7b")
    with pytest.raises(UserError, match="does not fit on orin-nano-8gb"):
        plan.require(preset("2.7b"), recipes.load("trt-jetson-orin-nano-fp16").to_dict(), "2.7b")


@pytest.mark.parametrize("args,message", [
    (["--target", "tx2"], "unknown target 'tx2'"),
    (["--target", "orin-nano-8gb", "--batch", "0"], "must be positive"),
    (["--target", "orin-nano-8gb", "--os-share", "9"], "--os-share"),
    (["--target", "orin-nx-16gb", "--recipe", "trt-jetson-orin-nano-fp16"], "is for orin-nano-8gb"),
])
def test_cli_plan_bad_input(tmp_path, args, message):
    r = CliRunner().invoke(main, ["plan", str(write_config(tmp_path, "130m")), *args])
    assert r.exit_code == 2 and message in r.output, r.output


JETSON_RECIPES = ["trt-jetson-orin-nano-fp16", "trt-jetson-orin-nx-fp16", "trt-jetson-agx-orin-32gb-fp16",
                  "trt-jetson-agx-orin-64gb-fp16", "trt-jetson-thor-bf16"]


@pytest.mark.parametrize("name", JETSON_RECIPES)
def test_each_target_has_a_recipe_that_fits_130m(name):
    r = recipes.load(name)
    assert r.device in TARGETS and r.to_dict()["device"] == r.device
    plan.require(preset("130m"), r.to_dict(), "130m")
    with pytest.raises(UserError, match="does not fit"):  # a 7B model does not fit an 8 GB module
        plan.require(preset("codestral"), recipes.load("trt-jetson-orin-nano-fp16").to_dict(), "codestral")
    assert {t.name for t in TARGETS.values()} == {recipes.load(n).device for n in JETSON_RECIPES}


def test_recipe_device_is_checked(tmp_path):
    text = (recipes.RECIPES_DIR / "trt-jetson-orin-nano-fp16.toml").read_text()
    for bad, message in ((text.replace('"orin-nano-8gb"', '"orin-mega"'), "unknown device 'orin-mega'"),
                         (text.replace('device = "orin-nano-8gb"', "device = 8"), "device must be a string")):
        path = tmp_path / "r.toml"
        path.write_text(bad)
        with pytest.raises(UserError, match=message):
            recipes.load(path)


HUGE = """target = "tensorrt"
device = "orin-nano-8gb"
[export]
flavor = "portable"
dtype = "fp16"
[shapes]
batch = [1, 4096]
prefill = [1, 1048576]
[tensorrt.profiles.decode]
batch = [1, 1, 4096]
seq = [1, 1, 1]
[tensorrt.profiles.prefill]
batch = [1, 1, 4096]
seq = [1, 512, 1048576]
"""


@pytest.mark.slow
def test_export_and_build_refuse_a_device_the_model_does_not_fit_before_any_work(tmp_path, tiny_ckpt, monkeypatch):
    from ssd_deploy.onnx import export as export_mod
    from ssd_deploy.onnx.export import ExportOptions, export, resolve_options

    (tmp_path / "huge.toml").write_text(HUGE)
    opts, resolved = resolve_options(tmp_path / "huge.toml")
    monkeypatch.setattr(export_mod, "trace", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(UserError, match="recipe huge: .* does not fit on orin-nano-8gb"):
        export(tiny_ckpt, tmp_path / "out", opts, resolved)
    assert not (tmp_path / "out").exists()
    monkeypatch.undo()
    made = export(tiny_ckpt, tmp_path / "plain", ExportOptions(dtype="fp16")).parent
    from ssd_deploy.tensorrt.build import BuildOptions, build

    class NoApi:  # the plan refuses before TensorRT is asked anything
        def __getattr__(self, name):
            pytest.fail(f"TensorRT was used ({name})")

    with pytest.raises(UserError, match="does not fit on orin-nano-8gb"):
        build(made, BuildOptions(recipe=resolved), api=NoApi())
