"""`trt` export: the shipped graph holds exactly the plugin nodes of the node spec (plugins/<Plugin>/README.md) and
no bodies; its validation copy (the same graph with each plugin's standard-op body as a model-local function) runs
in ONNX Runtime and matches the PyTorch reference; the copy never outlives validation."""

import dataclasses

import onnx
import onnx_ir
import pytest

from conftest import assert_parity_every_length, TINY, VARIANTS
from ssd_deploy.errors import UserError
from ssd_deploy.onnx import trt
from ssd_deploy.interface import DTYPES, read_metadata
from ssd_deploy.runtime.validation_copy import validation_model
from ssd_deploy.runtime.ort_runner import ort_runner, ort_session
from ssd_deploy.validate import validate

SPEC = {  # op_type → (inputs, outputs, {attribute: ONNX type}), as plugins/<Plugin>/README.md states them
    "SsdChunkScan": (8, 2, {"chunk_size": "INT", "dt_softplus": "INT", "dt_min": "FLOAT", "dt_max": "FLOAT"}),
    "SsdStateUpdate": (8, 2, {"dt_softplus": "INT", "dt_min": "FLOAT", "dt_max": "FLOAT"}),
    "CausalConv1d": (4, 2, {"silu": "INT"}),
    "GatedRmsNorm": (3, 1, {"eps": "FLOAT", "group_size": "INT"}),
}
FLOAT32_INPUTS = {  # parameters and states are float32 whatever the activation dtype
    "SsdChunkScan": (2, 5, 6, 7), "SsdStateUpdate": (0, 3, 6, 7), "CausalConv1d": (1, 2, 3), "GatedRmsNorm": (2,)}
# ops whose presence outside a plugin would mean a standard-op scan, conv or gate was left in the shipped graph
LOWERED = {"Exp", "Softplus", "Conv", "Sigmoid", "CumSum", "Where"}


@pytest.fixture(scope="module")
def exports(make_export):
    return lambda variant, dtype="fp32", cfg=None, **opts: make_export(cfg or VARIANTS[variant], "trt", dtype,
                                                                       **opts)


def plugin_nodes(proto: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in proto.graph.node if n.domain == trt.DOMAIN]


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_shipped_graph_is_plugin_nodes_only(exports, dtype):
    _, out = exports("g4", dtype)
    proto = onnx.load(str(out / "model.onnx"))
    assert not proto.functions  # a local function named like a plugin would replace it in TensorRT's parser
    assert {(o.domain, o.version) for o in proto.opset_import} >= {(trt.DOMAIN, 1)}
    nodes = plugin_nodes(proto)
    assert sorted({n.op_type for n in nodes}) == ["CausalConv1d", "GatedRmsNorm", "SsdChunkScan"]
    for op_type in ("CausalConv1d", "GatedRmsNorm", "SsdChunkScan"):
        assert sum(n.op_type == op_type for n in nodes) == TINY.n_layer
    assert not LOWERED & {n.op_type for n in proto.graph.node if n.domain == ""}
    ir = onnx_ir.load(out / "model.onnx")
    act = onnx_ir.DataType.FLOAT if dtype == "fp32" else onnx_ir.DataType.BFLOAT16
    for node in ir.graph:
        if node.domain != trt.DOMAIN:
            continue
        n_in, n_out, attrs = SPEC[node.op_type]
        assert len(node.inputs) == n_in and all(v is not None for v in node.inputs), node.op_type
        assert len(node.outputs) == n_out
        assert {k: a.type.name for k, a in node.attributes.items()} == attrs
        for i, v in enumerate(node.inputs):
            assert v.dtype == (onnx_ir.DataType.FLOAT if i in FLOAT32_INPUTS[node.op_type] else act), \
                (node.op_type, i, v.dtype)
    scan = next(n for n in ir.graph if n.op_type == "SsdChunkScan")
    assert scan.attributes["chunk_size"].value == VARIANTS["g4"].chunk_size
    assert scan.attributes["dt_softplus"].value == 1
    assert scan.outputs[1].dtype == onnx_ir.DataType.FLOAT
    onnx.checker.check_model(str(out / "model.onnx"), full_check=True)


