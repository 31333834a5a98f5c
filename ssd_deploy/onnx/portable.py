"""The `portable` lowering (docs/flavors.md): the four ops as standard ONNX ops (opset 18), for any ONNX runtime and for
TensorRT without plugins.

Each function is a torch.onnx translation function: it receives the op's inputs as symbolic ONNX values and its
attributes as Python values, and builds the subgraph with onnxscript ops. Static sizes (heads, groups, ...) come from
the model config through ``Dims``; batch and sequence stay dynamic.

The scan is an ``If`` on the sequence length: one token (decode) takes the step, which reads and writes the state
once; longer calls take the chunked SSD algorithm of ``ssd/reference.py::ssd_chunked`` written with MatMul/Exp/masks:
* the chunk is min(chunk_size, l), so a short call never pays for a full chunk;
* cumulative sums inside a chunk are a MatMul with a sliced upper-triangular constant (no CumSum: TensorRT has had
  CumSum bugs and is slow on it); the sum over chunks uses a triangular mask built from Range;
* everything is computed in float32, whatever the activation dtype, then cast back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx_ir
from onnxscript import evaluator
from onnxscript import opset18 as op

from ..config import Mamba2Config
from ..ssd.reference import SOFTPLUS_THRESHOLD
from .options import MIN_OPSET

FLOAT = 1  # onnx.TensorProto.FLOAT
OPSET = MIN_OPSET


@dataclass(frozen=True)
class Dims:
    """Static sizes the lowerings need (everything but batch and sequence)."""
    h: int
    p: int
    g: int
    n: int
    k: int
    D_has_hdim: bool
    chunk_size: int

    @classmethod
    def of(cls, cfg: Mamba2Config) -> "Dims":
        return cls(cfg.nheads, cfg.headdim, cfg.ngroups, cfg.d_state, cfg.d_conv, cfg.D_has_hdim, cfg.chunk_size)

    @property
    def r(self) -> int:
        return self.h // self.g

    @property
    def conv_dim(self) -> int:
        return self.h * self.p + 2 * self.g * self.n


def ints(*v: int):
    return op.Constant(value_ints=list(v))


def scalar(v: float):
    return op.Constant(value_float=float(v))


def f32(t):
    return op.Cast(t, to=FLOAT)


def silu(t):
    return op.Mul(t, op.Sigmoid(t))


def process_dt(dt, dt_bias, dt_softplus: bool, dt_min: float, dt_max: float):
    """dt' = clamp(softplus(dt + dt_bias), dt_min, dt_max) in fp32, softplus skipped above the threshold."""
    v = op.Add(f32(dt), dt_bias)
    if dt_softplus:
        v = op.Where(op.LessOrEqual(v, scalar(SOFTPLUS_THRESHOLD)), op.Softplus(v), v)
    v = op.Max(v, scalar(dt_min))
    return v if math.isinf(dt_max) else op.Min(v, scalar(dt_max))


def d_skip(D, x, dims: Dims):
    """D ⊙ x for x [..., h, p] in fp32."""
    return op.Mul(D if dims.D_has_hdim else op.Unsqueeze(D, ints(-1)), x)


def gated_rmsnorm(y, z, weight, eps: float, group_size: int):
    v = op.Mul(f32(y), silu(f32(z)))
    grouped = op.Reshape(v, ints(0, 0, -1, group_size))
    ms = op.ReduceMean(op.Mul(grouped, grouped), ints(-1), keepdims=1)
    grouped = op.Div(grouped, op.Sqrt(op.Add(ms, scalar(eps))))
    return op.CastLike(op.Mul(op.Reshape(grouped, op.Shape(v)), weight), y)


