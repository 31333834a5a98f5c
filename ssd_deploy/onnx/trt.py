"""The `trt` lowering (DESIGN §4): each op as one node of domain ``trt.plugins`` for the TensorRT plugins of
``plugins/`` (node spec in ``plugins/<Plugin>/README.md``), and the validation copy that proves such a graph
without TensorRT.

Node spec (inputs, outputs and attributes in this exact order and spelling; T = the activation dtype):

* ``SsdChunkScan``   (x T, dt T, A f32, B T, C T, D f32, dt_bias f32, initial_state f32) → (y T, final_state f32);
  chunk_size, dt_softplus (0/1), dt_min, dt_max (may be +inf)
* ``SsdStateUpdate`` (state f32, x T, dt T, A f32, B T, C T, D f32, dt_bias f32) → (y T, new_state f32);
  dt_softplus, dt_min, dt_max (split decode graphs only; the unified graph decodes through SsdChunkScan at l = 1)
* ``CausalConv1d``   (x T, weight [d,k] f32, bias [d] f32, conv_state f32) → (y T, conv_state_out f32); silu
* ``GatedRmsNorm``   (y T, z T, weight f32) → out T; eps, group_size

No ``plugin_version``/``plugin_namespace`` attributes: the ONNX parser of TensorRT defaults them to "1" and "" (what
the plugins register), and every attribute a node carries is offered to the creator as a plugin field.

The shipped graph carries no bodies: TensorRT's parser imports a model-local function in place of a node of the
same name, which would silently bypass the plugin. ``add_bodies`` makes the *validation copy*: the same graph with
each op's portable standard-op lowering attached as a model-local function of the same domain and name, so ONNX
Runtime runs exactly the graph that TensorRT receives. The bodies are traced for the attribute values the graph's
nodes carry (they are structural: softplus or not, clamp or not), and ``add_bodies`` refuses a graph whose nodes of
one op disagree.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
import onnx_ir
import torch
from onnxscript import opset18 as op
from torch import nn

from ..config import Mamba2Config
from ..errors import UserError
from . import portable
from .custom import custom_op
from .portable import OPSET, Dims, ints

__all__ = ["OPSET", "DOMAIN", "PLUGINS", "lowerings", "add_bodies"]

DOMAIN = "trt.plugins"


@dataclass(frozen=True)
class Plugin:
    op: str  # the ssd_deploy op it implements
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attributes: dict


PLUGINS = {
    "SsdChunkScan": Plugin("ssd_scan", ("x", "dt", "A", "B", "C", "D", "dt_bias", "initial_state"),
                           ("y", "final_state"),
                           {"chunk_size": int, "dt_softplus": int, "dt_min": float, "dt_max": float}),
    "SsdStateUpdate": Plugin("ssd_step", ("state", "x", "dt", "A", "B", "C", "D", "dt_bias"), ("y", "new_state"),
                             {"dt_softplus": int, "dt_min": float, "dt_max": float}),
    "CausalConv1d": Plugin("causal_conv1d", ("x", "weight", "bias", "conv_state"), ("y", "conv_state_out"),
                           {"silu": int}),
    "GatedRmsNorm": Plugin("gated_rmsnorm", ("y", "z", "weight"), ("out",), {"eps": float, "group_size": int}),
}
_OPS = {name: custom_op(DOMAIN, name, list(p.inputs), list(p.outputs), p.attributes) for name, p in PLUGINS.items()}


def lowerings(dims: Dims) -> dict:
    """The translation of each ssd_deploy op: one plugin node, inputs in the op's own order."""

    def scan(x, dt, A, B, C, D, dt_bias, initial_state, chunk_size, dt_softplus, dt_min, dt_max):
        return _OPS["SsdChunkScan"](x, dt, A, B, C, D, dt_bias, initial_state, chunk_size=chunk_size,
                                    dt_softplus=int(dt_softplus), dt_min=float(dt_min), dt_max=float(dt_max))

    def step(state, x, dt, A, B, C, D, dt_bias, dt_softplus, dt_min, dt_max):
        return _OPS["SsdStateUpdate"](state, x, dt, A, B, C, D, dt_bias, dt_softplus=int(dt_softplus),
                                      dt_min=float(dt_min), dt_max=float(dt_max))

    def conv(x, weight, bias, conv_state, silu):
        if bias is None:  # the plugin always takes a bias (conv_bias=False checkpoints)
            bias = op.ConstantOfShape(ints(dims.conv_dim), value=onnx_ir.tensor(np.zeros(1, np.float32)))
        return _OPS["CausalConv1d"](x, weight, bias, conv_state, silu=int(silu))

    def norm(y, z, weight, eps, group_size):
        return _OPS["GatedRmsNorm"](y, z, weight, eps=float(eps), group_size=group_size)

    return {"ssd_scan": scan, "ssd_step": step, "causal_conv1d": conv, "gated_rmsnorm": norm}


# ---- validation copy -------------------------------------------------------------------------------------------

class _OneOp(nn.Module):
    def __init__(self, fn, attrs: dict):
        super().__init__()
        self.fn, self.attrs = fn, attrs

    def forward(self, *inputs):
        return self.fn(*inputs, **self.attrs)


