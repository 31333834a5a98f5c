"""Weight-only quantization (ssd_deploy/quantize.py, docs/quantization.md) of the shipped trained tiny model: the
quantized exports validate within their tolerances, only the large linear layers change (every other initializer
bit-identical to the fp32 export), MatMulNBits for exactly those layers, the TensorRT format (block-wise
DequantizeLinear) rounds each weight to its grid and builds, and held-out perplexity stays close to fp32's."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper
from tokenizers import Tokenizer

from ssd_deploy import corpus, recipes
from ssd_deploy.cli import main
from ssd_deploy.config import load_config
from ssd_deploy.errors import UserError
from ssd_deploy.interface import read_metadata
from ssd_deploy.onnx.export import ExportOptions, export
from ssd_deploy.perplexity import score
from ssd_deploy.quantize import linear_weights
from ssd_deploy.runtime.ort_runner import ort_runner
from ssd_deploy.validate import QUANT_TOLERANCE, TOLERANCE, validate

CKPT = corpus.TRAINED_MODEL
CFG = load_config(CKPT)[0]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name → export directory of the trained model (ort flavor, every position's logits), made once."""
    cache = {}

    def get(name, **opts):
        if name not in cache:
            opts = {"flavor": "ort", "logits": "all", **opts}
            cache[name] = export(CKPT, tmp_path_factory.mktemp("quant") / name, ExportOptions(**opts)).parent
        return cache[name]

    return get


def _has_builder() -> bool:
    from ssd_deploy.tensorrt import api

    try:
        api.load()
    except UserError:
        return False
    return True


def _graph(export_dir):
    return onnx.load(str(export_dir / "model.onnx"))


def _linear_initializers(proto) -> set[str]:
    nodes = {n.name: n for n in proto.graph.node}
    return {nodes[name].input[1] for name in linear_weights(proto, CFG)}


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_quantized_export_validates_within_its_tolerance(exported, scheme):
    d = exported(scheme, quant=scheme, quant_block=128)
    report = validate(d, CKPT, ort_runner(d), steps=3, seed=0)
    assert report.ok, report.to_dict()
    assert report.quantization == scheme and all(e.tol == QUANT_TOLERANCE[scheme] for e in report.errors)
    # the weights really changed: the error is far above the float export's
    assert max(e.rel for e in report.errors if e.output == "logits") > 10 * TOLERANCE["fp32"]
    meta = read_metadata(d)
    assert (meta.quant, meta.quant_block, meta.quant_format) == (scheme, 128, "matmulnbits")


def test_only_the_linear_layers_change(exported):
    fp32, q = _graph(exported("fp32")), _graph(exported("int4", quant="int4", quant_block=128))
    linear = _linear_initializers(fp32)
    # the tied head read the embedding through a Transpose: untying gave it its own initializer
    assert len(linear) == 2 * CFG.n_layer + 1 and sum(n.endswith(".lm_head_T") for n in linear) == 1
    quantized = {t.name: t for t in q.graph.initializer}
    kept = [t for t in fp32.graph.initializer if t.name not in linear]
    names = {t.name for t in kept}
    # A_log (as -exp), D, dt_bias, conv, norms, the embedding: all there, bit for bit
    assert any("dt_bias" in n for n in names) and any("norm" in n for n in names)
    for t in kept:
        assert t.name in quantized, t.name
        assert numpy_helper.to_array(quantized[t.name]).tobytes() == numpy_helper.to_array(t).tobytes(), t.name
    assert not linear & set(quantized)  # the float copies of the quantized layers are gone


def test_matmulnbits_for_the_linear_layers_only(exported):
    q = _graph(exported("int4", quant="int4", quant_block=128))
    nbits = [n for n in q.graph.node if n.op_type == "MatMulNBits"]
    shapes = sorted((a["K"], a["N"]) for a in ({x.name: onnx.helper.get_attribute_value(x) for x in n.attribute}
                                                 for n in nbits))
    want = sorted([(CFG.d_model, CFG.d_in_proj)] * CFG.n_layer + [(CFG.d_inner, CFG.d_model)] * CFG.n_layer
                  + [(CFG.d_model, CFG.padded_vocab_size)])
    assert shapes == want
    assert {onnx.helper.get_attribute_value(a) for n in nbits for a in n.attribute if a.name == "bits"} == {4}
    assert not any(n.op_type == "Transpose" and "lm_head" in n.input[0] for n in q.graph.node)


