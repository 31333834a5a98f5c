"""Chunked SSD forward (the ``ssd_scan`` contract of docs/op-contracts.md) in four Triton kernels.

With chunks of Q tokens, per batch b, head h and chunk c (positions i, j inside the chunk, cum = cumulative sum of
dt'·A inside the chunk):

1. ``_dt_kernel``: dt' = clamp(softplus(dt + dt_bias)) and cum, both [b, h, chunks, Q] in fp32. Positions past the
   end of the sequence get dt' = 0: they neither decay nor feed the state, so cum[Q-1] is the chunk's total decay.
2. ``_cb_kernel``: CB[i, j] = C_i · B_j per group (shared by the heads of the group), fp32.
3. ``_states_kernel``: the state entering every chunk, walking the chunks in order:
   S_{c+1} = exp(cum[Q-1]) S_c + Σ_j exp(cum[Q-1] - cum_j) dt'_j x_j ⊗ B_j. Fusing the chunk's own state with the
   passing between chunks means the per-chunk states are never written and read back (mamba_ssm writes them, reads
   them, writes the passed ones); the last S is the final state.
4. ``_out_kernel``: y_i = exp(cum_i) C_i · S_c + Σ_{j≤i} CB[i, j] exp(cum_i - cum_j) dt'_j x_j + D ⊙ x_i.

Decays, cumulative sums and states are fp32; matrix products take operands in the I/O dtype with fp32 accumulation
(fp32 operands at full precision, see ``common.dot_precision``).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .common import dot_precision, on_device, process_dt, tuned

MIN_CHUNK = 16  # tl.dot needs every dimension ≥ 16


def chunk_length(chunk_size: int, seqlen: int) -> int:
    """The chunk the kernels use: a power of two (block shapes must be), at most ``chunk_size`` (rounded down) and
    no longer than the sequence needs (decode, l = 1, pays for 16 positions, not 256). Chunking does not change
    the result beyond rounding, so this is free to choose."""
    q = 1 << max(int(chunk_size), 1).bit_length() - 1
    return max(MIN_CHUNK, min(q, triton.next_power_of_2(seqlen)))


@triton.jit
def _chunk(b, c, seqlen, chunk_start_ptr, chunk_len_ptr, Q: tl.constexpr, PACKED: tl.constexpr):
    """The first token row (int64, into [b*l] or the packed [T]) and the length of chunk c of batch row b; packed
    (b = 0), chunk c of the chunk table, where every sequence is chunked on its own (length 0: an unused slot)."""
    if PACKED:
        return tl.load(chunk_start_ptr + c), tl.load(chunk_len_ptr + c)
    else:
        return b.to(tl.int64) * seqlen + c * Q, min(Q, seqlen - c * Q)


@triton.jit
def _dt_kernel(dt_ptr, A_ptr, dt_bias_ptr, dtp_ptr, cum_ptr, chunk_start_ptr, chunk_len_ptr,
               seqlen, nheads, nchunks, dt_min, dt_max,
               DT_SOFTPLUS: tl.constexpr, Q: tl.constexpr, BLOCK_H: tl.constexpr, PACKED: tl.constexpr):
    pid_bc = tl.program_id(0)
    b = pid_bc // nchunks
    c = pid_bc % nchunks
    row0, chunk_len = _chunk(b, c, seqlen, chunk_start_ptr, chunk_len_ptr, Q, PACKED)
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    offs_q = tl.arange(0, Q)
    hmask = offs_h < nheads
    valid = hmask[:, None] & (offs_q[None, :] < chunk_len)
    raw = tl.load(dt_ptr + (row0 + offs_q[None, :]) * nheads + offs_h[:, None], mask=valid,
                  other=0.0).to(tl.float32)
    bias = tl.load(dt_bias_ptr + offs_h, mask=hmask, other=0.0)
    dtp = tl.where(valid, process_dt(raw, bias[:, None], dt_min, dt_max, DT_SOFTPLUS), 0.0)
    A = tl.load(A_ptr + offs_h, mask=hmask, other=0.0)
    cum = tl.cumsum(dtp * A[:, None], axis=1)
    out = ((b.to(tl.int64) * nheads + offs_h[:, None]) * nchunks + c) * Q + offs_q[None, :]
    tl.store(dtp_ptr + out, dtp, mask=hmask[:, None])
    tl.store(cum_ptr + out, cum, mask=hmask[:, None])


@tuned([
    triton.Config({"BLOCK_M": 64, "BLOCK_K": 64, "BLOCK_N": 64}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_K": 64, "BLOCK_N": 64}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_K": 64, "BLOCK_N": 32}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_M": 128, "BLOCK_K": 128, "BLOCK_N": 32}, num_warps=8, num_stages=3),
], key=["Q", "dstate"])
@triton.jit
def _cb_kernel(C_ptr, B_ptr, cb_ptr, chunk_start_ptr, chunk_len_ptr,
               seqlen, nchunks, ngroups, dstate, stride_B, stride_C,
               Q: tl.constexpr, DOT_PREC: tl.constexpr, PACKED: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
    num_k: tl.constexpr = (Q + BLOCK_K - 1) // BLOCK_K
    pid_m = tl.program_id(0) // num_k
    pid_k = tl.program_id(0) % num_k
    # Blocks wholly above the diagonal are never used unmasked (see _out_kernel): skip them.
    if pid_k * BLOCK_K >= (pid_m + 1) * BLOCK_M:
        return
    pid_bc = tl.program_id(1)
    b = pid_bc // nchunks
    c = pid_bc % nchunks
    g = tl.program_id(2)
    row0, chunk_len = _chunk(b, c, seqlen, chunk_start_ptr, chunk_len_ptr, Q, PACKED)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_n = tl.arange(0, BLOCK_N)
    if chunk_len <= 0:  # an unused packed slot
        return
    # [b, l, g, n] at the chunk's first token, group g; tokens stride_B / stride_C apart
    C_ptrs = C_ptr + (row0 + offs_m[:, None]) * stride_C + g * dstate + offs_n[None, :]
    B_ptrs = B_ptr + (row0 + offs_k[None, :]) * stride_B + g * dstate + offs_n[:, None]
    acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
    for n0 in range(0, dstate, BLOCK_N):
        nmask = offs_n < dstate - n0
        Cm = tl.load(C_ptrs, mask=(offs_m[:, None] < chunk_len) & nmask[None, :], other=0.0)
        Bk = tl.load(B_ptrs, mask=nmask[:, None] & (offs_k[None, :] < chunk_len), other=0.0)
        acc = tl.dot(Cm, Bk, acc, input_precision=DOT_PREC)
        C_ptrs += BLOCK_N
        B_ptrs += BLOCK_N
    out = ((b.to(tl.int64) * nchunks + c) * ngroups + g) * Q * Q
    tl.store(cb_ptr + out + offs_m[:, None] * Q + offs_k[None, :], acc,
             mask=(offs_m[:, None] < Q) & (offs_k[None, :] < Q))


@tuned([
    triton.Config({"BLOCK_P": 64, "BLOCK_N": 64, "BLOCK_K": 64}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_P": 32, "BLOCK_N": 64, "BLOCK_K": 64}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_P": 32, "BLOCK_N": 128, "BLOCK_K": 64}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_P": 64, "BLOCK_N": 128, "BLOCK_K": 64}, num_warps=8, num_stages=2),
    triton.Config({"BLOCK_P": 64, "BLOCK_N": 64, "BLOCK_K": 128}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_P": 16, "BLOCK_N": 128, "BLOCK_K": 64}, num_warps=4, num_stages=3),
], key=["Q", "hdim", "dstate", "programs"])
@triton.jit
def _states_kernel(x_ptr, B_ptr, dtp_ptr, cum_ptr, init_ptr, ent_ptr, final_ptr,
                   chunk_start_ptr, chunk_len_ptr, seq_chunks_ptr,
                   seqlen, nchunks, nheads, hdim, ngroups, dstate, heads_per_group, programs, stride_x, stride_B,
                   HAS_INIT: tl.constexpr, Q: tl.constexpr, DOT_PREC: tl.constexpr, PACKED: tl.constexpr,
                   BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    num_n = tl.cdiv(dstate, BLOCK_N)
    pid_p = tl.program_id(0) // num_n
    pid_n = tl.program_id(0) % num_n
    seq = tl.program_id(1).to(tl.int64)  # batch row, or packed sequence (whose states are [n, ...])
    h = tl.program_id(2)
    if PACKED:  # its chunks in the table; chunk-indexed buffers have one row (b = 0)
        b = 0
        c_first = tl.load(seq_chunks_ptr + seq)
        c_end = tl.load(seq_chunks_ptr + seq + 1)
    else:
        b = seq
        c_first = 0
        c_end = nchunks
    g = h // heads_per_group
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    pmask = offs_p < hdim
    nmask = offs_n < dstate
    tile = offs_p[:, None] * dstate + offs_n[None, :]
    tile_mask = pmask[:, None] & nmask[None, :]
    bh = seq * nheads + h
    if HAS_INIT:
        s = tl.load(init_ptr + bh * hdim * dstate + tile, mask=tile_mask, other=0.0)
    else:
        s = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
    x_base = x_ptr + h * hdim
    B_base = B_ptr + g * dstate
    for c in range(c_first, c_end):
        tl.store(ent_ptr + ((b * nchunks + c) * nheads + h) * hdim * dstate + tile, s, mask=tile_mask)
        col = ((b * nheads + h) * nchunks + c) * Q
        cum_last = tl.load(cum_ptr + col + Q - 1)
        s = s * tl.exp(cum_last)
        row0, chunk_len = _chunk(b, c, seqlen, chunk_start_ptr, chunk_len_ptr, Q, PACKED)
        for k0 in range(0, chunk_len, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            kmask = offs_k < chunk_len
            cum_k = tl.load(cum_ptr + col + offs_k, mask=kmask, other=0.0)
            dtp_k = tl.load(dtp_ptr + col + offs_k, mask=kmask, other=0.0)
            t = row0 + offs_k
            xT = tl.load(x_base + t[None, :] * stride_x + offs_p[:, None], mask=pmask[:, None] & kmask[None, :],
                         other=0.0)
            Bk = tl.load(B_base + t[:, None] * stride_B + offs_n[None, :],
                         mask=kmask[:, None] & nmask[None, :], other=0.0)
            scaled = (Bk.to(tl.float32) * (tl.exp(cum_last - cum_k) * dtp_k)[:, None]).to(xT.dtype)
            s = tl.dot(xT, scaled, s, input_precision=DOT_PREC)
    tl.store(final_ptr + bh * hdim * dstate + tile, s, mask=tile_mask)


@tuned([
    triton.Config({"BLOCK_M": 64, "BLOCK_P": 64, "BLOCK_K": 64}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_M": 128, "BLOCK_P": 64, "BLOCK_K": 32}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_P": 64, "BLOCK_K": 64}, num_warps=8, num_stages=2),
    triton.Config({"BLOCK_M": 64, "BLOCK_P": 64, "BLOCK_K": 32}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_P": 32, "BLOCK_K": 64}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_P": 32, "BLOCK_K": 64}, num_warps=4, num_stages=2),
], key=["Q", "hdim", "dstate"])
@triton.jit
def _out_kernel(x_ptr, C_ptr, cb_ptr, dtp_ptr, cum_ptr, ent_ptr, D_ptr, y_ptr, chunk_start_ptr, chunk_len_ptr,
                seqlen, nchunks, nheads, hdim, ngroups, dstate, heads_per_group, stride_x, stride_C,
                D_HAS_HDIM: tl.constexpr, Q: tl.constexpr, DOT_PREC: tl.constexpr, BLOCK_N: tl.constexpr,
                PACKED: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr):
    num_p = tl.cdiv(hdim, BLOCK_P)
    pid_m = tl.program_id(0) // num_p
    pid_p = tl.program_id(0) % num_p
    pid_bc = tl.program_id(1)
    b = (pid_bc // nchunks).to(tl.int64)
    c = pid_bc % nchunks
    h = tl.program_id(2)
    g = h // heads_per_group
    row0, chunk_len = _chunk(b, c, seqlen, chunk_start_ptr, chunk_len_ptr, Q, PACKED)
    if pid_m * BLOCK_M >= chunk_len:  # rows past the end of the sequence (all of an unused packed slot)
        return
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    mmask = offs_m < chunk_len
    pmask = offs_p < hdim
    nmask = offs_n < dstate
    col = ((b * nheads + h) * nchunks + c) * Q
    cum_m = tl.load(cum_ptr + col + offs_m, mask=offs_m < Q, other=0.0)

    # The state entering the chunk, decayed to each row.
    Cm = tl.load(C_ptr + (row0 + offs_m[:, None]) * stride_C + g * dstate + offs_n[None, :],
                 mask=mmask[:, None] & nmask[None, :], other=0.0)
    ent = tl.load(ent_ptr + ((b * nchunks + c) * nheads + h) * hdim * dstate + offs_p[None, :] * dstate
                  + offs_n[:, None], mask=nmask[:, None] & pmask[None, :], other=0.0)
    acc = tl.dot(Cm, ent.to(Cm.dtype), input_precision=DOT_PREC) * tl.exp(cum_m)[:, None]

    # Inside the chunk: causal, so only columns up to this block's last row.
    x_base = x_ptr + row0 * stride_x + h * hdim
    cb_base = cb_ptr + ((b * nchunks + c) * ngroups + g) * Q * Q
    k_end = min((pid_m + 1) * BLOCK_M, chunk_len)
    for k0 in range(0, k_end, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        kmask = offs_k < k_end
        causal = (offs_m[:, None] >= offs_k[None, :]) & kmask[None, :] & mmask[:, None]
        # _cb_kernel skips blocks above the diagonal: what is read there is garbage, and only tl.where (a select,
        # never a product) may drop it.
        cb = tl.load(cb_base + offs_m[:, None] * Q + offs_k[None, :], mask=(offs_m[:, None] < Q) & kmask[None, :],
                     other=0.0)
        cum_k = tl.load(cum_ptr + col + offs_k, mask=kmask, other=0.0)
        dtp_k = tl.load(dtp_ptr + col + offs_k, mask=kmask, other=0.0)
        decay = tl.exp(tl.where(causal, cum_m[:, None] - cum_k[None, :], 0.0))
        w = tl.where(causal, cb * decay * dtp_k[None, :], 0.0)
        xk = tl.load(x_base + offs_k[:, None] * stride_x + offs_p[None, :],
                     mask=kmask[:, None] & pmask[None, :], other=0.0)
        acc = tl.dot(w.to(xk.dtype), xk, acc, input_precision=DOT_PREC)

    rows = row0 + offs_m[:, None]
    io_mask = mmask[:, None] & pmask[None, :]
    xm = tl.load(x_ptr + rows * stride_x + h * hdim + offs_p[None, :], mask=io_mask, other=0.0).to(tl.float32)
    if D_HAS_HDIM:
        D = tl.load(D_ptr + h * hdim + offs_p, mask=pmask, other=0.0)[None, :]
    else:
        D = tl.load(D_ptr + h)
    acc += xm * D
    tl.store(y_ptr + rows * (nheads * hdim) + h * hdim + offs_p[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=io_mask)


def _token_strided(t) -> bool:
    """[b, l, k, m] with its last two axes dense and its tokens evenly spaced across the batch (the kernels take
    one token stride)."""
    b, l, k, m = t.shape
    return (t.stride(3) == 1 or m == 1) and (t.stride(2) == m or k == 1) and (
        b == 1 or l == 1 or t.stride(0) == l * t.stride(1))


def _token_stride(t) -> int:
    """Elements from one token to the next (a size-1 axis may carry any stride: then the batch's)."""
    return t.stride(1) if t.shape[1] > 1 else t.stride(0)


def _check(x, dt, A, B, C, D, dt_bias, initial_state):
    b, l, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"ssd_scan: x must be float32, float16 or bfloat16, got {x.dtype}")
    if B.dtype != x.dtype or C.dtype != x.dtype:
        raise ValueError(f"ssd_scan: B and C must have x's dtype {x.dtype}, got {B.dtype}, {C.dtype}")
    expected = {"dt": (dt, (b, l, h)), "A": (A, (h,)), "B": (B, (b, l, g, n)), "C": (C, (b, l, g, n)),
                "dt_bias": (dt_bias, (h,))}
    for name, (t, shape) in expected.items():
        if tuple(t.shape) != shape:
            raise ValueError(f"ssd_scan: {name} must have shape {shape}, got {tuple(t.shape)}")
    if tuple(D.shape) not in ((h,), (h, p)):
        raise ValueError(f"ssd_scan: D must have shape ({h},) or ({h}, {p}), got {tuple(D.shape)}")
    if initial_state is not None and tuple(initial_state.shape) != (b, h, p, n):
        raise ValueError(f"ssd_scan: initial_state must have shape {(b, h, p, n)}, got {tuple(initial_state.shape)}")
    if l < 1 or h % g:
        raise ValueError(f"ssd_scan: need l >= 1 and heads ({h}) divisible by groups ({g})")


