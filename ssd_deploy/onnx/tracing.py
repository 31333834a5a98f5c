"""One call of torch.onnx's dynamo exporter, made the same way for the whole model and for single ops (the `trt`
validation bodies, tests): the ssd_deploy ops lowered through a flavor's translation table, the flavor's ``finalize``
(if any) for what tracing cannot express, then ``tidy``; batch and sequence dynamic."""

from __future__ import annotations

import itertools
import logging
import warnings
from typing import Callable

import onnx_ir
import onnxscript.optimizer
import torch
from onnx_ir.passes import common
from torch import nn

from ..config import Mamba2Config
from ..ssd import ops  # noqa: F401  (registers torch.ops.ssd_deploy)
from . import rms_norm
from .portable import OPSET, Dims

MAX_BATCH = 4096
MAX_SEQ = 1 << 20


def batch_dim():
    return torch.export.Dim("batch", min=1, max=MAX_BATCH)


def seq_dim():
    return torch.export.Dim("seq", min=1, max=MAX_SEQ)


def translation_table(flavor, cfg: Mamba2Config, options: dict) -> dict:
    """torch.onnx's custom translation table: each ssd_deploy op → the flavor's lowering of it (``options``: the
    flavor's own, passed to its ``lowerings``)."""
    namespace = torch.ops.ssd_deploy
    return {getattr(namespace, name).default: fn for name, fn in flavor.lowerings(Dims.of(cfg), **options).items()}


def tidy(model: onnx_ir.Model):
    """Unique value names in subgraphs, constant folding, dead nodes removed, identical constants (the per-layer
    triangular masks) stored once, types and shapes inferred.

    Instead of the exporter's full optimizer: its pattern-rewrite rules took three quarters of a 130m export (42 s of
    a 45 s export on 2 cores) and changed neither the graph's ONNX Runtime speed nor its size; these passes take
    under a second (measured 2026-11-28).
    """
    _name_branch_values(model)
    onnxscript.optimizer.fold_constants(model)
    # constants inside If branches are lifted to the main graph too: deduplication works per graph
    for p in (common.RemoveUnusedNodesPass(), common.LiftConstantsToInitializersPass(),
              common.LiftSubgraphInitializersToMainGraphPass(), common.DeduplicateInitializersPass(size_limit=1 << 17),
              common.CommonSubexpressionEliminationPass(), common.RemoveUnusedNodesPass(), common.ShapeInferencePass()):
        p(model)


def _name_branch_values(model: onnx_ir.Model):
    """Gives the values computed inside subgraphs (the portable scan's If branches) names unique in the model.

    The exporter numbers values per graph (val_0, val_1, ...), so a branch would repeat names of the main graph and
    of other branches, and ONNX shape inference, which propagates shapes by name, mixes them up. The names are short
    (b0, b1, ...): every layer holds two branches, and names prefixed with their If node's grew a tiny model's graph
    by half.
    """
    graph = model.graph
    taken = {v.name for v in graph.inputs} | set(graph.initializers) | {v.name for n in graph for v in n.outputs}
    fresh = (name for name in (f"b{i}" for i in itertools.count()) if name not in taken)
    for node in onnx_ir.traversal.RecursiveGraphIterator(graph):
        if node.graph is not graph:
            for value in node.outputs:
                value.name = next(fresh)


def to_onnx(module: nn.Module, args: tuple, input_names: list[str], output_names: list[str], dynamic_shapes: dict,
            flavor, cfg: Mamba2Config, opset: int, options: dict | None = None,
            bind: Callable[[onnx_ir.Model], None] | None = None) -> onnx_ir.Model:
    """``bind``: gives the initializers of a module traced with meta parameters their values (onnx/weights.py),
    before anything folds them."""
    # the exporter warns about every torchvision op it cannot register; none of them is ours
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(module, args, dynamo=True, verbose=False, report=False, input_names=input_names,
                                 output_names=output_names, dynamic_shapes=dynamic_shapes,
                                 custom_translation_table=translation_table(flavor, cfg, options or {}),
                                 opset_version=opset, optimize=False)
    model = prog.model
    if bind is not None:
        bind(model)
    if hasattr(flavor, "finalize"):  # first: tidy's shape inference starts from the shapes it fixes
        model = flavor.finalize(model, cfg)
    rms_norm.DIV_FORM.apply_to_model(model)  # RMSNorms as ONNX Runtime fuses them (rms_norm.py)
    tidy(model)
    return model


