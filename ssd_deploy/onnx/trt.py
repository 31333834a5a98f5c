"""The `trt` lowering (docs/flavors.md): each op as one node of domain ``trt.plugins`` for the TensorRT plugins of
``plugins/`` (node spec in ``plugins/<Plugin>/README.md``), and the validation copy that proves such a graph
without TensorRT.

Node spec: ``plugins/<Plugin>/contract.toml`` (inputs, outputs and attributes in that exact order and spelling),
read into ``PLUGINS`` here. ``SsdStateUpdate`` serves split decode graphs only; the unified graph decodes through
``SsdChunkScan`` at l = 1. Packed graphs (``--graph packed``) run ``SsdChunkScanPacked`` and ``CausalConv1dPacked``,
which take the graph's int64 ``cu_seqlens`` cast to int32 (the kernels' offsets).

No ``plugin_version``/``plugin_namespace`` attributes: the ONNX parser of TensorRT defaults them to "1" and "" (what
the plugins register), and every attribute a node carries is offered to the creator as a plugin field.

The shipped graph carries no bodies: TensorRT's parser imports a model-local function in place of a node of the
same name, which would silently bypass the plugin. ``bodies`` gives what makes the *validation copy*: the same graph with
each op's portable standard-op lowering attached as a model-local function of the same domain and name, so ONNX
Runtime runs exactly the graph that TensorRT receives. The bodies are traced for the attribute values the graph's
nodes carry (they are structural: softplus or not, clamp or not), and ``bodies`` refuses a graph whose nodes of
one op disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir
import torch
from onnxscript import opset18 as op

from ..config import Mamba2Config
from .. import plugin_contracts
from ..errors import UserError
from . import portable
from .custom import custom_op
from .portable import OPSET, Dims, ints

INT32 = 6  # onnx.TensorProto.INT32: the plugins' cu_seqlens
from .tracing import trace_op

__all__ = ["OPSET", "DOMAIN", "PLUGINS", "lowerings", "bodies"]


@dataclass(frozen=True)
class Plugin:
    op: str  # the ssd_deploy op it implements
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attributes: dict  # name -> int | float
    optional: tuple[str, ...] = ()  # inputs a node may leave out


# the node table, from the plugins' contract files (plugins/<Plugin>/contract.toml, ssd_deploy/plugin_contracts.py)
CONTRACTS = plugin_contracts.contracts()
DOMAIN, = {c.domain for c in CONTRACTS.values()}  # one domain for the library
PLUGINS = {name: Plugin(c.op, tuple(t.name for t in c.inputs), tuple(t.name for t in c.outputs),
                        {a.name: a.python_type for a in c.attributes}, tuple(t.name for t in c.inputs if t.optional))
           for name, c in CONTRACTS.items()}
_OPS = {name: custom_op(DOMAIN, name, list(p.inputs), list(p.outputs), p.attributes, p.optional)
        for name, p in PLUGINS.items()}


def lowerings(dims: Dims) -> dict:
    """The translation of each ssd_deploy op: one plugin node, inputs in the op's own order."""

    def scan(x, dt, A, B, C, D, dt_bias, initial_state, chunk_size, dt_softplus, dt_min, dt_max):
        return _OPS["SsdChunkScan"](x, dt, A, B, C, D, dt_bias, initial_state, chunk_size=chunk_size,
                                    dt_softplus=int(dt_softplus), dt_min=float(dt_min), dt_max=float(dt_max))

    def step(state, x, dt, A, B, C, D, dt_bias, dt_softplus, dt_min, dt_max):
        return _OPS["SsdStateUpdate"](state, x, dt, A, B, C, D, dt_bias, dt_softplus=int(dt_softplus),
                                      dt_min=float(dt_min), dt_max=float(dt_max))

    def conv(x, weight, bias, conv_state, silu):
        return _OPS["CausalConv1d"](x, weight, conv_bias(bias), conv_state, silu=int(silu))

    def norm(y, z, weight, eps, group_size):
        return _OPS["GatedRmsNorm"](y, z, weight, eps=float(eps), group_size=group_size)

    def scan_packed(x, dt, A, B, C, D, dt_bias, initial_states, cu_seqlens, chunk_size, dt_softplus, dt_min,
                    dt_max):
        return _OPS["SsdChunkScanPacked"](x, dt, A, B, C, D, dt_bias, initial_states, op.Cast(cu_seqlens, to=INT32),
                                          chunk_size=chunk_size, dt_softplus=int(dt_softplus), dt_min=float(dt_min),
                                          dt_max=float(dt_max))

    def conv_packed(x, weight, bias, conv_states, cu_seqlens, silu):
        return _OPS["CausalConv1dPacked"](x, weight, conv_bias(bias), conv_states, op.Cast(cu_seqlens, to=INT32),
                                          silu=int(silu))

    def conv_bias(bias):  # the plugins always take a bias (conv_bias=False checkpoints)
        if bias is None:
            return op.ConstantOfShape(ints(dims.conv_dim), value=onnx_ir.tensor(np.zeros(1, np.float32)))
        return bias

    return {"ssd_scan": scan, "ssd_step": step, "causal_conv1d": conv, "gated_rmsnorm": norm,
            "ssd_scan_packed": scan_packed, "causal_conv1d_packed": conv_packed}


# ---- validation copy -------------------------------------------------------------------------------------------

def _trace_body(plugin: str, attrs: dict, cfg: Mamba2Config, dtype: torch.dtype) -> onnx_ir.Function:
    """The portable lowering of one op, for these attribute values, as a function ``trt.plugins::plugin``."""
    spec = PLUGINS[plugin]
    graph = trace_op(spec.op, {k: bool(v) if k in ("dt_softplus", "silu") else v for k, v in attrs.items()}, cfg,
                     dtype, portable, list(spec.inputs), list(spec.outputs)).graph
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


def bodies(model: onnx_ir.Model, cfg: Mamba2Config, dtype: torch.dtype) -> list[onnx_ir.Function]:
    """For the validation copy: each plugin the graph uses, as a model-local function with its standard-op body."""
    fns = []
    for plugin, nodes in plugin_nodes(model).items():
        values = [{k: a.value for k, a in n.attributes.items()} for n in nodes]
        if any(v != values[0] for v in values[1:]):
            raise UserError(f"{plugin} nodes carry different attributes; one body cannot serve them all")
        if set(values[0]) != set(PLUGINS[plugin].attributes):
            raise UserError(f"{plugin}: attributes {sorted(values[0])} differ from the spec's "
                            f"{sorted(PLUGINS[plugin].attributes)}")
        fns.append(_trace_body(plugin, values[0], cfg, dtype))
    return fns
