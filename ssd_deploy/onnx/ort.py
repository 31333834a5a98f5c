"""The `ort` lowering (docs/flavors.md): the scan and the conv as ONNX Runtime ``com.microsoft`` contrib ops.

Semantics of each contrib op, checked numerically against ONNX Runtime 1.32 (CPU) before relying on them
(tests/test_export_ort.py keeps them checked):

* ``LinearAttention`` (update_rule "gated"): S_t = exp(g_t) S_{t-1} + k_t ⊗ v_t, o_t = scale · q_tᵀ S_t, state
  [b, H, d_k, d_v]. With q = C, k = B, v = dt'·x, g = A·dt' and scale = 1 this is the SSD recurrence (the op's
  default scale is 1/sqrt(d_k), so it is set explicitly; its chunk_size tuning hint is left unset: 64 or 256 made
  no consistent difference on the CPU provider). Its GQA shares one *key/value* head among query heads,
  while SSD shares B and C (query and key) among value heads: groups are expanded to heads instead. dt', the D skip
  and the clamps are computed around the op, in float32. ONNX Runtime's CUDA kernel of it runs token by token:
  with ``prefill="chunked"`` only one-token calls use it, longer ones the portable chunked scan
  (``ssd_scan_chunked_prefill``).
* ``CausalConvWithState``: depthwise causal conv with a k-1 carry and fused SiLU. ``channels_last=1`` takes x as
  [b, l, d] as the model has it, but then wants the carry as [b, k-1, d]: transposing the tiny carry is cheaper
  than transposing the activations. On the CPU provider it is slower than the standard Conv over long prompts
  (8.5 vs 1.5 ms per 130m layer at 512 tokens) and faster at decode (0.2 vs 1.9 ms at batch 8). So each layer's
  conv is an ``If`` on the sequence length: the contrib op for one token, the standard Conv (portable's lowering)
  for longer calls. The ``If`` is not free: on a quiet machine the 24 of the 130m preset cost 5 ms of a 60 ms decode
  step, against 36-62 ms they save in a 512-token prefill (benchmarks/RESULTS.md, CPU against mobius, quiet rerun;
  that profile's If time holds its branch's nodes). Exports with a decode companion (``--companion decode``, the
  cpu-fp32 recipe) decode through the ``--graph decode`` lowering instead, which has no If (docs/flavors.md).
* RMSNorm: the block's residual sum and pre-norm become ``SkipSimplifiedLayerNormalization`` (``finalize``); the
  norms without a sum before them and the one-group gated norm are written in the form ONNX Runtime's session
  fuses into ``SimplifiedLayerNormalization`` (that op's name is ONNX Runtime's own in the ONNX domain, which the
  ONNX checker refuses in a file).
* ``GatedRMSNorm`` normalises *before* gating (x·rsqrt(mean(x²)+eps)·w·silu(z)), not rmsnorm(y·silu(z)) as the
  contract wants (relative difference ≈ 0.5 on random data): the gated norm keeps the portable lowering.

The contrib ops take parameters and states in the activation dtype; the contract keeps them float32. So every
contrib op runs in float32 (inputs cast up, the result cast back), which is also what the reference computes.

State layout: LinearAttention keeps its state as [b, h, n, p], the contract as [b, h, p, n]. This flavor declares
``ssm_layout = "b,h,n,p"`` in the metadata (docs/graph-interface.md allows it; the runners honour it) instead of transposing
at every op boundary: on 2 CPU cores at 130m shapes the two transposes per layer cost 21% of a batch-1 decode step
and half of a batch-8 one (69.7 → 55.1 ms and 256 → 128 ms per step, measured 2026-11-28 side by side on the same
export with and without them). The conv carry keeps the contract layout: it is k-1 columns wide, its transposes
cost nothing measurable.
"""

from __future__ import annotations

import onnx_ir
from onnxscript import opset18 as op
from onnxscript.rewriter import pattern

from .custom import custom_op
from .rms_norm import DIV_FORM, const as _const, fp32 as _fp32_rms, traced as _rms
from .options import PREFILLS  # what calls of more than one token run: LinearAttention, or the portable scan
from .portable import (OPSET, Dims, d_skip, f32, if_one_token, ints, packed_lowerings, process_dt, scalar, silu,
                       ssd_chunked)
from .portable import causal_conv1d as portable_conv
from .portable import gated_rmsnorm as portable_gated_rmsnorm

__all__ = ["OPSET", "PREFILLS", "SSM_LAYOUT", "finalize", "lowerings"]

DOMAIN = "com.microsoft"
SSM_LAYOUT = "b,h,n,p"  # the ssm state layout of this flavor's graph interface (ExportMetadata.ssm_layout)