def causal_conv1d(x, weight, bias, conv_state, silu_act: bool, dims: Dims):
    """x [b,l,d] → depthwise Conv over [carried k-1 inputs, x] → y [b,l,d]; the new state is the window's tail."""
    window = op.Concat(conv_state, op.Transpose(f32(x), perm=[0, 2, 1]), axis=2)  # [b,d,k-1+l]
    w = op.Unsqueeze(weight, ints(1))  # [d,1,k]
    y = op.Conv(window, w, bias, group=dims.conv_dim) if bias is not None else op.Conv(window, w, group=dims.conv_dim)
    if silu_act:
        y = silu(y)
    new_state = _seq_tail(window, ints(-(dims.k - 1)), 2)
    return op.CastLike(op.Transpose(y, perm=[0, 2, 1]), x), new_state


def _tri(size: int, lower: bool):
    """[size, size] float32 triangular ones; upper[k, i] = 1 for k <= i turns x @ upper into a cumulative sum."""
    m = np.tril(np.ones((size, size), np.float32)) if lower else np.triu(np.ones((size, size), np.float32))
    return op.Constant(value=onnx_ir.tensor(m, name=f"tri_{'lower' if lower else 'upper'}_{size}"))


def _seq_tail(t, start, axis: int):
    """t[..., start:, ...] along ``axis``."""
    return op.Slice(t, start, ints(2**62), ints(axis))


