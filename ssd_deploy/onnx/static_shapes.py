"""Reshape targets as constants: a decode graph without shape arithmetic.

torch.onnx writes ``view(b, l, h, p)`` with a symbolic batch as shape arithmetic: ``Shape`` of an input, ``Gather``
or ``Squeeze``, ``Concat`` with the constant dims, then the ``Reshape``. On ONNX Runtime's CUDA provider those
int64 nodes run on the CPU; a CUDA graph replays none of them, and any that feeds a device tensor costs a copy that
forbids capture (docs/performance.md, "ONNX Runtime CUDA graphs"). Where the traced shapes say every dim of a
Reshape's output but the symbolic ones, and each symbolic dim is either the input's dim at the same position
(ONNX ``0``: copy it) or the only one left (``-1``: inferred), the target is a constant and the arithmetic feeding
it goes. A one-token graph has one symbolic dim (the batch), so every such Reshape folds.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import common

COPY, INFER = 0, -1  # ONNX Reshape's special target values (allowzero = 0)


def constant_target(source: ir.Shape | None, target: ir.Shape | None) -> tuple[int, ...] | None:
    """The constant Reshape target giving ``target`` from an input of shape ``source``, or None where the traced
    shapes do not determine one."""
    if source is None or target is None:
        return None
    dims, unresolved = [], 0
    for i, d in enumerate(target.dims):
        if isinstance(d, int):
            if d <= 0:  # a literal 0 would read as "copy" (and -1 as "infer"): leave such a Reshape alone
                return None
            dims.append(d)
        elif d.value is not None and i < source.rank() and source.dims[i] == d:
            dims.append(COPY)
        else:
            dims.append(INFER)
            unresolved += 1
    return tuple(dims) if unresolved <= 1 else None


def fold_reshape_targets(model: ir.Model) -> int:
    """Replaces every computed Reshape target of the main graph that the traced shapes determine by a constant
    (one initializer per distinct target), then drops the arithmetic left unused. Returns the Reshapes folded."""
    graph = model.graph
    made: dict[tuple[int, ...], ir.Value] = {}
    folded = 0
    for node in list(graph):
        if node.op_type != "Reshape" or node.domain not in ("", "ai.onnx"):
            continue
        computed = node.inputs[1]
        producer = computed.producer() if computed is not None else None
        if producer is None or producer.op_type == "Constant":
            continue
        target = constant_target(node.inputs[0].shape, node.outputs[0].shape)
        if target is None:
            continue
        if target not in made:
            value = ir.Value(name=f"reshape_target_{len(made)}", shape=ir.Shape([len(target)]),
                             type=ir.TensorType(ir.DataType.INT64),
                             const_value=ir.tensor(np.array(target, np.int64), name=f"reshape_target_{len(made)}"))
            graph.register_initializer(value)
            made[target] = value
        node.replace_input_with(1, made[target])
        node.attributes.pop("allowzero", None)  # the default 0: a 0 in the target copies the input's dim
        folded += 1
    common.RemoveUnusedNodesPass()(model)
    return folded
