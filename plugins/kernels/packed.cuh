// Packed sequences on the device (docs/op-contracts.md, "Packed sequences"): n sequences end to end on one token axis
// of `total` tokens, cut by cu_seqlens [n+1] int32, which stay on the device (no host sync). The host sizes a grid
// for the most pieces T and n allow (floor(T/Q) + n pieces of at most Q tokens, every sequence cut on its own);
// build_piece_offsets (packed.cu) turns cu_seqlens into the first piece of each sequence, and each block finds its
// sequence by a binary search there. Blocks past the last real piece have no work and exit.
#pragma once
#include <stddef.h>

namespace ssd {

struct SeqSpan {
    size_t start;  // token row of the sequence's first token
    int len;       // tokens; 0 only for offsets the contract forbids (kept in bounds rather than trusted)
};

// Sequence s of a packed axis (cu_seqlens non-null), or batch row s of rows of `l` tokens (cu_seqlens null).
__device__ __forceinline__ SeqSpan seq_span(const int* cu_seqlens, int s, int l) {
    if (cu_seqlens == nullptr) return {static_cast<size_t>(s) * l, l};
    const int a = min(max(cu_seqlens[s], 0), l);
    const int e = min(max(cu_seqlens[s + 1], a), l);
    return {static_cast<size_t>(a), e - a};
}

// Pieces of a sequence of `len` tokens: at least one, so that an empty sequence still passes its state through.
__host__ __device__ __forceinline__ int piece_count(int len, int q) { return len > q ? (len + q - 1) / q : 1; }

// The most pieces n sequences of `total` tokens can need: Σ max(1, ceil(len_s / q)) ≤ Σ (floor(len_s / q) + 1).
inline long max_pieces(int nseq, int total, int q) { return static_cast<long>(total / q) + nseq; }

// The sequence holding piece `slot` (offsets [nseq+1]: first piece of each sequence, then the total), or -1.
__device__ __forceinline__ int piece_seq(const int* offsets, int nseq, int slot) {
    if (slot >= offsets[nseq]) return -1;
    int lo = 0, hi = nseq - 1;  // the last s with offsets[s] <= slot
    while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (offsets[mid] <= slot) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

}  // namespace ssd
