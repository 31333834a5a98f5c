"""static_shapes.py: computed Reshape targets become constants where the traced shapes determine them (same results
at every batch size), and a decode export of every flavor is left with no shape arithmetic, still matching the
PyTorch reference."""

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto
from onnx import helper as oh

from conftest import TINY
from ssd_deploy.onnx.static_shapes import constant_target, fold_reshape_targets

SHAPE_OPS = {"Shape", "Size", "Gather", "Concat", "Squeeze", "Unsqueeze"}  # int64 arithmetic on shapes


def sym(*dims):
    return ir.Shape([ir.SymbolicDim(d) if isinstance(d, str) else d for d in dims])


@pytest.mark.parametrize("source,target,expected", [
    (sym("b", 1, 128), sym("b", 8, 16), (0, 8, 16)),  # the batch copied from the input
    (sym("b", 8, 16), sym(1, "b", 128), (1, -1, 128)),  # moved: inferred
    (sym("b", "l", 128), sym("b", "l", 8, 16), (0, 0, 8, 16)),
    (sym("b", "l", 128), sym("l", "b", 128), None),  # two unresolved dims
    (sym("b", 4), sym("b", 0), None),  # a literal 0 would mean "copy"
    (None, sym("b", 4), None),
    (sym("b", 4), None, None),
])
def test_constant_target(source, target, expected):
    assert constant_target(source, target) == expected


def _arithmetic_model() -> ir.Model:
    """x [batch, 1, 12] -> Reshape to [batch, 3, 4] through Shape/Gather/Concat, and back to x's shape through
    Shape(x): the two patterns torch.onnx writes for view() and for the gated norm's restore."""
    nodes = [
        oh.make_node("Shape", ["x"], ["sx"]),
        oh.make_node("Gather", ["sx", "zero"], ["b0"], axis=0),
        oh.make_node("Unsqueeze", ["b0", "zero"], ["b"]),
        oh.make_node("Concat", ["b", "rest"], ["target"], axis=0),
        oh.make_node("Reshape", ["x", "target"], ["y"], allowzero=1),
        oh.make_node("Sigmoid", ["y"], ["z"]),
        oh.make_node("Reshape", ["z", "sx"], ["out"]),
    ]
    graph = oh.make_graph(
        nodes, "g", [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 12])],
        [oh.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 1, 12])],
        [oh.make_tensor("zero", TensorProto.INT64, [], [0]), oh.make_tensor("rest", TensorProto.INT64, [2], [3, 4])],
        value_info=[oh.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3, 4]),
                    oh.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 3, 4])])
    return ir.serde.deserialize_model(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)], ir_version=10))


def _run(model: ir.Model, x: np.ndarray) -> np.ndarray:
    proto = ir.serde.serialize_model(model)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def test_fold_reshape_targets_keeps_results_and_drops_the_arithmetic():
    model = _arithmetic_model()
    rng = np.random.default_rng()
    xs = {b: rng.standard_normal((b, 1, 12)).astype(np.float32) for b in (1, 3)}
    before = {b: _run(model, x) for b, x in xs.items()}
    assert fold_reshape_targets(model) == 2
    assert not SHAPE_OPS & {n.op_type for n in model.graph}
    targets = [n.inputs[1].const_value.numpy().tolist() for n in model.graph if n.op_type == "Reshape"]
    assert targets == [[0, 3, 4], [0, 1, 12]]
    for b, x in xs.items():
        np.testing.assert_array_equal(_run(model, x), before[b])


def test_fold_leaves_undetermined_targets():
    """Without traced output shapes nothing is folded and nothing removed."""
    model = _arithmetic_model()
    for node in model.graph:
        if node.op_type == "Reshape":
            node.outputs[0].shape = None
    assert fold_reshape_targets(model) == 0
    assert "Shape" in {n.op_type for n in model.graph}


@pytest.mark.slow
@pytest.mark.parametrize("flavor", ["ort", "portable", "trt"])
def test_decode_exports_have_no_shape_arithmetic(make_export, flavor, tmp_path):
    """Every Reshape target of a decode export is a constant, no int64 shape node is left (in the file, nor in
    what ONNX Runtime's optimizer makes of it), the batch stays dynamic, and the graph still matches the PyTorch
    reference at batch 1 and 3."""
    from ssd_deploy.runtime.ort_runner import ort_runner
    from ssd_deploy.runtime.validation_copy import validation_model
    from ssd_deploy.validate import validate

    ckpt, out = make_export(TINY, flavor, graph="decode", logits="last")
    proto = onnx.load(str(out / "model.onnx"), load_external_data=False)
    constants = {t.name for t in proto.graph.initializer} | {o for n in proto.graph.node if n.op_type == "Constant"
                                                             for o in n.output}
    assert not {"Shape", "Size"} & {n.op_type for n in proto.graph.node}
    assert all(n.input[1] in constants for n in proto.graph.node if n.op_type == "Reshape")
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    with validation_model(out) as path:
        if flavor == "ort":  # the session's own optimizer brings no shape arithmetic back
            opts = ort.SessionOptions()
            opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
            ort.InferenceSession(str(out / "model.onnx"), opts, providers=["CPUExecutionProvider"])
            optimized = onnx.load(str(tmp_path / "optimized.onnx"), load_external_data=False)
            assert not {"Shape", "Size"} & {n.op_type for n in optimized.graph.node}
        for batch in (1, 3):
            assert validate(out, ckpt, ort_runner(out, model_file=path), steps=3, batch=batch).ok