def ssd_chunked(x, dt, A, B, C, D, dt_bias, initial_state, chunk_size: int, dt_softplus: bool, dt_min: float,
                dt_max: float, dims: Dims, valid=None):
    """``valid`` [b, l] bool (packed sequences in their per-sequence layout): slots where it is false get dt' = 0,
    so they neither decay nor feed the state."""
    g, r, p, n = dims.g, dims.r, dims.p, dims.n
    xf = f32(x)
    seq = op.Shape(x, start=1, end=2)  # [l]
    q = op.Min(seq, ints(chunk_size))  # chunk length actually used: min(Q, l)
    nc = op.Div(op.Sub(op.Add(seq, q), ints(1)), q)  # number of chunks
    pad = op.Sub(op.Mul(nc, q), seq)

    def pad_seq(t, rank: int):  # zeros at the end of axis 1 up to nc*q: dt' = 0 neither decays nor feeds the state
        return op.Pad(t, op.Concat(ints(*([0] * (rank + 1))), pad, ints(*([0] * (rank - 2))), axis=0))

    dtp = process_dt(dt, dt_bias, dt_softplus, dt_min, dt_max)  # [b,l,h]
    if valid is not None:
        dtp = op.Where(op.Unsqueeze(valid, ints(-1)), dtp, scalar(0.0))
    xdt = pad_seq(op.Mul(xf, op.Unsqueeze(dtp, ints(-1))), 4)
    dtp = pad_seq(dtp, 3)
    Bp, Cp = pad_seq(f32(B), 4), pad_seq(f32(C), 4)

    # chunked layouts [b, c, g, r, ...]; B and C stay per group ([b, c, g, 1, ...]) and broadcast over heads
    X = op.Transpose(op.Reshape(xdt, op.Concat(ints(0, -1), q, ints(g, r, p), axis=0)),
                     perm=[0, 1, 3, 4, 2, 5])  # [b,c,g,r,q,p]
    Bc = op.Transpose(op.Reshape(Bp, op.Concat(ints(0, -1), q, ints(g, 1, n), axis=0)),
                      perm=[0, 1, 3, 4, 2, 5])  # [b,c,g,1,q,n]
    Cc = op.Transpose(op.Reshape(Cp, op.Concat(ints(0, -1), q, ints(g, 1, n), axis=0)),
                      perm=[0, 1, 3, 4, 2, 5])
    dA = op.Transpose(op.Reshape(op.Mul(dtp, A), op.Concat(ints(0, -1), q, ints(g, r), axis=0)),
                      perm=[0, 1, 3, 4, 2])  # [b,c,g,r,q]
    qq = op.Concat(q, q, axis=0)
    upper = op.Slice(_tri(chunk_size, lower=False), ints(0, 0), qq, ints(0, 1))
    cum = op.MatMul(dA, upper)  # inclusive cumulative sum inside each chunk

    # 1. intra-chunk: y_i = sum_{j<=i} (C_i . B_j) exp(cum_i - cum_j) x_j dt_j
    causal = op.Cast(op.Slice(_tri(chunk_size, lower=True), ints(0, 0), qq, ints(0, 1)), to=9)  # bool
    seg = op.Sub(op.Unsqueeze(cum, ints(-1)), op.Unsqueeze(cum, ints(-2)))
    decay = op.Exp(op.Where(causal, seg, scalar(-math.inf)))  # [b,c,g,r,q,q]
    CB = op.MatMul(Cc, op.Transpose(Bc, perm=[0, 1, 2, 3, 5, 4]))  # [b,c,g,1,q,q]
    y = op.MatMul(op.Mul(CB, decay), X)  # [b,c,g,r,q,p]

    # 2. each chunk's own final state (from zero)
    last = op.Slice(cum, ints(-1), ints(2**62), ints(-1))  # [b,c,g,r,1]
    to_end = op.Exp(op.Sub(last, cum))
    Xw = op.Mul(X, op.Unsqueeze(to_end, ints(-1)))
    states = op.MatMul(op.Transpose(Xw, perm=[0, 1, 2, 3, 5, 4]), Bc)  # [b,c,g,r,p,n]

    # 3. pass states between chunks: S_z = sum_{c<=z} exp(T_z - T_c) s_c with s_0 the initial state
    init = op.Reshape(initial_state, ints(0, 1, g, r, p, n))
    allst = op.Concat(init, states, axis=1)  # [b,c+1,g,r,p,n]
    allst = op.Reshape(op.Transpose(allst, perm=[0, 2, 3, 1, 4, 5]), ints(0, g, r, -1, p * n))  # [b,g,r,c+1,pn]
    totals = op.Transpose(op.Squeeze(last, ints(-1)), perm=[0, 2, 3, 1])  # [b,g,r,c]
    totals = op.Pad(totals, ints(0, 0, 0, 1, 0, 0, 0, 0))  # [b,g,r,c+1] with a leading 0
    idx = op.Range(op.Constant(value_int=0), op.Squeeze(op.Add(nc, ints(1)), ints(0)), op.Constant(value_int=1))
    row, col = op.Unsqueeze(idx, ints(1)), op.Unsqueeze(idx, ints(0))
    ctot = op.MatMul(totals, op.Cast(op.LessOrEqual(row, col), to=FLOAT))  # cumulative sum over chunks
    chunk_seg = op.Sub(op.Unsqueeze(ctot, ints(-1)), op.Unsqueeze(ctot, ints(-2)))
    chunk_decay = op.Exp(op.Where(op.GreaterOrEqual(row, col), chunk_seg, scalar(-math.inf)))
    passed = op.MatMul(chunk_decay, allst)  # [b,g,r,c+1,pn]
    final = op.Reshape(_seq_tail(passed, ints(-1), 3), ints(0, g * r, p, n))
    entering = op.Slice(passed, ints(0), nc, ints(3))  # state entering each chunk [b,g,r,c,pn]
    entering = op.Transpose(op.Reshape(entering, ints(0, g, r, -1, p, n)), perm=[0, 3, 1, 2, 5, 4])  # [b,c,g,r,n,p]

    # 4. the entering state seen from each position of its chunk
    y = op.Add(y, op.Mul(op.MatMul(Cc, entering), op.Unsqueeze(op.Exp(cum), ints(-1))))

    y = op.Reshape(op.Transpose(y, perm=[0, 1, 4, 2, 3, 5]), ints(0, -1, g * r, p))  # [b,L,h,p]
    y = op.Slice(y, ints(0), seq, ints(1))
    y = op.Add(y, d_skip(D, xf, dims))
    return op.CastLike(y, x), final


