// Device helpers shared by the ssd_kernels sources: I/O dtype conversion, the contract's dt processing, and
// 16-byte vector loads. Everything here is header-only and inlined.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "ssd_kernels.h"

namespace ssd {

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// dt' = clamp(softplus(v), dt_min, dt_max), softplus(v) = v above 20 as in mamba_ssm. Comparisons rather than
// fminf/fmaxf so that a NaN input stays NaN, as torch.clamp keeps it.
__device__ __forceinline__ float process_dt(float v, const ssd_dt_params_t& p) {
    if (p.dt_softplus && v <= 20.f) v = log1pf(expf(v));
    v = v < p.dt_min ? p.dt_min : v;
    return v > p.dt_max ? p.dt_max : v;
}

__device__ __forceinline__ float silu(float v) { return v / (1.f + expf(-v)); }

// K consecutive elements starting at a 16-byte aligned address, converted to float, in 16-byte loads.
template <typename T, int K>
__device__ __forceinline__ void load_vec(const T* __restrict__ p, float (&o)[K]) {
    constexpr int E = 16 / sizeof(T);
    static_assert(K % E == 0, "whole 16-byte pieces only");
#pragma unroll
    for (int v = 0; v < K / E; ++v) {
        const uint4 raw = *reinterpret_cast<const uint4*>(p + v * E);
        const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
        for (int i = 0; i < E; ++i) o[v * E + i] = to_f(e[i]);
    }
}

template <typename T, int K>
__device__ __forceinline__ void store_vec(T* __restrict__ p, const float (&v)[K]) {
    constexpr int E = 16 / sizeof(T);
    static_assert(K % E == 0, "whole 16-byte pieces only");
#pragma unroll
    for (int q = 0; q < K / E; ++q) {
        uint4 raw;
        T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
        for (int i = 0; i < E; ++i) e[i] = from_f<T>(v[q * E + i]);
        *reinterpret_cast<uint4*>(p + q * E) = raw;
    }
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

}  // namespace ssd
