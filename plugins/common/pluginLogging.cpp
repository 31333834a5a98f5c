#include "pluginLogging.h"
#include <cstdio>
#include <mutex>

namespace ssd_trt
{
namespace
{
std::mutex gMutex;
nvinfer1::ILoggerFinder* gFinder{nullptr};

void report(nvinfer1::ILogger::Severity severity, std::string const& message) noexcept
try
{
    std::string const text = "[ssd_trt_plugins] " + message;
    nvinfer1::ILogger* logger{nullptr};
    {
        std::lock_guard<std::mutex> lock(gMutex);
        logger = gFinder != nullptr ? gFinder->findLogger() : nullptr;
    }
    if (logger != nullptr)
    {
        logger->log(severity, text.c_str());
    }
    else
    {
        std::fprintf(stderr, "%s\n", text.c_str());
    }
}
catch (...)
{
    // Out of memory while formatting, or a throwing findLogger: nothing is left to report with.
}
} // namespace

void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept
{
    std::lock_guard<std::mutex> lock(gMutex);
    gFinder = finder;
}

void reportError(std::string const& message) noexcept
{
    report(nvinfer1::ILogger::Severity::kERROR, message);
}

void reportWarning(std::string const& message) noexcept
{
    report(nvinfer1::ILogger::Severity::kWARNING, message);
}

} // namespace ssd_trt