class _OneOp(nn.Module):
    def __init__(self, fn, attrs: dict):
        super().__init__()
        self.fn, self.attrs = fn, attrs

    def forward(self, *inputs):
        return self.fn(*inputs, **self.attrs)


def sample_inputs(op_name: str, cfg: Mamba2Config, dtype: torch.dtype, batch: int = 2, seq: int = 5):
    """Random inputs of one ssd_deploy op in its argument order (activations ``dtype``; parameters and states
    float32), and for each which axes are batch ("b") and sequence ("l"); the packed ops' offsets are "B" (b+1)."""
    b, l = batch, seq
    h, p, g, n, d = cfg.nheads, cfg.headdim, cfg.ngroups, cfg.d_state, cfg.conv_dim
    act = lambda *s: torch.randn(*s).to(dtype)  # noqa: E731
    f32 = lambda *s: torch.randn(*s)  # noqa: E731
    A = -torch.rand(h) * 2 - 0.1  # negative, as A = -exp(A_log)
    D = f32(h, p) if cfg.D_has_hdim else f32(h)
    if op_name == "ssd_scan":
        return [act(b, l, h, p), act(b, l, h), A, act(b, l, g, n), act(b, l, g, n), D, f32(h), f32(b, h, p, n)], \
            ["bl", "bl", "", "bl", "bl", "", "", "b"]
    if op_name == "ssd_step":
        return [f32(b, h, p, n), act(b, h, p), act(b, h), A, act(b, g, n), act(b, g, n), D, f32(h)], \
            ["b", "b", "b", "", "b", "b", "", ""]
    if op_name == "causal_conv1d":
        return [act(b, l, d), f32(d, cfg.d_conv), f32(d), f32(b, d, cfg.d_conv - 1)], ["bl", "", "", "b"]
    # packed: b sequences on l tokens ("." a static axis, "B" the b+1 offsets), int32 offsets as the trt plugins
    # take them
    cu = torch.tensor([0, *range(l - b + 1, l + 1)], dtype=torch.int32)
    if op_name == "ssd_scan_packed":
        return [act(1, l, h, p), act(1, l, h), A, act(1, l, g, n), act(1, l, g, n), D, f32(h), f32(b, h, p, n), cu], \
            [".l", ".l", "", ".l", ".l", "", "", "b", "B"]
    if op_name == "causal_conv1d_packed":
        return [act(1, l, d), f32(d, cfg.d_conv), f32(d), f32(b, d, cfg.d_conv - 1), cu], [".l", "", "", "b", "B"]
    return [act(b, l, cfg.d_inner), act(b, l, cfg.d_inner), f32(cfg.d_inner)], ["bl", "bl", ""]


def trace_op(op_name: str, attrs: dict, cfg: Mamba2Config, dtype: torch.dtype, flavor, input_names: list[str],
             output_names: list[str], options: dict | None = None) -> onnx_ir.Model:
    """One ssd_deploy op alone (``attrs``: its non-tensor arguments by name), lowered by ``flavor`` (with its
    ``options``); batch and sequence dynamic, the other sizes those of ``cfg``."""
    inputs, axes = sample_inputs(op_name, cfg, dtype)
    batch, seq = batch_dim(), seq_dim()
    dims = {"b": batch, "l": seq, "B": batch + 1}
    dyn = tuple({i: dims[c] for i, c in enumerate(a) if c in dims} for a in axes)
    return to_onnx(_OneOp(getattr(torch.ops.ssd_deploy, op_name), attrs), tuple(inputs), input_names, output_names,
                   {"inputs": dyn}, flavor, cfg, OPSET, options)
