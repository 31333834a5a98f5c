"""The normalisations of a Mamba-2 layer as single Triton kernels: ``gated_rmsnorm`` (the op of
docs/op-contracts.md: rmsnorm(y * silu(z)) per group) and the block's residual add + RMSNorm.

Why kernels: the PyTorch listings upcast, multiply, reduce and cast back in six to ten launches and as many passes
over the activations; a prefill spent more time in those elementwise passes than in the SSD scan, and a decode step
more in their launches than in its GEMVs (benchmarks/RESULTS.md). Each kernel here reads its inputs once and writes
its outputs once, with fp32 arithmetic.

z may be a strided view (the z slice of in_proj's output): only its channel axis must be contiguous.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import on_device


@triton.jit
def _gated_rmsnorm_kernel(y_ptr, z_ptr, w_ptr, out_ptr, seqlen, dim, group_size, stride_zb, stride_zl, eps,
                          BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # b * seqlen + t
    grp = tl.program_id(1)
    b = row // seqlen
    t = row % seqlen
    offs = grp * group_size + tl.arange(0, BLOCK)
    mask = tl.arange(0, BLOCK) < group_size
    y = tl.load(y_ptr + row * dim + offs, mask=mask, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + b * stride_zb + t * stride_zl + offs, mask=mask, other=0.0).to(tl.float32)
    v = y * z * tl.sigmoid(z)
    rstd = 1.0 / tl.sqrt(tl.sum(v * v, axis=0) / group_size + eps)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * dim + offs, (v * rstd * w).to(out_ptr.dtype.element_ty), mask=mask)


def gated_rmsnorm(y, z, weight, eps, group_size, *, out=None):
    """The ``gated_rmsnorm`` op on Triton: y [..., d] contiguous, z [..., d] (channel axis contiguous), weight [d]
    → [..., d] contiguous in y's dtype."""
    d = y.shape[-1]
    if d % group_size:
        raise ValueError(f"gated_rmsnorm: {d} channels do not split into groups of {group_size}")
    y3 = y.contiguous().reshape(-1, 1, d) if y.dim() != 3 else y.contiguous()
    z3 = z.reshape(-1, 1, d) if z.dim() != 3 else z
    if z3.stride(2) != 1:
        z3 = z3.contiguous()
    b, l, _ = y3.shape
    out = torch.empty_like(y3) if out is None else out.view(b, l, d)
    with on_device(y):
        _gated_rmsnorm_kernel[(b * l, d // group_size)](
            y3, z3, weight.contiguous(), out, l, d, group_size, z3.stride(0), z3.stride(1), float(eps),
            BLOCK=triton.next_power_of_2(group_size), num_warps=8 if group_size > 2048 else 4)
    return out.view(y.shape)


@triton.jit
def _add_rmsnorm_kernel(res_ptr, delta_ptr, w_ptr, out_ptr, res_out_ptr, dim, eps,
                        HAS_DELTA: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < dim
    r = tl.load(res_ptr + row * dim + offs, mask=mask, other=0.0)
    if HAS_DELTA:
        # the residual stream keeps its own dtype: the delta is rounded to it first, as the listing does
        r = r + tl.load(delta_ptr + row * dim + offs, mask=mask, other=0.0).to(res_ptr.dtype.element_ty)
        tl.store(res_out_ptr + row * dim + offs, r, mask=mask)
    v = r.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(v * v, axis=0) / dim + eps)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    # the listing rounds the weighted product once, to the weight's dtype
    tl.store(out_ptr + row * dim + offs, (v * rstd * w).to(out_ptr.dtype.element_ty), mask=mask)


def add_rmsnorm(residual, delta, weight, eps):
    """(rmsnorm(residual + delta) * weight in weight's dtype, residual + delta in residual's dtype); delta may be
    None (then the residual is returned as it is). Both inputs contiguous [..., d]."""
    d = residual.shape[-1]
    res = residual.contiguous()
    rows = res.numel() // d
    out = torch.empty(res.shape, dtype=weight.dtype, device=res.device)
    res_out = torch.empty_like(res) if delta is not None else res
    with on_device(res):
        _add_rmsnorm_kernel[(rows,)](
            res, delta.contiguous() if delta is not None else res, weight, out, res_out, d, float(eps),
            HAS_DELTA=delta is not None, BLOCK=triton.next_power_of_2(d), num_warps=8 if d > 2048 else 4)
    return out, res_out
