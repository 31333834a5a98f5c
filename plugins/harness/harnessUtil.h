// What both harness modes need: the plugin library loaded the way TensorRT loads it (dlopen + getCreators), owned
// plugin fields, and a failure counter that prints what failed.
#pragma once
#include "NvInferRuntime.h"
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace harness
{

class Checker
{
public:
    //! Counts and prints a failure unless `ok`; returns `ok`.
    bool expect(bool ok, std::string const& what);
    int32_t failures() const
    {
        return mFailures;
    }
    int32_t checks() const
    {
        return mChecks;
    }

private:
    int32_t mFailures{0};
    int32_t mChecks{0};
};

//! dlopen (RTLD_LOCAL, as TensorRT does) and getCreators; throws std::runtime_error on failure.
struct PluginLibrary
{
    void* handle{nullptr};
    std::vector<nvinfer1::IPluginCreatorInterface*> creators;

    static PluginLibrary load(std::string const& path);
    //! The V3 creator of `name`, or throws.
    nvinfer1::IPluginCreatorV3One& creator(std::string const& name) const;
};

//! Plugin fields that own their data (what the ONNX parser hands a creator, or a deep copy of serialised fields).
class Fields
{
public:
    Fields() = default;
    Fields(Fields const& other);
    Fields& operator=(Fields const& other);

    Fields& add(std::string const& name, nvinfer1::PluginFieldType type, void const* data, int32_t length,
        size_t elementBytes);
    Fields& i32(std::string const& name, int32_t value);
    Fields& i64(std::string const& name, int64_t value);
    Fields& f32(std::string const& name, float value);

    static Fields copyOf(nvinfer1::PluginFieldCollection const& fc);

    nvinfer1::PluginFieldCollection const* collection();
    bool operator==(Fields const& other) const;
    std::string str() const;

private:
    struct Entry
    {
        std::string name;
        nvinfer1::PluginFieldType type;
        int32_t length;
        std::vector<uint8_t> bytes;
    };
    std::vector<Entry> mEntries;
    std::vector<nvinfer1::PluginField> mView;
    nvinfer1::PluginFieldCollection mCollection{};
};

size_t fieldElementBytes(nvinfer1::PluginFieldType type);

//! A plugin owned by the harness (TensorRT deletes plugins through their virtual destructor, as here).
using PluginPtr = std::unique_ptr<nvinfer1::IPluginV3>;

template <typename Capability>
Capability* capability(nvinfer1::IPluginV3& plugin, nvinfer1::PluginCapabilityType type)
{
    return static_cast<Capability*>(plugin.getCapabilityInterface(type));
}

} // namespace harness