def ssd_step(state, x, dt, A, B, C, D, dt_bias, dt_softplus: bool, dt_min: float, dt_max: float, dims: Dims):
    """One token: S' = exp(dt'A) S + dt' x ⊗ B; y = S'·C + D x (split decode graphs)."""
    g, r, p, n = dims.g, dims.r, dims.p, dims.n
    dtp = process_dt(dt, dt_bias, dt_softplus, dt_min, dt_max)  # [b,h]
    xf = f32(x)
    S = op.Reshape(state, ints(0, g, r, p, n))
    decay = op.Reshape(op.Exp(op.Mul(dtp, A)), ints(0, g, r, 1, 1))
    xdt = op.Reshape(op.Mul(xf, op.Unsqueeze(dtp, ints(-1))), ints(0, g, r, p, 1))
    Bg = op.Reshape(f32(B), ints(0, g, 1, 1, n))
    S = op.Add(op.Mul(S, decay), op.Mul(xdt, Bg))
    Cg = op.Reshape(f32(C), ints(0, g, 1, n, 1))
    y = op.Reshape(op.MatMul(S, Cg), ints(0, g * r, p))
    y = op.Add(y, d_skip(D, xf, dims))
    return op.CastLike(y, x), op.Reshape(S, ints(0, g * r, p, n))


def ssd_scan(x, dt, A, B, C, D, dt_bias, initial_state, chunk_size: int, dt_softplus: bool, dt_min: float,
             dt_max: float, dims: Dims, valid=None):
    """If(l == 1): ``ssd_step`` on the one token, else ``ssd_chunked``.

    At l = 1 the chunked algorithm costs no FLOPs but several copies of the whole state per layer (concatenated with
    the chunk states, passed between chunks, sliced), where the step reads and writes it once: on 2 CPU cores a 130m
    decode step took 46.5 ms (batch 1) and 264 ms (batch 8) through the chunks, 24.9 and 79.8 ms through the step.

    TensorRT builds both branches for every shape of a profile, so the step branch must be valid at any l: it takes
    the last token (the only one when it runs) and expands y back to x's shape rather than reshaping. Both branches
    give y the shape of x, computed outside the If: with branch-local shapes TensorRT-RTX 1.7's builder fails on the
    If's output (an internal Myelin error, "producer does not dominate the use"). ``valid``: see ``ssd_chunked``
    (one token per sequence has no padding).
    """
    h, p, g, n = dims.h, dims.p, dims.g, dims.n
    y_shape = op.Shape(x)

    def one_token():
        def last(t, *shape):  # the last token as [b, *shape], valid at any l
            return op.Reshape(_seq_tail(t, ints(-1), 1), ints(0, *shape))

        y, state = ssd_step(initial_state, last(x, h, p), last(dt, h), A, last(B, g, n), last(C, g, n), D, dt_bias,
                            dt_softplus, dt_min, dt_max, dims)
        return op.Expand(op.Unsqueeze(y, ints(1)), y_shape), state

    def chunks():
        y, state = ssd_chunked(x, dt, A, B, C, D, dt_bias, initial_state, chunk_size, dt_softplus, dt_min, dt_max,
                               dims, valid)
        return op.Reshape(y, y_shape), state

    return if_one_token(x, one_token, chunks)


