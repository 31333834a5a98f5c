#include "shapeMatcher.h"
#include <limits>

namespace ssd_trt
{

void ShapeMatcher::fail(std::string const& problem)
{
    if (mError.empty())
    {
        mError = problem;
    }
}

void ShapeMatcher::require(bool ok, std::string const& problem)
{
    if (!ok)
    {
        fail(problem);
    }
}

void ShapeMatcher::match(char const* tensor, nvinfer1::Dims const& dims, std::initializer_list<char const*> symbols)
{
    if (dims.nbDims != static_cast<int32_t>(symbols.size()))
    {
        fail(std::string(tensor) + ": rank " + std::to_string(dims.nbDims) + ", expected "
            + std::to_string(symbols.size()));
        return;
    }
    int32_t i = 0;
    for (char const* symbol : symbols)
    {
        int64_t const extent = dims.d[i++];
        if (extent > std::numeric_limits<int32_t>::max())
        {
            fail(std::string(tensor) + ": extent " + symbol + " = " + std::to_string(extent) + " exceeds int32");
            continue;
        }
        auto it = mBound.begin();
        while (it != mBound.end() && it->first != symbol)
        {
            ++it;
        }
        if (it == mBound.end())
        {
            mBound.emplace_back(symbol, extent);
        }
        else if (it->second < 0)
        {
            it->second = extent;
        }
        else if (extent >= 0 && extent != it->second)
        {
            fail(std::string(tensor) + ": " + symbol + " = " + std::to_string(extent) + ", but "
                + std::to_string(it->second) + " elsewhere");
        }
    }
}

int64_t ShapeMatcher::get(char const* symbol) const
{
    for (auto const& bound : mBound)
    {
        if (bound.first == symbol)
        {
            return bound.second;
        }
    }
    return -1;
}

} // namespace ssd_trt
