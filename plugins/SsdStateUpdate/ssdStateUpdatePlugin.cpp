// SsdStateUpdate: one decode step of the SSD recurrence. Node contract in README.md.
#include "ssdPluginBase.h"
#include <limits>
#include <new>

namespace ssd_trt
{
using namespace nvinfer1;

namespace
{

enum Input : int32_t { kSTATE, kX, kDT, kA, kB, kC, kD, kDT_BIAS, kNB_INPUTS };
enum Output : int32_t { kY, kNEW_STATE };
enum Attr : int32_t { kDT_SOFTPLUS, kDT_MIN, kDT_MAX };

std::string checkAttributes(AttrValues const& v)
{
    return checkDtAttributes(v[kDT_SOFTPLUS].i, v[kDT_MIN].f, v[kDT_MAX].f);
}

class SsdStateUpdatePlugin final : public SsdPluginBase
{
public:
    using SsdPluginBase::SsdPluginBase;

    IPluginV3* clone() noexcept override
    {
        return new (std::nothrow) SsdStateUpdatePlugin(*this);
    }

private:
    void matchShapes(ShapeMatcher& m, Dims const* in, Dims const* out) const override
    {
        m.match("state", in[kSTATE], {"b", "h", "p", "n"});
        m.match("x", in[kX], {"b", "h", "p"});
        m.match("dt", in[kDT], {"b", "h"});
        m.match("A", in[kA], {"h"});
        m.match("B", in[kB], {"b", "g", "n"});
        m.match("C", in[kC], {"b", "g", "n"});
        if (in[kD].nbDims == 2)
        {
            m.match("D", in[kD], {"h", "p"});
        }
        else
        {
            m.match("D", in[kD], {"h"});
        }
        m.match("dt_bias", in[kDT_BIAS], {"h"});
        if (out != nullptr)
        {
            m.match("y", out[kY], {"b", "h", "p"});
            m.match("new_state", out[kNEW_STATE], {"b", "h", "p", "n"});
        }
        int64_t const h = m.get("h");
        int64_t const g = m.get("g");
        m.require(!known(h, g) || (g > 0 && h % g == 0), "heads h must be a multiple of groups g");
    }

    void outputShapes(DimsExprs const* in, DimsExprs* out, IExprBuilder& /*exprBuilder*/) const override
    {
        out[kY] = in[kX];
        out[kNEW_STATE].nbDims = 4;
        out[kNEW_STATE].d[0] = in[kX].d[0];
        out[kNEW_STATE].d[1] = in[kX].d[1];
        out[kNEW_STATE].d[2] = in[kX].d[2];
        out[kNEW_STATE].d[3] = in[kB].d[2];
    }

    int32_t launch(PluginTensorDesc const* desc, void const* const* in, void* const* out, void* /*workspace*/,
        ssd_dtype_t dtype, cudaStream_t stream) const override
    {
        Dims const& x = desc[kX].dims;
        Dims const& bc = desc[kB].dims;
        return ssd_step(static_cast<float const*>(in[kSTATE]), in[kX], in[kDT], static_cast<float const*>(in[kA]),
            in[kB], in[kC], static_cast<float const*>(in[kD]), desc[kD].dims.nbDims == 2 ? 1 : 0,
            static_cast<float const*>(in[kDT_BIAS]), out[kY], static_cast<float*>(out[kNEW_STATE]),
            static_cast<int>(x.d[0]), static_cast<int>(x.d[1]), static_cast<int>(x.d[2]), static_cast<int>(bc.d[1]),
            static_cast<int>(bc.d[2]), dtParams(kDT_SOFTPLUS, kDT_MIN, kDT_MAX), dtype, stream);
    }
};

IPluginV3* create(AttrValues const& values)
{
    return new (std::nothrow) SsdStateUpdatePlugin(ssdStateUpdateSpec(), values);
}

} // namespace

PluginSpec const& ssdStateUpdateSpec()
{
    using R = Role;
    static PluginSpec const spec{"SsdStateUpdate", kNB_INPUTS,
        {R::kFLOAT32, R::kACTIVATION, R::kACTIVATION, R::kFLOAT32, R::kACTIVATION, R::kACTIVATION, R::kFLOAT32,
            R::kFLOAT32, /* outputs */ R::kACTIVATION, R::kFLOAT32},
        {
            {"dt_softplus", AttrType::kINT, false, 1.0F},
            {"dt_min", AttrType::kFLOAT, false, 0.0F},
            {"dt_max", AttrType::kFLOAT, false, std::numeric_limits<float>::infinity()},
        },
        checkAttributes, create};
    return spec;
}

} // namespace ssd_trt
