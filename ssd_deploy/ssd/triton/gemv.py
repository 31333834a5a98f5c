"""A decode step's projections with the norms folded in: one kernel computes ``rmsnorm(x) @ W.T`` for a few rows
(small batch), optionally gated (``rmsnorm(y * silu(z))`` per group, the ``gated_rmsnorm`` op) and followed by the
residual add. A layer's CUDA-graph decode step is then three launches (docs/performance.md, "Decode with CUDA
graphs"): the block's RMSNorm + in_proj, the in-place conv + SSM step (``decode.py``), the gated norm + out_proj +
residual add; the final RMSNorm + lm_head is one more.

Why: inside a graph every dependent kernel costs a few microseconds whatever its work, and a step of five kernels
per layer spent more time in that latency than in reading the weights (benchmarks/RESULTS.md, "Run 2 of the same
day: in-place decode graphs"). A norm needs its whole row before any output, which is what kept it a kernel of its
own; here every program recomputes it: the row is at most a few thousand channels, L2-resident, against the
BLOCK_N × K weight block the program streams.

One pass: the norm is a per-row (per-group) scalar, so the program accumulates the products with the UNnormalised
activations and each group's sum of squares side by side and scales at the end of the group. The listings round the
normalised activations to the model dtype before the projection; this kernel does not (fp32 throughout): in bf16 the
results differ by that rounding, well inside the 1e-2 tolerance, and in fp32 by summation order only.

Each program owns BLOCK_N output channels for every row of the batch (BB, the batch rounded up to a power of two,
at most ``MAX_BATCH``), so each weight block is read from memory once per step.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import on_device, tuned

MAX_BATCH = 8  # the [BB, BLOCK_N, BLOCK_K] product lives in registers; larger batches are GEMMs (cuBLAS)
_REGISTERS = 128  # fp32 product elements per thread that a config may hold (more spills)


def _fits(configs, named_args, **kwargs):
    """Configs whose product tile fits in registers at this batch; the smallest one if none does."""
    bb = named_args["BB"] if "BB" in named_args else kwargs["BB"]
    size = {id(c): bb * c.kwargs["BLOCK_N"] * c.kwargs["BLOCK_K"] / (32 * c.num_warps) for c in configs}
    fit = [c for c in configs if size[id(c)] <= _REGISTERS]
    return fit or [min(configs, key=lambda c: size[id(c)])]


# The first config is the one used untuned (interpreter, SSD_DEPLOY_TRITON_AUTOTUNE=0): 16 rows × 256 channels of
# bf16 per iteration are 16-byte loads, 4 per thread, and 660 programs for a 2.7b in_proj.
CONFIGS = [triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=w)
           for n, k, w in ((16, 256, 4), (8, 256, 4), (4, 512, 4), (32, 128, 4), (8, 512, 8), (16, 512, 8),
                           (32, 256, 8), (4, 128, 4))]


@tuned(CONFIGS, key=["N", "K", "BB", "ngroups", "GATED", "ADD_RESIDUAL"],
       prune_configs_by={"early_config_prune": _fits})
@triton.jit
def _norm_gemv_kernel(x_ptr, z_ptr, nw_ptr, w_ptr, bias_ptr, res_ptr, out_ptr, batch, N, K, ngroups, group_size,
                      stride_xb, stride_zb, eps,
                      GATED: tl.constexpr, HAS_BIAS: tl.constexpr, ADD_RESIDUAL: tl.constexpr, BB: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_b = tl.arange(0, BB)
    nmask = offs_n < N
    bmask = offs_b < batch
    w_rows = w_ptr + offs_n.to(tl.int64)[:, None] * K
    acc = tl.zeros([BB, BLOCK_N], dtype=tl.float32)
    for g in range(0, ngroups):
        part = tl.zeros([BB, BLOCK_N], dtype=tl.float32)
        sumsq = tl.zeros([BB], dtype=tl.float32)
        for k0 in range(0, group_size, BLOCK_K):
            offs_k = g * group_size + k0 + tl.arange(0, BLOCK_K)
            kmask = k0 + tl.arange(0, BLOCK_K) < group_size
            xmask = bmask[:, None] & kmask[None, :]
            v = tl.load(x_ptr + offs_b[:, None] * stride_xb + offs_k[None, :], mask=xmask, other=0.0).to(tl.float32)
            if GATED:
                z = tl.load(z_ptr + offs_b[:, None] * stride_zb + offs_k[None, :], mask=xmask, other=0.0)
                z = z.to(tl.float32)
                v = v * z * tl.sigmoid(z)
            sumsq += tl.sum(v * v, axis=1)
            v = v * tl.load(nw_ptr + offs_k, mask=kmask, other=0.0).to(tl.float32)[None, :]
            w = tl.load(w_rows + offs_k[None, :], mask=nmask[:, None] & kmask[None, :], other=0.0).to(tl.float32)
            part += tl.sum(v[:, None, :] * w[None, :, :], axis=2)
        acc += part / tl.sqrt(sumsq / group_size + eps)[:, None]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=nmask, other=0.0).to(tl.float32)[None, :]
    # the projection's output is in the weight's dtype, as F.linear's
    y = acc.to(w_ptr.dtype.element_ty)
    omask = bmask[:, None] & nmask[None, :]
    rows = offs_b[:, None] * N + offs_n[None, :]
    if ADD_RESIDUAL:
        # the residual stream keeps its own dtype: the projection is rounded to it first, as the listing does
        r = tl.load(res_ptr + rows, mask=omask, other=0.0).to(out_ptr.dtype.element_ty)
        tl.store(out_ptr + rows, r + y.to(out_ptr.dtype.element_ty), mask=omask)
    else:
        tl.store(out_ptr + rows, y, mask=omask)


def norm_gemv(x, norm_weight, eps, weight, bias=None, *, gate=None, group_size=None, residual=None,
              residual_dtype=None):
    """``rmsnorm(x) * norm_weight @ weight.T (+ bias)`` for x [b, K] (b ≤ ``MAX_BATCH``; rows may be strided,
    channels contiguous), weight [N, K] contiguous: [b, N] in weight's dtype, fp32 accumulation.

    ``gate`` [b, K] (rows may be strided): the gated norm instead, ``rmsnorm(x * silu(gate))`` over groups of
    ``group_size`` channels (the ``gated_rmsnorm`` op). ``residual`` [b, N] (contiguous, any float dtype): returns
    ``residual + projection`` in ``residual_dtype`` (default: the residual's) instead of the projection."""
    b, k = x.shape
    n = weight.shape[0]
    group_size = k if group_size is None else group_size
    if b > MAX_BATCH or tuple(weight.shape) != (n, k) or k % group_size or tuple(norm_weight.shape) != (k,) \
            or (gate is not None and tuple(gate.shape) != (b, k)) \
            or (residual is not None and tuple(residual.shape) != (b, n)):
        raise ValueError(f"norm_gemv: x {tuple(x.shape)} (batch at most {MAX_BATCH}), weight {tuple(weight.shape)}, "
                         f"norm weight {tuple(norm_weight.shape)}, groups of {group_size}, gate "
                         f"{None if gate is None else tuple(gate.shape)}, residual "
                         f"{None if residual is None else tuple(residual.shape)} do not fit")
    if x.stride(1) != 1:
        x = x.contiguous()
    if gate is not None and gate.stride(1) != 1:
        gate = gate.contiguous()
    weight = weight.contiguous()
    if residual is not None:
        residual = residual.contiguous()
        out = torch.empty(b, n, dtype=residual_dtype or residual.dtype, device=x.device)
    else:
        out = torch.empty(b, n, dtype=weight.dtype, device=x.device)
    with on_device(x):
        _norm_gemv_kernel[lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)](
            x, x if gate is None else gate, norm_weight.contiguous(), weight, weight if bias is None else bias,
            x if residual is None else residual, out, b, n, k, k // group_size, group_size, x.stride(0),
            0 if gate is None else gate.stride(0), float(eps),
            GATED=gate is not None, HAS_BIAS=bias is not None, ADD_RESIDUAL=residual is not None,
            BB=max(1, triton.next_power_of_2(b)))
    return out
