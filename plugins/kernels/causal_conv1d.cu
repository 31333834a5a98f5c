// Depthwise causal conv1d with carried state and fused SiLU (C ABI: ssd_causal_conv1d).
//
// A block covers 32 x VEC channels x kTokens tokens; each thread moves VEC channels (16 bytes) per load and store
// and keeps its k x VEC weights in registers. The block stages the inputs it needs (its tokens and the k-1 before
// them, taken from conv_state where they precede the sequence), then its weights and bias (read coalesced: the
// block's [channels][k] weights are contiguous), in shared memory as fp32, in planes of 4 channels per lane so that
// every 16-byte shared access of a warp is contiguous (no bank conflicts); any k <= kMaxK works without register
// arrays indexed at run time. Only the first token tile reads conv_state and only it writes the new
// state (the last k-1 inputs, read from x or, for l < k-1, from the old state), so the update may be in place.
// Packed sequences (ssd_causal_conv1d_packed, docs/op-contracts.md): the same kernel over a piece table
// (packed.cuh): every sequence is cut into its own token tiles, and each tile's window starts from its own
// sequence's state, so no window reaches into the previous sequence.
#include <cuda_runtime.h>

#include "device_utils.cuh"
#include "packed.cuh"
#include "ssd_internal.h"

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
    int b, l, d, k, silu;  // packed: b sequences on one axis of l tokens
    const int* cu_seqlens;  // packed: [b+1] token offsets (else NULL)
    const int* offsets;     // packed: first tile of each sequence [b+1] (packed.cuh)
};

template <typename T, int VEC>
__device__ __forceinline__ void load_channels(const T* p, int valid, float (&o)[VEC]) {
    if constexpr (VEC > 1) {
        load_vec<T, VEC>(p, o);  // the host picks VEC > 1 only when every group of VEC channels is whole
    } else {
        o[0] = valid > 0 ? to_f(p[0]) : 0.f;
    }
}

// Shared-memory slot of channel e of lane tx in row r: planes of 4 consecutive channels, lanes side by side.
template <int VEC>
__device__ __forceinline__ int slot(int r, int tx, int e) {
    if constexpr (VEC == 1) {
        return r * kLanes + tx;
    } else {
        return r * kLanes * VEC + (e / 4) * kLanes * 4 + tx * 4 + e % 4;
    }
}

template <int VEC>
__device__ __forceinline__ void put_row(float* tile, int r, int tx, const float (&v)[VEC]) {
    if constexpr (VEC == 1) {
        tile[slot<1>(r, tx, 0)] = v[0];
    } else {
#pragma unroll
        for (int q = 0; q < VEC / 4; ++q)
            *reinterpret_cast<float4*>(tile + slot<VEC>(r, tx, 4 * q)) =
                make_float4(v[4 * q], v[4 * q + 1], v[4 * q + 2], v[4 * q + 3]);
    }
}

template <int VEC>
__device__ __forceinline__ void get_row(const float* tile, int r, int tx, float (&v)[VEC]) {
    if constexpr (VEC == 1) {
        v[0] = tile[slot<1>(r, tx, 0)];
    } else {
#pragma unroll
        for (int q = 0; q < VEC / 4; ++q) {
            const float4 f = *reinterpret_cast<const float4*>(tile + slot<VEC>(r, tx, 4 * q));
            v[4 * q] = f.x, v[4 * q + 1] = f.y, v[4 * q + 2] = f.z, v[4 * q + 3] = f.w;
        }
    }
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kLanes* kRows) causal_conv1d_kernel(const ConvArgs a) {
    // rows: kTokens + k - 1 inputs, then k weight taps, then the bias; kLanes * VEC channels each
    extern __shared__ __align__(16) float tile[];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int c0 = (blockIdx.x * kLanes + tx) * VEC;  // first channel of this thread
    // the sequence (batch row) b and the tile's first token t0 in it; packed: tile-major over the pieces
    int b = blockIdx.z, t0 = blockIdx.y * kTokens;
    if (a.cu_seqlens) {
        b = piece_seq(a.offsets, a.b, blockIdx.y);
        if (b < 0) return;  // the whole block: past the last piece
        t0 = (blockIdx.y - a.offsets[b]) * kTokens;
    }
    const SeqSpan span = seq_span(a.cu_seqlens, b, a.l);
    const int km1 = a.k - 1;
    const int rows = kTokens + km1;
    const bool live = c0 < a.d;
    const T* x = static_cast<const T*>(a.x) + span.start * a.d;  // the sequence's first token

    for (int r = ty; r < rows; r += kRows) {
        const int tt = t0 - km1 + r;  // token of this row; negative: carried state
        float v[VEC] = {};
        if (live && tt < span.len) {
            if (tt >= 0) {
                load_channels<T, VEC>(x + static_cast<size_t>(tt) * a.d + c0, a.d - c0, v);
            } else if (a.state_in) {
#pragma unroll
                for (int e = 0; e < VEC; ++e)
                    v[e] = a.state_in[(static_cast<size_t>(b) * a.d + c0 + e) * km1 + km1 + tt];
            }
        }
        put_row<VEC>(tile, r, tx, v);
    }
    {
        constexpr int SPAN = kLanes * VEC;
        const int ch0 = blockIdx.x * SPAN;
        const int tid = ty * kLanes + tx;
        for (int idx = tid; idx < SPAN * (a.k + 1); idx += kLanes * kRows) {
            const int cl = idx / (a.k + 1), i = idx % (a.k + 1);  // channel in block, tap (k: the bias)
            const int ch = ch0 + cl;
            float v = 0.f;
            if (ch < a.d) v = i < a.k ? a.weight[static_cast<size_t>(ch) * a.k + i] : (a.bias ? a.bias[ch] : 0.f);
            tile[slot<VEC>(rows + i, cl / VEC, cl % VEC)] = v;
        }
    }
    __syncthreads();
    if (!live) return;

    float w[kMaxK][VEC], bias[VEC];
#pragma unroll
    for (int i = 0; i < kMaxK; ++i)
        if (i < a.k) get_row<VEC>(tile, rows + i, tx, w[i]);
    get_row<VEC>(tile, rows + a.k, tx, bias);
    T* y = static_cast<T*>(a.y) + span.start * a.d;
    for (int t = ty; t < kTokens && t0 + t < span.len; t += kRows) {
        float acc[VEC];
#pragma unroll
        for (int e = 0; e < VEC; ++e) acc[e] = bias[e];
#pragma unroll
        for (int i = 0; i < kMaxK; ++i) {
            if (i < a.k) {
                float v[VEC];
                get_row<VEC>(tile, t + i, tx, v);
#pragma unroll
                for (int e = 0; e < VEC; ++e) acc[e] = fmaf(w[i][e], v[e], acc[e]);
            }
        }
        if (a.silu)
#pragma unroll
            for (int e = 0; e < VEC; ++e) acc[e] = silu(acc[e]);
        T* out = y + static_cast<size_t>(t0 + t) * a.d + c0;
        if constexpr (VEC > 1)
            store_vec<T, VEC>(out, acc);
        else
            out[0] = from_f<T>(acc[0]);
    }

    if (t0 == 0 && km1 > 0) {
        for (int i = ty; i < km1; i += kRows) {
            const int tt = span.len - km1 + i;
            float v[VEC];
            if (tt >= 0)
                load_channels<T, VEC>(x + static_cast<size_t>(tt) * a.d + c0, a.d - c0, v);
            else  // only when the sequence is shorter than k-1: that input is among this tile's staged state rows
                get_row<VEC>(tile, tt + km1, tx, v);
#pragma unroll
            for (int e = 0; e < VEC; ++e) a.state_out[(static_cast<size_t>(b) * a.d + c0 + e) * km1 + i] = v[e];
        }
    }
}

