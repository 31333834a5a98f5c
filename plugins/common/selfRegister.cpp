// Self-registration at load time, for hosts that dlopen a plugin library and then read TensorRT's global registry
// without calling getCreators: ONNX Runtime's TensorRT execution provider (trt_extra_plugin_lib_paths) does so.
// It goes into a second library (libssd_trt_plugins_autoreg.so) because IPluginRegistry::loadLibrary, which
// trtexec --dynamicPlugins and the Python API use, refuses a library whose creators are already registered.
//
// Still no link to libnvinfer: the registry comes from the libnvinfer already loaded in the process (RTLD_NOLOAD),
// and only from the major version of the headers this file was compiled with, since IPluginRegistry's vtable
// differs between TensorRT 10 and 11 (build against TensorRT 10 headers for ONNX Runtime, which links 10).
// Creators are not deregistered at unload: the registry may be gone by then, and ONNX Runtime never unloads.
#include "NvInferRuntime.h"
#include "pluginLogging.h"
#include "ssdPluginCreator.h"
#include <dlfcn.h>
#include <string>

namespace ssd_trt
{
namespace
{

using GetRegistry = nvinfer1::IPluginRegistry* (*)() noexcept;

void registerWithLoadedTensorRT() noexcept
try
{
    std::string const soname = "libnvinfer.so." + std::to_string(NV_TENSORRT_MAJOR);
    void* const handle = dlopen(soname.c_str(), RTLD_NOW | RTLD_NOLOAD);
    if (handle == nullptr)
    {
        reportWarning(soname + " is not loaded in this process: no creator registered (load libnvinfer first, or "
                               "use libssd_trt_plugins.so through IPluginRegistry::loadLibrary)");
        return;
    }
    auto const getRegistry = reinterpret_cast<GetRegistry>(dlsym(handle, "getPluginRegistry"));
    nvinfer1::IPluginRegistry* const registry = getRegistry != nullptr ? getRegistry() : nullptr;
    // The NOLOAD handle only added a reference; the library stays loaded by whoever loaded it.
    dlclose(handle);
    if (registry == nullptr)
    {
        reportWarning(soname + " has no plugin registry: no creator registered");
        return;
    }
    int32_t nbCreators = 0;
    nvinfer1::IPluginCreatorInterface* const* creators = libraryCreators(nbCreators);
    for (int32_t i = 0; i < nbCreators; ++i)
    {
        if (!registry->registerCreator(*creators[i], kPLUGIN_NAMESPACE))
        {
            auto const* creator = static_cast<nvinfer1::IPluginCreatorV3One const*>(creators[i]);
            reportWarning(std::string("registering ") + creator->getPluginName() + " failed (already registered?)");
        }
    }
}
catch (...)
{
    reportError("self-registration failed");
}

struct SelfRegistration
{
    SelfRegistration()
    {
        registerWithLoadedTensorRT();
    }
} const gSelfRegistration;

} // namespace
} // namespace ssd_trt
