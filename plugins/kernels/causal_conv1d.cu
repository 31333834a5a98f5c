// Depthwise causal conv1d with carried state and fused SiLU (C ABI: ssd_causal_conv1d).
//
// A block covers 32 x VEC channels x kTokens tokens; each thread moves VEC channels (16 bytes) per load and store.
// The block stages the inputs it needs (its tokens and the k-1 before them, taken from conv_state where they precede
// the sequence) in shared memory as fp32, with the weights, so that any k <= kMaxK works without register arrays
// indexed at run time. Only the first token tile reads conv_state and only it writes the new state (the last k-1
// inputs, read from x or, for l < k-1, from the old state), so the update may be in place.
#include <cuda_runtime.h>

#include "device_utils.cuh"

namespace ssd {
namespace {

constexpr int kLanes = 32;   // threads across channels: one warp, coalesced rows of x and y
constexpr int kRows = 4;     // warps per block, striding over tokens
constexpr int kTokens = 32;  // tokens per block; >= kMaxK - 1 so that later tiles never read the state
constexpr int kMaxK = 8;

struct ConvArgs {
    const void* x;
    const float* weight;
    const float* bias;
    const float* state_in;
    void* y;
    float* state_out;
    int b, l, d, k, silu;
};

template <typename T, int VEC>
__device__ __forceinline__ void load_channels(const T* p, int valid, float (&o)[VEC]) {
    if constexpr (VEC > 1) {
        load_vec<T, VEC>(p, o);  // the host picks VEC > 1 only when every group of VEC channels is whole
    } else {
        o[0] = valid > 0 ? to_f(p[0]) : 0.f;
    }
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kLanes* kRows) causal_conv1d_kernel(const ConvArgs a) {
    constexpr int SPAN = kLanes * VEC;  // channels per block
    extern __shared__ float tile[];     // [kTokens + k - 1][SPAN] inputs, then [k][SPAN] weights
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int c0 = blockIdx.x * SPAN + tx * VEC;  // first channel of this thread
    const int t0 = blockIdx.y * kTokens;
    const int b = blockIdx.z;
    const int km1 = a.k - 1;
    const int rows = kTokens + km1;
    float* w = tile + rows * SPAN;
    const bool live = c0 < a.d;
    const T* x = static_cast<const T*>(a.x);

    for (int r = ty; r < rows; r += kRows) {
        const int tt = t0 - km1 + r;  // token of this row; negative: carried state
        float v[VEC] = {};
        if (live && tt < a.l) {
            if (tt >= 0) {
                load_channels<T, VEC>(x + (static_cast<size_t>(b) * a.l + tt) * a.d + c0, a.d - c0, v);
            } else if (a.state_in) {
#pragma unroll
                for (int e = 0; e < VEC; ++e)
                    v[e] = a.state_in[(static_cast<size_t>(b) * a.d + c0 + e) * km1 + km1 + tt];
            }
        }
#pragma unroll
        for (int e = 0; e < VEC; ++e) tile[r * SPAN + tx * VEC + e] = v[e];
    }
    for (int i = ty; i < a.k; i += kRows)
#pragma unroll
        for (int e = 0; e < VEC; ++e)
            w[i * SPAN + tx * VEC + e] = live ? a.weight[static_cast<size_t>(c0 + e) * a.k + i] : 0.f;
    __syncthreads();
    if (!live) return;

    float bias[VEC];
#pragma unroll
    for (int e = 0; e < VEC; ++e) bias[e] = a.bias ? a.bias[c0 + e] : 0.f;
    T* y = static_cast<T*>(a.y);
    for (int t = ty; t < kTokens && t0 + t < a.l; t += kRows) {
        float acc[VEC];
#pragma unroll
        for (int e = 0; e < VEC; ++e) acc[e] = bias[e];
        for (int i = 0; i < a.k; ++i)
#pragma unroll
            for (int e = 0; e < VEC; ++e)
                acc[e] = fmaf(w[i * SPAN + tx * VEC + e], tile[(t + i) * SPAN + tx * VEC + e], acc[e]);
        if (a.silu)
#pragma unroll
            for (int e = 0; e < VEC; ++e) acc[e] = silu(acc[e]);
        T* out = y + (static_cast<size_t>(b) * a.l + t0 + t) * a.d + c0;
        if constexpr (VEC > 1)
            store_vec<T, VEC>(out, acc);
        else
            out[0] = from_f<T>(acc[0]);
    }

    if (blockIdx.y == 0 && km1 > 0) {
        for (int i = ty; i < km1; i += kRows) {
            const int tt = a.l - km1 + i;
            float v[VEC];
            if (tt >= 0) {
                load_channels<T, VEC>(x + (static_cast<size_t>(b) * a.l + tt) * a.d + c0, a.d - c0, v);
            } else {  // only when l < k-1: that input is among this tile's staged state rows
#pragma unroll
                for (int e = 0; e < VEC; ++e) v[e] = tile[(tt + km1) * SPAN + tx * VEC + e];
            }
#pragma unroll
            for (int e = 0; e < VEC; ++e) a.state_out[(static_cast<size_t>(b) * a.d + c0 + e) * km1 + i] = v[e];
        }
    }
}

template <typename T, int VEC>
int launch(const ConvArgs& a, cudaStream_t stream) {
    constexpr int SPAN = kLanes * VEC;
    const dim3 block(kLanes, kRows);
    const dim3 grid((a.d + SPAN - 1) / SPAN, (a.l + kTokens - 1) / kTokens, a.b);
    const size_t smem = sizeof(float) * SPAN * (kTokens + a.k - 1 + a.k);  // <= 48 KiB for k <= kMaxK
    causal_conv1d_kernel<T, VEC><<<grid, block, smem, stream>>>(a);
    return static_cast<int>(cudaGetLastError());
}

template <typename T>
int launch_dtype(const ConvArgs& a, cudaStream_t stream) {
    constexpr int VEC = 16 / sizeof(T);
    // channel groups start at multiples of VEC elements: whole 16-byte pieces when d % VEC == 0 and bases align
    if (a.d % VEC == 0 && aligned16(a.x) && aligned16(a.y)) return launch<T, VEC>(a, stream);
    return launch<T, 1>(a, stream);
}

}  // namespace
}  // namespace ssd

extern "C" int ssd_causal_conv1d(const void* x, const float* weight, const float* bias, const float* conv_state_in,
                                 void* y, float* conv_state_out, int b, int l, int d, int k, int silu,
                                 ssd_dtype_t dtype, cudaStream_t stream) {
    if (!x || !weight || !y || b < 1 || l < 1 || d < 1 || k < 1 || k > ssd::kMaxK) return SSD_ERR_BAD_ARG;
    if (b > 65535 || (l + ssd::kTokens - 1) / ssd::kTokens > 65535) return SSD_ERR_BAD_ARG;  // grid y/z limits
    if (k > 1 && !conv_state_out) return SSD_ERR_BAD_ARG;
    const ssd::ConvArgs a{x, weight, bias, conv_state_in, y, conv_state_out, b, l, d, k, silu};
    switch (dtype) {
        case SSD_F32: return ssd::launch_dtype<float>(a, stream);
        case SSD_F16: return ssd::launch_dtype<__half>(a, stream);
        case SSD_BF16: return ssd::launch_dtype<__nv_bfloat16>(a, stream);
    }
    return SSD_ERR_BAD_ARG;
}
