// ssd_plugin_harness: drives the TensorRT plugin library without TensorRT (see plugins/README.md).
//   ssd_plugin_harness check <libssd_trt_plugins.so> [<libssd_trt_plugins_autoreg.so> <libssd_fake_nvinfer.so>]
//   ssd_plugin_harness run <libssd_trt_plugins.so> <case dir>...
// Exit status 0 only when every check or case passed.
#include "gpuRun.h"
#include "hostChecks.h"
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

int main(int argc, char** argv)
{
    std::string const mode = argc > 1 ? argv[1] : "";
    try
    {
        if (mode == "check" && (argc == 3 || argc == 5))
        {
            return harness::runHostChecks(argv[2], argc == 5 ? argv[3] : "", argc == 5 ? argv[4] : "") == 0 ? 0 : 1;
        }
        if (mode == "run" && argc >= 4)
        {
            return harness::runGpuCases(argv[2], std::vector<std::string>(argv + 3, argv + argc)) == 0 ? 0 : 1;
        }
    }
    catch (std::exception const& e)
    {
        std::fprintf(stderr, "ssd_plugin_harness: %s\n", e.what());
        return 1;
    }
    std::fprintf(stderr,
        "usage: %s check <plugin lib> [<autoreg lib> <fake nvinfer lib>]\n"
        "       %s run <plugin lib> <case dir>...\n",
        argv[0], argv[0]);
    return 2;
}
