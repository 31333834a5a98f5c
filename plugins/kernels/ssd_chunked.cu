// Chunked SSD prefill on tensor cores (fp16/bf16 I/O, fp32 accumulation, decays and states), one fused kernel.
//
// One block per (chunk c, batch-head bh), Q = 128 tokens, 4 warps (measured faster than Q = 256 at every docs/performance.md
// shape: fewer FLOPs in the causal blocks, three blocks per SM). Blocks take tile numbers from an atomic ticket in
// chunk-major order, so every block that a block waits for is already running (no deadlock whatever the grid):
//   1. x and B chunks -> shared memory by cp.async; dt' and the inclusive cumsum of dt'A, one token per thread.
//   2. S_c = sum_j exp(cum_end - cum_j) dt'_j x_j ⊗ B_j: the chunk's own state, from zero (mma, P x N x Q); the
//      per-token weights scale the x fragments in registers.
//   3. Chain: wait until chunk c-1 of this bh published S_in(c); publish S_in(c+1) = exp(cum_end) S_in(c) + S_c
//      into a two-slot ring (or final_state). Only this step is serial across chunks; it moves 2 x 32 KiB through L2.
//   4. y_i = exp(cum_i) C_i·S_in(c) + sum_{j<=i} (C_i·B_j) exp(cum_i - cum_j) dt'_j x_j + D x_i, per 16-row block:
//      C rows go from global memory straight into A fragments (each row is used by one warp only); C·Bᵀ tiles stay
//      in registers and become the A operand of the next mma (no CB matrix in memory).
// Each warp takes the row blocks w and 2W-1-w so that every warp does the same amount of causal work. Shared
// memory holds x, B and S_in only (70 KiB), so three blocks share an SM.
// Packed sequences (docs/op-contracts.md) are the same kernel over a piece table (packed.cuh): every sequence is cut
// into its own chunks, tiles go piece-major over (piece, head), and a sequence's chunks chain from its own initial
// state to its own final state. No chunk holds two sequences, so nothing is masked; equal lengths run exactly the
// unpacked tiles.
#include <cuda_runtime.h>

#include <atomic>

#include "device_utils.cuh"
#include "mma_sm80.cuh"
#include "packed.cuh"
#include "ssd_internal.h"

