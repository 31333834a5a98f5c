"""The ``causal_conv1d_packed`` op (docs/op-contracts.md, "Packed sequences") in Triton: the depthwise causal conv
of ``conv.py`` over n sequences end to end, each window starting from its own sequence's state.

One program per (token block, channel block) of the packed axis. Every token knows its sequence and its position in
it (``seq``, ``local``: two [T] int32 vectors computed on the device from cu_seqlens, no host sync); tap i of a token
reads the input ``local - (k-1) + i`` positions into its own sequence, from x when that is ≥ 0, else from the
sequence's carried window, so no window ever reaches into the previous sequence. A second small launch writes each
sequence's new window (its last k-1 inputs, reaching back into its old window when it is shorter than k-1). The
PyTorch listing instead gathers a padded window per sequence (a copy of every activation, padded to the longest).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import on_device


@triton.jit
def _conv_packed_kernel(x_ptr, w_ptr, bias_ptr, state_ptr, seq_ptr, local_ptr, y_ptr,
                        total, dim, stride_xl,
                        HAS_BIAS: tl.constexpr, SILU: tl.constexpr, K: tl.constexpr,
                        BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
    offs_l = tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    lmask = offs_l < total
    dmask = offs_d < dim
    seq = tl.load(seq_ptr + offs_l, mask=lmask, other=0).to(tl.int64)
    local = tl.load(local_ptr + offs_l, mask=lmask, other=0)
    acc = tl.zeros([BLOCK_L, BLOCK_D], dtype=tl.float32)
    for i in tl.static_range(K):
        src = local - (K - 1) + i  # position in the token's own sequence
        w = tl.load(w_ptr + offs_d * K + i, mask=dmask, other=0.0)[None, :]
        xv = tl.load(x_ptr + (offs_l - (K - 1) + i).to(tl.int64)[:, None] * stride_xl + offs_d[None, :],
                     mask=(lmask & (src >= 0))[:, None] & dmask[None, :], other=0.0)
        sv = tl.load(state_ptr + (seq[:, None] * dim + offs_d[None, :]) * (K - 1) + (K - 1 + src)[:, None],
                     mask=(lmask & (src < 0))[:, None] & dmask[None, :], other=0.0)
        acc += (xv.to(tl.float32) + sv.to(tl.float32)) * w  # one of the two is 0 (masked)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_d, mask=dmask, other=0.0)[None, :]
    if SILU:
        acc = acc * tl.sigmoid(acc)
    tl.store(y_ptr + offs_l.to(tl.int64)[:, None] * dim + offs_d[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=lmask[:, None] & dmask[None, :])


@triton.jit
def _conv_packed_state_kernel(x_ptr, state_ptr, cu_ptr, new_state_ptr, dim, stride_xl,
                              K: tl.constexpr, BLOCK_D: tl.constexpr):
    s = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = offs_d < dim
    start = tl.load(cu_ptr + s)
    length = tl.load(cu_ptr + s + 1) - start
    old = state_ptr + (s * dim + offs_d) * (K - 1)
    for j in tl.static_range(K - 1):
        tt = tl.zeros([BLOCK_D], dtype=tl.int64) + (length - (K - 1) + j)  # a vector: masks are per element
        from_x = tl.load(x_ptr + (start + tt) * stride_xl + offs_d, mask=dmask & (tt >= 0), other=0.0)
        from_old = tl.load(old + (K - 1 + tt), mask=dmask & (tt < 0), other=0.0)
        v = tl.where(tt >= 0, from_x.to(tl.float32), from_old.to(tl.float32))
        tl.store(new_state_ptr + (s * dim + offs_d) * (K - 1) + j, v.to(new_state_ptr.dtype.element_ty), mask=dmask)


def causal_conv1d_packed(x, weight, bias, conv_states, cu_seqlens, silu=True, *, y=None, new_states=None):
    """x [1, T, d] (channel axis contiguous), weight [d, k], bias [d] or None, conv_states [n, d, k-1],
    cu_seqlens [n+1] → (y [1, T, d] in x's dtype, new conv_states [n, d, k-1] in conv_states' dtype).

    ``y`` and ``new_states`` may be given (tests poison them); ``new_states`` must not be ``conv_states``."""
    _, total, d = x.shape
    n, k = conv_states.shape[0], weight.shape[1]
    if x.shape[0] != 1 or tuple(weight.shape) != (d, k) or tuple(conv_states.shape) != (n, d, k - 1) \
            or tuple(cu_seqlens.shape) != (n + 1,):
        raise ValueError(f"causal_conv1d_packed: need x [1, T, d], weight {(d, k)}, conv_states [n, {d}, {k - 1}] "
                         f"and cu_seqlens [n+1]; got {tuple(x.shape)}, {tuple(weight.shape)}, "
                         f"{tuple(conv_states.shape)}, {tuple(cu_seqlens.shape)}")
    if x.stride(2) != 1:
        x = x.contiguous()
    weight = weight.float().contiguous()
    bias = None if bias is None else bias.float().contiguous()
    conv_states = conv_states.contiguous()
    cu = cu_seqlens.to(device=x.device, dtype=torch.int64).contiguous()
    t = torch.arange(total, device=x.device)
    seq = torch.searchsorted(cu[1:].contiguous(), t, right=True)
    local = (t - cu[seq]).to(torch.int32)
    seq = seq.to(torch.int32)
    y = torch.empty(1, total, d, dtype=x.dtype, device=x.device) if y is None else y
    new_states = torch.empty_like(conv_states) if new_states is None else new_states
    block_l, block_d = min(32, max(2, triton.next_power_of_2(total))), 128
    with on_device(x):
        _conv_packed_kernel[(triton.cdiv(total, block_l), triton.cdiv(d, block_d))](
            x, weight, bias if bias is not None else weight, conv_states, seq, local, y, total, d, x.stride(1),
            HAS_BIAS=bias is not None, SILU=bool(silu), K=k, BLOCK_L=block_l, BLOCK_D=block_d, num_warps=4)
        _conv_packed_state_kernel[(n, triton.cdiv(d, block_d))](
            x, conv_states, cu, new_states, d, x.stride(1), K=k, BLOCK_D=block_d)
    return y, new_states
