// CausalConv1dPacked: the depthwise causal conv over s sequences packed on one token axis, cut by cu_seqlens (int32,
// read on the device only), each window from its own sequence's state. Node contract in README.md.
#include "ssdPluginBase.h"
#include <new>

namespace ssd_trt
{
using namespace nvinfer1;

namespace
{

enum Input : int32_t { kX, kWEIGHT, kBIAS, kCONV_STATES, kCU_SEQLENS, kNB_INPUTS };
enum Output : int32_t { kY, kCONV_STATES_OUT };
enum Attr : int32_t { kSILU };

std::string checkAttributes(AttrValues const& v)
{
    return v[kSILU].i == 0 || v[kSILU].i == 1 ? "" : "silu must be 0 or 1";
}

class CausalConv1dPackedPlugin final : public SsdPluginBase
{
public:
    using SsdPluginBase::SsdPluginBase;

    IPluginV3* clone() noexcept override
    {
        return new (std::nothrow) CausalConv1dPackedPlugin(*this);
    }

    size_t getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept override
    {
        if (nbInputs != kNB_INPUTS || inputs[kCONV_STATES].max.nbDims != 3)
        {
            return 0; // configurePlugin has already refused such a node
        }
        return ssd_causal_conv1d_packed_workspace_size(static_cast<int>(inputs[kCONV_STATES].max.d[0]));
    }

private:
    void matchShapes(ShapeMatcher& m, Dims const* in, Dims const* out) const override
    {
        m.match("x", in[kX], {"1", "T", "d"});
        m.match("weight", in[kWEIGHT], {"d", "k"});
        m.match("bias", in[kBIAS], {"d"});
        m.match("conv_states", in[kCONV_STATES], {"s", "d", "k-1"});
        m.match("cu_seqlens", in[kCU_SEQLENS], {"s+1"});
        if (out != nullptr)
        {
            m.match("y", out[kY], {"1", "T", "d"});
            m.match("conv_states_out", out[kCONV_STATES_OUT], {"s", "d", "k-1"});
        }
        int64_t const k = m.get("k");
        int64_t const km1 = m.get("k-1");
        int64_t const s = m.get("s");
        int64_t const s1 = m.get("s+1");
        m.require(m.get("1") < 0 || m.get("1") == 1, "x must be [1, T, d]: the sequences end to end in a batch of one");
        m.require(k < 0 || k >= 2, "conv width k must be >= 2");
        m.require(!known(k, km1) || km1 == k - 1, "conv_states must hold k-1 = weight.shape[1]-1 columns");
        m.require(!known(s, s1) || s1 == s + 1, "cu_seqlens must hold s+1 offsets for s = conv_states.shape[0]");
        m.require(s != 0 && m.get("T") != 0, "need at least one sequence and one token");
    }

    void outputShapes(DimsExprs const* in, DimsExprs* out, IExprBuilder& /*exprBuilder*/) const override
    {
        out[kY] = in[kX];
        out[kCONV_STATES_OUT] = in[kCONV_STATES];
    }

    int32_t launch(PluginTensorDesc const* desc, void const* const* in, void* const* out, void* workspace,
        ssd_dtype_t dtype, cudaStream_t stream) const override
    {
        Dims const& x = desc[kX].dims;
        int const nseq = static_cast<int>(desc[kCONV_STATES].dims.d[0]);
        return ssd_causal_conv1d_packed(in[kX], static_cast<float const*>(in[kWEIGHT]),
            static_cast<float const*>(in[kBIAS]), static_cast<float const*>(in[kCONV_STATES]),
            static_cast<int const*>(in[kCU_SEQLENS]), out[kY], static_cast<float*>(out[kCONV_STATES_OUT]), nseq,
            static_cast<int>(x.d[1]), static_cast<int>(x.d[2]), static_cast<int>(desc[kWEIGHT].dims.d[1]),
            intAttr(kSILU), dtype, workspace, ssd_causal_conv1d_packed_workspace_size(nseq), stream);
    }
};

IPluginV3* create(AttrValues const& values)
{
    return new (std::nothrow) CausalConv1dPackedPlugin(causalConv1dPackedSpec(), values);
}

} // namespace

PluginSpec const& causalConv1dPackedSpec()
{
    using R = Role;
    static PluginSpec const spec{"CausalConv1dPacked", kNB_INPUTS,
        {R::kACTIVATION, R::kFLOAT32, R::kFLOAT32, R::kFLOAT32, R::kINT32, /* outputs */ R::kACTIVATION, R::kFLOAT32},
        {
            {"silu", AttrType::kINT, false, 1.0F},
        },
        checkAttributes, create};
    return spec;
}

} // namespace ssd_trt