namespace ssd {
namespace {

struct ChunkArgs {
    ScanProblem pb;
    float* ring;    // [b*h][2][P][N]: S_in of the chunk being chained, by chunk parity
    int* counters;  // [b*h]: number of chunks whose entering state is published
    int* ticket;    // tile counter
    int nchunks;    // unpacked: chunks per batch row
    const int* offsets;  // packed: first piece of each sequence [b+1] (packed.cuh)
};

// The chunk a tile works on: sequence (batch row) seq < 0 when the tile has none (past the last packed piece).
struct ChunkPos {
    int seq, hi;
    int c, nchunks;  // chunk c of the sequence's nchunks
    size_t tok0;     // token row of its first token
    int nvalid;      // its tokens (<= Q)
};

// Unpacked: chunk-major over (chunk, batch row, head). Packed: piece-major over (piece, head). Either way every
// chunk a tile waits for (the previous one of its sequence and head) has a smaller ticket.
template <int Q>
__device__ __forceinline__ ChunkPos locate(const ChunkArgs& a, int tile) {
    const ScanProblem& pb = a.pb;
    ChunkPos o{};
    if (pb.cu_seqlens) {
        const int piece = tile / pb.h;
        o.hi = tile % pb.h;
        o.seq = piece_seq(a.offsets, pb.b, piece);
        if (o.seq < 0) return o;
        o.c = piece - a.offsets[o.seq];
        o.nchunks = a.offsets[o.seq + 1] - a.offsets[o.seq];
    } else {
        const int bhs = pb.b * pb.h;
        o.c = tile / bhs;
        o.seq = tile % bhs / pb.h;
        o.hi = tile % pb.h;
        o.nchunks = a.nchunks;
    }
    const SeqSpan span = seq_span(pb.cu_seqlens, o.seq, pb.l);
    o.tok0 = span.start + static_cast<size_t>(o.c) * Q;
    o.nvalid = min(Q, span.len - o.c * Q);
    return o;
}

template <int Q, int P, int N>
struct Tile {
    static constexpr int W = Q / 32;           // warps; also one token per thread in the dt pass
    static constexpr int XS = P + 8;           // padded row strides (elements): ldmatrix rows land on
    static constexpr int BS = N + 8;           // distinct banks
    static constexpr int WM = (P / 32 < W) ? P / 32 : W;  // warp grid of step 2 over P x N
    static constexpr int WN = W / WM;
    static constexpr int TM = P / WM, TN = N / WN;
    static constexpr int MT = TM / 16, NT = TN / 8;
    static constexpr size_t SMEM = 2 * static_cast<size_t>(Q * XS + Q * BS + P * BS) + 4 * 3 * Q;
    static_assert(P % 32 == 0 && N % 16 == 0 && W % WM == 0 && TN % 16 == 0, "unsupported tile");
};

template <typename T, int Q, int P, int N>
__global__ void __launch_bounds__(Q, 3) ssd_chunked_kernel(const ChunkArgs a) {
    using S = Tile<Q, P, N>;
    using M = MmaType<T>;
    const ScanProblem& pb = a.pb;
    extern __shared__ __align__(128) unsigned char smem[];
    T* xs = reinterpret_cast<T*>(smem);  // [Q][XS]
    T* bs = xs + Q * S::XS;              // [Q][BS]
    T* ss = bs + Q * S::BS;              // [P][BS] S_in
    float* cum = reinterpret_cast<float*>(ss + P * S::BS);
    float* dts = cum + Q;  // dt'_j
    float* wts = dts + Q;  // exp(cum_end - cum_j) dt'_j (step 2), then exp(cum_blockend(j) - cum_j) dt'_j (step 4)
    __shared__ int s_tile;
    __shared__ float s_wsum[S::W];

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    if (tid == 0) s_tile = atomicAdd(a.ticket, 1);
    __syncthreads();
    const ChunkPos pos = locate<Q>(a, s_tile);
    if (pos.seq < 0) return;  // the whole block: no work
    const int c = pos.c, hi = pos.hi, nvalid = pos.nvalid;
    const int bh = pos.seq * pb.h + hi, gi = hi / (pb.h / pb.g);
    const size_t tok0 = pos.tok0;

    // 1. loads: x and B by cp.async
    const T* xg = static_cast<const T*>(pb.x) + (tok0 * pb.h + hi) * P;
    const T* bg = static_cast<const T*>(pb.B) + (tok0 * pb.g + gi) * N;
    const T* cg = static_cast<const T*>(pb.C) + (tok0 * pb.g + gi) * N;
    constexpr int XV = P / 8, BV = N / 8;  // 16-byte pieces per row
    for (int i = tid; i < Q * XV; i += Q) {
        const int r = i / XV, v = i % XV;
        const bool ok = r < nvalid;
        cp_async16(smem_addr(xs + r * S::XS + v * 8), ok ? xg + static_cast<size_t>(r) * pb.h * P + v * 8 : pb.x, ok);
    }
    for (int i = tid; i < Q * BV; i += Q) {
        const int r = i / BV, v = i % BV;
        const bool ok = r < nvalid;
        cp_async16(smem_addr(bs + r * S::BS + v * 8), ok ? bg + static_cast<size_t>(r) * pb.g * N + v * 8 : pb.B, ok);
    }
    cp_async_commit();

    // dt' (0 past the end: no decay, no input) and the inclusive cumsum of dt'A over the chunk
    float dtp = 0.f;
    if (tid < nvalid) {
        const float bias = pb.dt_bias ? pb.dt_bias[hi] : 0.f;
        dtp = process_dt(to_f(static_cast<const T*>(pb.dt)[(tok0 + tid) * pb.h + hi]) + bias, pb.dtp);
    }
    float v = dtp * pb.A[hi];
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const float u = __shfl_up_sync(0xffffffffu, v, o);
        if (lane >= o) v += u;
    }
    if (lane == 31) s_wsum[warp] = v;
    __syncthreads();
    float total = 0.f;
#pragma unroll
    for (int w = 0; w < S::W; ++w) {
        const float ws = s_wsum[w];
        if (w < warp) v += ws;
        total += ws;
    }
    cum[tid] = v;
    dts[tid] = dtp;
    wts[tid] = __expf(total - v) * dtp;
    // decay from token j to the end of its 16-token block (off-diagonal blocks of step 4 factor exp(cum_i - cum_j)
    // as exp(cum_i - cum_e) exp(cum_e - cum_j), both <= 1, so two exps per row and block instead of one per element)
    const float to_block_end = __expf(__shfl_sync(0xffffffffu, v, lane | 15) - v) * dtp;
    cp_async_wait<0>();
    __syncthreads();

