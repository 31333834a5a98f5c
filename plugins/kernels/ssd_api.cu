// C ABI of the SSD scan and step (ssd_kernels.h): argument checks and the choice between the two implementations.
#include <cuda_runtime.h>

#include "ssd_internal.h"

namespace {

// Below this many tokens the recurrence beats a chunk of tensor-core work (a chunk tile is 128 tokens).
constexpr int kMinChunkedTokens = 64;

bool valid_dtype(ssd_dtype_t t) { return t == SSD_F32 || t == SSD_F16 || t == SSD_BF16; }

bool valid_sizes(int b, int l, int h, int p, int g, int n) {
    return b > 0 && l > 0 && h > 0 && p > 0 && g > 0 && n > 0 && h % g == 0 && n <= ssd::kRecurrentMaxN;
}

// Packed: by the mean length (the lengths stay on the device), so that equal lengths choose as the unpacked call.
bool use_chunked(const ssd::ScanProblem& pb) {
    const long per_seq = pb.cu_seqlens ? pb.l / pb.b : pb.l;
    return per_seq >= kMinChunkedTokens && ssd::chunked_supported(pb);
}

// A problem with 16-byte aligned tensors (what the workspace sizes answer for).
ssd::ScanProblem aligned_problem(int b, int l, int h, int p, int g, int n, ssd_dtype_t dtype) {
    static const char kAligned[16] __attribute__((aligned(16))) = {};
    ssd::ScanProblem pb{};
    pb.x = pb.B = pb.C = pb.y = const_cast<char*>(kAligned);
    pb.state_out = reinterpret_cast<float*>(const_cast<char*>(kAligned));
    pb.b = b, pb.l = l, pb.h = h, pb.p = p, pb.g = g, pb.n = n, pb.dtype = dtype;
    return pb;
}

}  // namespace

extern "C" {

size_t ssd_scan_workspace_size(int b, int l, int h, int p, int g, int n, int chunk_size, ssd_dtype_t dtype) {
    (void)chunk_size;
    if (!valid_sizes(b, l, h, p, g, n) || !valid_dtype(dtype)) return 0;
    // Answer for aligned tensors: those take the chunked path when the shape allows, misaligned ones need nothing.
    const ssd::ScanProblem pb = aligned_problem(b, l, h, p, g, n, dtype);
    return use_chunked(pb) ? ssd::chunked_workspace_size(b, h, p, n, false) : 0;
}

size_t ssd_scan_packed_workspace_size(int nseq, int total, int h, int p, int g, int n, int chunk_size,
                                      ssd_dtype_t dtype) {
    (void)chunk_size;
    if (!valid_sizes(nseq, total, h, p, g, n) || !valid_dtype(dtype)) return 0;
    // Whenever the chunked kernel could run, whatever the mean length: the size then covers every smaller nseq and
    // total (the choice by mean length is not monotone in nseq).
    const ssd::ScanProblem pb = aligned_problem(nseq, total, h, p, g, n, dtype);
    return ssd::chunked_supported(pb) ? ssd::chunked_workspace_size(nseq, h, p, n, true) : 0;
}

int ssd_scan(const void* x, const void* dt, const float* A, const void* B, const void* C, const float* D,
             int D_has_hdim, const float* dt_bias, const float* initial_state, void* y, float* final_state, int b,
             int l, int h, int p, int g, int n, int chunk_size, ssd_dt_params_t dtp, ssd_dtype_t dtype,
             void* workspace, size_t workspace_bytes, cudaStream_t stream) {
    if (!x || !dt || !A || !B || !C || !y || !final_state || chunk_size < 1) return SSD_ERR_BAD_ARG;
    if (!valid_sizes(b, l, h, p, g, n) || !valid_dtype(dtype)) return SSD_ERR_BAD_ARG;
    const ssd::ScanProblem pb{x, dt, A, B, C, D, D_has_hdim, dt_bias, initial_state, y, final_state,
                              b, l, h, p, g, n, dtp, dtype};
    if (use_chunked(pb)) return ssd::run_chunked(pb, workspace, workspace_bytes, stream);
    return ssd::run_recurrent(pb, stream);
}

int ssd_scan_packed(const void* x, const void* dt, const float* A, const void* B, const void* C, const float* D,
                    int D_has_hdim, const float* dt_bias, const float* initial_states, const int* cu_seqlens, void* y,
                    float* final_states, int nseq, int total, int h, int p, int g, int n, int chunk_size,
                    ssd_dt_params_t dtp, ssd_dtype_t dtype, void* workspace, size_t workspace_bytes,
                    cudaStream_t stream) {
    if (!x || !dt || !A || !B || !C || !y || !final_states || !cu_seqlens || chunk_size < 1) return SSD_ERR_BAD_ARG;
    if (!valid_sizes(nseq, total, h, p, g, n) || !valid_dtype(dtype)) return SSD_ERR_BAD_ARG;
    const ssd::ScanProblem pb{x, dt, A, B, C, D, D_has_hdim, dt_bias, initial_states, y, final_states,
                              nseq, total, h, p, g, n, dtp, dtype, cu_seqlens};
    if (use_chunked(pb)) return ssd::run_chunked(pb, workspace, workspace_bytes, stream);
    return ssd::run_recurrent(pb, stream);
}

int ssd_step(const float* state_in, const void* x, const void* dt, const float* A, const void* B, const void* C,
             const float* D, int D_has_hdim, const float* dt_bias, void* y, float* state_out, int b, int h, int p,
             int g, int n, ssd_dt_params_t dtp, ssd_dtype_t dtype, cudaStream_t stream) {
    if (!x || !dt || !A || !B || !C || !y || !state_out) return SSD_ERR_BAD_ARG;
    if (!valid_sizes(b, 1, h, p, g, n) || !valid_dtype(dtype)) return SSD_ERR_BAD_ARG;
    const ssd::ScanProblem pb{x, dt, A, B, C, D, D_has_hdim, dt_bias, state_in, y, state_out,
                              b, 1, h, p, g, n, dtp, dtype};
    return ssd::run_recurrent(pb, stream);
}

const char* ssd_error_string(int code) {
    switch (code) {
        case 0: return "success";
        case SSD_ERR_BAD_ARG: return "invalid argument (a size, pointer or dtype the contract does not allow)";
        case SSD_ERR_WORKSPACE: return "workspace smaller than ssd_scan_workspace_size";
        default: return code > 0 ? cudaGetErrorString(static_cast<cudaError_t>(code)) : "unknown error";
    }
}

}  // extern "C"