def test_dq_format_rounds_each_weight_to_its_block_grid(exported):
    """The TensorRT form: block-wise DequantizeLinear (opset 21, int4, positive scales) of every linear weight,
    each dequantized weight within half a step of the float one; the graph validates."""
    fp32 = {t.name: numpy_helper.to_array(t) for t in _graph(exported("fp32")).graph.initializer}
    d = exported("int4-dq", quant="int4", quant_block=64, quant_format="dq")
    g = _graph(d)
    inits = {t.name: t for t in g.graph.initializer}
    dqs = [n for n in g.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dqs) == 2 * CFG.n_layer + 1 and not any(n.op_type == "MatMulNBits" for n in g.graph.node)
    assert {i.version for i in g.opset_import if i.domain in ("", "ai.onnx")} == {21}
    for n in dqs:
        q, scales = inits[n.input[0]], numpy_helper.to_array(inits[n.input[1]])
        assert q.data_type == onnx.TensorProto.INT4 and (scales > 0).all()
        assert {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} == {"axis": 0, "block_size": 64}
        source = n.input[0].removesuffix(".q4")
        w = fp32[source] if source in fp32 else fp32[source.removesuffix(".lm_head_T")].T  # the tied head
        deq = numpy_helper.to_array(q).astype(np.float32) * np.repeat(scales, 64, axis=0)[:w.shape[0]]
        assert (np.abs(deq - w) <= np.repeat(scales, 64, axis=0)[:w.shape[0]] / 2 + 1e-7).all(), source
    report = validate(d, CKPT, ort_runner(d), steps=2, seed=0)
    assert report.ok, report.to_dict()


@pytest.mark.skipif(not _has_builder(), reason="no TensorRT builder (TensorRT or TensorRT-RTX) importable")
def test_tensorrt_builds_the_dq_graph(exported, tmp_path):
    """TensorRT's parser takes the weight-only int8 DequantizeLinear pattern (TensorRT-RTX builds ahead of time on
    the CPU: parse and build, not run)."""
    from ssd_deploy.tensorrt.build import BuildOptions, build

    d = exported("int8-dq-portable", flavor="portable", logits="last", quant="int8", quant_block=128,
                 quant_format="dq")
    result = build(d, BuildOptions(profile="decode", batch_range="1,1,2", output=tmp_path / "model.engine"))
    assert result.engine.is_file() and result.engine.stat().st_size > 0


def test_held_out_perplexity_close_to_fp32(exported):
    tok = Tokenizer.from_file(str(CKPT / "tokenizer.json"))
    windows = corpus.windows(corpus.token_stream(tok, "held-out"), 128, 8)
    fp32 = score(exported("fp32"), windows)
    int8 = score(exported("int8", quant="int8", quant_block=128), windows)
    assert fp32.perplexity < 30  # the model has learned something (a uniform guess: 1024)
    assert abs(int8.perplexity / fp32.perplexity - 1) < 0.02
    assert int8.agreement(fp32) > 0.9


def test_recipe_and_flag_refusals(tmp_path):
    r = recipes.load("cpu-fp32").with_overrides(quant="int4", quant_block=64)
    assert r.export["quant"] == "int4" and r.to_dict()["overrides"] == ["quant", "quant_block"]
    with pytest.raises(UserError, match="quant_format"):
        recipes.load("trt-portable-fp16").with_overrides(quant="int8")
    assert recipes.load("trt-portable-fp16").with_overrides(quant="int8", quant_format="dq").export["quant"]
    with pytest.raises(UserError, match="block"):
        ExportOptions(quant="int4", quant_block=48).check()
    with pytest.raises(UserError, match="bf16"):
        ExportOptions(quant="int4", dtype="bf16").check()
    res = CliRunner().invoke(main, ["export", str(CKPT), "-o", str(tmp_path / "o"), "--quant-block", "48"])
    assert res.exit_code == 2 and "48" in res.output and not (tmp_path / "o").exists()


def test_cli_export_records_the_quantization(tmp_path):
    out = tmp_path / "q"
    res = CliRunner().invoke(main, ["export", str(CKPT), "-o", str(out), "--quant", "int8", "--quant-block", "32"])
    assert res.exit_code == 0, res.output
    info = json.loads(CliRunner().invoke(main, ["inspect", str(out), "--json"]).output)
    m = info["metadata"]
    assert (m["quant"], m["quant_block"], m["quant_format"]) == ("int8", 32, "matmulnbits")
    assert m["quantization"]["layers"] == ["in_proj", "lm_head", "out_proj"]
