// The piece table of a packed token axis (packed.cuh): the first piece of each sequence, from cu_seqlens, on the
// device. One block scans the per-sequence piece counts (cub::BlockScan), THREADS sequences at a time.
#include <cub/block/block_scan.cuh>
#include <cuda_runtime.h>

#include "packed.cuh"
#include "ssd_internal.h"

namespace ssd {
namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads) piece_offsets_kernel(const int* cu_seqlens, int nseq, int total, int q,
                                                                int* offsets) {
    using Scan = cub::BlockScan<int, kThreads>;
    __shared__ typename Scan::TempStorage tmp;
    int carry = 0;
    for (int base = 0; base < nseq; base += kThreads) {
        const int s = base + static_cast<int>(threadIdx.x);
        const int count = s < nseq ? piece_count(seq_span(cu_seqlens, s, total).len, q) : 0;
        int first = 0, sum = 0;
        Scan(tmp).ExclusiveSum(count, first, sum);
        if (s < nseq) offsets[s] = carry + first;
        carry += sum;
        __syncthreads();  // tmp is reused by the next round
    }
    if (threadIdx.x == 0) offsets[nseq] = carry;
}

}  // namespace

size_t piece_offsets_bytes(int nseq) { return ((static_cast<size_t>(nseq) + 1) * sizeof(int) + 255) & ~size_t{255}; }

int build_piece_offsets(const int* cu_seqlens, int nseq, int total, int q, int* offsets, cudaStream_t stream) {
    piece_offsets_kernel<<<1, kThreads, 0, stream>>>(cu_seqlens, nseq, total, q, offsets);
    return static_cast<int>(cudaGetLastError());
}

}  // namespace ssd
