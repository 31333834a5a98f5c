"""The ``causal_conv1d`` op (docs/op-contracts.md) as one Triton kernel: depthwise causal conv over time with the
carried window, bias and SiLU fused, the new window written by the same launch.

Why a kernel: the PyTorch listing concatenates the carried window with the input, upcasts, convolves, applies SiLU
and casts back: five passes over the activations and several launches per layer, which made the conv and its copies
the largest non-GEMM cost of a prefill and a good part of a decode step's launches (benchmarks/RESULTS.md). Here
each output element reads its k inputs (from x, or from the carried window for the first k-1 positions) once.

x may be a strided view (the xBC slice of in_proj's output): only its channel axis must be contiguous, so the model
does not copy it first.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import on_device


@triton.jit
def _conv_kernel(x_ptr, w_ptr, bias_ptr, state_ptr, y_ptr, new_state_ptr,
                 seqlen, dim, stride_xb, stride_xl,
                 HAS_BIAS: tl.constexpr, SILU: tl.constexpr, K: tl.constexpr,
                 BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_l = tl.program_id(0)
    b = tl.program_id(2).to(tl.int64)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    dmask = offs_d < dim
    lmask = offs_l < seqlen
    x_base = x_ptr + b * stride_xb
    state_base = state_ptr + (b * dim + offs_d) * (K - 1)  # [b, d, k-1]

    acc = tl.zeros([BLOCK_L, BLOCK_D], dtype=tl.float32)
    for i in tl.static_range(K):
        t = offs_l - (K - 1) + i  # input position feeding tap i
        xv = tl.load(x_base + t[:, None] * stride_xl + offs_d[None, :],
                     mask=(lmask & (t >= 0))[:, None] & dmask[None, :], other=0.0)
        acc += xv.to(tl.float32) * tl.load(w_ptr + offs_d * K + i, mask=dmask, other=0.0)[None, :]
    if pid_l * BLOCK_L < K - 1:  # only the first positions reach back into the carried window
        for i in tl.static_range(K - 1):
            t = offs_l - (K - 1) + i
            sv = tl.load(state_base[None, :] + (K - 1 + t)[:, None],
                         mask=(lmask & (t < 0))[:, None] & dmask[None, :], other=0.0)
            acc += sv.to(tl.float32) * tl.load(w_ptr + offs_d * K + i, mask=dmask, other=0.0)[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_d, mask=dmask, other=0.0)[None, :]
    if SILU:
        acc = acc * tl.sigmoid(acc)
    y = y_ptr + (b * seqlen + offs_l[:, None]) * dim + offs_d[None, :]
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=lmask[:, None] & dmask[None, :])

    if pid_l == 0:  # the new window: the last k-1 inputs, reaching into the old window when seqlen < k-1
        new_base = new_state_ptr + (b * dim + offs_d) * (K - 1)
        for j in tl.static_range(K - 1):
            tt = tl.zeros([BLOCK_D], dtype=tl.int32) + (seqlen - (K - 1) + j)  # a vector: masks are per element
            from_new_x = tl.load(x_base + tt * stride_xl + offs_d, mask=dmask & (tt >= 0), other=0.0)
            from_old = tl.load(state_base + (K - 1 + tt), mask=dmask & (tt < 0), other=0.0)
            v = tl.where(tt >= 0, from_new_x.to(tl.float32), from_old.to(tl.float32))
            tl.store(new_base + j, v.to(new_state_ptr.dtype.element_ty), mask=dmask)


def causal_conv1d(x, weight, bias, conv_state, silu=True, *, y=None, new_state=None):
    """The ``causal_conv1d`` op on Triton: x [b, l, d] (channel axis contiguous), weight [d, k], bias [d] or None,
    conv_state [b, d, k-1] → (y [b, l, d] contiguous in x's dtype, new conv_state in conv_state's dtype).

    ``y`` and ``new_state`` may be given (tests poison them to prove every element is written); ``new_state`` must
    not be ``conv_state`` (the kernel reads the old window while other programs write the new one)."""
    b, l, d = x.shape
    k = weight.shape[1]
    if x.stride(2) != 1:
        x = x.contiguous()
    if tuple(weight.shape) != (d, k) or tuple(conv_state.shape) != (b, d, k - 1):
        raise ValueError(f"causal_conv1d: need weight {(d, k)} and conv_state {(b, d, k - 1)}; got "
                         f"{tuple(weight.shape)}, {tuple(conv_state.shape)}")
    weight = weight.float().contiguous()
    bias = None if bias is None else bias.float().contiguous()
    conv_state = conv_state.contiguous()
    y = torch.empty(b, l, d, dtype=x.dtype, device=x.device) if y is None else y
    new_state = torch.empty_like(conv_state) if new_state is None else new_state
    block_l = min(32, max(2, triton.next_power_of_2(l)))
    block_d = 128 if l > 1 else 256
    with on_device(x):
        _conv_kernel[(triton.cdiv(l, block_l), triton.cdiv(d, block_d), b)](
            x, weight, bias if bias is not None else weight, conv_state, y, new_state,
            l, d, x.stride(0), x.stride(1),
            HAS_BIAS=bias is not None, SILU=bool(silu), K=k, BLOCK_L=block_l, BLOCK_D=block_d, num_warps=4)
    return y, new_state


@triton.jit
def conv_token(x_ptr, w_ptr, bias_ptr, window_ptr, chan, cmask, offs_w, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
               K: tl.constexpr):
    """One token of the conv for channels ``chan`` of one sequence (x_ptr: its token, [d]; window_ptr: its window,
    [d, K-1]), in fp32. Reads only."""
    wmask = cmask[:, None] & (offs_w < K - 1)[None, :]
    x = tl.load(x_ptr + chan, mask=cmask, other=0.0).to(tl.float32)
    old = tl.load(window_ptr + chan[:, None] * (K - 1) + offs_w[None, :], mask=wmask, other=0.0).to(tl.float32)
    taps = tl.load(w_ptr + chan[:, None] * K + offs_w[None, :], mask=wmask, other=0.0)
    acc = tl.sum(old * taps, axis=1) + x * tl.load(w_ptr + chan * K + (K - 1), mask=cmask, other=0.0)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + chan, mask=cmask, other=0.0)
    if SILU:
        acc = acc * tl.sigmoid(acc)
    return acc


@triton.jit
def new_window(x_ptr, window_ptr, chan, cmask, offs_w, K: tl.constexpr):
    """The window after the token, [channels, BLOCK_W] in fp32: the old one shifted by one slot, x last. Reads
    only: the caller writes it (``store_window``) once every reader of the old window is done."""
    shifted = tl.load(window_ptr + chan[:, None] * (K - 1) + offs_w[None, :] + 1,
                      mask=cmask[:, None] & (offs_w < K - 2)[None, :], other=0.0).to(tl.float32)
    x = tl.load(x_ptr + chan, mask=cmask, other=0.0).to(tl.float32)
    return tl.where((offs_w == K - 2)[None, :], x[:, None], shifted)


@triton.jit
def store_window(window_ptr, chan, cmask, offs_w, new, K: tl.constexpr):
    """Writes ``new_window``'s result for channels ``chan`` of one sequence."""
    tl.store(window_ptr + chan[:, None] * (K - 1) + offs_w[None, :], new.to(window_ptr.dtype.element_ty),
             mask=cmask[:, None] & (offs_w < K - 1)[None, :])


