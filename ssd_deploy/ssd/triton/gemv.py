"""OPT-IN (``triton.enabled("cuda", ("decode_gemv",))``): measured slower than the norms and cuBLAS's projections
apart on the H200 (``NOTES.md``, "Folded decode GEMV: measured").

A decode step's projections with the norms folded in: one kernel computes ``rmsnorm(x) @ W.T`` for a few rows
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
activations (times the norm weight) and each group's sum of squares side by side and scales at the end of the
group. The products run on the tensor cores, the activations rounded to the weight's dtype as the listings round the
normalised activations before the projection (the rounding differs by the rstd factor: bf16 results differ from the
listing's by rounding, well inside 1e-2; fp32 operands are not rounded, ``dot_precision``).

Each program owns BLOCK_N output channels for every row of the batch (a tile of ``MAX_BATCH`` rows, the rows past
the batch zero), so each weight block is read from memory once per step.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import AUTOTUNE, dependent_launch, dot_precision, on_device, prefetch_l2, tuned

MAX_BATCH = 16  # the rows of one tensor-core tile; larger batches are GEMMs (cuBLAS)

# (BLOCK_N, BLOCK_K, warps, stages), tuned per shape. Longer blocks of K and more stages put more bytes in flight
# per program, which a batch-1 GEMV is bound by where the grid is small (out_proj: d_model outputs).
CONFIGS = [triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=st)
           for n, k, w, st in ((16, 256, 4, 3), (16, 512, 4, 4), (16, 256, 4, 5), (16, 128, 4, 6), (32, 256, 4, 3),
                               (32, 128, 4, 4), (64, 128, 4, 4), (16, 1024, 4, 2))]
# Programs that fill an H100/H200 a few times over (132 multiprocessors)
MANY_PROGRAMS = 264


def untuned_config(n: int) -> triton.Config:
    """The config without tuning (``SSD_DEPLOY_TRITON_AUTOTUNE=0``, the interpreter), by the bytes in flight: with
    many programs (in_proj, lm_head) 16 rows x 256 channels, two blocks ahead (a 2.7b in_proj: 660 programs, 10 MB
    in flight); with few (out_proj: d_model / 16 programs) blocks of 512, three ahead."""
    return CONFIGS[0] if triton.cdiv(n, CONFIGS[0].kwargs["BLOCK_N"]) >= MANY_PROGRAMS else CONFIGS[1]


@triton.jit
def _k_block(i, blocks_per_group, group_size, K, BLOCK_K: tl.constexpr):
    """Channels of the i-th block of K and their mask: the blocks walk each group in turn, none straddles two."""
    within = (i % blocks_per_group) * BLOCK_K + tl.arange(0, BLOCK_K)
    offs = (i // blocks_per_group) * group_size + within
    return offs, (within < group_size) & (offs < K)


@tuned(CONFIGS, key=["N", "K", "ngroups", "GATED", "ADD_RESIDUAL"])
@triton.jit
def _norm_gemv_kernel(x_ptr, z_ptr, nw_ptr, w_ptr, bias_ptr, res_ptr, out_ptr, batch, N, K, ngroups, group_size,
                      stride_xb, stride_zb, eps,
                      GATED: tl.constexpr, HAS_BIAS: tl.constexpr, ADD_RESIDUAL: tl.constexpr, BB: tl.constexpr,
                      PRECISION: tl.constexpr, PDL: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # A [BB, BLOCK_K] x [BLOCK_K, BLOCK_N] product per block of K on the tensor cores (rows past the batch are
    # zeros): Triton streams the weight blocks of a tl.dot loop through shared memory ahead of use (num_stages),
    # which is what keeps enough bytes in flight; it pipelines no plain loads.
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    w_rows = w_ptr + offs_n.to(tl.int64)[:, None] * K
    if PDL:
        # While the previous kernel ends, this program's first two blocks of weights (written by no kernel) come
        # into the L2, a prefetch every 32 channels (a 128-byte line in fp32, half of one in 16 bits): the first
        # loads after the wait do not pay the DRAM latency.
        lines = tl.arange(0, 2 * BLOCK_K // 32) * 32
        rows = w_ptr + tl.minimum(offs_n, N - 1).to(tl.int64)[:, None] * K
        prefetch_l2(rows + tl.minimum(lines, K - 1)[None, :])
    dependent_launch(PDL)
    offs_b = tl.arange(0, BB)
    nmask = offs_n < N
    bmask = offs_b < batch
    blocks_per_group = tl.cdiv(group_size, BLOCK_K)
    acc = tl.zeros([BB, BLOCK_N], dtype=tl.float32)
    part = tl.zeros([BB, BLOCK_N], dtype=tl.float32)  # the current group's products, unnormalised
    squares = tl.zeros([BB, BLOCK_K], dtype=tl.float32)
    for i in range(0, ngroups * blocks_per_group):
        offs_k, kmask = _k_block(i, blocks_per_group, group_size, K, BLOCK_K)
        w = tl.load(w_rows + offs_k[None, :], mask=nmask[:, None] & kmask[None, :], other=0.0)
        xmask = bmask[:, None] & kmask[None, :]
        v = tl.load(x_ptr + offs_b[:, None] * stride_xb + offs_k[None, :], mask=xmask, other=0.0).to(tl.float32)
        if GATED:
            z = tl.load(z_ptr + offs_b[:, None] * stride_zb + offs_k[None, :], mask=xmask, other=0.0)
            z = z.to(tl.float32)
            v = v * z * tl.sigmoid(z)
        squares += v * v
        v = v * tl.load(nw_ptr + offs_k, mask=kmask, other=0.0).to(tl.float32)[None, :]
        part = tl.dot(v.to(w.dtype), tl.trans(w), part, input_precision=PRECISION)
        if i % blocks_per_group == blocks_per_group - 1:  # the group ends: its rms is known
            acc += part / tl.sqrt(tl.sum(squares, axis=1) / group_size + eps)[:, None]
            part = tl.zeros([BB, BLOCK_N], dtype=tl.float32)
            squares = tl.zeros([BB, BLOCK_K], dtype=tl.float32)
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
              residual_dtype=None, pdl: bool = False, config: triton.Config | None = None):
    """``rmsnorm(x) * norm_weight @ weight.T (+ bias)`` for x [b, K] (b ≤ ``MAX_BATCH``; rows may be strided,
    channels contiguous), weight [N, K] contiguous: [b, N] in weight's dtype, fp32 accumulation.

    ``gate`` [b, K] (rows may be strided): the gated norm instead, ``rmsnorm(x * silu(gate))`` over groups of
    ``group_size`` channels (the ``gated_rmsnorm`` op). ``residual`` [b, N] (contiguous, any float dtype): returns
    ``residual + projection`` in ``residual_dtype`` (default: the residual's) instead of the projection. ``pdl``:
    launched as a programmatic dependent launch (``common.dependent_launch``; Hopper and later). ``config``: one of
    ``CONFIGS`` instead of the tuned one (benchmarks/bench_gemv_gpu.py times each); untuned, ``untuned_config``."""
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
    if config is None and not AUTOTUNE:
        config = untuned_config(n)
    kernel = _norm_gemv_kernel if config is None else _norm_gemv_kernel.fn
    options = {} if config is None else {**config.kwargs, "num_warps": config.num_warps,
                                          "num_stages": config.num_stages}
    with on_device(x):
        kernel[lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)](
            x, x if gate is None else gate, norm_weight.contiguous(), weight, weight if bias is None else bias,
            x if residual is None else residual, out, b, n, k, k // group_size, group_size, x.stride(0),
            0 if gate is None else gate.stride(0), float(eps),
            GATED=gate is not None, HAS_BIAS=bias is not None, ADD_RESIDUAL=residual is not None,
            BB=MAX_BATCH, PRECISION=dot_precision(weight.dtype), PDL=pdl, launch_pdl=pdl, **options)
    return out