LinearAttention = custom_op(
    DOMAIN, "LinearAttention", ["query", "key", "value", "past_state", "decay", "beta"], ["output", "present_state"],
    {"update_rule": str, "q_num_heads": int, "kv_num_heads": int, "scale": float}, optional=("past_state", "beta"))
CausalConvWithState = custom_op(
    DOMAIN, "CausalConvWithState", ["input", "weight", "bias", "past_state"], ["output", "present_state"],
    {"activation": str, "channels_last": int}, optional=("bias", "past_state"))


def _per_head(t, dims: Dims):
    """[b, l, g, n] per group → [b, l, h·n] per head (contiguous groups: head i uses group i // r), float32."""
    t = f32(t)
    if dims.r > 1:
        t = op.Expand(op.Unsqueeze(t, ints(3)), ints(1, 1, 1, dims.r, 1))
    return op.Reshape(t, ints(0, 0, dims.h * dims.n))


def ssd_scan(x, dt, A, B, C, D, dt_bias, initial_state, dt_softplus: bool, dt_min: float, dt_max: float,
             dims: Dims, valid=None):
    """The states in and out are [b, h, n, p] (SSM_LAYOUT). ``valid`` [b, l] (packed sequences in their
    per-sequence layout): slots where it is false get dt' = 0, hence decay exp(0) = 1 and value 0, so the state
    passes them unchanged."""
    h, p = dims.h, dims.p
    xf = f32(x)
    dtp = process_dt(dt, dt_bias, dt_softplus, dt_min, dt_max)  # [b,l,h]
    if valid is not None:
        dtp = op.Where(op.Unsqueeze(valid, ints(-1)), dtp, op.Constant(value_float=0.0))
    value = op.Reshape(op.Mul(xf, op.Unsqueeze(dtp, ints(-1))), ints(0, 0, h * p))
    y, state = LinearAttention(_per_head(C, dims), _per_head(B, dims), value, initial_state,
                               op.Mul(dtp, A), None, update_rule="gated", q_num_heads=h, kv_num_heads=h,
                               scale=1.0)
    y = op.Add(op.Reshape(y, ints(0, 0, h, p)), d_skip(D, xf, dims))
    return op.CastLike(y, x), state


def ssd_scan_chunked_prefill(x, dt, A, B, C, D, dt_bias, initial_state, chunk_size: int, dt_softplus: bool,
                             dt_min: float, dt_max: float, dims: Dims, valid=None):
    """If(l == 1): ``ssd_scan`` (LinearAttention) on the one token, else the portable chunked scan.

    ONNX Runtime's CUDA LinearAttention is a token-by-token recurrence: on an H200 (130m fp16, benchmarks/RESULTS.md
    run 3) this graph prefills 1.3-4.3x faster than the contrib-only one and decodes within 10% of it. The chunked
    branch works in the contract's
    [b, h, p, n] state layout, so it transposes the state in and out; decode, where that would cost (see the module
    docstring), never takes it. As in the portable scan, both branches reshape y to x's shape, taken outside the If,
    so that shape inference sees one shape of y.
    """
    y_shape = op.Shape(x)
    to_other_layout = [0, 1, 3, 2]  # [b, h, n, p] <-> [b, h, p, n]

    def one_token():
        y, state = ssd_scan(x, dt, A, B, C, D, dt_bias, initial_state, dt_softplus, dt_min, dt_max, dims, valid)
        return op.Reshape(y, y_shape), state

    def chunks():
        y, state = ssd_chunked(x, dt, A, B, C, D, dt_bias, op.Transpose(initial_state, perm=to_other_layout),
                               chunk_size, dt_softplus, dt_min, dt_max, dims, valid)
        return op.Reshape(y, y_shape), op.Transpose(state, perm=to_other_layout)

    return if_one_token(x, one_token, chunks)


def ssd_step(state, x, dt, A, B, C, D, dt_bias, dt_softplus: bool, dt_min: float, dt_max: float, dims: Dims):
    """One token is the scan at l = 1 (the op has no separate decode form)."""
    one = ints(1)
    y, new = ssd_scan(op.Unsqueeze(x, one), op.Unsqueeze(dt, one), A, op.Unsqueeze(B, one), op.Unsqueeze(C, one), D,
                      dt_bias, state, dt_softplus, dt_min, dt_max, dims)
    return op.Squeeze(y, one), new


def causal_conv1d(x, weight, bias, conv_state, silu: bool, dims: Dims):
    """If(l == 1) the contrib op, else the standard Conv (portable.causal_conv1d): see the module docstring."""

    def one_token():
        y, carry = CausalConvWithState(f32(x), op.Unsqueeze(weight, ints(1)), bias,
                                       op.Transpose(conv_state, perm=[0, 2, 1]),
                                       activation="silu" if silu else "none", channels_last=1)
        return op.CastLike(y, x), op.Transpose(carry, perm=[0, 2, 1])

    return if_one_token(x, one_token, lambda: portable_conv(x, weight, bias, conv_state, silu, dims))