@triton.jit
def _conv_step_kernel(x_ptr, w_ptr, bias_ptr, state_ptr, y_ptr, dim, stride_xb,
                      HAS_BIAS: tl.constexpr, SILU: tl.constexpr, K: tl.constexpr, BLOCK_W: tl.constexpr,
                      BLOCK_D: tl.constexpr):
    b = tl.program_id(1).to(tl.int64)
    offs_d = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = offs_d < dim
    window = state_ptr + b * dim * (K - 1)
    offs_w = tl.arange(0, BLOCK_W)
    token = x_ptr + b * stride_xb
    acc = conv_token(token, w_ptr, bias_ptr, window, offs_d, dmask, offs_w, HAS_BIAS, SILU, K)
    new = new_window(token, window, offs_d, dmask, offs_w, K)
    tl.store(y_ptr + b * dim + offs_d, acc.to(y_ptr.dtype.element_ty), mask=dmask)
    tl.debug_barrier()  # threads holding the same channel (replicated layouts) all read before any writes
    store_window(window, offs_d, dmask, offs_w, new, K)


def causal_conv1d_step_(x, weight, bias, conv_state, silu=True, *, y=None):
    """One token of ``causal_conv1d`` with the window updated IN PLACE: x [b, d] (channel axis contiguous; rows may
    be strided, as the xBC slice of in_proj's output), weight [d, k], bias [d] or None, conv_state [b, d, k-1]
    contiguous, rewritten → y [b, d] contiguous in x's dtype.

    The decode step of a CUDA graph that owns its states (runtime/cuda_graphs.py): no second window buffer, no
    copy. Each program owns a block of channels of one sequence, reads their whole window into registers, then
    writes the shifted window over it: no program reads what another writes."""
    b, d = x.shape
    k = weight.shape[1]
    if x.stride(1) != 1:
        x = x.contiguous()
    if tuple(weight.shape) != (d, k) or tuple(conv_state.shape) != (b, d, k - 1) or k < 2:
        raise ValueError(f"causal_conv1d_step_: need weight {(d, k)} with k >= 2 and conv_state {(b, d, k - 1)}; "
                         f"got {tuple(weight.shape)}, {tuple(conv_state.shape)}")
    if not conv_state.is_contiguous():
        raise ValueError("causal_conv1d_step_: conv_state must be contiguous (it is updated in place)")
    weight = weight.float().contiguous()
    bias = None if bias is None else bias.float().contiguous()
    y = torch.empty(b, d, dtype=x.dtype, device=x.device) if y is None else y
    block_d = 256
    with on_device(x):
        _conv_step_kernel[(triton.cdiv(d, block_d), b)](
            x, weight, bias if bias is not None else weight, conv_state, y, d, x.stride(0),
            HAS_BIAS=bias is not None, SILU=bool(silu), K=k, BLOCK_W=max(2, triton.next_power_of_2(k - 1)),
            BLOCK_D=block_d, num_warps=4)
    return y
