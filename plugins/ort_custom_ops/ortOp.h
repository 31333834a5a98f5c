// The generic part of the ONNX Runtime custom-op library: one OrtCustomOp per (contract, activation dtype), whose
// inputs, outputs, attributes and shapes all come from the generated contract tables (contracts.h). An op adds only
// its attribute range checks and its kernel call (ops.cpp). See README.md.
#pragma once
#include "contracts.h"
#include "onnxruntime_c_api.h"
#include "ssd_kernels.h"
#include <array>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

//! The CPU check build (target ssd_ort_custom_ops_cpu_check, for tests without a GPU): the same ops registered for
//! ONNX Runtime's CPU provider, running everything but the kernel call, which is replaced by zero-filled outputs. It
//! exercises the contract-driven part (attributes, shape checks, output shapes and dtypes) inside a real session.
#ifndef SSD_ORT_CPU_CHECK
#define SSD_ORT_CPU_CHECK 0
#endif

namespace ssd_ort
{

//! The OrtApi version the library asks for and declares in its ops: the oldest with everything it calls
//! (KernelContext_GetAllocator is 1.15; CreateKernelV2 / KernelComputeV2 are honoured from 16; the custom op's
//! start version from 17), so the library also loads into runtimes older than the headers it was built with.
constexpr uint32_t kOrtApiVersion = 17;
static_assert(kOrtApiVersion <= ORT_API_VERSION, "onnxruntime headers older than 1.17");

//! A problem to report through an OrtStatus: thrown inside the library, caught at every callback ORT makes.
class Failure : public std::runtime_error
{
public:
    using std::runtime_error::runtime_error;
};

//! One attribute as read from the node: `i` for int attributes, `f` for float ones.
struct AttrValue
{
    int32_t i;
    float f;
};
using AttrValues = std::vector<AttrValue>;

class NodeRun;

//! What an op adds to its contract: range checks of the attribute values ("" when fine) and the kernel call
//! (returns the C ABI's code: 0, a cudaError_t or an SSD_ERR_*).
struct OpImpl
{
    OpContract const* contract;
    std::string (*checkAttributes)(AttrValues const& values);
    int (*launch)(NodeRun& run);
};

//! Every op the library implements (ops.cpp).
std::vector<OpImpl> const& implementations();

//! Capacities of a node run, checked against every contract at compile time (ortOp.cpp): a run allocates nothing on
//! the host, since decode calls every node of every layer once per token.
constexpr int32_t kMaxTensors = 16;
constexpr int32_t kMaxRank = 8;
constexpr int32_t kMaxSymbols = 64;

//! One compute call of one node: the inputs checked against the contract's shapes (every symbol bound), the outputs
//! allocated from them, the attributes, the dtype and the stream.
class NodeRun
{
public:
    NodeRun(OrtApi const& api, OrtKernelContext* context, OpContract const& contract, std::string const& node,
        ssd_dtype_t dtype, ONNXTensorElementDataType activation, AttrValues const& attrs);
    ~NodeRun();
    NodeRun(NodeRun const&) = delete;
    NodeRun& operator=(NodeRun const&) = delete;

    //! Input `i`'s data, nullptr for an absent optional input.
    void const* in(int i) const
    {
        return mInputs[i].data;
    }
    float const* inF32(int i) const
    {
        return static_cast<float const*>(in(i));
    }
    int32_t const* inI32(int i) const
    {
        return static_cast<int32_t const*>(in(i));
    }
    void* out(int i) const
    {
        return mOutputs[i];
    }
    float* outF32(int i) const
    {
        return static_cast<float*>(out(i));
    }
    //! The rank input `i` came with (0 when absent): picks among "[h] or [h, p]".
    int rank(int i) const
    {
        return mInputs[i].rank;
    }
    //! The extent bound to `symbol` by the inputs, as the C ABI's int.
    int dim(char const* symbol) const;
    int32_t intAttr(int i) const
    {
        return mAttrs[i].i;
    }
    float floatAttr(int i) const
    {
        return mAttrs[i].f;
    }
    ssd_dtype_t dtype() const
    {
        return mDtype;
    }
    cudaStream_t stream() const
    {
        return mStream;
    }
    //! True when every output is empty (nothing to launch).
    bool empty() const
    {
        return mEmpty;
    }
    //! Fills every output with zero bytes (host memory: the CPU check build only).
    void zeroOutputs() const;
    //! `bytes` of device scratch from the session's allocator (one request per run), returned to it when the run
    //! ends (ORT's own CUDA kernels free their scratch the same way: the arena hands it out again only to work on the
    //! same stream).
    void* workspace(size_t bytes);

private:
    struct Input
    {
        void const* data{};
        int32_t rank{};
        std::array<int64_t, kMaxRank> dims{};
    };
    struct Symbol
    {
        char const* name;
        int64_t extent;
    };
    int64_t bound(char const* symbol) const;
    void bind(TensorContract const& t, Input const& input);
    std::string shapeError(TensorContract const& t, Input const& input) const;

    OrtApi const& mApi;
    OrtKernelContext* mContext;
    std::string const& mNode;
    ssd_dtype_t mDtype;
    AttrValues const& mAttrs;
    std::array<Input, kMaxTensors> mInputs{};
    std::array<void*, kMaxTensors> mOutputs{};
    std::array<size_t, kMaxTensors> mOutputBytes{};
    std::array<Symbol, kMaxSymbols> mSymbols{};
    int32_t mNbSymbols{0};
    cudaStream_t mStream{};
    bool mEmpty{false};
    OrtMemoryInfo const* mMemory{}; // of the first input present: the device the node runs on
    OrtAllocator* mAllocator{};     // from mMemory, on the first workspace request
    void* mScratch{};
};

//! An OrtCustomOp for one contract and one activation dtype (fp32, fp16 or bf16): ONNX Runtime merges the three of a
//! name into one schema whose activation inputs take any of the three, and picks the kernel by the node's types.
struct CustomOp : OrtCustomOp
{
    CustomOp(OpImpl const& impl, ONNXTensorElementDataType activation, ssd_dtype_t dtype);

    OpImpl const* impl;
    ONNXTensorElementDataType activation;
    ssd_dtype_t dtype;
};

//! The library's ops: every implementation in every activation dtype (built once, alive until unload).
std::vector<CustomOp> const& customOps();

//! The C ABI's message for a kernel's return code, as the library reports it.
std::string kernelError(int code);

} // namespace ssd_ort