def ssd_scan(x, dt, A, B, C, D, dt_bias, initial_state=None, chunk_size=256, dt_softplus=True, dt_min=0.0,
             dt_max=math.inf, *, y=None, final_state=None):
    """The ``ssd_scan`` op on Triton: returns (y in x's dtype, final_state fp32 [b,h,p,n]).

    ``y`` and ``final_state`` may be given (tests poison them to prove every element is written)."""
    _check(x, dt, A, B, C, D, dt_bias, initial_state)
    b, l, h, p = x.shape
    q = chunk_length(chunk_size, l)
    final_state = (torch.empty(b, h, p, B.shape[3], device=x.device, dtype=torch.float32) if final_state is None
                   else final_state)
    return _launch(x, dt, A, B, C, D, dt_bias, initial_state, q, triton.cdiv(l, q), b, None, dt_softplus, dt_min,
                   dt_max, y, final_state)


def chunk_table(cu_seqlens: torch.Tensor, q: int, max_chunks: int):
    """Every sequence chunked on its own, as device tensors (no host sync): the first token and the length of each
    of ``max_chunks`` chunk slots (length 0 past the last real chunk), and the first slot of each sequence [n+1].

    Sequence s has ceil(len_s / q) chunks; Σ ceil(len_s / q) ≤ ceil(T / q) + n − 1, the ``max_chunks`` bound
    the grids are sized for."""
    cu = cu_seqlens.to(torch.int64)
    lens = cu[1:] - cu[:-1]
    seq_chunks = torch.nn.functional.pad(torch.cumsum((lens + q - 1) // q, 0), (1, 0))
    c = torch.arange(max_chunks, device=cu.device)
    seq = torch.searchsorted(seq_chunks[1:].contiguous(), c, right=True).clamp(max=lens.shape[0] - 1)
    start = cu[seq] + (c - seq_chunks[seq]) * q
    length = torch.where(c < seq_chunks[-1], torch.clamp(cu[seq + 1] - start, 0, q), 0)
    return start.contiguous(), length.contiguous(), seq_chunks.contiguous()


def ssd_scan_packed(x, dt, A, B, C, D, dt_bias, initial_states, cu_seqlens, chunk_size=256, dt_softplus=True,
                    dt_min=0.0, dt_max=math.inf, *, y=None, final_states=None):
    """The ``ssd_scan_packed`` op on Triton (docs/op-contracts.md, "Packed sequences"): x [1,T,h,p] holds n
    sequences cut by cu_seqlens [n+1]; returns (y, final_states fp32 [n,h,p,n]).

    The same four kernels over a chunk table in which every sequence is chunked on its own (``chunk_table``): no
    chunk holds two sequences, so nothing is masked inside a chunk, and the state kernel walks each sequence's
    chunks from its own initial state, one program per (sequence, head, tile), writing its final state after its
    last chunk. Grids are sized for the most chunks T and n allow; unused slots exit at once."""
    _check(x, dt, A, B, C, D, dt_bias, None)
    n = initial_states.shape[0]
    _, _, h, p = x.shape
    if x.shape[0] != 1 or tuple(cu_seqlens.shape) != (n + 1,) or tuple(initial_states.shape) != (n, h, p, B.shape[3]):
        raise ValueError(f"ssd_scan_packed: need x [1, T, h, p], initial_states [n, h, p, d_state] and cu_seqlens "
                         f"[n + 1], got {tuple(x.shape)}, {tuple(initial_states.shape)} and {tuple(cu_seqlens.shape)}")
    total = x.shape[1]
    q = chunk_length(chunk_size, total)
    max_chunks = triton.cdiv(total, q) + n - 1
    table = chunk_table(cu_seqlens.to(x.device), q, max_chunks)
    final_states = (torch.empty_like(initial_states, dtype=torch.float32) if final_states is None
                    else final_states)
    return _launch(x, dt, A, B, C, D, dt_bias, initial_states, q, max_chunks, n, table, dt_softplus, dt_min,
                   dt_max, y, final_states)


def _launch(x, dt, A, B, C, D, dt_bias, initial_state, q, nc, nseq, table, dt_softplus, dt_min, dt_max, y,
            final_state):
    """The four kernels. Unpacked (``table`` None): batch rows of ``nc`` chunks each. Packed: one row of ``nc``
    chunk slots described by ``table`` (chunk_table), ``nseq`` sequences."""
    b, l, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    # x, B and C are read in place where they are slices of one [b, l, width] tensor (the conv's output, as the
    # model hands them over): a copy of each cost a tenth of a 2.7b prefill (benchmarks/RESULTS.md)
    x, B, C = (t if _token_strided(t) else t.contiguous() for t in (x, B, C))
    dt = dt.contiguous()
    A, D, dt_bias = (t.float().contiguous() for t in (A, D, dt_bias))
    init = None if initial_state is None else initial_state.float().contiguous()
    packed = table is not None
    start, length, seq_chunks = table if packed else (x, x, x)  # (unused pointers when unpacked)
    f32 = dict(device=x.device, dtype=torch.float32)
    y = torch.empty(b, l, h, p, dtype=x.dtype, device=x.device) if y is None else y
    prec = dot_precision(x.dtype)
    with on_device(x):
        dtp = torch.empty(b, h, nc, q, **f32)
        cum = torch.empty(b, h, nc, q, **f32)
        block_h = min(triton.next_power_of_2(h), max(1, 4096 // q))
        _dt_kernel[(b * nc, triton.cdiv(h, block_h))](
            dt, A, dt_bias, dtp, cum, start, length, l, h, nc, float(dt_min), float(dt_max),
            DT_SOFTPLUS=bool(dt_softplus), Q=q, BLOCK_H=block_h, PACKED=packed)

        cb = torch.empty(b, nc, g, q, q, **f32)
        _cb_kernel[lambda m: (triton.cdiv(q, m["BLOCK_M"]) * triton.cdiv(q, m["BLOCK_K"]), b * nc, g)](
            C, B, cb, start, length, l, nc, g, n, _token_stride(B), _token_stride(C), Q=q, DOT_PREC=prec, PACKED=packed)

        entering = torch.empty(b, nc, h, p, n, **f32)
        programs = nseq * h
        _states_kernel[lambda m: (triton.cdiv(p, m["BLOCK_P"]) * triton.cdiv(n, m["BLOCK_N"]), nseq, h)](
            x, B, dtp, cum, init if init is not None else final_state, entering, final_state, start, length,
            seq_chunks, l, nc, h, p, g, n, h // g, programs, _token_stride(x), _token_stride(B), HAS_INIT=init is not None, Q=q, DOT_PREC=prec,
            PACKED=packed)

        _out_kernel[lambda m: (triton.cdiv(q, m["BLOCK_M"]) * triton.cdiv(p, m["BLOCK_P"]), b * nc, h)](
            x, C, cb, dtp, cum, entering, D, y, start, length, l, nc, h, p, g, n, h // g, _token_stride(x),
            _token_stride(C),
            D_HAS_HDIM=D.dim() == 2, Q=q, DOT_PREC=prec, BLOCK_N=max(16, triton.next_power_of_2(n)), PACKED=packed)
    return y, final_state