def _sample_inputs(plugin: str, cfg: Mamba2Config, dtype: torch.dtype):
    """Inputs to trace one op with, and which of their axes are batch (0) / sequence (1); parameters and states
    float32, activations ``dtype``."""
    b, l = 2, 5  # neither 0 nor 1, so that torch.export keeps them symbolic
    h, p, g, n, d = cfg.nheads, cfg.headdim, cfg.ngroups, cfg.d_state, cfg.conv_dim
    act = lambda *s: torch.randn(*s, dtype=dtype)  # noqa: E731
    f32 = lambda *s: torch.randn(*s)  # noqa: E731
    D = f32(h, p) if cfg.D_has_hdim else f32(h)
    if plugin == "SsdChunkScan":
        return [act(b, l, h, p), act(b, l, h), f32(h), act(b, l, g, n), act(b, l, g, n), D, f32(h), f32(b, h, p, n)], \
            ["bl", "bl", "", "bl", "bl", "", "", "b"]
    if plugin == "SsdStateUpdate":
        return [f32(b, h, p, n), act(b, h, p), act(b, h), f32(h), act(b, g, n), act(b, g, n), D, f32(h)], \
            ["b", "b", "b", "", "b", "b", "", ""]
    if plugin == "CausalConv1d":
        return [act(b, l, d), f32(d, cfg.d_conv), f32(d), f32(b, d, cfg.d_conv - 1)], ["bl", "", "", "b"]
    return [act(b, l, cfg.d_inner), act(b, l, cfg.d_inner), f32(cfg.d_inner)], ["bl", "bl", ""]


def _op_attrs(plugin: str, attrs: dict) -> dict:
    """Node attributes → the ssd_deploy op's keyword arguments."""
    out = dict(attrs)
    if "dt_softplus" in out:
        out["dt_softplus"] = bool(out["dt_softplus"])
    if "silu" in out:
        out["silu"] = bool(out["silu"])
    return out


def _trace_body(plugin: str, attrs: dict, cfg: Mamba2Config, dtype: torch.dtype) -> onnx_ir.Function:
    """The portable lowering of one op, for these attribute values, as a function ``trt.plugins::plugin``."""
    spec = PLUGINS[plugin]
    inputs, axes = _sample_inputs(plugin, cfg, dtype)
    batch = torch.export.Dim("batch", min=1, max=4096)
    seq = torch.export.Dim("seq", min=1, max=1 << 20)
    dyn = tuple({i: (batch if c == "b" else seq) for i, c in enumerate(a)} for a in axes)
    table = {getattr(torch.ops.ssd_deploy, name).default: fn
             for name, fn in portable.lowerings(Dims.of(cfg)).items()}
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(
            _OneOp(getattr(torch.ops.ssd_deploy, spec.op), _op_attrs(plugin, attrs)), tuple(inputs), dynamo=True,
            verbose=False, report=False, input_names=list(spec.inputs), output_names=list(spec.outputs),
            dynamic_shapes={"inputs": dyn}, custom_translation_table=table, opset_version=OPSET, optimize=True)
    graph = prog.model.graph
    # functions have no initializers: constants the optimizer lifted go back to Constant nodes
    for name, value in list(graph.initializers.items()):
        graph.initializers.pop(name)
        const = onnx_ir.Node("", "Constant", [], [onnx_ir.AttrTensor("value", value.const_value)], num_outputs=1)
        value.replace_all_uses_with(const.outputs[0])
        const.outputs[0].name = name
        graph.insert_before(graph[0], const)
    declared = [onnx_ir.Attr(k, _attr_type(v), v) for k, v in attrs.items()]
    return onnx_ir.Function(DOMAIN, plugin, graph=graph, attributes=declared)


def _attr_type(v) -> onnx_ir.AttributeType:
    return onnx_ir.AttributeType.INT if isinstance(v, int) else onnx_ir.AttributeType.FLOAT


def plugin_nodes(model: onnx_ir.Model) -> dict[str, list[onnx_ir.Node]]:
    found: dict[str, list[onnx_ir.Node]] = {}
    for node in model.graph:
        if node.domain == DOMAIN:
            if node.op_type not in PLUGINS:
                raise UserError(f"unknown {DOMAIN} node {node.op_type!r} (known: {', '.join(PLUGINS)})")
            found.setdefault(node.op_type, []).append(node)
    return found


def add_bodies(model: onnx_ir.Model, cfg: Mamba2Config, dtype: torch.dtype) -> onnx_ir.Model:
    """The validation copy (in place): each plugin used gets its standard-op body as a model-local function."""
    for plugin, nodes in plugin_nodes(model).items():
        values = [{k: a.value for k, a in n.attributes.items()} for n in nodes]
        if any(v != values[0] for v in values[1:]):
            raise UserError(f"{plugin} nodes carry different attributes; one body cannot serve them all")
        if set(values[0]) != set(PLUGINS[plugin].attributes):
            raise UserError(f"{plugin}: attributes {sorted(values[0])} differ from the spec's "
                            f"{sorted(PLUGINS[plugin].attributes)}")
        fn = _trace_body(plugin, values[0], cfg, dtype)
        model.functions[fn.identifier()] = fn
    return model

