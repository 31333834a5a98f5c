// Depthwise causal conv1d with carried state and fused SiLU (C ABI: ssd_causal_conv1d).
//
// A block covers 32 channels x kTokens tokens. It stages the inputs it needs (its tokens and the k-1 before them,
// taken from conv_state where they precede the sequence) in shared memory as fp32, so that any k works without
// register arrays indexed at run time. Only the first token tile reads conv_state and only it writes the new state
// (the last k-1 inputs, read from x or, for l < k-1, from the old state), so the update may be in place.
#include <cuda_runtime.h>

#include "device_utils.cuh"

namespace ssd {
namespace {

constexpr int kChannels = 32;  // one warp across channels: coalesced rows of x and y
constexpr int kRows = 4;       // warps per block, striding over tokens
constexpr int kTokens = 64;    // tokens per block; >= kMaxK - 1 so that later tiles never read the state
constexpr int kMaxK = 64;

struct ConvArgs {
    const void* x;
    const float* weight;
    const float* bias;
    const float* state_in;
    void* y;
    float* state_out;
    int b, l, d, k, silu;
};

template <typename T>
__global__ void __launch_bounds__(kChannels* kRows) causal_conv1d_kernel(const ConvArgs a) {
    extern __shared__ float tile[];  // [kTokens + k - 1][kChannels] inputs, then [k][kChannels] weights
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int ch = blockIdx.x * kChannels + tx;
    const int t0 = blockIdx.y * kTokens;
    const int b = blockIdx.z;
    const int km1 = a.k - 1;
    const int rows = kTokens + km1;
    float* w = tile + rows * kChannels;
    const bool live = ch < a.d;
    const T* x = static_cast<const T*>(a.x);
    const float* st = a.state_in ? a.state_in + (static_cast<size_t>(b) * a.d + ch) * km1 : nullptr;

    for (int r = ty; r < rows; r += kRows) {
        const int tt = t0 - km1 + r;  // token of this row; negative: carried state
        float v = 0.f;
        if (live && tt < a.l) {
            if (tt >= 0)
                v = to_f(x[(static_cast<size_t>(b) * a.l + tt) * a.d + ch]);
            else if (st)
                v = st[km1 + tt];
        }
        tile[r * kChannels + tx] = v;
    }
    for (int i = ty; i < a.k; i += kRows) w[i * kChannels + tx] = live ? a.weight[static_cast<size_t>(ch) * a.k + i] : 0.f;
    __syncthreads();
    if (!live) return;

    const float bias = a.bias ? a.bias[ch] : 0.f;
    T* y = static_cast<T*>(a.y);
    for (int t = ty; t < kTokens && t0 + t < a.l; t += kRows) {
        float acc = bias;
        for (int i = 0; i < a.k; ++i) acc = fmaf(w[i * kChannels + tx], tile[(t + i) * kChannels + tx], acc);
        if (a.silu) acc = silu(acc);
        y[(static_cast<size_t>(b) * a.l + t0 + t) * a.d + ch] = from_f<T>(acc);
    }

    if (blockIdx.y == 0) {
        float* so = a.state_out + (static_cast<size_t>(b) * a.d + ch) * km1;
        for (int i = ty; i < km1; i += kRows) {
            const int tt = a.l - km1 + i;
            // tt < 0 only when l < k-1: that input is in this tile's staged state rows
            so[i] = tt >= 0 ? to_f(x[(static_cast<size_t>(b) * a.l + tt) * a.d + ch]) : tile[(tt + km1) * kChannels + tx];
        }
    }
}

template <typename T>
int launch(const ConvArgs& a, cudaStream_t stream) {
    const dim3 block(kChannels, kRows);
    const dim3 grid((a.d + kChannels - 1) / kChannels, (a.l + kTokens - 1) / kTokens, a.b);
    const size_t smem = sizeof(float) * kChannels * (kTokens + a.k - 1 + a.k);
    causal_conv1d_kernel<T><<<grid, block, smem, stream>>>(a);
    return static_cast<int>(cudaGetLastError());
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
        case SSD_F32: return ssd::launch<float>(a, stream);
        case SSD_F16: return ssd::launch<__half>(a, stream);
        case SSD_BF16: return ssd::launch<__nv_bfloat16>(a, stream);
    }
    return SSD_ERR_BAD_ARG;
}
