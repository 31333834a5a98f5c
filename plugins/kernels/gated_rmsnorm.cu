// Gated RMSNorm per group (C ABI: ssd_gated_rmsnorm): out = v * rsqrt(mean_group(v^2) + eps) * weight, v = y*silu(z).
//
// One warp per (row, group): a first pass reduces sum(v^2) over the group, a second scales and writes v, kept in
// registers for groups of up to 1024 (16-bit) / 512 (fp32) elements. Groups whose size and base addresses allow it
// move 16 bytes per thread per load.
#include <cuda_runtime.h>

#include "device_utils.cuh"

namespace ssd {
namespace {

constexpr int kThreads = 256;

struct NormArgs {
    const void* y;
    const void* z;
    const float* weight;
    void* out;
    long rows;
    int d, group_size;
    float eps;
};

template <typename T, int E>
__device__ __forceinline__ void load_gated(const T* y, const T* z, size_t i, float (&v)[E]) {
    if constexpr (E == 1) {
        v[0] = to_f(y[i]) * silu(to_f(z[i]));
    } else {
        float zv[E];
        load_vec<T, E>(y + i, v);
        load_vec<T, E>(z + i, zv);
#pragma unroll
        for (int e = 0; e < E; ++e) v[e] *= silu(zv[e]);
    }
}

// E elements per thread per step: 1, or one 16-byte piece. The first kCached steps of each lane stay in registers
// between the two passes (groups up to 32 * E * kCached elements: 1024 for 16-bit I/O); later ones are re-read.
constexpr int kCached = 4;

template <typename T, int E>
__global__ void __launch_bounds__(kThreads) gated_rmsnorm_kernel(const NormArgs a) {
    const long warp_id = (static_cast<long>(blockIdx.x) * kThreads + threadIdx.x) / 32;
    const int lane = threadIdx.x & 31;
    const int groups = a.d / a.group_size;
    const long row = warp_id / groups;
    if (row >= a.rows) return;  // whole warps only
    const int grp = static_cast<int>(warp_id % groups);
    const size_t base = static_cast<size_t>(row) * a.d + static_cast<size_t>(grp) * a.group_size;
    const T* y = static_cast<const T*>(a.y);
    const T* z = static_cast<const T*>(a.z);
    constexpr int STEP = 32 * E;

    float kept[kCached][E];
    float ss = 0.f;
#pragma unroll
    for (int it = 0; it < kCached; ++it) {
        const int i = it * STEP + lane * E;
        if (i < a.group_size) {
            load_gated<T, E>(y, z, base + i, kept[it]);
#pragma unroll
            for (int e = 0; e < E; ++e) ss = fmaf(kept[it][e], kept[it][e], ss);
        }
    }
    for (int i = kCached * STEP + lane * E; i < a.group_size; i += STEP) {
        float v[E];
        load_gated<T, E>(y, z, base + i, v);
#pragma unroll
        for (int e = 0; e < E; ++e) ss = fmaf(v[e], v[e], ss);
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, off);
    const float scale = rsqrtf(ss / a.group_size + a.eps);

    T* out = static_cast<T*>(a.out) + base;
    const float* w = a.weight + static_cast<size_t>(grp) * a.group_size;
    auto write = [&](int i, float (&v)[E]) {
        float wv[E];
        if constexpr (E == 1)
            wv[0] = w[i];
        else
            load_vec<float, E>(w + i, wv);  // group starts are multiples of E floats: 16-byte aligned
#pragma unroll
        for (int e = 0; e < E; ++e) v[e] = v[e] * scale * wv[e];
        if constexpr (E == 1)
            out[i] = from_f<T>(v[0]);
        else
            store_vec<T, E>(out + i, v);
    };
#pragma unroll
    for (int it = 0; it < kCached; ++it) {
        const int i = it * STEP + lane * E;
        if (i < a.group_size) write(i, kept[it]);
    }
    for (int i = kCached * STEP + lane * E; i < a.group_size; i += STEP) {
        float v[E];
        load_gated<T, E>(y, z, base + i, v);
        write(i, v);
    }
}

template <typename T>
int launch(const NormArgs& a, cudaStream_t stream) {
    constexpr int E = 16 / sizeof(T);
    const long warps = a.rows * (a.d / a.group_size);
    const unsigned blocks = static_cast<unsigned>((warps * 32 + kThreads - 1) / kThreads);
    // Group starts are multiples of group_size elements: aligned when the bases are and group_size % E == 0.
    const bool vec = a.group_size % E == 0 && aligned16(a.y) && aligned16(a.z) && aligned16(a.out) &&
                     aligned16(a.weight);
    if (vec)
        gated_rmsnorm_kernel<T, E><<<blocks, kThreads, 0, stream>>>(a);
    else
        gated_rmsnorm_kernel<T, 1><<<blocks, kThreads, 0, stream>>>(a);
    return static_cast<int>(cudaGetLastError());
}

}  // namespace
}  // namespace ssd

extern "C" int ssd_gated_rmsnorm(const void* y, const void* z, const float* weight, void* out, int rows, int d,
                                 int group_size, float eps, ssd_dtype_t dtype, cudaStream_t stream) {
    if (!y || !z || !weight || !out || rows < 1 || d < 1 || group_size < 1 || d % group_size != 0 || !(eps >= 0.f))
        return SSD_ERR_BAD_ARG;
    const ssd::NormArgs a{y, z, weight, out, rows, d, group_size, eps};
    switch (dtype) {
        case SSD_F32: return ssd::launch<float>(a, stream);
        case SSD_F16: return ssd::launch<__half>(a, stream);
        case SSD_BF16: return ssd::launch<__nv_bfloat16>(a, stream);
    }
    return SSD_ERR_BAD_ARG;
}
