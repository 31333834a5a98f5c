// One GPU case of the harness: a directory holding raw little-endian tensors and `case.txt`, written by
// run_parity.py. Lines of case.txt (whitespace-separated):
//   plugin <Name>
//   attr <name> i32|i64|f32 <value>           one creator field (f32 accepts inf, -inf)
//   input <name> f32|f16|bf16|i32 <extent>... <file>
//   output <name> f32|f16|bf16 <extent>... <file>
//   time <repeats>                             optional: time that many enqueues (CUDA events)
// An extent is a number, or sym=number for an extent that is dynamic in the engine (b, l): the build-time calls
// see -1 there and a profile whose max is twice the extent, getOutputShapes sees the symbol.
#pragma once
#include "NvInferRuntime.h"
#include "harnessUtil.h"
#include <string>
#include <vector>

namespace harness
{

struct TensorSpec
{
    std::string name;
    nvinfer1::DataType type;
    std::vector<int64_t> extents;
    std::vector<std::string> symbols; // "" for a static extent
    std::string file;

    size_t bytes() const;
};

struct CaseManifest
{
    std::string dir;
    std::string plugin;
    Fields fields;
    std::vector<TensorSpec> inputs;
    std::vector<TensorSpec> outputs;
    int32_t timeRepeats{0};

    static CaseManifest read(std::string const& dir); // throws std::runtime_error on a malformed file
};

size_t dataTypeBytes(nvinfer1::DataType type);

} // namespace harness