    // 2. S_c[p][n] = sum_j x[j][p] w_j B[j][n]: A = xᵀ and B both from [k][.] storage (ldmatrix.trans)
    const int wm = warp % S::WM, wn = warp / S::WM;
    const int mi = lane >> 3, mr = lane & 7;  // which 8x8 matrix of an x4 load this lane addresses, and its row
    const int kq = (lane & 3) * 2;            // this lane's first k (column) inside an 8-wide fragment piece
    float st[S::MT][S::NT][4];
#pragma unroll
    for (int i = 0; i < S::MT; ++i)
#pragma unroll
        for (int j = 0; j < S::NT; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) st[i][j][r] = 0.f;
#pragma unroll 2
    for (int ks = 0; ks < Q / 16; ++ks) {
        const float w0 = wts[ks * 16 + kq], w1 = wts[ks * 16 + kq + 1];
        const float w8 = wts[ks * 16 + 8 + kq], w9 = wts[ks * 16 + 9 + kq];
        uint32_t af[S::MT][4];
#pragma unroll
        for (int mt = 0; mt < S::MT; ++mt) {
            const int k = ks * 16 + mr + (mi >> 1) * 8, m = wm * S::TM + mt * 16 + (mi & 1) * 8;
            ldsm_x4_t(af[mt], smem_addr(xs + k * S::XS + m));
            af[mt][0] = M::scale(af[mt][0], w0, w1);  // a0, a1: k = kq, kq+1; a2, a3: k = kq+8, kq+9
            af[mt][1] = M::scale(af[mt][1], w0, w1);
            af[mt][2] = M::scale(af[mt][2], w8, w9);
            af[mt][3] = M::scale(af[mt][3], w8, w9);
        }
#pragma unroll
        for (int nt2 = 0; nt2 < S::NT / 2; ++nt2) {
            uint32_t bf[4];
            const int k = ks * 16 + mr + (mi & 1) * 8, n = wn * S::TN + nt2 * 16 + (mi >> 1) * 8;
            ldsm_x4_t(bf, smem_addr(bs + k * S::BS + n));
#pragma unroll
            for (int mt = 0; mt < S::MT; ++mt) {
                M::mma(st[mt][2 * nt2], af[mt], bf[0], bf[1]);
                M::mma(st[mt][2 * nt2 + 1], af[mt], bf[2], bf[3]);
            }
        }
    }

    // 3. chain the entering states
    if (c > 0 && tid == 0) {
        while (ld_acquire(a.counters + bh) < c) __nanosleep(32);
    }
    __syncthreads();  // the state is published, and no warp reads wts for step 2 any more
    wts[tid] = to_block_end;
    {
        const size_t pn = static_cast<size_t>(P) * N;
        const float* enter = c == 0 ? (pb.state_in ? pb.state_in + bh * pn : nullptr)
                                    : a.ring + (static_cast<size_t>(bh) * 2 + (c & 1)) * pn;
        float* leave = c == pos.nchunks - 1 ? pb.state_out + bh * pn
                                          : a.ring + (static_cast<size_t>(bh) * 2 + ((c + 1) & 1)) * pn;
        const float decay = __expf(total);
#pragma unroll
        for (int mt = 0; mt < S::MT; ++mt)
#pragma unroll
            for (int nt = 0; nt < S::NT; ++nt)
#pragma unroll
                for (int hr = 0; hr < 2; ++hr) {
                    const int p = wm * S::TM + mt * 16 + (lane >> 2) + hr * 8;
                    const int n = wn * S::TN + nt * 8 + kq;
                    float2 e = make_float2(0.f, 0.f);
                    if (enter) {
                        // L2 reads: another SM wrote the ring, and this SM's L1 may hold an older copy
                        e = c == 0 ? *reinterpret_cast<const float2*>(enter + p * N + n)
                                   : __ldcg(reinterpret_cast<const float2*>(enter + p * N + n));
                    }
                    const float2 o = make_float2(fmaf(decay, e.x, st[mt][nt][2 * hr]),
                                                 fmaf(decay, e.y, st[mt][nt][2 * hr + 1]));
                    __stcg(reinterpret_cast<float2*>(leave + p * N + n), o);
                    *reinterpret_cast<uint32_t*>(ss + p * S::BS + n) = M::pack(e.x, e.y);
                }
    }
    __threadfence();
    __syncthreads();
    if (tid == 0 && c < pos.nchunks - 1) st_release(a.counters + bh, c + 1);

