// The SSD recurrence token by token: S_t = exp(dt'_t A) S_{t-1} + dt'_t x_t ⊗ B_t, y_t = S_t · C_t + D x_t.
//
// A group of `tpr` consecutive threads owns one state row (b, h, p) of n floats, NS per thread, in registers for
// the whole sequence; y_t is a shuffle reduction over the group. For decode (l = 1) this is one pass over the
// state in 16-byte loads and stores, which is what bounds the step: it is a copy of the state with a little math.
// Packed sequences (docs/op-contracts.md): the row's b is its sequence, whose tokens cu_seqlens locates (packed.cuh).
#include <cuda_runtime.h>

#include "device_utils.cuh"
#include "packed.cuh"
#include "ssd_internal.h"

namespace ssd {
namespace {

constexpr int kThreads = 128;

struct RecurrentArgs {
    ScanProblem pb;
    long rows;  // b * h * p
    int tpr;    // threads per row: a power of two <= 32, tpr * NS >= n
};

// VEC: n % NS == 0 and every row start 16-byte aligned, so each thread moves NS values in whole 16-byte pieces.
template <typename T, int NS, bool VEC>
__device__ __forceinline__ void load_part(const T* __restrict__ row, int n0, int n, float (&o)[NS]) {
    if constexpr (VEC) {
        if (n0 < n) {
            load_vec<T, NS>(row + n0, o);
        } else {
#pragma unroll
            for (int e = 0; e < NS; ++e) o[e] = 0.f;
        }
    } else {
#pragma unroll
        for (int e = 0; e < NS; ++e) o[e] = n0 + e < n ? to_f(row[n0 + e]) : 0.f;
    }
}

template <int NS, bool VEC>
__device__ __forceinline__ void store_part(float* __restrict__ row, int n0, int n, const float (&v)[NS]) {
    if constexpr (VEC) {
        if (n0 < n) store_vec<float, NS>(row + n0, v);
    } else {
#pragma unroll
        for (int e = 0; e < NS; ++e)
            if (n0 + e < n) row[n0 + e] = v[e];
    }
}

// ONE: one token per row (a decode step), compiled without the token loop.
template <typename T, int NS, bool VEC, bool ONE>
__global__ void __launch_bounds__(kThreads) ssd_recurrent_kernel(const RecurrentArgs a) {
    const ScanProblem& pb = a.pb;
    const long gtid = static_cast<long>(blockIdx.x) * kThreads + threadIdx.x;
    const long row_raw = gtid / a.tpr;
    const bool active = row_raw < a.rows;
    const long row = active ? row_raw : 0;  // idle threads still take part in the shuffles
    const int n0 = static_cast<int>(gtid % a.tpr) * NS;
    // the lanes of this row's group: rows of one warp may belong to packed sequences of different lengths, whose
    // token loops end at different times, so the reduction synchronises only its own group
    const int lane = threadIdx.x & 31;
    const unsigned group = a.tpr == 32 ? 0xffffffffu : ((1u << a.tpr) - 1u) << (lane & ~(a.tpr - 1));
    const int p = static_cast<int>(row % pb.p);
    const long bh = row / pb.p;
    const int h = static_cast<int>(bh % pb.h);
    const int b = static_cast<int>(bh / pb.h);
    const int g = h / (pb.h / pb.g);

    float s[NS];
    if (pb.state_in) {
        load_part<float, NS, VEC>(pb.state_in + row * pb.n, n0, pb.n, s);
    } else {
#pragma unroll
        for (int e = 0; e < NS; ++e) s[e] = 0.f;
    }
    const float A = pb.A[h];
    const float bias = pb.dt_bias ? pb.dt_bias[h] : 0.f;
    const float Dv = pb.D ? (pb.D_has_hdim ? pb.D[h * pb.p + p] : pb.D[h]) : 0.f;
    const T* x = static_cast<const T*>(pb.x);
    const T* dt = static_cast<const T*>(pb.dt);
    const T* Bm = static_cast<const T*>(pb.B);
    const T* Cm = static_cast<const T*>(pb.C);
    T* y = static_cast<T*>(pb.y);

    const SeqSpan span = seq_span(pb.cu_seqlens, b, pb.l);
    const int steps = ONE ? min(1, span.len) : span.len;  // (packed: an offset the contract forbids gives 0)
#pragma unroll 2
    for (int t = 0; t < steps; ++t) {
        const size_t tok = span.start + t;
        const size_t xi = (tok * pb.h + h) * pb.p + p;
        const size_t bci = (tok * pb.g + g) * pb.n;
        float Bv[NS], Cv[NS];
        load_part<T, NS, VEC>(Bm + bci, n0, pb.n, Bv);
        load_part<T, NS, VEC>(Cm + bci, n0, pb.n, Cv);
        const float xv = to_f(x[xi]);
        const float dtv = process_dt(to_f(dt[tok * pb.h + h]) + bias, pb.dtp);
        // s·exp(dt'A) as s + s·expm1(dt'A): decays sit just below 1, where expf's own error (up to 2 ulp, not
        // centred) would compound over a long sequence; expm1 carries the decay to ~1e-10 (seen: a 1024-token fp32
        // scan landed at 1.2e-5 from float64 with expf)
        const float decay_m1 = expm1f(dtv * A);
        const float dx = dtv * xv;
        float acc = 0.f;
#pragma unroll
        for (int e = 0; e < NS; ++e) {
            s[e] = fmaf(dx, Bv[e], fmaf(s[e], decay_m1, s[e]));
            acc = fmaf(s[e], Cv[e], acc);
        }
        for (int off = a.tpr >> 1; off > 0; off >>= 1) acc += __shfl_xor_sync(group, acc, off);
        if (active && n0 == 0) y[xi] = from_f<T>(acc + Dv * xv);
    }
    if (active) store_part<NS, VEC>(pb.state_out + row * pb.n, n0, pb.n, s);
}

template <typename T, int NS, bool ONE>
int launch(const ScanProblem& pb, cudaStream_t stream) {
    RecurrentArgs a{pb, static_cast<long>(pb.b) * pb.h * pb.p, 1};
    while (a.tpr * NS < pb.n) a.tpr *= 2;
    const long threads = a.rows * a.tpr;
    const unsigned blocks = static_cast<unsigned>((threads + kThreads - 1) / kThreads);
    // Row starts are multiples of n elements, so n % NS == 0 plus aligned bases keeps every piece aligned.
    const bool vec = pb.n % NS == 0 && aligned16(pb.B) && aligned16(pb.C) && aligned16(pb.state_out) &&
                     (pb.state_in == nullptr || aligned16(pb.state_in));
    if (vec)
        ssd_recurrent_kernel<T, NS, true, ONE><<<blocks, kThreads, 0, stream>>>(a);
    else
        ssd_recurrent_kernel<T, NS, false, ONE><<<blocks, kThreads, 0, stream>>>(a);
    return static_cast<int>(cudaGetLastError());
}

template <typename T>
int launch_dtype(const ScanProblem& pb, cudaStream_t stream) {
    // 8 floats per thread: two 16-byte state loads in flight, and few enough registers (39 for a decode step) for
    // 13 blocks per SM; 16 only where 32 threads of 8 cannot cover n (16 per thread measured slower for decode).
    const bool wide = pb.n > 32 * 8;
    // one token per row: unpacked l = 1, or packed with T = b (every length 1, the lengths being >= 1), so that equal
    // lengths of 1 run the unpacked step's code too
    const bool one = pb.cu_seqlens ? pb.l == pb.b : pb.l == 1;
    if (one) return wide ? launch<T, 16, true>(pb, stream) : launch<T, 8, true>(pb, stream);
    return wide ? launch<T, 16, false>(pb, stream) : launch<T, 8, false>(pb, stream);
}

}  // namespace

int run_recurrent(const ScanProblem& pb, cudaStream_t stream) {
    if (pb.n > kRecurrentMaxN) return SSD_ERR_BAD_ARG;
    switch (pb.dtype) {
        case SSD_F32: return launch_dtype<float>(pb, stream);
        case SSD_F16: return launch_dtype<__half>(pb, stream);
        case SSD_BF16: return launch_dtype<__nv_bfloat16>(pb, stream);
    }
    return SSD_ERR_BAD_ARG;
}

}  // namespace ssd