def gated_rmsnorm(y, z, weight, eps: float, group_size: int, dims: Dims):
    """One group (the usual case): written as ONNX Runtime's SimplifiedLayerNormFusion expects it (Pow, ReduceMean,
    Add, Sqrt, Div, Mul), so that the session runs it as one SimplifiedLayerNormalization; otherwise portable's."""
    if group_size != dims.h * dims.p:
        return portable_gated_rmsnorm(y, z, weight, eps, group_size)
    v = op.Mul(f32(y), silu(f32(z)))
    ms = op.ReduceMean(op.Pow(v, scalar(2.0)), ints(-1), keepdims=1)
    return op.CastLike(op.Mul(op.Div(v, op.Sqrt(op.Add(ms, scalar(eps)))), weight), y)


def _residual_rms(op, a, b, weight, eps, two, axes):
    total = op.Add(a, b)
    return _rms(op, total, weight, eps, two, axes), total


def _skip_rms(op, a, b, weight, eps, **_):
    normed, _mean, _inv_std, total = op.SkipSimplifiedLayerNormalization(
        a, b, weight, epsilon=float(_const(eps)), _domain=DOMAIN, _outputs=4)
    return normed, total


# module docstring, "RMSNorm"
NORM_RULES = (pattern.RewriteRule(_residual_rms, _skip_rms, _fp32_rms), DIV_FORM)


def finalize(model: onnx_ir.Model, cfg) -> onnx_ir.Model:
    """The trace took its shapes from the PyTorch model, whose ssm states are [b, h, p, n]; the states of this
    graph are LinearAttention's [b, h, n, p] (graph inputs and outputs included, as they feed the op directly).

    With the chunked prefill the op sits in the one-token branch of an If (reading the graph's state input from
    there) and the If returns its state: the If's output is the graph's, and the branch's output, which no shape
    inference types (ONNX knows no contrib op), takes the same type; so do the outputs of the conv's one-token
    branch. Runs before tracing.tidy's shape inference, which then derives the shapes inside the branches from
    these.
    """
    for node in model.graph:
        la = next((n for n in node.attributes["then_branch"].as_graph() if n.op_type == "LinearAttention"), None) \
            if node.op_type == "If" else None
        if la is not None:  # ssd_scan_chunked_prefill's If
            state_in, state_out = la.inputs[3], node.outputs[1]
        elif node.op_type == "LinearAttention" and node.domain == DOMAIN:
            la, state_in, state_out = node, node.inputs[3], node.outputs[1]
        else:
            continue
        for value in (state_in, state_out):
            b, h, p, n = value.shape
            value.shape = onnx_ir.Shape([b, h, n, p])
        la.outputs[1].type, la.outputs[1].shape = state_out.type, state_out.shape  # (itself outside an If)
    for node in model.graph:  # the conv's If: its one-token branch returns the contrib op's (cast) outputs
        if node.op_type == "If":
            for value, typed in zip(node.attributes["then_branch"].as_graph().outputs, node.outputs):
                if value.type is None:
                    value.type, value.shape = typed.type, typed.shape
    for rule in NORM_RULES:
        rule.apply_to_model(model)
    return model


def lowerings(dims: Dims, prefill: str = "contrib") -> dict:
    """The translation of each ssd_deploy op (names as in ssd/ops.py), static sizes bound; ``prefill`` (PREFILLS)
    chooses what the scan runs for calls of more than one token."""

    def scan(x, dt, A, B, C, D, dt_bias, initial_state, chunk_size, dt_softplus, dt_min, dt_max, dims=dims,
             valid=None):
        if prefill == "chunked":
            return ssd_scan_chunked_prefill(x, dt, A, B, C, D, dt_bias, initial_state, chunk_size, dt_softplus,
                                            dt_min, dt_max, dims, valid)
        return ssd_scan(x, dt, A, B, C, D, dt_bias, initial_state, dt_softplus, dt_min, dt_max, dims, valid)

    def step(state, x, dt, A, B, C, D, dt_bias, dt_softplus, dt_min, dt_max):
        return ssd_step(state, x, dt, A, B, C, D, dt_bias, dt_softplus, dt_min, dt_max, dims)

    # packed: the same scan on the per-sequence layout (LinearAttention has no packed form); the packed conv stays
    # standard ops (VarlenCausalConvWithState has CUDA and WebGPU kernels only, none on the CPU provider)
    def conv(x, weight, bias, conv_state, silu):
        return causal_conv1d(x, weight, bias, conv_state, silu, dims)

    def norm(y, z, weight, eps, group_size):
        return gated_rmsnorm(y, z, weight, eps, group_size, dims)

    return {"ssd_scan": scan, "ssd_step": step, "causal_conv1d": conv, "gated_rmsnorm": norm,
            **packed_lowerings(dims, scan)}
