"""RMSNorm in the form ONNX Runtime fuses, for every flavor.

model.py's RMSNorm traces as x · Reciprocal(Sqrt(mean(x²) + eps)) · w. ONNX Runtime's session fuses an RMSNorm into
one ``SimplifiedLayerNormalization`` kernel, and a residual sum before it into ``SkipSimplifiedLayerNormalization``,
only when it is written x / Sqrt(mean(x²) + eps) · w (its SimplifiedLayerNormFusion matches Div, not Reciprocal and
Mul). Unfused, a block's residual add and norm are eight kernels; in a decode step replayed from a CUDA graph each
kernel costs its launch latency, and the glue dominates (docs/performance.md, "ONNX Runtime CUDA graphs"). The Div
form is the same math in standard ops, so every flavor's graph is written that way (tracing.to_onnx); the `ort`
flavor goes further and writes the residual sum and norm as the contrib op itself (ort.py).
"""

from __future__ import annotations

import numpy as np
import onnx_ir
from onnxscript.rewriter import pattern


def traced(op, x, weight, eps, two, axes):
    """model.py's RMSNorm as traced in fp32: x · 1/sqrt(mean(x², -1) + eps) · weight."""
    ms = op.ReduceMean(op.Pow(x, two), axes, keepdims=1)
    return op.Mul(op.Mul(x, op.Reciprocal(op.Sqrt(op.Add(ms, eps)))), weight)


def div_form(op, x, weight, eps, two, axes):
    ms = op.ReduceMean(op.Pow(x, two), axes, keepdims=1)
    return op.Mul(op.Div(x, op.Sqrt(op.Add(ms, eps))), weight)


def const(value) -> np.ndarray | None:
    """The value of a constant as traced (before constant folding): an initializer, a Constant, or a Reshape of
    those (how the exporter writes reduction axes)."""
    tensor = onnx_ir.convenience.get_const_tensor(value)
    if tensor is not None:
        return tensor.numpy()
    node = value.producer()
    if node is not None and node.op_type == "Reshape":
        data, shape = (const(v) for v in node.inputs[:2])
        if data is not None and shape is not None:
            return data.reshape(shape)
    return None


def fp32(context, weight, eps, two, axes, **values) -> bool:
    """fp32 throughout, x², the mean over the last axis, a scalar eps, one weight per channel (3-D activations, the
    same shape on both sides of a residual sum)."""
    tensors = list(values.values())
    shapes = {None if v.shape is None else tuple(v.shape) for v in tensors}
    consts = [const(v) for v in (eps, two, axes)]
    return (all(v.dtype == onnx_ir.DataType.FLOAT for v in (*tensors, weight)) and len(shapes) == 1
            and None not in shapes and len(next(iter(shapes))) == 3 and weight.shape is not None
            and len(weight.shape) == 1 and all(c is not None and c.size == 1 for c in consts)
            and float(consts[1].item()) == 2.0 and int(consts[2].item()) in (-1, 2))


DIV_FORM = pattern.RewriteRule(traced, div_form, fp32)