template <typename T, int VEC>
int launch(const ConvArgs& a, cudaStream_t stream) {
    constexpr int SPAN = kLanes * VEC;
    const dim3 block(kLanes, kRows);
    const long tiles = a.cu_seqlens ? max_pieces(a.b, a.l, kTokens) : (a.l + kTokens - 1) / kTokens;
    const dim3 grid((a.d + SPAN - 1) / SPAN, static_cast<unsigned>(tiles), a.cu_seqlens ? 1 : a.b);
    const size_t smem = sizeof(float) * SPAN * (kTokens + 2 * a.k);  // <= 48 KiB for k <= kMaxK
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

int run(const ConvArgs& a, ssd_dtype_t dtype, cudaStream_t stream) {
    switch (dtype) {
        case SSD_F32: return launch_dtype<float>(a, stream);
        case SSD_F16: return launch_dtype<__half>(a, stream);
        case SSD_BF16: return launch_dtype<__nv_bfloat16>(a, stream);
    }
    return SSD_ERR_BAD_ARG;
}

}  // namespace
}  // namespace ssd

extern "C" {

int ssd_causal_conv1d(const void* x, const float* weight, const float* bias, const float* conv_state_in, void* y,
                      float* conv_state_out, int b, int l, int d, int k, int silu, ssd_dtype_t dtype,
                      cudaStream_t stream) {
    if (!x || !weight || !y || b < 1 || l < 1 || d < 1 || k < 1 || k > ssd::kMaxK) return SSD_ERR_BAD_ARG;
    if (b > 65535 || (l + ssd::kTokens - 1) / ssd::kTokens > 65535) return SSD_ERR_BAD_ARG;  // grid y/z limits
    if (k > 1 && !conv_state_out) return SSD_ERR_BAD_ARG;
    return ssd::run({x, weight, bias, conv_state_in, y, conv_state_out, b, l, d, k, silu, nullptr, nullptr}, dtype,
                    stream);
}

size_t ssd_causal_conv1d_packed_workspace_size(int nseq) { return nseq > 0 ? ssd::piece_offsets_bytes(nseq) : 0; }

int ssd_causal_conv1d_packed(const void* x, const float* weight, const float* bias, const float* conv_states_in,
                             const int* cu_seqlens, void* y, float* conv_states_out, int nseq, int total, int d, int k,
                             int silu, ssd_dtype_t dtype, void* workspace, size_t workspace_bytes,
                             cudaStream_t stream) {
    if (!x || !weight || !y || !cu_seqlens || nseq < 1 || total < 1 || d < 1 || k < 1 || k > ssd::kMaxK)
        return SSD_ERR_BAD_ARG;
    if (ssd::max_pieces(nseq, total, ssd::kTokens) > 65535) return SSD_ERR_BAD_ARG;  // grid y limit
    if (k > 1 && !conv_states_out) return SSD_ERR_BAD_ARG;
    if (workspace_bytes < ssd::piece_offsets_bytes(nseq)) return SSD_ERR_WORKSPACE;
    if (!workspace) return SSD_ERR_BAD_ARG;
    int* offsets = static_cast<int*>(workspace);
    const int rc = ssd::build_piece_offsets(cu_seqlens, nseq, total, ssd::kTokens, offsets, stream);
    if (rc != 0) return rc;
    return ssd::run({x, weight, bias, conv_states_in, y, conv_states_out, nseq, total, d, k, silu, cu_seqlens, offsets},
                    dtype, stream);
}

}  // extern "C"
