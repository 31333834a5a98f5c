"""One decode step (the ``ssd_step`` contract of docs/op-contracts.md) as one Triton kernel.

Decode moves the state twice (read, write: 2·b·h·p·n·4 bytes) and does a few flops per element, so the kernel is a
streaming pass over the state: each program owns BLOCK_P rows of one head's [p, n] state, updates them in fp32 and
reduces them against C. Not autotuned: tuning runs the kernel repeatedly, which is wrong when the update is in
place; the block size comes from ``default_block_p`` instead.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .common import on_device, process_dt

# Programs wanted in flight: a few per multiprocessor (132 on an H100/H200) hide the memory latency.
TARGET_PROGRAMS = 1024


@triton.jit
def _step_kernel(state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, dt_bias_ptr, y_ptr, out_state_ptr,
                 nheads, hdim, ngroups, dstate, heads_per_group, dt_min, dt_max,
                 stride_xb, stride_dtb, stride_Bb, stride_Cb,
                 DT_SOFTPLUS: tl.constexpr, D_HAS_HDIM: tl.constexpr, A_LOG: tl.constexpr, BLOCK_P: tl.constexpr,
                 BLOCK_N: tl.constexpr):
    bh = tl.program_id(1).to(tl.int64)
    b = bh // nheads
    h = bh % nheads
    g = h // heads_per_group
    offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    pmask = offs_p < hdim
    nmask = offs_n < dstate

    dtp = process_dt(tl.load(dt_ptr + b * stride_dtb + h).to(tl.float32), tl.load(dt_bias_ptr + h), dt_min, dt_max,
                     DT_SOFTPLUS)
    A = tl.load(A_ptr + h)
    if A_LOG:  # A_ptr holds the parameter A_log: A = -exp(A_log) here rather than in two launches per layer
        A = -tl.exp(A)
    decay = tl.exp(dtp * A)
    x = tl.load(x_ptr + b * stride_xb + h * hdim + offs_p, mask=pmask, other=0.0).to(tl.float32)
    Bv = tl.load(B_ptr + b * stride_Bb + g * dstate + offs_n, mask=nmask, other=0.0).to(tl.float32)
    Cv = tl.load(C_ptr + b * stride_Cb + g * dstate + offs_n, mask=nmask, other=0.0).to(tl.float32)

    y = update_rows(state_ptr, out_state_ptr, bh, h, offs_p, offs_n, pmask, nmask, x, Bv, Cv, dtp, decay, D_ptr, hdim,
                    dstate, D_HAS_HDIM)
    tl.store(y_ptr + bh * hdim + offs_p, y.to(y_ptr.dtype.element_ty), mask=pmask)


@triton.jit
def update_rows(state_ptr, out_state_ptr, bh, h, offs_p, offs_n, pmask, nmask, x, Bv, Cv, dtp, decay, D_ptr, hdim,
                dstate, D_HAS_HDIM: tl.constexpr):
    """Rows ``offs_p`` of state [b·h = bh] updated, S = decay·S + dt'·x ⊗ B, and stored (each element read and
    written by the same thread: ``out_state_ptr`` may be ``state_ptr``); returns y = S·C + D·x for those rows."""
    tile = bh * hdim * dstate + offs_p[:, None] * dstate + offs_n[None, :]
    tile_mask = pmask[:, None] & nmask[None, :]
    s = tl.load(state_ptr + tile, mask=tile_mask, other=0.0)
    s = s * decay + (dtp * x)[:, None] * Bv[None, :]
    tl.store(out_state_ptr + tile, s, mask=tile_mask)
    if D_HAS_HDIM:
        D = tl.load(D_ptr + h * hdim + offs_p, mask=pmask, other=0.0)
    else:
        D = tl.load(D_ptr + h)
    return tl.sum(s * Cv[None, :], axis=1) + D * x


def _rows_contiguous(t) -> bool:
    """Everything but the batch axis laid out densely (the kernel takes a batch stride only)."""
    expected = 1
    for size, stride in reversed(list(zip(t.shape[1:], t.stride()[1:]))):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


def default_block_p(batch: int, nheads: int, hdim: int) -> int:
    """Rows per program: as many as keep about TARGET_PROGRAMS programs, between 4 and 32 (and at most p)."""
    rows = batch * nheads * hdim
    block = triton.next_power_of_2(max(1, rows // TARGET_PROGRAMS))
    return min(max(block, 4), 32, triton.next_power_of_2(hdim))


def ssd_step(state, x, dt, A, B, C, D, dt_bias, dt_softplus=True, dt_min=0.0, dt_max=math.inf, *, y=None,
             state_out=None, block_p=None, A_log=False):
    """The ``ssd_step`` op on Triton: returns (y [b,h,p] in x's dtype, new state fp32 [b,h,p,n]).

    ``state_out`` may be ``state`` itself (update in place, as a decode loop wants); ``y`` may be given too.
    ``block_p`` overrides ``default_block_p`` (benchmarks compare variants with it). ``A_log``: ``A`` holds the
    model's parameter A_log and the kernel takes A = -exp(A_log) (the in-place decode of triton/decode.py)."""
    b, h, p = x.shape
    g, n = B.shape[1], B.shape[2]
    if state.dtype != torch.float32 or tuple(state.shape) != (b, h, p, n):
        raise ValueError(f"ssd_step: state must be float32 {(b, h, p, n)}, got {state.dtype} {tuple(state.shape)}")
    if tuple(dt.shape) != (b, h) or tuple(C.shape) != (b, g, n) or h % g:
        raise ValueError(f"ssd_step: need dt {(b, h)}, C {(b, g, n)} and heads divisible by groups; got dt "
                         f"{tuple(dt.shape)}, C {tuple(C.shape)}")
    if tuple(D.shape) not in ((h,), (h, p)):
        raise ValueError(f"ssd_step: D must have shape ({h},) or ({h}, {p}), got {tuple(D.shape)}")
    if not state.is_contiguous() or (state_out is not None and not state_out.is_contiguous()):
        raise ValueError("ssd_step: states must be contiguous")
    # strided batch views (slices of the conv's and in_proj's outputs) are read in place: a decode step would
    # otherwise launch four copies per layer
    x, dt, B, C = (t if _rows_contiguous(t) else t.contiguous() for t in (x, dt, B, C))
    A, D, dt_bias = (t.float().contiguous() for t in (A, D, dt_bias))
    y = torch.empty(b, h, p, dtype=x.dtype, device=x.device) if y is None else y
    state_out = torch.empty_like(state) if state_out is None else state_out
    block_p = block_p or default_block_p(b, h, p)
    with on_device(x):
        _step_kernel[(triton.cdiv(p, block_p), b * h)](
            state, x, dt, A, B, C, D, dt_bias, y, state_out, h, p, g, n, h // g, float(dt_min), float(dt_max),
            x.stride(0), dt.stride(0), B.stride(0), C.stride(0),
            DT_SOFTPLUS=bool(dt_softplus), D_HAS_HDIM=D.dim() == 2, A_LOG=bool(A_log), BLOCK_P=block_p,
            BLOCK_N=triton.next_power_of_2(n), num_warps=4)
    return y, state_out
