// Gated RMSNorm per group (C ABI: ssd_gated_rmsnorm): out = v * rsqrt(mean_group(v^2) + eps) * weight, v = y*silu(z).
//
// One warp per (row, group): a first pass reduces sum(v^2) over the group, a second recomputes v and writes (the
// group's inputs are then in L1). Groups whose size and base addresses allow it move 16 bytes per thread per load.
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

template <typename T, int E>  // E elements per thread per step: 1, or one 16-byte piece
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

    float ss = 0.f;
    for (int i = lane * E; i < a.group_size; i += 32 * E) {
        float v[E];
        load_gated<T, E>(y, z, base + i, v);
#pragma unroll
        for (int e = 0; e < E; ++e) ss = fmaf(v[e], v[e], ss);
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, off);
    const float scale = rsqrtf(ss / a.group_size + a.eps);

    T* out = static_cast<T*>(a.out);
    const float* w = a.weight + static_cast<size_t>(grp) * a.group_size;
    for (int i = lane * E; i < a.group_size; i += 32 * E) {
        float v[E];
        load_gated<T, E>(y, z, base + i, v);
#pragma unroll
        for (int e = 0; e < E; ++e) v[e] = v[e] * scale * w[i + e];
        if constexpr (E == 1)
            out[base + i] = from_f<T>(v[0]);
        else
            store_vec<T, E>(out + base + i, v);
    }
}

template <typename T>
int launch(const NormArgs& a, cudaStream_t stream) {
    constexpr int E = 16 / sizeof(T);
    const long warps = a.rows * (a.d / a.group_size);
    const unsigned blocks = static_cast<unsigned>((warps * 32 + kThreads - 1) / kThreads);
    // Group starts are multiples of group_size elements: aligned when the bases are and group_size % E == 0.
    const bool vec = a.group_size % E == 0 && aligned16(a.y) && aligned16(a.z) && aligned16(a.out);
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
