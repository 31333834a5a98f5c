// OrtCustomOp callbacks and the contract-driven node run (ortOp.h).
#include "ortOp.h"
#include <climits>
#include <cstring>
#include <exception>
#include <memory>
#include <new>
#include <sstream>

namespace ssd_ort
{
namespace
{

constexpr char const* kProvider = SSD_ORT_CPU_CHECK ? "CPUExecutionProvider" : "CUDAExecutionProvider";

// ---- OrtStatus helpers ------------------------------------------------------------------------------------------

//! Throws a Failure with ORT's message when `status` is an error (and releases it).
void check(OrtApi const& api, OrtStatus* status, std::string const& what)
{
    if (status != nullptr)
    {
        std::string message = what + ": " + api.GetErrorMessage(status);
        api.ReleaseStatus(status);
        throw Failure(message);
    }
}

//! Runs `body`, turning what it throws into an OrtStatus (nullptr on success): no exception crosses into ORT.
template <typename Body>
OrtStatus* guarded(OrtApi const& api, Body&& body) noexcept
{
    try
    {
        body();
        return nullptr;
    }
    catch (Failure const& e)
    {
        return api.CreateStatus(ORT_INVALID_ARGUMENT, e.what());
    }
    catch (std::bad_alloc const&)
    {
        return api.CreateStatus(ORT_FAIL, "ssd_ort_custom_ops: out of host memory");
    }
    catch (std::exception const& e)
    {
        return api.CreateStatus(ORT_FAIL, e.what());
    }
}

std::string shapeText(Shape const& s)
{
    std::ostringstream os;
    os << "[";
    for (int32_t i = 0; i < s.rank; ++i)
    {
        Dim const& d = s.dims[i];
        os << (i ? ", " : "");
        if (d.symbol[0] == '\0')
        {
            os << d.offset;
        }
        else
        {
            os << d.symbol;
            if (d.offset != 0)
            {
                os << (d.offset > 0 ? "+" : "") << d.offset;
            }
        }
    }
    return os.str() + "]";
}

std::string alternativesText(TensorContract const& t)
{
    std::string text;
    for (int32_t i = 0; i < t.nbShapes; ++i)
    {
        text += (i ? " or " : "") + shapeText(t.shapes[i]);
    }
    return text;
}

//! Every dimension of every tensor (an upper bound on the distinct symbols) and every rank within NodeRun's arrays.
constexpr bool fitsCapacities()
{
    for (OpContract const* c : contracts::kAll)
    {
        int32_t dims = 0;
        for (int32_t io = 0; io < 2; ++io)
        {
            TensorContract const* tensors = io == 0 ? c->inputs : c->outputs;
            int32_t const count = io == 0 ? c->nbInputs : c->nbOutputs;
            if (count > kMaxTensors)
            {
                return false;
            }
            for (int32_t i = 0; i < count; ++i)
            {
                for (int32_t s = 0; s < tensors[i].nbShapes; ++s)
                {
                    dims += tensors[i].shapes[s].rank;
                    if (tensors[i].shapes[s].rank > kMaxRank)
                    {
                        return false;
                    }
                }
            }
        }
        if (dims > kMaxSymbols)
        {
            return false;
        }
    }
    return true;
}
static_assert(fitsCapacities(), "a contract has more tensors, dimensions or rank than NodeRun holds (ortOp.h)");

char const* dtypeName(ONNXTensorElementDataType t)
{
    switch (t)
    {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return "float32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return "float16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16: return "bfloat16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return "int32";
    default: return "another dtype";
    }
}

//! The element type of a tensor of role `role` in an op whose activations are `activation`.
ONNXTensorElementDataType elementType(Role role, ONNXTensorElementDataType activation)
{
    switch (role)
    {
    case Role::kActivation: return activation;
    case Role::kInt32: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
    case Role::kFloat32: break;
    }
    return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
}

// ---- the kernel: one per node, holding its attributes ---------------------------------------------------------

struct Kernel
{
    OrtApi const* api;
    CustomOp const* op;
    std::string node; // "SsdChunkScan node 'name'", the prefix of every message
    AttrValues attrs;
};

std::string nodeName(OrtApi const& api, OrtKernelInfo const* info)
{
    size_t size = 0;
    check(api, api.KernelInfo_GetNodeName(info, nullptr, &size), "KernelInfo_GetNodeName");
    std::string name(size, '\0');
    check(api, api.KernelInfo_GetNodeName(info, name.data(), &size), "KernelInfo_GetNodeName");
    name.resize(std::strlen(name.c_str()));
    return name;
}

//! Reads the contract's attributes from the node: defaults for absent optional ones, a Failure for an absent
//! required one. Float attributes may also come as INT (onnx.helper writes dt_min=0 so), as the TensorRT plugins
//! accept; values the op's range checks refuse are a Failure here, at session creation.
AttrValues readAttributes(OrtApi const& api, OrtKernelInfo const* info, OpImpl const& impl, std::string const& node)
{
    OpContract const& c = *impl.contract;
    AttrValues values(c.nbAttributes);
    for (int32_t i = 0; i < c.nbAttributes; ++i)
    {
        AttrContract const& a = c.attributes[i];
        int64_t asInt = 0;
        float asFloat = 0.F;
        bool found = false;
        if (a.type == AttrType::kFloat)
        {
            OrtStatus* s = api.KernelInfoGetAttribute_float(info, a.name, &asFloat);
            found = s == nullptr;
            api.ReleaseStatus(s);
        }
        if (!found)
        {
            OrtStatus* s = api.KernelInfoGetAttribute_int64(info, a.name, &asInt);
            found = s == nullptr;
            api.ReleaseStatus(s);
            asFloat = static_cast<float>(asInt);
        }
        if (!found)
        {
            if (a.required)
            {
                throw Failure(node + ": the required attribute " + a.name + " is missing");
            }
            asFloat = static_cast<float>(a.defaultValue);
            asInt = static_cast<int64_t>(a.type == AttrType::kInt ? a.defaultValue : 0.0);
        }
        if (a.type == AttrType::kInt && (asInt < INT32_MIN || asInt > INT32_MAX))
        {
            throw Failure(node + ": attribute " + a.name + " = " + std::to_string(asInt) + " does not fit int32");
        }
        values[i] = AttrValue{static_cast<int32_t>(asInt), asFloat};
    }
    std::string const problem = impl.checkAttributes(values);
    if (!problem.empty())
    {
        throw Failure(node + ": " + problem);
    }
    return values;
}

// ---- OrtCustomOp callbacks --------------------------------------------------------------------------------------

CustomOp const& self(OrtCustomOp const* op)
{
    return *static_cast<CustomOp const*>(op);
}

TensorContract const& inputContract(OrtCustomOp const* op, size_t i)
{
    return self(op).impl->contract->inputs[i];
}

TensorContract const& outputContract(OrtCustomOp const* op, size_t i)
{
    return self(op).impl->contract->outputs[i];
}

ONNXTensorElementDataType typeOf(OrtCustomOp const* op, TensorContract const& t)
{
    return elementType(t.role, self(op).activation);
}

OrtCustomOpInputOutputCharacteristic characteristicOf(TensorContract const& t)
{
    return t.optional ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
}

OrtStatus* ORT_API_CALL createKernel(OrtCustomOp const* op, OrtApi const* api, OrtKernelInfo const* info,
    void** kernel) noexcept
{
    *kernel = nullptr;
    return guarded(*api, [&] {
        CustomOp const& me = self(op);
        std::string const node = std::string(me.impl->contract->name) + " node '" + nodeName(*api, info) + "'";
        auto k = std::make_unique<Kernel>(Kernel{api, &me, node, readAttributes(*api, info, *me.impl, node)});
        *kernel = k.release();
    });
}

OrtStatus* ORT_API_CALL compute(void* opKernel, OrtKernelContext* context) noexcept
{
    auto const& k = *static_cast<Kernel const*>(opKernel);
    return guarded(*k.api, [&] {
        NodeRun run(*k.api, context, *k.op->impl->contract, k.node, k.op->dtype, k.op->activation, k.attrs);
        if (run.empty())
        {
            return;
        }
        if (SSD_ORT_CPU_CHECK)
        {
            run.zeroOutputs();
            return;
        }
        int const code = k.op->impl->launch(run);
        if (code != 0)
        {
            throw Failure(k.node + ": " + kernelError(code));
        }
    });
}

void ORT_API_CALL destroyKernel(void* opKernel) noexcept
{
    delete static_cast<Kernel*>(opKernel);
}

} // namespace

std::string kernelError(int code)
{
    return std::string("kernel error ") + std::to_string(code) + " (" + ssd_error_string(code) + ")";
}

CustomOp::CustomOp(OpImpl const& implementation, ONNXTensorElementDataType activationType, ssd_dtype_t kernelDtype)
    : OrtCustomOp{} // every callback this library leaves out stays null, as ORT expects of an unused one
    , impl(&implementation)
    , activation(activationType)
    , dtype(kernelDtype)
{
    version = kOrtApiVersion;
    GetName = [](OrtCustomOp const* op) { return self(op).impl->contract->name; };
    GetExecutionProviderType = [](OrtCustomOp const*) { return kProvider; };
    GetInputTypeCount = [](OrtCustomOp const* op) { return size_t(self(op).impl->contract->nbInputs); };
    GetOutputTypeCount = [](OrtCustomOp const* op) { return size_t(self(op).impl->contract->nbOutputs); };
    GetInputType = [](OrtCustomOp const* op, size_t i) { return typeOf(op, inputContract(op, i)); };
    GetOutputType = [](OrtCustomOp const* op, size_t i) { return typeOf(op, outputContract(op, i)); };
    GetInputCharacteristic = [](OrtCustomOp const* op, size_t i) { return characteristicOf(inputContract(op, i)); };
    GetOutputCharacteristic = [](OrtCustomOp const* op, size_t i) { return characteristicOf(outputContract(op, i)); };
    GetInputMemoryType = [](OrtCustomOp const*, size_t) { return OrtMemTypeDefault; }; // device memory
    GetStartVersion = [](OrtCustomOp const* op) { return int(self(op).impl->contract->version); };
    CreateKernelV2 = createKernel;
    KernelComputeV2 = compute;
    KernelDestroy = destroyKernel;
}

std::vector<CustomOp> const& customOps()
{
    static std::vector<CustomOp> const ops = [] {
        std::vector<CustomOp> all;
        for (OpImpl const& impl : implementations())
        {
            all.emplace_back(impl, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, SSD_F32);
            all.emplace_back(impl, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16, SSD_F16);
            all.emplace_back(impl, ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16, SSD_BF16);
        }
        return all;
    }();
    return ops;
}

// ---- NodeRun ------------------------------------------------------------------------------------------------------

NodeRun::NodeRun(OrtApi const& api, OrtKernelContext* context, OpContract const& contract, std::string const& node,
    ssd_dtype_t dtype, ONNXTensorElementDataType activation, AttrValues const& attrs)
    : mApi(api)
    , mContext(context)
    , mNode(node)
    , mDtype(dtype)
    , mAttrs(attrs)
{
    size_t count = 0;
    check(api, api.KernelContext_GetInputCount(context, &count), "KernelContext_GetInputCount");
    for (int32_t i = 0; i < contract.nbInputs; ++i)
    {
        TensorContract const& t = contract.inputs[i];
        OrtValue const* value = nullptr;
        if (static_cast<size_t>(i) < count)
        {
            check(api, api.KernelContext_GetInput(context, i, &value), "KernelContext_GetInput");
        }
        if (value == nullptr)
        {
            if (!t.optional)
            {
                throw Failure(node + ": input " + t.name + " is missing");
            }
            continue; // data nullptr, rank 0
        }
        Input& input = mInputs[i];
        OrtTensorTypeAndShapeInfo* info = nullptr;
        check(api, api.GetTensorTypeAndShape(value, &info), "GetTensorTypeAndShape");
        ONNXTensorElementDataType type{};
        size_t rank = 0;
        OrtStatus* status = api.GetTensorElementType(info, &type);
        if (status == nullptr)
        {
            status = api.GetDimensionsCount(info, &rank);
        }
        if (status == nullptr && rank <= static_cast<size_t>(kMaxRank))
        {
            status = api.GetDimensions(info, input.dims.data(), rank);
        }
        api.ReleaseTensorTypeAndShapeInfo(info);
        check(api, status, std::string("the type and shape of input ") + t.name);
        if (rank > static_cast<size_t>(kMaxRank))
        {
            throw Failure(node + ": input " + t.name + " has rank " + std::to_string(rank) + "; the contract says "
                + alternativesText(t));
        }
        input.rank = static_cast<int32_t>(rank);
        ONNXTensorElementDataType const wanted = elementType(t.role, activation);
        if (type != wanted)
        {
            throw Failure(node + ": input " + t.name + " is " + dtypeName(type) + ", expected " + dtypeName(wanted));
        }
        void* data = nullptr;
        // GetTensorData (const) is 1.21; the inputs are never written
        check(api, api.GetTensorMutableData(const_cast<OrtValue*>(value), &data), "GetTensorMutableData");
        input.data = data;
        bind(t, input);
        if (mMemory == nullptr)
        {
            check(api, api.GetTensorMemoryInfo(value, &mMemory), "GetTensorMemoryInfo");
        }
    }

    mEmpty = true;
    for (int32_t i = 0; i < contract.nbOutputs; ++i)
    {
        TensorContract const& t = contract.outputs[i];
        Shape const& shape = t.shapes[0];
        std::array<int64_t, kMaxRank> dims{};
        int64_t elements = 1;
        for (int32_t d = 0; d < shape.rank; ++d)
        {
            Dim const& dim = shape.dims[d];
            dims[d] = dim.symbol[0] == '\0' ? dim.offset : bound(dim.symbol) + dim.offset;
            elements *= dims[d];
        }
        mEmpty = mEmpty && elements == 0;
        // 2-byte activations in fp16/bf16 nodes; float32 and int32 tensors are 4 bytes
        mOutputBytes[i] = static_cast<size_t>(elements) * (t.role == Role::kActivation && dtype != SSD_F32 ? 2 : 4);
        OrtValue* value = nullptr;
        check(api, api.KernelContext_GetOutput(context, i, dims.data(), shape.rank, &value),
            std::string("KernelContext_GetOutput(") + t.name + ")");
        check(api, api.GetTensorMutableData(value, &mOutputs[i]), "GetTensorMutableData");
    }

    void* stream = nullptr;
    check(api, api.KernelContext_GetGPUComputeStream(context, &stream), "KernelContext_GetGPUComputeStream");
    if (stream == nullptr && !SSD_ORT_CPU_CHECK)
    {
        throw Failure(node + ": no CUDA compute stream (the node must run on the CUDA execution provider)");
    }
    mStream = static_cast<cudaStream_t>(stream);
}

NodeRun::~NodeRun()
{
    if (mAllocator != nullptr)
    {
        if (mScratch != nullptr)
        {
            mAllocator->Free(mAllocator, mScratch);
        }
        mApi.ReleaseAllocator(mAllocator);
    }
}

void NodeRun::zeroOutputs() const
{
    for (size_t i = 0; i < mOutputs.size(); ++i)
    {
        if (mOutputs[i] != nullptr)
        {
            std::memset(mOutputs[i], 0, mOutputBytes[i]);
        }
    }
}

std::string NodeRun::shapeError(TensorContract const& t, Input const& input) const
{
    std::ostringstream os;
    os << mNode << ": input " << t.name << " has shape [";
    for (int32_t d = 0; d < input.rank; ++d)
    {
        os << (d ? ", " : "") << input.dims[d];
    }
    os << "]";
    return os.str();
}

void NodeRun::bind(TensorContract const& t, Input const& input)
{
    Shape const* shape = nullptr;
    for (int32_t s = 0; s < t.nbShapes && shape == nullptr; ++s)
    {
        if (t.shapes[s].rank == input.rank)
        {
            shape = &t.shapes[s];
        }
    }
    if (shape == nullptr)
    {
        throw Failure(shapeError(t, input) + "; the contract says " + alternativesText(t));
    }
    for (int32_t d = 0; d < shape->rank; ++d)
    {
        Dim const& dim = shape->dims[d];
        if (dim.symbol[0] == '\0')
        {
            if (input.dims[d] != dim.offset)
            {
                throw Failure(shapeError(t, input) + "; the contract says " + alternativesText(t));
            }
            continue;
        }
        int64_t const value = input.dims[d] - dim.offset;
        int32_t k = 0;
        while (k < mNbSymbols && std::strcmp(mSymbols[k].name, dim.symbol) != 0)
        {
            ++k;
        }
        if (k == mNbSymbols)
        {
            mSymbols[mNbSymbols++] = Symbol{dim.symbol, value}; // within kMaxSymbols: fitsCapacities()
        }
        else if (mSymbols[k].extent != value)
        {
            throw Failure(shapeError(t, input) + " (" + t.name + " is " + shapeText(*shape) + "), but " + dim.symbol
                + " = " + std::to_string(mSymbols[k].extent) + " from the inputs before it");
        }
    }
}

int64_t NodeRun::bound(char const* symbol) const
{
    for (int32_t k = 0; k < mNbSymbols; ++k)
    {
        if (std::strcmp(mSymbols[k].name, symbol) == 0)
        {
            return mSymbols[k].extent;
        }
    }
    throw Failure(mNode + ": no input binds " + symbol + " (the contract's outputs need it)");
}

int NodeRun::dim(char const* symbol) const
{
    int64_t const extent = bound(symbol);
    if (extent > INT_MAX)
    {
        throw Failure(mNode + ": " + symbol + " = " + std::to_string(extent) + " exceeds what the kernels take (int)");
    }
    return static_cast<int>(extent);
}

void* NodeRun::workspace(size_t bytes)
{
    if (bytes == 0)
    {
        return nullptr;
    }
    if (mScratch != nullptr || mMemory == nullptr)
    {
        throw Failure(mNode + ": one workspace per run, on the device of the inputs");
    }
    check(mApi, mApi.KernelContext_GetAllocator(mContext, mMemory, &mAllocator), "KernelContext_GetAllocator");
    mScratch = mAllocator->Alloc(mAllocator, bytes);
    if (mScratch == nullptr)
    {
        throw Failure(mNode + ": cannot allocate " + std::to_string(bytes) + " bytes of workspace");
    }
    return mScratch;
}

} // namespace ssd_ort
