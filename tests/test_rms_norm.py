"""rms_norm.py: every flavor writes model.py's RMSNorm as x / sqrt(mean(x²) + eps) · w, the form ONNX Runtime's
session fuses into one SimplifiedLayerNormalization (parity with PyTorch: each flavor's export tests)."""

import onnx
import onnxruntime as ort
import pytest

from conftest import TINY


@pytest.mark.parametrize("flavor", ["portable", "trt"])
def test_norms_are_written_as_onnx_runtime_fuses_them(make_export, flavor, tmp_path):
    from ssd_deploy.runtime.validation_copy import validation_model

    _, out = make_export(TINY, flavor, graph="decode", logits="last")
    proto = onnx.load(str(out / "model.onnx"), load_external_data=False)
    ops = [n.op_type for n in proto.graph.node]
    assert "Reciprocal" not in ops and ops.count("Pow") == TINY.n_layer + 1  # a block's norm each, and the final one
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    with validation_model(out) as path:  # trt: the copy with the plugins' bodies
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    fused = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx"), load_external_data=False).graph.node]
    assert fused.count("SimplifiedLayerNormalization") == TINY.n_layer + 1 and "Pow" not in fused
