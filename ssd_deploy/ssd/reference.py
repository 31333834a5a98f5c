"""Reference listings of the four ops of docs/op-contracts.md, in plain PyTorch.

Two implementations of the SSD scan live here, as in mamba_ssm (a minimal listing beside the fast kernels):

* ``ssd_sequential``: the recurrence exactly as the contract writes it, one token at a time. It is the
  ground truth for every other implementation; call it with float64 inputs for that.
* ``ssd_chunked``: the chunked (SSD) algorithm used by the PyTorch model on the CPU: intra-chunk output as a
  masked matrix product, chunk states, state passing between chunks, state-to-output. Decays, cumulative sums and
  states are computed in float32 (or float64 for float64 inputs), whatever the input dtype.

The other ops (step, causal conv, gated RMSNorm) have one listing each. Every function takes and returns the
tensors in the layouts of the contract: x [b,l,h,p], dt [b,l,h], A [h], B/C [b,l,g,n], D [h] or [h,p],
dt_bias [h], state [b,h,p,n].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SOFTPLUS_THRESHOLD = 20.0  # mamba_ssm skips softplus above this (softplus(v) == v in fp32 there)


def _acc_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def process_dt(dt, dt_bias, dt_softplus: bool, dt_min: float, dt_max: float, dtype=None):
    """dt' = clamp(softplus(dt + dt_bias), dt_min, dt_max), computed in ``dtype`` (fp32 by default)."""
    dtype = dtype or _acc_dtype(dt)
    v = dt.to(dtype) + dt_bias.to(dtype)
    if dt_softplus:
        v = torch.where(v <= SOFTPLUS_THRESHOLD, F.softplus(v), v)
    return v.clamp(min=dt_min, max=dt_max)