    // 4. outputs, 16 rows at a time
    T* yg = static_cast<T*>(pb.y) + (tok0 * pb.h + hi) * P;
#pragma unroll 1
    for (int half = 0; half < 2; ++half) {
        const int rb = half == 0 ? warp : 2 * S::W - 1 - warp;
        const int i0 = rb * 16;
        if (i0 >= nvalid) continue;
        // C rows i0 + lane/4 (+8) as A fragments, straight from global memory (zeros past the sequence end)
        const int ia = i0 + (lane >> 2), ib = ia + 8;
        uint32_t cf[N / 16][4];
        {
            const uint32_t* ca_row = reinterpret_cast<const uint32_t*>(cg + static_cast<size_t>(ia) * pb.g * N + kq);
            const uint32_t* cb_row = reinterpret_cast<const uint32_t*>(cg + static_cast<size_t>(ib) * pb.g * N + kq);
            const bool va = ia < nvalid, vb = ib < nvalid;
#pragma unroll
            for (int ks = 0; ks < N / 16; ++ks) {
                cf[ks][0] = va ? __ldg(ca_row + ks * 8) : 0u;
                cf[ks][1] = vb ? __ldg(cb_row + ks * 8) : 0u;
                cf[ks][2] = va ? __ldg(ca_row + ks * 8 + 4) : 0u;
                cf[ks][3] = vb ? __ldg(cb_row + ks * 8 + 4) : 0u;
            }
        }

        // exp(cum_i) C_i · S_in: B operand = S_in[p][n], [n_out][k] storage
        float yacc[P / 8][4];
#pragma unroll
        for (int pt = 0; pt < P / 8; ++pt)
#pragma unroll
            for (int r = 0; r < 4; ++r) yacc[pt][r] = 0.f;
#pragma unroll
        for (int ks = 0; ks < N / 16; ++ks)
#pragma unroll
            for (int pt2 = 0; pt2 < P / 16; ++pt2) {
                uint32_t bf[4];
                ldsm_x4(bf, smem_addr(ss + (pt2 * 16 + mr + (mi >> 1) * 8) * S::BS + ks * 16 + (mi & 1) * 8));
                M::mma(yacc[2 * pt2], cf[ks], bf[0], bf[1]);
                M::mma(yacc[2 * pt2 + 1], cf[ks], bf[2], bf[3]);
            }
        const float ca = cum[ia], cb = cum[ib];
        const float ea = __expf(ca), eb = __expf(cb);
#pragma unroll
        for (int pt = 0; pt < P / 8; ++pt) {
            yacc[pt][0] *= ea;
            yacc[pt][1] *= ea;
            yacc[pt][2] *= eb;
            yacc[pt][3] *= eb;
        }

        // causal part: G = C_i·B_jᵀ (16x16, registers), P = G ⊙ exp(cum_i - cum_j) dt'_j (j <= i), y += P x_j
#pragma unroll 1
        for (int jb = 0; jb <= rb; ++jb) {
            float gacc[2][2][4] = {};  // [k parity][n8 tile]: two independent mma chains per tile
#pragma unroll
            for (int ks = 0; ks < N / 16; ++ks) {
                uint32_t bf[4];
                ldsm_x4(bf, smem_addr(bs + (jb * 16 + mr + (mi >> 1) * 8) * S::BS + ks * 16 + (mi & 1) * 8));
                M::mma(gacc[ks & 1][0], cf[ks], bf[0], bf[1]);
                M::mma(gacc[ks & 1][1], cf[ks], bf[2], bf[3]);
            }
            uint32_t pf[4];
            if (jb < rb) {  // every j before every i: factored decays, no mask
                const float ce = cum[jb * 16 + 15];
                const float sa = __expf(ca - ce), sb = __expf(cb - ce);
#pragma unroll
                for (int nt = 0; nt < 2; ++nt) {
                    const int j = jb * 16 + nt * 8 + kq;
                    const float w0 = wts[j], w1 = wts[j + 1];
                    pf[2 * nt] = M::pack((gacc[0][nt][0] + gacc[1][nt][0]) * sa * w0,
                                         (gacc[0][nt][1] + gacc[1][nt][1]) * sa * w1);
                    pf[2 * nt + 1] = M::pack((gacc[0][nt][2] + gacc[1][nt][2]) * sb * w0,
                                             (gacc[0][nt][3] + gacc[1][nt][3]) * sb * w1);
                }
            } else {  // the diagonal block: causal mask, direct decays (exp(cum_i - cum_j) <= 1 only for j <= i)
#pragma unroll
                for (int nt = 0; nt < 2; ++nt) {
                    const int j = jb * 16 + nt * 8 + kq;
                    const float cj0 = cum[j], cj1 = cum[j + 1], d0 = dts[j], d1 = dts[j + 1];
                    const float g00 = gacc[0][nt][0] + gacc[1][nt][0], g01 = gacc[0][nt][1] + gacc[1][nt][1];
                    const float g10 = gacc[0][nt][2] + gacc[1][nt][2], g11 = gacc[0][nt][3] + gacc[1][nt][3];
                    const float p00 = j <= ia ? g00 * __expf(ca - cj0) * d0 : 0.f;
                    const float p01 = j + 1 <= ia ? g01 * __expf(ca - cj1) * d1 : 0.f;
                    const float p10 = j <= ib ? g10 * __expf(cb - cj0) * d0 : 0.f;
                    const float p11 = j + 1 <= ib ? g11 * __expf(cb - cj1) * d1 : 0.f;
                    pf[2 * nt] = M::pack(p00, p01);
                    pf[2 * nt + 1] = M::pack(p10, p11);
                }
            }
#pragma unroll
            for (int pt2 = 0; pt2 < P / 16; ++pt2) {
                uint32_t bf[4];
                ldsm_x4_t(bf, smem_addr(xs + (jb * 16 + mr + (mi & 1) * 8) * S::XS + pt2 * 16 + (mi >> 1) * 8));
                M::mma(yacc[2 * pt2], pf, bf[0], bf[1]);
                M::mma(yacc[2 * pt2 + 1], pf, bf[2], bf[3]);
            }
        }

        // + D x, stored straight from the accumulators (pairs of columns)
#pragma unroll
        for (int pt = 0; pt < P / 8; ++pt) {
            const int pc = pt * 8 + kq;
            float d0 = 0.f, d1 = 0.f;
            if (pb.D) {
                d0 = pb.D_has_hdim ? pb.D[hi * P + pc] : pb.D[hi];
                d1 = pb.D_has_hdim ? pb.D[hi * P + pc + 1] : d0;
            }
#pragma unroll
            for (int hr = 0; hr < 2; ++hr) {
                const int i = hr ? ib : ia;
                if (i < nvalid) {
                    const float x0 = to_f(xs[i * S::XS + pc]), x1 = to_f(xs[i * S::XS + pc + 1]);
                    *reinterpret_cast<uint32_t*>(yg + static_cast<size_t>(i) * pb.h * P + pc) =
                        M::pack(fmaf(d0, x0, yacc[pt][2 * hr]), fmaf(d1, x1, yacc[pt][2 * hr + 1]));
                }
            }
        }
    }
}

size_t align256(size_t v) { return (v + 255) & ~static_cast<size_t>(255); }

template <typename T, int Q, int P, int N>
int launch(const ScanProblem& pb, void* ws, cudaStream_t stream) {
    using S = Tile<Q, P, N>;
    const int bhs = pb.b * pb.h;
    ChunkArgs a{pb, nullptr, nullptr, nullptr, (pb.l + Q - 1) / Q, nullptr};
    a.ring = static_cast<float*>(ws);
    a.counters = reinterpret_cast<int*>(static_cast<char*>(ws) + align256(2 * static_cast<size_t>(bhs) * P * N * 4));
    a.ticket = a.counters + bhs;
    cudaError_t e = cudaMemsetAsync(a.counters, 0, (bhs + 1) * sizeof(int), stream);
    if (e != cudaSuccess) return e;
    long tiles = static_cast<long>(a.nchunks) * bhs;
    if (pb.cu_seqlens) {  // the piece table after the counters; grid for the most pieces T and b allow
        int* offsets = reinterpret_cast<int*>(reinterpret_cast<char*>(a.counters) + align256((bhs + 1) * sizeof(int)));
        a.offsets = offsets;
        const int rc = build_piece_offsets(pb.cu_seqlens, pb.b, pb.l, Q, offsets, stream);
        if (rc != 0) return rc;
        tiles = max_pieces(pb.b, pb.l, Q) * pb.h;
    }
    auto kernel = ssd_chunked_kernel<T, Q, P, N>;
    // Raise the kernel's shared-memory limit once per device: not again inside a CUDA graph capture.
    static std::atomic<unsigned long long> raised{0};
    int dev = 0;
    e = cudaGetDevice(&dev);
    if (e != cudaSuccess) return e;
    const unsigned long long bit = dev < 64 ? 1ull << dev : 0ull;
    if (!(raised.load() & bit)) {
        e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(S::SMEM));
        if (e != cudaSuccess) return e;
        raised.fetch_or(bit);
    }
    kernel<<<static_cast<unsigned>(tiles), Q, S::SMEM, stream>>>(a);
    return static_cast<int>(cudaGetLastError());
}