def if_one_token(x, one_token, chunks):
    """If(x's sequence length (axis 1) == 1) one_token() else chunks(): an ``If`` node among the ops being recorded;
    each branch holds the ops its function records (they read the outer graph's values, as ONNX subgraphs may). The
    recorder is torch.onnx's evaluator, current while a translation function runs; its ``nodes`` become the op's
    nodes (torch.onnx builds the If of ``torch.cond`` the same way)."""
    cond = op.Equal(op.Shape(x, start=1, end=2), ints(1))
    recorded = evaluator.default().nodes

    def branch(fn, name):
        start = len(recorded)
        outputs = fn()
        graph = onnx_ir.Graph((), outputs, nodes=recorded[start:], name=name)
        del recorded[start:]
        return graph

    then_branch, else_branch = branch(one_token, "one_token"), branch(chunks, "chunks")
    node = onnx_ir.Node("", "If", [cond], [onnx_ir.AttrGraph("then_branch", then_branch),
                                           onnx_ir.AttrGraph("else_branch", else_branch)],
                        num_outputs=len(then_branch.outputs))
    recorded.append(node)
    return node.outputs


# ---- packed sequences (docs/op-contracts.md, "Packed sequences") ----------------------------------------------

INT64 = 7  # onnx.TensorProto.INT64


@dataclass(frozen=True)
class PackedLayout:
    """The per-sequence layout [n, Lmax] of a packed token axis, as in ``reference._padded_index``: ``gather``
    [n, Lmax] (the packed position of each slot, 0 past a sequence's end), ``valid`` [n, Lmax], ``scatter`` [T] (the
    flat slot of every token), ``starts``/``lens`` [n]."""
    starts: object
    lens: object
    valid: object
    gather: object
    scatter: object

    @classmethod
    def of(cls, cu_seqlens, x) -> "PackedLayout":
        # int64 in the graphs; int32 where it reaches the lowering through a plugin's signature (the trt flavor's
        # validation bodies)
        cu_seqlens = op.Cast(cu_seqlens, to=INT64)
        starts = op.Slice(cu_seqlens, ints(0), ints(-1), ints(0))
        ends = op.Slice(cu_seqlens, ints(1), ints(2**62), ints(0))
        lens = op.Sub(ends, starts)
        lmax = op.ReduceMax(lens, keepdims=1)  # [1]
        zero, one = op.Constant(value_int=0), op.Constant(value_int=1)
        j = op.Unsqueeze(op.Range(zero, op.Squeeze(lmax), one), ints(0))  # [1, Lmax]
        valid = op.Less(j, op.Unsqueeze(lens, ints(1)))
        gather = op.Where(valid, op.Add(op.Unsqueeze(starts, ints(1)), j), op.Constant(value_int=0))
        t = op.Range(zero, op.Squeeze(op.Shape(x, start=1, end=2)), one)  # [T]
        # the sequence of every token (seq_idx): how many sequences end at or before it
        seq = op.ReduceSum(op.Cast(op.GreaterOrEqual(op.Unsqueeze(t, ints(1)), op.Unsqueeze(ends, ints(0))),
                                   to=INT64), ints(1), keepdims=0)
        scatter = op.Add(op.Mul(seq, lmax), op.Sub(t, op.Gather(starts, seq)))
        return cls(starts, lens, valid, gather, scatter)

    def per_seq(self, t):
        """[1, T, ...] → [n, Lmax, ...]."""
        return op.Gather(op.Squeeze(t, ints(0)), self.gather, axis=0)

    def packed(self, t, *rest: int):
        """[n, Lmax, *rest] → [1, T, *rest]."""
        return op.Unsqueeze(op.Gather(op.Reshape(t, ints(-1, *rest)), self.scatter, axis=0), ints(0))


def ssd_scan_packed(x, dt, A, B, C, D, dt_bias, initial_states, cu_seqlens, chunk_size: int, dt_softplus: bool,
                    dt_min: float, dt_max: float, dims: Dims, scan=None):
    """The packed scan as the listing computes it: tokens gathered into the per-sequence layout, the flavor's
    unpacked ``scan`` (this module's ``ssd_scan`` by default: one token per sequence takes the step) with the slots
    past each sequence's end masked to dt' = 0, y gathered back."""
    pk = PackedLayout.of(cu_seqlens, x)
    y, final = (scan or ssd_scan)(pk.per_seq(x), pk.per_seq(dt), A, pk.per_seq(B), pk.per_seq(C), D, dt_bias,
                                  initial_states, chunk_size, dt_softplus, dt_min, dt_max, dims, valid=pk.valid)
    return pk.packed(y, dims.h, dims.p), final


