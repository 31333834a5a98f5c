// Error and warning reports of the plugin library. TensorRT hands its logger over through the exported
// setLoggerFinder; before that (or when no TensorRT is in the process, as in the harness) reports go to stderr.
#pragma once
#include "NvInferRuntime.h"
#include <string>

namespace ssd_trt
{

void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept;

void reportError(std::string const& message) noexcept;
void reportWarning(std::string const& message) noexcept;

} // namespace ssd_trt
