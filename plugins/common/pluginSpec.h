// What one plugin of the library is, as data: name, the role of each input and output, the attributes (the
// creator's fields, which the ONNX parser fills from node attributes of the same names) and the factory. The shared
// plugin base and creator read everything plugin-independent from here, so the plugins hold only their math.
#pragma once
#include "NvInferRuntime.h"
#include <cstdint>
#include <string>
#include <vector>

namespace ssd_trt
{

//! Plugin version and namespace of every plugin in the library (the `trt` export flavor writes plugin_version "1"
//! and no plugin_namespace).
constexpr char const* kPLUGIN_VERSION = "1";
constexpr char const* kPLUGIN_NAMESPACE = "";

//! Activations share one I/O dtype (fp32, fp16 or bf16); parameters and states are always fp32; offsets (the
//! packed plugins' cu_seqlens) are int32.
enum class Role : uint8_t
{
    kACTIVATION,
    kFLOAT32,
    kINT32,
};

enum class AttrType : uint8_t
{
    kINT,   // advertised and serialised as one kINT32 (ONNX INT attributes arrive so)
    kFLOAT, // advertised and serialised as one kFLOAT32 (ONNX FLOAT attributes arrive so)
};

struct AttrSpec
{
    char const* name;
    AttrType type;
    bool required;      // no default in the op contract: a node without it is refused
    float defaultValue; // exact for every default used (0, 1, 256, +inf)
};

union AttrValue
{
    int32_t i;
    float f;
};
using AttrValues = std::vector<AttrValue>;

struct PluginSpec
{
    char const* name;
    int32_t nbInputs;
    std::vector<Role> roles; // inputs then outputs
    std::vector<AttrSpec> attrs;
    //! Range checks beyond the field types; returns the problem, or "" when the values are usable.
    std::string (*checkAttributes)(AttrValues const& values);
    //! Builds the plugin from checked values; nullptr on allocation failure.
    nvinfer1::IPluginV3* (*create)(AttrValues const& values);

    int32_t nbOutputs() const
    {
        return static_cast<int32_t>(roles.size()) - nbInputs;
    }
    //! Index of the first activation input: it fixes the I/O dtype of the node.
    int32_t anchor() const;
};

//! Reads `fc` against `spec.attrs` into `values` (defaults for missing optional fields). Integer fields may come as
//! INT8/16/32/64 and float fields as FLOAT32/64 or an integer type (onnx.helper writes `dt_min=0` as an INT
//! attribute). Fields of other names are ignored with a warning, as the ONNX parser passes only known names.
//! Returns false with `error` set on a missing required field, a wrong type or length, or values that
//! `spec.checkAttributes` refuses.
bool parseAttributes(
    PluginSpec const& spec, nvinfer1::PluginFieldCollection const* fc, AttrValues& values, std::string& error);

//! The fields a creator advertises (data null) or a plugin serialises (data pointing into `values`).
std::vector<nvinfer1::PluginField> attributeFields(PluginSpec const& spec, AttrValue const* values);

//! The library's plugins, one spec each, defined in the plugin folders.
PluginSpec const& ssdChunkScanSpec();
PluginSpec const& ssdStateUpdateSpec();
PluginSpec const& causalConv1dSpec();
PluginSpec const& ssdChunkScanPackedSpec();
PluginSpec const& causalConv1dPackedSpec();
PluginSpec const& gatedRmsNormSpec();

} // namespace ssd_trt
