// Internal interface between the C ABI (ssd_api.cu) and the two implementations of the SSD recurrence.
#pragma once
#include <stddef.h>

#include "ssd_kernels.h"

namespace ssd {

// One SSD problem in the contract's layouts. l = 1 is a decode step. state_in may be NULL (zeros) and may equal
// state_out; D and dt_bias may be NULL (zeros). Packed (cu_seqlens non-null, on the device): b sequences end to end
// on one token axis of l tokens (x [l, h, p], ...), states [b, h, p, n]; unpacked: b rows of l tokens each.
struct ScanProblem {
    const void* x;
    const void* dt;
    const float* A;
    const void* B;
    const void* C;
    const float* D;
    int D_has_hdim;
    const float* dt_bias;
    const float* state_in;
    void* y;
    float* state_out;
    int b, l, h, p, g, n;
    ssd_dt_params_t dtp;
    ssd_dtype_t dtype;
    const int* cu_seqlens;  // [b+1] token offsets, or NULL
};

// Token-by-token recurrence on CUDA cores, one thread group per state row: exact for every dtype and shape (n up to
// kRecurrentMaxN), and the fastest choice for decode and short prompts.
constexpr int kRecurrentMaxN = 512;
int run_recurrent(const ScanProblem& pb, cudaStream_t stream);

// Chunked SSD on tensor cores (fp16/bf16, head dim and state size of the instantiated tiles). The chunk length is
// the kernel's own (128 tokens): chunking changes results only by rounding, so the contract's chunk_size is a hint.
bool chunked_supported(const ScanProblem& pb);
size_t chunked_workspace_size(int b, int h, int p, int n, bool packed);
int run_chunked(const ScanProblem& pb, void* workspace, size_t workspace_bytes, cudaStream_t stream);

// Packed axes (packed.cuh): the piece table [nseq+1] of pieces of at most q tokens, written on the stream, and its
// size in a workspace (256-byte multiple).
size_t piece_offsets_bytes(int nseq);
int build_piece_offsets(const int* cu_seqlens, int nseq, int total, int q, int* offsets, cudaStream_t stream);

}  // namespace ssd
