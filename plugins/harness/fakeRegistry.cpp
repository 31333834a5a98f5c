// A stand-in for libnvinfer's plugin registry, built with the soname libnvinfer.so.<major>: loaded first, it lets the
// harness check that libssd_trt_plugins_autoreg.so registers its creators with the libnvinfer already in the process
// (as it must under ONNX Runtime's TensorRT EP), and that libssd_trt_plugins.so registers nothing by itself.
// Only registration is implemented; the other members answer "nothing".
#include "NvInferRuntime.h"
#include <cstring>
#include <string>
#include <vector>

namespace
{
using namespace nvinfer1;

class FakeRegistry final : public IPluginRegistry
{
public:
    std::vector<std::string> entries; // "name/version/namespace"

    bool registerCreator(IPluginCreatorInterface& creator, AsciiChar const* const pluginNamespace) noexcept override
    {
        if (std::strcmp(creator.getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") != 0)
        {
            return false;
        }
        auto& v3 = static_cast<IPluginCreatorV3One&>(creator);
        entries.push_back(std::string(v3.getPluginName()) + "/" + v3.getPluginVersion() + "/" + pluginNamespace);
        return true;
    }

    IPluginCreatorInterface* const* getAllCreators(int32_t* const numCreators) const noexcept override
    {
        *numCreators = 0;
        return nullptr;
    }
    IPluginCreatorInterface* getCreator(AsciiChar const* const, AsciiChar const* const, AsciiChar const* const) noexcept
        override
    {
        return nullptr;
    }
    bool deregisterCreator(IPluginCreatorInterface const&) noexcept override
    {
        return false;
    }
    void setErrorRecorder(IErrorRecorder* const) noexcept override {}
    IErrorRecorder* getErrorRecorder() const noexcept override
    {
        return nullptr;
    }
    bool isParentSearchEnabled() const override
    {
        return false;
    }
    void setParentSearchEnabled(bool const) override {}
    PluginLibraryHandle loadLibrary(AsciiChar const*) noexcept override
    {
        return nullptr;
    }
    void deregisterLibrary(PluginLibraryHandle) noexcept override {}
    IPluginResource* acquirePluginResource(AsciiChar const*, IPluginResource*) noexcept override
    {
        return nullptr;
    }
    int32_t releasePluginResource(AsciiChar const*) noexcept override
    {
        return -1;
    }
#if NV_TENSORRT_MAJOR > 10 || (NV_TENSORRT_MAJOR == 10 && NV_TENSORRT_MINOR >= 10)
    IPluginCreatorInterface* const* getAllCreatorsRecursive(int32_t* const numCreators) noexcept override
    {
        *numCreators = 0;
        return nullptr;
    }
#endif
#if NV_TENSORRT_MAJOR == 10
    // TensorRT 10's deprecated IPluginCreator (V2) members, gone in 11.
    bool registerCreator(IPluginCreator&, AsciiChar const* const) noexcept override
    {
        return false;
    }
    IPluginCreator* const* getPluginCreatorList(int32_t* const numCreators) const noexcept override
    {
        *numCreators = 0;
        return nullptr;
    }
    IPluginCreator* getPluginCreator(AsciiChar const* const, AsciiChar const* const, AsciiChar const* const) noexcept
        override
    {
        return nullptr;
    }
    bool deregisterCreator(IPluginCreator const&) noexcept override
    {
        return false;
    }
#endif
};

FakeRegistry& registry()
{
    static FakeRegistry sRegistry;
    return sRegistry;
}

} // namespace

#define FAKE_EXPORT __attribute__((visibility("default")))

extern "C" FAKE_EXPORT nvinfer1::IPluginRegistry* getPluginRegistry() noexcept
{
    return &registry();
}

extern "C" FAKE_EXPORT int32_t ssd_fake_registry_count()
{
    return static_cast<int32_t>(registry().entries.size());
}

extern "C" FAKE_EXPORT char const* ssd_fake_registry_entry(int32_t i)
{
    return registry().entries.at(i).c_str();
}
