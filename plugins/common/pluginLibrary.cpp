// Entry points of the plugin library for TensorRT's dynamic loading (IPluginRegistry::loadLibrary, trtexec
// --dynamicPlugins, the Python API's load_library): TensorRT looks these two symbols up and registers the creators
// itself, so the library needs no link to libnvinfer. (getPluginCreators, the deprecated name, returns IPluginCreator
// (V2-style) creators and is therefore not exported.)
#include "NvInferRuntime.h"
#include "pluginLogging.h"
#include "ssdPluginCreator.h"

// The library is built with hidden visibility and a version script (cmake/trt_plugins.cmake): only these two
// symbols are exported. (TENSORRTAPI is empty outside TensorRT's own build.)
#define SSD_TRT_EXPORT __attribute__((visibility("default")))

extern "C" SSD_TRT_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    return ssd_trt::libraryCreators(nbCreators);
}

extern "C" SSD_TRT_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    ssd_trt::setLoggerFinder(finder);
}