def _d_skip(D: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """D ⊙ x for D of shape [h] or [h, p], x [..., h, p]."""
    return (D[:, None] if D.dim() == 1 else D) * x


def _heads(t: torch.Tensor, nheads: int, dim: int) -> torch.Tensor:
    """Expand groups to heads: heads are grouped contiguously (head i uses group i // (h/g))."""
    return t.repeat_interleave(nheads // t.shape[dim], dim=dim)


def ssd_sequential(x, dt, A, B, C, D, dt_bias, initial_state=None, *, dt_softplus=True, dt_min=0.0,
                   dt_max=math.inf):
    """The contract's recurrence token by token; returns (y, final_state), both in x's dtype (float64 for
    float64 inputs: the ground truth)."""
    b, l, h, p = x.shape
    dtype = _acc_dtype(x)
    dtp = process_dt(dt, dt_bias, dt_softplus, dt_min, dt_max, dtype)
    Bh, Ch = _heads(B.to(dtype), h, 2), _heads(C.to(dtype), h, 2)
    xs, Af = x.to(dtype), A.to(dtype)
    state = (torch.zeros(b, h, p, B.shape[-1], dtype=dtype, device=x.device) if initial_state is None
             else initial_state.to(dtype).clone())
    ys = []
    for t in range(l):
        decay = torch.exp(dtp[:, t] * Af)  # [b,h]
        state = state * decay[..., None, None] + (dtp[:, t, :, None] * xs[:, t])[..., None] * Bh[:, t, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", state, Ch[:, t]) + _d_skip(D.to(dtype), xs[:, t]))
    return torch.stack(ys, dim=1).to(x.dtype), state


def ssd_chunked(x, dt, A, B, C, D, dt_bias, initial_state=None, *, chunk_size=256, dt_softplus=True, dt_min=0.0,
                dt_max=math.inf):
    """Chunked SSD. Returns (y in x's dtype, final_state in fp32 (float64 for float64 inputs)).

    The chunk is min(chunk_size, l), so a short call (decode, l = 1) never pays for a full chunk; l is padded up to
    a multiple of it with dt' = 0, which neither decays nor feeds the state.
    """
    dtp = process_dt(dt, dt_bias, dt_softplus, dt_min, dt_max, _acc_dtype(x))
    y, final = _chunked(x, dtp, A, B, C, initial_state, chunk_size)
    return (y + _d_skip(D.to(y.dtype), x.to(y.dtype))).to(x.dtype), final


def _chunked(x, dtp, A, B, C, initial_state, chunk_size: int):
    """The chunked algorithm on processed dt' (positions with dt' = 0 neither decay nor feed the state): y without
    the D skip, in the accumulation dtype, and the final state."""
    b, l, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    r = h // g
    dtype = dtp.dtype
    q = min(chunk_size, l)
    pad = (-l) % q
    nc = (l + pad) // q

    xdt = x.to(dtype) * dtp[..., None]  # [b,l,h,p]
    if pad:
        dtp, xdt = F.pad(dtp, (0, 0, 0, pad)), F.pad(xdt, (0, 0, 0, 0, 0, pad))
        B, C = F.pad(B, (0, 0, 0, 0, 0, pad)), F.pad(C, (0, 0, 0, 0, 0, pad))
    # chunks, heads split as [g, r] so B and C are never copied per head
    xdt = xdt.reshape(b, nc, q, g, r, p)
    Bc = B.to(dtype).reshape(b, nc, q, g, n)
    Cc = C.to(dtype).reshape(b, nc, q, g, n)
    dA = (dtp * A.to(dtype)).reshape(b, nc, q, g, r).permute(0, 3, 4, 1, 2)  # [b,g,r,c,q]
    upper = torch.ones(q, q, dtype=dtype, device=x.device).triu()  # cumsum inside a chunk as a matmul
    cum = dA @ upper  # [b,g,r,c,q]
    causal = torch.ones(q, q, dtype=torch.bool, device=x.device).tril()

    # 1. intra-chunk (diagonal blocks)
    seg = (cum[..., :, None] - cum[..., None, :]).masked_fill(~causal, -math.inf)
    L = torch.exp(seg)  # [b,g,r,c,i,j]
    CB = torch.einsum("bcign,bcjgn->bgcij", Cc, Bc)  # [b,g,c,i,j]
    y = torch.einsum("bgcij,bgrcij,bcjgrp->bcigrp", CB, L, xdt)

    # 2. state of each chunk on its own (from a zero state)
    decay_to_end = torch.exp(cum[..., -1:] - cum)  # [b,g,r,c,q]
    states = torch.einsum("bcjgn,bgrcj,bcjgrp->bcgrpn", Bc, decay_to_end, xdt)

    # 3. pass states between chunks
    init = (torch.zeros(b, h, p, n, dtype=dtype, device=x.device) if initial_state is None
            else initial_state.to(dtype))
    states = torch.cat([init.reshape(b, 1, g, r, p, n), states], dim=1)  # [b,c+1,g,r,p,n]
    totals = F.pad(cum[..., -1], (1, 0))  # [b,g,r,c+1]
    ctot = totals.cumsum(-1)
    chunk_causal = torch.ones(nc + 1, nc + 1, dtype=torch.bool, device=x.device).tril()
    decay_chunk = torch.exp((ctot[..., :, None] - ctot[..., None, :]).masked_fill(~chunk_causal, -math.inf))
    states = torch.einsum("bgrzc,bcgrpn->bzgrpn", decay_chunk, states)
    entering, final = states[:, :-1], states[:, -1]

    # 4. state entering each chunk, seen from each position
    y = y + torch.einsum("bcign,bcgrpn,bgrci->bcigrp", Cc, entering, torch.exp(cum))

    return y.reshape(b, nc * q, h, p)[:, :l], final.reshape(b, h, p, n)


# ---- packed sequences ------------------------------------------------------------------------------------------
# n sequences end to end on the token axis of a batch of one, cut by cu_seqlens [n+1] (offsets, cu[0] = 0,
# cu[n] = total, every length >= 1); one initial and one final state per sequence (docs/op-contracts.md,
# "Packed sequences").

def seq_lengths(cu_seqlens: torch.Tensor) -> torch.Tensor:
    return cu_seqlens[1:] - cu_seqlens[:-1]


def token_seq_idx(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """The sequence of every token [total] (mamba_ssm's seq_idx), derived from the offsets."""
    t = torch.arange(total, device=cu_seqlens.device)
    return torch.searchsorted(cu_seqlens[1:].contiguous(), t, right=True)


def _padded_index(cu_seqlens: torch.Tensor, total: int):
    """The per-sequence layout [n, Lmax] of a packed token axis: ``gather`` [n, Lmax] (the packed position of each
    slot, 0 for slots past the sequence's end), ``valid`` [n, Lmax] and ``scatter`` [total] (the flat slot of every
    token, to bring results back)."""
    lens = seq_lengths(cu_seqlens)
    lmax = int(lens.max())
    j = torch.arange(lmax, device=cu_seqlens.device)
    valid = j[None, :] < lens[:, None]
    gather = torch.where(valid, cu_seqlens[:-1, None] + j[None, :], 0)
    seq = token_seq_idx(cu_seqlens, total)
    scatter = seq * lmax + (torch.arange(total, device=cu_seqlens.device) - cu_seqlens[seq])
    return gather, valid, scatter


def ssd_sequential_packed(x, dt, A, B, C, D, dt_bias, cu_seqlens, initial_states, **attrs):
    """Ground truth: the sequential recurrence run on each sequence alone, from its own initial state."""
    ys, finals = [], []
    for s, (a, e) in enumerate(zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist())):
        y, f = ssd_sequential(x[:, a:e], dt[:, a:e], A, B[:, a:e], C[:, a:e], D, dt_bias,
                              initial_states[s:s + 1], **attrs)
        ys.append(y)
        finals.append(f)
    return torch.cat(ys, dim=1), torch.cat(finals)


def ssd_chunked_packed(x, dt, A, B, C, D, dt_bias, cu_seqlens, initial_states, *, chunk_size=256, dt_softplus=True,
                       dt_min=0.0, dt_max=math.inf):
    """Packed chunked SSD: x [1,T,h,p], dt [1,T,h], B/C [1,T,g,n], initial_states [n,h,p,n] → (y [1,T,h,p],
    final_states [n,h,p,n]).

    Each sequence is chunked on its own: the tokens are gathered into a per-sequence layout [n, Lmax], slots past a
    sequence's end get dt' = 0 (they neither decay nor feed the state, so its final state is the one after its last
    token), the unpacked algorithm runs with batch n, and y is gathered back. No chunk ever holds two sequences, so
    nothing can leak across a boundary, wherever it falls relative to the chunks; equal lengths are the unpacked
    call on [n, L] exactly."""
    total = x.shape[1]
    gather, valid, scatter = _padded_index(cu_seqlens, total)

    def per_seq(t):  # [1, T, ...] → [n, Lmax, ...]
        return t[0][gather]

    dtp = process_dt(per_seq(dt), dt_bias, dt_softplus, dt_min, dt_max, _acc_dtype(x))
    dtp = torch.where(valid[..., None], dtp, 0)
    y, final = _chunked(per_seq(x), dtp, A, per_seq(B), per_seq(C), initial_states, chunk_size)
    y = y.flatten(0, 1)[scatter][None]
    return (y + _d_skip(D.to(y.dtype), x.to(y.dtype))).to(x.dtype), final


def causal_conv1d_packed(x, weight, bias, conv_states, cu_seqlens, *, silu=True):
    """Packed causal conv: x [1,T,d], conv_states [n,d,k-1] → (y [1,T,d], new conv_states [n,d,k-1]).

    Each sequence gets its own window [its state, its tokens], gathered from the rows of [x; the states] into a
    per-sequence layout [n, d, k-1+Lmax] as for the scan, and the unpacked conv runs on those windows: no window
    crosses a boundary, and equal lengths are the unpacked call exactly. The new state of a sequence is its last
    k-1 inputs (reaching back into its old state when it is shorter than k-1)."""
    total, d = x.shape[1], x.shape[2]
    k = weight.shape[1]
    n = conv_states.shape[0]
    dtype = _acc_dtype(x)
    gather, valid, scatter = _padded_index(cu_seqlens, total)
    s = torch.arange(n, device=x.device)[:, None]
    carry = total + s * (k - 1) + torch.arange(k - 1, device=x.device)[None, :]  # rows of each sequence's state
    index = torch.cat([carry, torch.where(valid, gather, 0)], dim=1)  # [n, k-1+Lmax]
    rows = torch.cat([x[0].to(dtype), conv_states.to(dtype).transpose(1, 2).reshape(-1, d)])  # [T + n(k-1), d]
    window = rows[index].transpose(1, 2)  # [n, d, k-1+Lmax]
    y = F.conv1d(window, weight.to(dtype)[:, None, :], None if bias is None else bias.to(dtype), groups=d)
    if silu:
        y = F.silu(y)
    y = y.transpose(1, 2).flatten(0, 1)[scatter][None]
    lens = seq_lengths(cu_seqlens)
    tail = lens[:, None] + torch.arange(k - 1, device=x.device)[None, :]  # window columns of the last k-1 inputs
    new_states = rows[index.gather(1, tail)].transpose(1, 2)
    return y.to(x.dtype), new_states.to(conv_states.dtype)


def causal_conv1d_sequential_packed(x, weight, bias, conv_states, cu_seqlens, *, silu=True):
    """The unpacked conv on each sequence alone (what the packed conv must equal)."""
    ys, states = [], []
    for s, (a, e) in enumerate(zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist())):
        y, st = causal_conv1d(x[:, a:e], weight, bias, conv_states[s:s + 1], silu=silu)
        ys.append(y)
        states.append(st)
    return torch.cat(ys, dim=1), torch.cat(states)


def ssd_step(state, x, dt, A, B, C, D, dt_bias, *, dt_softplus=True, dt_min=0.0, dt_max=math.inf):
    """One decode step: state [b,h,p,n] fp32, x [b,h,p], dt [b,h], B/C [b,g,n] → (y [b,h,p], new state)."""
    dtype = _acc_dtype(state)
    h = x.shape[1]
    dtp = process_dt(dt, dt_bias, dt_softplus, dt_min, dt_max, dtype)  # [b,h]
    Bh, Ch = _heads(B.to(dtype), h, 1), _heads(C.to(dtype), h, 1)
    xs = x.to(dtype)
    decay = torch.exp(dtp * A.to(dtype))
    new = state.to(dtype) * decay[..., None, None] + (dtp[..., None] * xs)[..., None] * Bh[:, :, None, :]
    y = torch.einsum("bhpn,bhn->bhp", new, Ch) + _d_skip(D.to(dtype), xs)
    return y.to(x.dtype), new


def causal_conv1d(x, weight, bias, conv_state=None, *, silu=True):
    """Depthwise causal conv over time with carried state. x [b,l,d], weight [d,k], bias [d] or None,
    conv_state [b,d,k-1] (the last k-1 inputs) → (y [b,l,d], new conv_state [b,d,k-1])."""
    b, l, d = x.shape
    k = weight.shape[1]
    dtype = _acc_dtype(x)
    if conv_state is None:
        conv_state = x.new_zeros(b, d, k - 1)
    window = torch.cat([conv_state.to(dtype), x.transpose(1, 2).to(dtype)], dim=2)  # [b,d,k-1+l]
    y = F.conv1d(window, weight.to(dtype)[:, None, :], None if bias is None else bias.to(dtype), groups=d)
    if silu:
        y = F.silu(y)
    new_state = window[:, :, window.shape[2] - (k - 1):]
    return y.transpose(1, 2).to(x.dtype), new_state.to(conv_state.dtype)


def gated_rmsnorm(y, z, weight, eps: float, group_size: int):
    """rmsnorm(y * silu(z)) normalised over groups of ``group_size`` channels (mamba_ssm RMSNormGated,
    norm_before_gate=False)."""
    dtype = _acc_dtype(y)
    v = y.to(dtype) * F.silu(z.to(dtype))
    shape = v.shape
    v = v.reshape(*shape[:-1], shape[-1] // group_size, group_size)
    v = v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + eps)
    return (v.reshape(shape) * weight.to(dtype)).to(y.dtype)
