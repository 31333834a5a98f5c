#include "ssdPluginBase.h"
#include "pluginLogging.h"
#include <cmath>
#include <exception>

namespace ssd_trt
{
using namespace nvinfer1;

namespace
{

Dims const& dimsOf(DynamicPluginTensorDesc const& d)
{
    return d.desc.dims;
}

Dims const& dimsOf(PluginTensorDesc const& d)
{
    return d.dims;
}

//! Build-time view of symbolic extents: constants stay, the rest is -1 (unknown).
Dims knownExtents(DimsExprs const& exprs)
{
    Dims dims{};
    dims.nbDims = exprs.nbDims;
    for (int32_t i = 0; i < exprs.nbDims && i < Dims::MAX_DIMS; ++i)
    {
        dims.d[i] = exprs.d[i]->isConstant() ? exprs.d[i]->getConstantValue() : -1;
    }
    return dims;
}

} // namespace

DataType roleType(Role role, DataType io)
{
    switch (role)
    {
    case Role::kACTIVATION: return io;
    case Role::kINT32: return DataType::kINT32;
    case Role::kFLOAT32: break;
    }
    return DataType::kFLOAT;
}

bool toSsdDtype(DataType type, ssd_dtype_t& out)
{
    switch (type)
    {
    case DataType::kFLOAT: out = SSD_F32; return true;
    case DataType::kHALF: out = SSD_F16; return true;
    case DataType::kBF16: out = SSD_BF16; return true;
    default: return false;
    }
}

std::string checkDtAttributes(int32_t dtSoftplus, float dtMin, float dtMax)
{
    if (dtSoftplus != 0 && dtSoftplus != 1)
    {
        return "dt_softplus must be 0 or 1";
    }
    if (std::isnan(dtMin) || std::isnan(dtMax) || dtMin > dtMax)
    {
        return "need dt_min <= dt_max, neither NaN";
    }
    return "";
}

SsdPluginBase::SsdPluginBase(PluginSpec const& spec, AttrValues const& values)
    : mSpec(&spec)
    , mValues(values)
{
}

int32_t SsdPluginBase::fail(std::string const& problem) const noexcept
{
    reportError(std::string(mSpec->name) + ": " + problem);
    return -1;
}

bool SsdPluginBase::countsMatch(int32_t nbInputs, int32_t nbOutputs) const noexcept
{
    if (nbInputs == mSpec->nbInputs && nbOutputs == mSpec->nbOutputs())
    {
        return true;
    }
    fail("takes " + std::to_string(mSpec->nbInputs) + " inputs and " + std::to_string(mSpec->nbOutputs())
        + " outputs, got " + std::to_string(nbInputs) + " and " + std::to_string(nbOutputs));
    return false;
}

template <typename Desc>
int32_t SsdPluginBase::checkShapes(
    char const* stage, Desc const* in, int32_t nbInputs, Desc const* out, int32_t nbOutputs) const noexcept
{
    if (!countsMatch(nbInputs, nbOutputs))
    {
        return -1;
    }
    try
    {
        std::vector<Dims> inDims(nbInputs);
    std::vector<Dims> outDims(nbOutputs);
        for (int32_t i = 0; i < nbInputs; ++i)
        {
            inDims[i] = dimsOf(in[i]);
        }
        for (int32_t i = 0; i < nbOutputs; ++i)
        {
            outDims[i] = dimsOf(out[i]);
        }
        ShapeMatcher m;
        matchShapes(m, inDims.data(), outDims.data());
        return m.error().empty() ? 0 : fail(std::string(stage) + ": " + m.error());
    }
    catch (std::exception const& e)
    {
        return fail(std::string(stage) + ": " + e.what());
    }
}

IPluginCapability* SsdPluginBase::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
    case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

char const* SsdPluginBase::getPluginName() const noexcept
{
    return mSpec->name;
}

char const* SsdPluginBase::getPluginVersion() const noexcept
{
    return kPLUGIN_VERSION;
}

char const* SsdPluginBase::getPluginNamespace() const noexcept
{
    return kPLUGIN_NAMESPACE;
}

int32_t SsdPluginBase::getNbOutputs() const noexcept
{
    return mSpec->nbOutputs();
}

int32_t SsdPluginBase::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (!countsMatch(nbInputs, nbOutputs))
    {
        return -1;
    }
    DataType const io = inputTypes[mSpec->anchor()];
    ssd_dtype_t unused{};
    if (!toSsdDtype(io, unused))
    {
        return fail("activations must be float32, float16 or bfloat16");
    }
    // Networks are strongly typed: a wrong input dtype is the graph's, so say which input rather than let the
    // format search fail without a reason.
    for (int32_t i = 0; i < nbInputs; ++i)
    {
        Role const role = mSpec->roles[i];
        if (inputTypes[i] != roleType(role, io))
        {
            return fail("input " + std::to_string(i)
                + (role == Role::kACTIVATION ? " must have the dtype of input " + std::to_string(mSpec->anchor())
                                             : std::string(role == Role::kINT32 ? " must be int32" : " must be float32")));
        }
    }
    for (int32_t o = 0; o < nbOutputs; ++o)
    {
        outputTypes[o] = roleType(mSpec->roles[nbInputs + o], io);
    }
    return 0;
}

