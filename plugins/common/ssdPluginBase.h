// The IPluginV3 machinery shared by the plugins (one object implements the core, build and runtime
// capabilities, as in TensorRT's own plugin tree). Everything that follows from the PluginSpec lives here: names,
// dtypes and formats, attribute serialisation, shape checks at build and run time, error reports. A plugin adds its
// shape contract (matchShapes), its output shapes and the kernel call.
#pragma once
#include "NvInferRuntime.h"
#include "pluginSpec.h"
#include "shapeMatcher.h"
#include "ssd_kernels.h"
#include <string>
#include <vector>

namespace ssd_trt
{

class SsdPluginBase : public nvinfer1::IPluginV3,
                      public nvinfer1::IPluginV3OneCore,
                      public nvinfer1::IPluginV3OneBuild,
                      public nvinfer1::IPluginV3OneRuntime
{
public:
    SsdPluginBase(PluginSpec const& spec, AttrValues const& values);
    SsdPluginBase(SsdPluginBase const&) = default;
    ~SsdPluginBase() override = default;

    // IPluginV3 (clone is the plugin's: it knows its own type)
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

protected:
    int32_t intAttr(int32_t index) const
    {
        return mValues[index].i;
    }
    float floatAttr(int32_t index) const
    {
        return mValues[index].f;
    }
    ssd_dt_params_t dtParams(int32_t softplusIndex, int32_t minIndex, int32_t maxIndex) const
    {
        return ssd_dt_params_t{intAttr(softplusIndex), floatAttr(minIndex), floatAttr(maxIndex)};
    }

    //! Matches the inputs (and the outputs, unless `out` is null) against the op contract.
    virtual void matchShapes(ShapeMatcher& m, nvinfer1::Dims const* in, nvinfer1::Dims const* out) const = 0;

    //! Output extents from the input extents (called once the inputs passed matchShapes).
    virtual void outputShapes(
        nvinfer1::DimsExprs const* inputs, nvinfer1::DimsExprs* outputs, nvinfer1::IExprBuilder& exprBuilder) const
        = 0;

    //! Calls the kernel through the C ABI; returns its code (0, a cudaError_t or an SSD_ERR_*).
    virtual int32_t launch(nvinfer1::PluginTensorDesc const* inputDesc, void const* const* inputs,
        void* const* outputs, void* workspace, ssd_dtype_t dtype, cudaStream_t stream) const = 0;

    //! Reports `problem` for this plugin; returns -1 so callers can `return fail(...)`.
    int32_t fail(std::string const& problem) const noexcept;

private:
    bool countsMatch(int32_t nbInputs, int32_t nbOutputs) const noexcept;
    template <typename Desc>
    int32_t checkShapes(char const* stage, Desc const* in, int32_t nbInputs, Desc const* out, int32_t nbOutputs) const
        noexcept;

    PluginSpec const* mSpec;
    AttrValues mValues;
    std::vector<nvinfer1::PluginField> mSerialFields;
    nvinfer1::PluginFieldCollection mSerialCollection{};
};

//! The dtype of a tensor of `role` in a node whose activations are `io`.
nvinfer1::DataType roleType(Role role, nvinfer1::DataType io);

//! The kernels' dtype for an activation dtype; false for a dtype they do not take.
bool toSsdDtype(nvinfer1::DataType type, ssd_dtype_t& out);

//! Range check of the dt attributes shared by SsdChunkScan and SsdStateUpdate; "" when usable.
std::string checkDtAttributes(int32_t dtSoftplus, float dtMin, float dtMax);

} // namespace ssd_trt
