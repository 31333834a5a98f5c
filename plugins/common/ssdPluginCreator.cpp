#include "ssdPluginCreator.h"
#include "pluginLogging.h"
#include <exception>
#include <string>

namespace ssd_trt
{
using namespace nvinfer1;

SsdPluginCreator::SsdPluginCreator(PluginSpec const& spec)
    : mSpec(spec)
    , mFieldNames(attributeFields(spec, nullptr))
{
    mFieldCollection.nbFields = static_cast<int32_t>(mFieldNames.size());
    mFieldCollection.fields = mFieldNames.data();
}

char const* SsdPluginCreator::getPluginName() const noexcept
{
    return mSpec.name;
}

char const* SsdPluginCreator::getPluginVersion() const noexcept
{
    return kPLUGIN_VERSION;
}

char const* SsdPluginCreator::getPluginNamespace() const noexcept
{
    return kPLUGIN_NAMESPACE;
}

PluginFieldCollection const* SsdPluginCreator::getFieldNames() noexcept
{
    return &mFieldCollection;
}

IPluginV3* SsdPluginCreator::createPlugin(char const* name, PluginFieldCollection const* fc, TensorRTPhase /*phase*/) noexcept
{
    try
    {
        AttrValues values;
        std::string error;
        if (!parseAttributes(mSpec, fc, values, error))
        {
            reportError(std::string(mSpec.name) + " '" + (name != nullptr ? name : "") + "': " + error);
            return nullptr;
        }
        return mSpec.create(values);
    }
    catch (std::exception const& e)
    {
        reportError(std::string(mSpec.name) + ": createPlugin: " + e.what());
    }
    return nullptr;
}

IPluginCreatorInterface* const* libraryCreators(int32_t& nbCreators)
{
    static SsdPluginCreator sChunkScan(ssdChunkScanSpec());
    static SsdPluginCreator sStateUpdate(ssdStateUpdateSpec());
    static SsdPluginCreator sCausalConv(causalConv1dSpec());
    static SsdPluginCreator sGatedNorm(gatedRmsNormSpec());
    static SsdPluginCreator sChunkScanPacked(ssdChunkScanPackedSpec());
    static SsdPluginCreator sCausalConvPacked(causalConv1dPackedSpec());
    static IPluginCreatorInterface* const sCreators[]
        = {&sChunkScan, &sStateUpdate, &sCausalConv, &sGatedNorm, &sChunkScanPacked, &sCausalConvPacked};
    nbCreators = static_cast<int32_t>(sizeof(sCreators) / sizeof(sCreators[0]));
    return sCreators;
}

} // namespace ssd_trt
