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
    b, l, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    r = h // g
    dtype = _acc_dtype(x)
    q = min(chunk_size, l)
    pad = (-l) % q
    nc = (l + pad) // q

    dtp = process_dt(dt, dt_bias, dt_softplus, dt_min, dt_max, dtype)
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

    y = y.reshape(b, nc * q, h, p)[:, :l] + _d_skip(D.to(dtype), x.to(dtype))
    return y.to(x.dtype), final.reshape(b, h, p, n)


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
