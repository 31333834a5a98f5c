// C ABI of the ssd_kernels library: the CUDA kernels behind the four ops of docs/op-contracts.md and the packed
// forms of the scan and the conv.
// Used by the TensorRT plugins (plugins/<Plugin>/) and, through ctypes, by ssd_deploy/kernels.py.
//
// Conventions shared by every entry point:
// - Tensors are dense and row-major in the contract's layouts (no strides): x [b,l,h,p], dt [b,l,h],
//   B/C [b,l,g,n], y [b,l,h,p], states [b,h,p,n]; the step variants drop the l axis.
// - "Activations" (x, dt, B, C, y, z, conv input/output) have the I/O dtype `dtype`; parameters (A, D, dt_bias,
//   conv weight/bias, norm weight) and states (ssm state, conv state) are always float32.
// - Every function returns 0 on success, or a cudaError_t / a negative SSD_ERR_* code; it never aborts.
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SSD_ERR_BAD_ARG (-1)       // a size or pointer that the contract does not allow
#define SSD_ERR_WORKSPACE (-2)     // workspace smaller than the *_workspace_size answer

typedef enum { SSD_F32 = 0, SSD_F16 = 1, SSD_BF16 = 2 } ssd_dtype_t;

typedef struct {
    int dt_softplus;   // 0/1
    float dt_min;      // clamp after softplus
    float dt_max;      // +inf for none
} ssd_dt_params_t;

// Prefill. D has h (D_has_hdim = 0) or h*p (D_has_hdim = 1) elements. initial_state may be NULL (zeros); so may
// D and dt_bias. chunk_size (>= 1) is a hint: chunking changes results only by rounding, and the kernel picks its own.
// The workspace size is for 16-byte aligned tensors, grows with b and h, and needs no initialisation. n <= 512.
size_t ssd_scan_workspace_size(int b, int l, int h, int p, int g, int n, int chunk_size, ssd_dtype_t dtype);
int ssd_scan(const void* x, const void* dt, const float* A, const void* B, const void* C, const float* D,
             int D_has_hdim, const float* dt_bias, const float* initial_state, void* y, float* final_state,
             int b, int l, int h, int p, int g, int n, int chunk_size, ssd_dt_params_t dtp, ssd_dtype_t dtype,
             void* workspace, size_t workspace_bytes, cudaStream_t stream);

// Packed prefill (docs/op-contracts.md, "Packed sequences"): nseq sequences end to end on one axis of `total` tokens,
// x [total,h,p], dt [total,h], B/C [total,g,n], y [total,h,p] (a batch of one), initial_states/final_states
// [nseq,h,p,n]. cu_seqlens [nseq+1] int32 are token offsets ON THE DEVICE (0 = cu[0] <= ... <= cu[nseq] = total;
// the contract asks every length >= 1; offsets out of [0, total] are clamped, never followed out of bounds, and an
// empty sequence passes its initial state through). Nothing is read back to the host: the grid is sized for the most
// chunks total and nseq allow. Each sequence is exactly ssd_scan on it alone; equal lengths give bit for bit the
// result of ssd_scan on [nseq, total/nseq]. The workspace size covers every smaller nseq and total.
size_t ssd_scan_packed_workspace_size(int nseq, int total, int h, int p, int g, int n, int chunk_size,
                                      ssd_dtype_t dtype);
int ssd_scan_packed(const void* x, const void* dt, const float* A, const void* B, const void* C, const float* D,
                    int D_has_hdim, const float* dt_bias, const float* initial_states, const int* cu_seqlens, void* y,
                    float* final_states, int nseq, int total, int h, int p, int g, int n, int chunk_size,
                    ssd_dt_params_t dtp, ssd_dtype_t dtype, void* workspace, size_t workspace_bytes,
                    cudaStream_t stream);

// Decode, one token. state_in may equal state_out (in-place update) or be NULL (zeros).
int ssd_step(const float* state_in, const void* x, const void* dt, const float* A, const void* B, const void* C,
             const float* D, int D_has_hdim, const float* dt_bias, void* y, float* state_out,
             int b, int h, int p, int g, int n, ssd_dt_params_t dtp, ssd_dtype_t dtype, cudaStream_t stream);

// Depthwise causal conv with carried state and optional fused SiLU. x/y [b,l,d], weight [d,k], bias [d] or NULL,
// conv_state_in/out [b,d,k-1] float32 (the last k-1 inputs; conv_state_in NULL means zeros). Works for l = 1 and
// l < k-1. conv_state_in may equal conv_state_out. k <= 8.
int ssd_causal_conv1d(const void* x, const float* weight, const float* bias, const float* conv_state_in, void* y,
                      float* conv_state_out, int b, int l, int d, int k, int silu, ssd_dtype_t dtype,
                      cudaStream_t stream);

// Packed conv: x/y [total,d], conv_states_in/out [nseq,d,k-1] float32, cu_seqlens as for ssd_scan_packed; each
// sequence's window starts from its own state (shorter than k-1 and length-1 sequences included). The workspace
// (ssd_causal_conv1d_packed_workspace_size(nseq) bytes, 16-byte aligned, no initialisation) holds the tile table.
size_t ssd_causal_conv1d_packed_workspace_size(int nseq);
int ssd_causal_conv1d_packed(const void* x, const float* weight, const float* bias, const float* conv_states_in,
                             const int* cu_seqlens, void* y, float* conv_states_out, int nseq, int total, int d, int k,
                             int silu, ssd_dtype_t dtype, void* workspace, size_t workspace_bytes,
                             cudaStream_t stream);

// rmsnorm(y * silu(z)) per group of group_size channels. y/z/out [rows, d] (rows = b*l), weight [d].
int ssd_gated_rmsnorm(const void* y, const void* z, const float* weight, void* out, int rows, int d, int group_size,
                      float eps, ssd_dtype_t dtype, cudaStream_t stream);

// A readable message for any return code of the functions above (static storage; never NULL).
const char* ssd_error_string(int code);

#ifdef __cplusplus
}
#endif
