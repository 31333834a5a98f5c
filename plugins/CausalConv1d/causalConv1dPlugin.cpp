// CausalConv1d: depthwise causal conv over time with carried state and optional fused SiLU. Node contract in
// README.md.
#include "ssdPluginBase.h"
#include <new>

namespace ssd_trt
{
using namespace nvinfer1;

namespace
{

enum Input : int32_t { kX, kWEIGHT, kBIAS, kCONV_STATE, kNB_INPUTS };
enum Output : int32_t { kY, kCONV_STATE_OUT };
enum Attr : int32_t { kSILU };

std::string checkAttributes(AttrValues const& v)
{
    return v[kSILU].i == 0 || v[kSILU].i == 1 ? "" : "silu must be 0 or 1";
}

class CausalConv1dPlugin final : public SsdPluginBase
{
public:
    using SsdPluginBase::SsdPluginBase;

    IPluginV3* clone() noexcept override
    {
        return new (std::nothrow) CausalConv1dPlugin(*this);
    }

private:
    void matchShapes(ShapeMatcher& m, Dims const* in, Dims const* out) const override
    {
        m.match("x", in[kX], {"b", "l", "d"});
        m.match("weight", in[kWEIGHT], {"d", "k"});
        m.match("bias", in[kBIAS], {"d"});
        m.match("conv_state", in[kCONV_STATE], {"b", "d", "k-1"});
        if (out != nullptr)
        {
            m.match("y", out[kY], {"b", "l", "d"});
            m.match("conv_state_out", out[kCONV_STATE_OUT], {"b", "d", "k-1"});
        }
        int64_t const k = m.get("k");
        int64_t const km1 = m.get("k-1");
        m.require(k < 0 || k >= 2, "conv width k must be >= 2");
        m.require(!known(k, km1) || km1 == k - 1, "conv_state must hold k-1 = weight.shape[1]-1 columns");
        m.require(m.get("l") != 0, "l must be >= 1");
    }

    void outputShapes(DimsExprs const* in, DimsExprs* out, IExprBuilder& exprBuilder) const override
    {
        out[kY] = in[kX];
        out[kCONV_STATE_OUT].nbDims = 3;
        out[kCONV_STATE_OUT].d[0] = in[kX].d[0];
        out[kCONV_STATE_OUT].d[1] = in[kX].d[2];
        out[kCONV_STATE_OUT].d[2]
            = exprBuilder.operation(DimensionOperation::kSUB, *in[kWEIGHT].d[1], *exprBuilder.constant(1));
    }

    int32_t launch(PluginTensorDesc const* desc, void const* const* in, void* const* out, void* /*workspace*/,
        ssd_dtype_t dtype, cudaStream_t stream) const override
    {
        Dims const& x = desc[kX].dims;
        return ssd_causal_conv1d(in[kX], static_cast<float const*>(in[kWEIGHT]), static_cast<float const*>(in[kBIAS]),
            static_cast<float const*>(in[kCONV_STATE]), out[kY], static_cast<float*>(out[kCONV_STATE_OUT]),
            static_cast<int>(x.d[0]), static_cast<int>(x.d[1]), static_cast<int>(x.d[2]),
            static_cast<int>(desc[kWEIGHT].dims.d[1]), intAttr(kSILU), dtype, stream);
    }
};

IPluginV3* create(AttrValues const& values)
{
    return new (std::nothrow) CausalConv1dPlugin(causalConv1dSpec(), values);
}

} // namespace

PluginSpec const& causalConv1dSpec()
{
    using R = Role;
    static PluginSpec const spec{"CausalConv1d", kNB_INPUTS,
        {R::kACTIVATION, R::kFLOAT32, R::kFLOAT32, R::kFLOAT32, /* outputs */ R::kACTIVATION, R::kFLOAT32},
        {
            {"silu", AttrType::kINT, false, 1.0F},
        },
        checkAttributes, create};
    return spec;
}

} // namespace ssd_trt