def test_unvalidated_graph_does_not_run_in_onnxruntime(exports):
    """Without bodies ONNX Runtime has no kernel for the plugin nodes: the validation copy is what makes it run."""
    _, out = exports("g4")
    with pytest.raises(UserError, match="trt.plugins"):
        ort_session(out)


def test_decode_graph_uses_state_update_plugin(exports):
    ckpt, out = exports("hdimD-limit", graph="decode")
    proto = onnx.load(str(out / "model.onnx"))
    types = {n.op_type for n in plugin_nodes(proto)}
    assert "SsdStateUpdate" in types and "SsdChunkScan" not in types
    upd = next(n for n in proto.graph.node if n.op_type == "SsdStateUpdate")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in upd.attribute}
    cfg = VARIANTS["hdimD-limit"]
    assert attrs["dt_min"] == pytest.approx(cfg.dt_min) and attrs["dt_max"] == pytest.approx(cfg.dt_max)
    with validation_model(out) as path:
        assert validate(out, ckpt, ort_runner(out, model_file=path), steps=3).ok


def test_conv_without_bias_gets_zero_bias_input(exports):
    cfg = dataclasses.replace(TINY, conv_bias=False)
    ckpt, out = exports("nobias", cfg=cfg)
    ir = onnx_ir.load(out / "model.onnx")
    conv = next(n for n in ir.graph if n.op_type == "CausalConv1d")
    assert conv.inputs[2] is not None and conv.inputs[2].shape.dims == (cfg.conv_dim,)
    with validation_model(out) as path:
        assert validate(out, ckpt, ort_runner(out, model_file=path), steps=2).ok


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_validation_copy_parity_fp32_every_length(exports, variant):
    ckpt, out = exports(variant)
    with validation_model(out) as path:
        assert_parity_every_length(ckpt, out, model_file=path)


@pytest.mark.parametrize("variant,dtype", [(v, "fp32") for v in VARIANTS] + [("g4", "fp16")])
def test_validate_prefill_then_decode(exports, variant, dtype):
    ckpt, out = exports(variant, dtype)
    with validation_model(out) as path:
        proto = onnx.load(str(path))
        assert {f.name for f in proto.functions} == {"SsdChunkScan", "CausalConv1d", "GatedRmsNorm"}
        assert all(f.domain == trt.DOMAIN for f in proto.functions)
        # the graph ONNX Runtime runs is the shipped one, node for node
        shipped = onnx.load(str(out / "model.onnx"))
        assert [(n.op_type, list(n.input)) for n in proto.graph.node] == \
            [(n.op_type, list(n.input)) for n in shipped.graph.node]
        report = validate(out, ckpt, ort_runner(out, model_file=path), steps=4, batch=2)
    assert report.ok, report.to_dict()
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx"]  # the copy is gone


def test_validation_copy_shares_external_weights_and_never_writes_into_the_export(exports, tmp_path):
    """The copy lives in a temporary directory of its own and reads the export's data file where it is: a read-only
    export validates, and nothing is left in it or in the temporary directory."""
    import shutil
    import stat

    ckpt, out = exports("g1", external_data="always")
    ro = tmp_path / "read-only"
    shutil.copytree(out, ro)
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        with validation_model(ro) as path:
            copy_dir = path.parent
            assert copy_dir != ro and path.stat().st_size < (ro / "model.onnx.data").stat().st_size
            assert sorted(p.name for p in copy_dir.iterdir()) == ["model.onnx"]  # the weights are not copied
            assert validate(ro, ckpt, ort_runner(ro, model_file=path), steps=1).ok
        assert not copy_dir.exists()
        assert sorted(p.name for p in ro.iterdir()) == ["model.onnx", "model.onnx.data"]
    finally:
        ro.chmod(stat.S_IRWXU)


def test_bodies_refuse_nodes_with_different_attributes(exports):
    _, out = exports("g4")
    ir = onnx_ir.load(out / "model.onnx")
    meta = read_metadata(out)
    norms = [n for n in ir.graph if n.op_type == "GatedRmsNorm"]
    norms[1].attributes["eps"] = onnx_ir.AttrFloat32("eps", 1e-3)
    with pytest.raises(UserError, match="different attributes"):
        trt.bodies(ir, meta.config, DTYPES[meta.dtype].torch)


def test_non_trt_exports_validate_as_they_are(tiny_export):
    with validation_model(tiny_export) as path:
        assert path == tiny_export / "model.onnx"
