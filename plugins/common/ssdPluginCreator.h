// One IPluginCreatorV3One for any plugin of the library, driven by its PluginSpec: the same creator builds the
// plugin from the ONNX node's attributes (build phase) and from the serialised fields (runtime phase).
#pragma once
#include "NvInferRuntime.h"
#include "pluginSpec.h"
#include <vector>

namespace ssd_trt
{

class SsdPluginCreator final : public nvinfer1::IPluginCreatorV3One
{
public:
    explicit SsdPluginCreator(PluginSpec const& spec);

    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;

private:
    PluginSpec const& mSpec;
    std::vector<nvinfer1::PluginField> mFieldNames;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

//! The library's creators, one per plugin, in a stable order (created on first use, never destroyed before exit).
nvinfer1::IPluginCreatorInterface* const* libraryCreators(int32_t& nbCreators);

} // namespace ssd_trt
