// GatedRmsNorm: rmsnorm(y * silu(z)) per group of group_size channels (mamba_ssm RMSNormGated,
// norm_before_gate=False). Node contract in README.md.
#include "ssdPluginBase.h"
#include <cmath>
#include <new>

namespace ssd_trt
{
using namespace nvinfer1;

namespace
{

enum Input : int32_t { kY, kZ, kWEIGHT, kNB_INPUTS };
enum Output : int32_t { kOUT };
enum Attr : int32_t { kEPS, kGROUP_SIZE };

std::string checkAttributes(AttrValues const& v)
{
    if (!(v[kEPS].f > 0.0F) || std::isinf(v[kEPS].f))
    {
        return "eps must be finite and > 0";
    }
    return v[kGROUP_SIZE].i >= 1 ? "" : "group_size must be >= 1";
}

class GatedRmsNormPlugin final : public SsdPluginBase
{
public:
    using SsdPluginBase::SsdPluginBase;

    IPluginV3* clone() noexcept override
    {
        return new (std::nothrow) GatedRmsNormPlugin(*this);
    }

private:
    void matchShapes(ShapeMatcher& m, Dims const* in, Dims const* out) const override
    {
        m.match("y", in[kY], {"b", "l", "d"});
        m.match("z", in[kZ], {"b", "l", "d"});
        m.match("weight", in[kWEIGHT], {"d"});
        if (out != nullptr)
        {
            m.match("out", out[kOUT], {"b", "l", "d"});
        }
        int64_t const d = m.get("d");
        m.require(d < 0 || d % intAttr(kGROUP_SIZE) == 0, "channels d must be a multiple of group_size");
    }

    void outputShapes(DimsExprs const* in, DimsExprs* out, IExprBuilder& /*exprBuilder*/) const override
    {
        out[kOUT] = in[kY];
    }

    int32_t launch(PluginTensorDesc const* desc, void const* const* in, void* const* out, void* /*workspace*/,
        ssd_dtype_t dtype, cudaStream_t stream) const override
    {
        Dims const& y = desc[kY].dims;
        int64_t const rows = y.d[0] * y.d[1];
        if (rows > INT32_MAX)
        {
            return SSD_ERR_BAD_ARG;
        }
        return ssd_gated_rmsnorm(in[kY], in[kZ], static_cast<float const*>(in[kWEIGHT]), out[kOUT],
            static_cast<int>(rows), static_cast<int>(y.d[2]), intAttr(kGROUP_SIZE), floatAttr(kEPS), dtype, stream);
    }
};

IPluginV3* create(AttrValues const& values)
{
    return new (std::nothrow) GatedRmsNormPlugin(gatedRmsNormSpec(), values);
}

} // namespace

PluginSpec const& gatedRmsNormSpec()
{
    static PluginSpec const spec{"GatedRmsNorm", kNB_INPUTS,
        {Role::kACTIVATION, Role::kACTIVATION, Role::kFLOAT32, /* outputs */ Role::kACTIVATION},
        {
            {"eps", AttrType::kFLOAT, true, 0.0F},
            {"group_size", AttrType::kINT, true, 0.0F},
        },
        checkAttributes, create};
    return spec;
}

} // namespace ssd_trt