constexpr int kChunk = 128;

template <typename T>
int launch_shape(const ScanProblem& pb, void* ws, cudaStream_t stream) {
    if (pb.p == 64 && pb.n == 128) return launch<T, kChunk, 64, 128>(pb, ws, stream);
    if (pb.p == 64 && pb.n == 64) return launch<T, kChunk, 64, 64>(pb, ws, stream);
    return SSD_ERR_BAD_ARG;
}

}  // namespace

bool chunked_supported(const ScanProblem& pb) {
    const bool shape = pb.p == 64 && (pb.n == 128 || pb.n == 64);
    const bool dtype = pb.dtype == SSD_F16 || pb.dtype == SSD_BF16;
    // cp.async moves 16-byte pieces; every row start is then aligned when the bases are
    const bool aligned = aligned16(pb.x) && aligned16(pb.B) && aligned16(pb.C) && aligned16(pb.y) &&
                         (pb.state_in == nullptr || aligned16(pb.state_in)) && aligned16(pb.state_out);
    return shape && dtype && aligned;
}

size_t chunked_workspace_size(int b, int h, int p, int n, bool packed) {
    const size_t bhs = static_cast<size_t>(b) * h;
    return align256(2 * bhs * p * n * sizeof(float)) + align256((bhs + 1) * sizeof(int)) +
           (packed ? piece_offsets_bytes(b) : 0);
}

int run_chunked(const ScanProblem& pb, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
    if (workspace_bytes < chunked_workspace_size(pb.b, pb.h, pb.p, pb.n, pb.cu_seqlens != nullptr))
        return SSD_ERR_WORKSPACE;
    if (!workspace || !aligned16(workspace)) return SSD_ERR_BAD_ARG;
    if (pb.dtype == SSD_BF16) return launch_shape<__nv_bfloat16>(pb, workspace, stream);
    if (pb.dtype == SSD_F16) return launch_shape<__half>(pb, workspace, stream);
    return SSD_ERR_BAD_ARG;
}

}  // namespace ssd
