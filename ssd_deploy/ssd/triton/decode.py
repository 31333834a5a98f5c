"""A layer's SSM part of one decode step with its states updated IN PLACE: the conv of the token (SiLU), the SSM
step with A = -exp(A_log), D skip and dt softplus, the conv window and the SSM state rewritten where they are. What a
CUDA graph that owns its states replays (runtime/cuda_graphs.py, docs/performance.md).

Fused (the default): ONE kernel, where the ops take four launches (conv, -exp(A_log) as two, step) and allocate new
states. Each program owns BLOCK_P rows of one head's state, as in ``step.py``, and computes the conv outputs it
needs itself: its x channels, and its group's B and C (recomputed by every program of the group: 2·n channels of
k taps, L2-resident beside the state it streams). Its x channels' windows are its own to rewrite. The group's B and
C windows are read by every program of the group, so the LAST of them to finish rewrites them: each program counts
itself in with an atomic add (after a barrier: all its threads have read) on a per-(sequence, group) counter, and
the program that finds everyone else counted reads the old B and C windows once more (nobody else reads or writes
them any more), writes the new ones and resets the counter for the next launch. The counters live per device and
are never freed (a captured graph holds their address); launches that share them must not overlap, which one
stream guarantees.

Unfused (``fused=False``, and past ``MAX_COUNTERS`` sequence groups): two launches, ``conv.causal_conv1d_step_``
then ``step.ssd_step`` in place with A_log. Kept to measure the fusion against (benchmarks/bench_model_gpu.py).

Not an op: export traces the ops, which are functional; the model calls this only for ``forward(in_place=True)``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import dependent_launch, on_device, process_dt
from .conv import causal_conv1d_step_, conv_token, new_window, store_window
from .step import default_block_p, ssd_step, update_rows

MAX_COUNTERS = 1 << 16  # batch · ngroups at most, per device (256 KiB of int32)
_counters: dict[torch.device, torch.Tensor] = {}


def _counters_on(device: torch.device) -> torch.Tensor:
    """The device's counters, all zero between launches. Allocated at the first (eager) call: DecodeGraphs runs
    the step once before capturing it, so no capture allocates them."""
    if device not in _counters:
        _counters[device] = torch.zeros(MAX_COUNTERS, dtype=torch.int32, device=device)
    return _counters[device]


@triton.jit
def _decode_kernel(xBC_ptr, dt_ptr, w_ptr, bias_ptr, conv_ptr, state_ptr, A_log_ptr, D_ptr, dt_bias_ptr, y_ptr,
                   count_ptr, nheads, hdim, ngroups, dstate, heads_per_group, dt_min, dt_max, stride_xb, stride_dtb,
                   HAS_BIAS: tl.constexpr, D_HAS_HDIM: tl.constexpr, K: tl.constexpr, BLOCK_W: tl.constexpr,
                   BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, PDL: tl.constexpr):
    dependent_launch(PDL)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // nheads
    h = bh % nheads
    g = h // heads_per_group
    offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    offs_w = tl.arange(0, BLOCK_W)
    pmask = offs_p < hdim
    nmask = offs_n < dstate
    d = nheads * hdim
    conv_dim = d + 2 * ngroups * dstate
    token = xBC_ptr + b * stride_xb
    window = conv_ptr + b * conv_dim * (K - 1)
    chan_x = h * hdim + offs_p
    chan_B = d + g * dstate + offs_n
    chan_C = d + (ngroups + g) * dstate + offs_n

    x = conv_token(token, w_ptr, bias_ptr, window, chan_x, pmask, offs_w, HAS_BIAS, True, K)
    Bv = conv_token(token, w_ptr, bias_ptr, window, chan_B, nmask, offs_w, HAS_BIAS, True, K)
    Cv = conv_token(token, w_ptr, bias_ptr, window, chan_C, nmask, offs_w, HAS_BIAS, True, K)
    win_x = new_window(token, window, chan_x, pmask, offs_w, K)
    # rounded to the activations' dtype, as the conv op's output is before the step reads it
    act = xBC_ptr.dtype.element_ty
    x = x.to(act).to(tl.float32)
    Bv = Bv.to(act).to(tl.float32)
    Cv = Cv.to(act).to(tl.float32)

    dtp = process_dt(tl.load(dt_ptr + b * stride_dtb + h).to(tl.float32), tl.load(dt_bias_ptr + h), dt_min, dt_max,
                     True)
    decay = tl.exp(-dtp * tl.exp(tl.load(A_log_ptr + h)))
    y = update_rows(state_ptr, state_ptr, bh, h, offs_p, offs_n, pmask, nmask, x, Bv, Cv, dtp, decay, D_ptr, hdim,
                    dstate, D_HAS_HDIM)
    tl.store(y_ptr + bh * hdim + offs_p, y.to(y_ptr.dtype.element_ty), mask=pmask)

    tl.debug_barrier()  # every thread of this program has read the windows
    store_window(window, chan_x, pmask, offs_w, win_x, K)
    counter = count_ptr + b * ngroups + g
    arrived = tl.atomic_add(counter, 1, sem="acq_rel")
    if arrived == heads_per_group * tl.num_programs(0) - 1:  # the group's last program: all have read B and C
        win_B = new_window(token, window, chan_B, nmask, offs_w, K)
        win_C = new_window(token, window, chan_C, nmask, offs_w, K)
        tl.debug_barrier()  # as above, within this program
        store_window(window, chan_B, nmask, offs_w, win_B, K)
        store_window(window, chan_C, nmask, offs_w, win_C, K)
        tl.atomic_xchg(counter, 0, sem="acq_rel")


def decode_step_(xBC, dt, conv_state, ssm_state, conv_weight, conv_bias, A_log, D, dt_bias, *, headdim: int,
                 ngroups: int, dt_min: float, dt_max: float, fused: bool = True, pdl: bool = False):
    """xBC [b, d + 2gn] and dt [b, h] (rows may be strided: slices of in_proj's output; channels contiguous), the
    block's conv (SiLU) and SSM parameters (A_log, not A) → y [b, h, p] in xBC's dtype; conv_state [b, d + 2gn, k-1]
    and ssm_state [b, h, p, n] (both contiguous, fp32 ssm state) rewritten. ``pdl``: the fused kernel launched as a
    programmatic dependent launch (``common.dependent_launch``; Hopper and later)."""
    b, h = dt.shape
    d = h * headdim
    gn = (xBC.shape[1] - d) // 2
    n, k = gn // ngroups, conv_weight.shape[1]
    if not fused or b * ngroups > MAX_COUNTERS:
        xBC = causal_conv1d_step_(xBC, conv_weight, conv_bias, conv_state, True)
        x = xBC[:, :d].view(b, h, headdim)
        B, C = (xBC[:, d + i * gn:d + (i + 1) * gn].view(b, ngroups, n) for i in range(2))
        y, _ = ssd_step(ssm_state, x, dt, A_log, B, C, D, dt_bias, True, dt_min, dt_max, state_out=ssm_state,
                        A_log=True)
        return y
    if tuple(conv_weight.shape) != (xBC.shape[1], k) or tuple(conv_state.shape) != (b, xBC.shape[1], k - 1) \
            or d + 2 * ngroups * n != xBC.shape[1] or k < 2 or tuple(ssm_state.shape) != (b, h, headdim, n) or ssm_state.dtype != torch.float32 \
            or tuple(D.shape) not in ((h,), (h, headdim)) or h % ngroups:
        raise ValueError(f"decode_step_: shapes do not fit heads {h}, headdim {headdim}, groups {ngroups}, state "
                         f"{n}, conv width {k}: xBC {tuple(xBC.shape)}, conv weight {tuple(conv_weight.shape)}, "
                         f"conv_state {tuple(conv_state.shape)}, ssm_state {ssm_state.dtype} "
                         f"{tuple(ssm_state.shape)}, D {tuple(D.shape)}")
    if not (conv_state.is_contiguous() and ssm_state.is_contiguous()):
        raise ValueError("decode_step_: the states must be contiguous (they are updated in place)")
    if xBC.stride(1) != 1 or dt.stride(1) != 1:
        xBC, dt = xBC.contiguous(), dt.contiguous()
    conv_weight, A_log, D, dt_bias = (t.float().contiguous() for t in (conv_weight, A_log, D, dt_bias))
    conv_bias = None if conv_bias is None else conv_bias.float().contiguous()
    y = torch.empty(b, h, headdim, dtype=xBC.dtype, device=xBC.device)
    block_p = default_block_p(b, h, headdim)
    with on_device(xBC):
        _decode_kernel[(triton.cdiv(headdim, block_p), b * h)](
            xBC, dt, conv_weight, conv_weight if conv_bias is None else conv_bias, conv_state, ssm_state, A_log, D,
            dt_bias, y, _counters_on(xBC.device), h, headdim, ngroups, n, h // ngroups, float(dt_min),
            float(dt_max), xBC.stride(0), dt.stride(0),
            HAS_BIAS=conv_bias is not None, D_HAS_HDIM=D.dim() == 2, K=k, BLOCK_W=max(2, triton.next_power_of_2(k - 1)),
            BLOCK_P=block_p, BLOCK_N=triton.next_power_of_2(n), PDL=pdl, num_warps=4, launch_pdl=pdl)
    return y
