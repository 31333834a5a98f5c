// Checks the tensors of one node against the shape contract, written as symbols ("b", "l", "h", ...): every
// occurrence of a symbol must have one extent. Extents of -1 (dynamic at build time) match anything, so the same
// check serves configurePlugin (build time, with -1) and onShapeChange (run time, all known).
#pragma once
#include "NvInferRuntime.h"
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

namespace ssd_trt
{

class ShapeMatcher
{
public:
    //! Binds `dims` of tensor `tensor` to `symbols` (rank must match; extents above INT32_MAX are refused, the
    //! kernels' C ABI takes int).
    void match(char const* tensor, nvinfer1::Dims const& dims, std::initializer_list<char const*> symbols);

    //! The extent bound to `symbol`, or -1 while unknown.
    int64_t get(char const* symbol) const;

    //! Records `problem` unless `ok` (for relations between symbols, such as h % g == 0).
    void require(bool ok, std::string const& problem);

    std::string const& error() const
    {
        return mError;
    }

private:
    void fail(std::string const& problem);

    std::vector<std::pair<std::string, int64_t>> mBound;
    std::string mError;
};

//! True when both extents are known (build-time relations are checked only then).
inline bool known(int64_t a, int64_t b)
{
    return a >= 0 && b >= 0;
}

} // namespace ssd_trt