def causal_conv1d_packed(x, weight, bias, conv_states, cu_seqlens, silu_act: bool, dims: Dims):
    """One window [state, tokens] per sequence gathered from the rows of [x; the states], the unpacked Conv over
    them, y gathered back; each new state is gathered from its window's columns len .. len+k-2."""
    pk = PackedLayout.of(cu_seqlens, x)
    k1, d = dims.k - 1, dims.conv_dim
    taps = op.Constant(value_ints=list(range(k1)))
    seqs = op.Range(op.Constant(value_int=0), op.Squeeze(op.Shape(conv_states, start=0, end=1)),
                    op.Constant(value_int=1))
    carry = op.Add(op.Add(op.Shape(x, start=1, end=2), op.Unsqueeze(op.Mul(seqs, ints(k1)), ints(1))), taps)
    index = op.Concat(carry, pk.gather, axis=1)  # [n, k-1+Lmax]
    rows = op.Concat(op.Squeeze(f32(x), ints(0)), op.Reshape(op.Transpose(conv_states, perm=[0, 2, 1]), ints(-1, d)),
                     axis=0)
    window = op.Transpose(op.Gather(rows, index, axis=0), perm=[0, 2, 1])  # [n, d, k-1+Lmax]
    w = op.Unsqueeze(weight, ints(1))
    y = op.Conv(window, w, bias, group=d) if bias is not None else op.Conv(window, w, group=d)
    if silu_act:
        y = silu(y)
    y = pk.packed(op.Transpose(y, perm=[0, 2, 1]), d)
    tail = op.GatherElements(index, op.Add(op.Unsqueeze(pk.lens, ints(1)), taps), axis=1)  # [n, k-1]
    new_states = op.Transpose(op.Gather(rows, tail, axis=0), perm=[0, 2, 1])
    return op.CastLike(y, x), new_states


def packed_lowerings(dims: Dims, scan=None) -> dict:
    """The packed ops' translations, ``scan`` being the flavor's unpacked scan (see ``ssd_scan_packed``)."""

    def scan_packed(x, dt, A, B, C, D, dt_bias, initial_states, cu_seqlens, chunk_size, dt_softplus, dt_min, dt_max):
        return ssd_scan_packed(x, dt, A, B, C, D, dt_bias, initial_states, cu_seqlens, chunk_size, dt_softplus,
                               dt_min, dt_max, dims, scan)

    def conv_packed(x, weight, bias, conv_states, cu_seqlens, silu):
        return causal_conv1d_packed(x, weight, bias, conv_states, cu_seqlens, silu, dims)

    return {"ssd_scan_packed": scan_packed, "causal_conv1d_packed": conv_packed}


def lowerings(dims: Dims) -> dict:
    """The translation of each ssd_deploy op (names as in ssd/ops.py), static sizes bound."""

    def scan(x, dt, A, B, C, D, dt_bias, initial_state, chunk_size, dt_softplus, dt_min, dt_max):
        return ssd_scan(x, dt, A, B, C, D, dt_bias, initial_state, chunk_size, dt_softplus, dt_min, dt_max, dims)

    def step(state, x, dt, A, B, C, D, dt_bias, dt_softplus, dt_min, dt_max):
        return ssd_step(state, x, dt, A, B, C, D, dt_bias, dt_softplus, dt_min, dt_max, dims)

    def conv(x, weight, bias, conv_state, silu):
        return causal_conv1d(x, weight, bias, conv_state, silu, dims)

    return {"ssd_scan": scan, "ssd_step": step, "causal_conv1d": conv, "gated_rmsnorm": gated_rmsnorm,
            **packed_lowerings(dims)}