bool SsdPluginBase::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (nbInputs != mSpec->nbInputs || nbOutputs != mSpec->nbOutputs() || pos < 0 || pos >= nbInputs + nbOutputs)
    {
        return false;
    }
    PluginTensorDesc const& desc = inOut[pos].desc;
    if (desc.format != TensorFormat::kLINEAR)
    {
        return false;
    }
    if (mSpec->roles[pos] != Role::kACTIVATION)
    {
        return desc.type == roleType(mSpec->roles[pos], DataType::kFLOAT);
    }
    ssd_dtype_t unused{};
    int32_t const anchor = mSpec->anchor();
    // TensorRT asks position by position with earlier positions already fixed, and the anchor is the first
    // activation: later activations must repeat its dtype.
    return toSsdDtype(desc.type, unused) && (pos == anchor || desc.type == inOut[anchor].desc.type);
}

int32_t SsdPluginBase::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
    int32_t nbShapeInputs, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept
{
    if (!countsMatch(nbInputs, nbOutputs))
    {
        return -1;
    }
    if (nbShapeInputs != 0)
    {
        return fail("takes no shape inputs");
    }
    try
    {
        std::vector<Dims> known(nbInputs);
        for (int32_t i = 0; i < nbInputs; ++i)
        {
            if (inputs[i].nbDims > Dims::MAX_DIMS)
            {
                return fail("input " + std::to_string(i) + " has too many dimensions");
            }
            known[i] = knownExtents(inputs[i]);
        }
        // Ranks and the extents known at network definition are checked here, so a wrong graph fails when parsed.
        ShapeMatcher m;
        matchShapes(m, known.data(), nullptr);
        if (!m.error().empty())
        {
            return fail(m.error());
        }
        outputShapes(inputs, outputs, exprBuilder);
        return 0;
    }
    catch (std::exception const& e)
    {
        return fail(std::string("getOutputShapes: ") + e.what());
    }
}

int32_t SsdPluginBase::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    return checkShapes("configurePlugin", in, nbInputs, out, nbOutputs);
}

int32_t SsdPluginBase::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    return checkShapes("onShapeChange", in, nbInputs, out, nbOutputs);
}

int32_t SsdPluginBase::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
    void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept
{
    ssd_dtype_t dtype{};
    if (!toSsdDtype(inputDesc[mSpec->anchor()].type, dtype))
    {
        return fail("enqueue: unsupported activation dtype");
    }
    int32_t const code = launch(inputDesc, inputs, outputs, workspace, dtype, stream);
    if (code != 0)
    {
        fail("kernel returned " + std::to_string(code) + ": " + ssd_error_string(code));
    }
    return code;
}

IPluginV3* SsdPluginBase::attachToContext(IPluginResourceContext* /*context*/) noexcept
{
    return clone();
}

PluginFieldCollection const* SsdPluginBase::getFieldsToSerialize() noexcept
{
    try
    {
        // Rebuilt on each call: a copy (clone) must point at its own values.
        mSerialFields = attributeFields(*mSpec, mValues.data());
        mSerialCollection.nbFields = static_cast<int32_t>(mSerialFields.size());
        mSerialCollection.fields = mSerialFields.data();
        return &mSerialCollection;
    }
    catch (std::exception const& e)
    {
        fail(std::string("getFieldsToSerialize: ") + e.what());
        return nullptr;
    }
}

} // namespace ssd_trt
