// SsdChunkScan: the SSD scan over a prompt (prefill), any l >= 1. Node contract in README.md.
#include "ssdPluginBase.h"
#include <limits>
#include <new>

namespace ssd_trt
{
using namespace nvinfer1;

namespace
{

enum Input : int32_t { kX, kDT, kA, kB, kC, kD, kDT_BIAS, kINITIAL_STATE, kNB_INPUTS };
enum Output : int32_t { kY, kFINAL_STATE };
enum Attr : int32_t { kCHUNK_SIZE, kDT_SOFTPLUS, kDT_MIN, kDT_MAX };

std::string checkAttributes(AttrValues const& v)
{
    if (v[kCHUNK_SIZE].i < 1)
    {
        return "chunk_size must be >= 1";
    }
    return checkDtAttributes(v[kDT_SOFTPLUS].i, v[kDT_MIN].f, v[kDT_MAX].f);
}

class SsdChunkScanPlugin final : public SsdPluginBase
{
public:
    using SsdPluginBase::SsdPluginBase;

    IPluginV3* clone() noexcept override
    {
        return new (std::nothrow) SsdChunkScanPlugin(*this);
    }

    size_t getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept override
    {
        if (nbInputs != kNB_INPUTS)
        {
            return 0;
        }
        // Sized for the profile's largest shapes; the kernels' workspace grows with every extent.
        Dims const& x = inputs[kX].max;
        Dims const& b = inputs[kB].max;
        ssd_dtype_t dtype{};
        if (x.nbDims != 4 || b.nbDims != 4 || !toSsdDtype(inputs[kX].desc.type, dtype))
        {
            return 0; // configurePlugin has already refused such a node
        }
        return ssd_scan_workspace_size(static_cast<int>(x.d[0]), static_cast<int>(x.d[1]), static_cast<int>(x.d[2]),
            static_cast<int>(x.d[3]), static_cast<int>(b.d[2]), static_cast<int>(b.d[3]), intAttr(kCHUNK_SIZE), dtype);
    }

private:
    void matchShapes(ShapeMatcher& m, Dims const* in, Dims const* out) const override
    {
        m.match("x", in[kX], {"b", "l", "h", "p"});
        m.match("dt", in[kDT], {"b", "l", "h"});
        m.match("A", in[kA], {"h"});
        m.match("B", in[kB], {"b", "l", "g", "n"});
        m.match("C", in[kC], {"b", "l", "g", "n"});
        if (in[kD].nbDims == 2)
        {
            m.match("D", in[kD], {"h", "p"});
        }
        else
        {
            m.match("D", in[kD], {"h"});
        }
        m.match("dt_bias", in[kDT_BIAS], {"h"});
        m.match("initial_state", in[kINITIAL_STATE], {"b", "h", "p", "n"});
        if (out != nullptr)
        {
            m.match("y", out[kY], {"b", "l", "h", "p"});
            m.match("final_state", out[kFINAL_STATE], {"b", "h", "p", "n"});
        }
        int64_t const h = m.get("h");
        int64_t const g = m.get("g");
        m.require(!known(h, g) || (g > 0 && h % g == 0), "heads h must be a multiple of groups g");
        m.require(m.get("l") != 0, "l must be >= 1");
    }

    void outputShapes(DimsExprs const* in, DimsExprs* out, IExprBuilder& /*exprBuilder*/) const override
    {
        out[kY] = in[kX];
        out[kFINAL_STATE].nbDims = 4;
        out[kFINAL_STATE].d[0] = in[kX].d[0];
        out[kFINAL_STATE].d[1] = in[kX].d[2];
        out[kFINAL_STATE].d[2] = in[kX].d[3];
        out[kFINAL_STATE].d[3] = in[kB].d[3];
    }

    int32_t launch(PluginTensorDesc const* desc, void const* const* in, void* const* out, void* workspace,
        ssd_dtype_t dtype, cudaStream_t stream) const override
    {
        Dims const& x = desc[kX].dims;
        Dims const& bc = desc[kB].dims;
        int const b = static_cast<int>(x.d[0]);
        int const l = static_cast<int>(x.d[1]);
        int const h = static_cast<int>(x.d[2]);
        int const p = static_cast<int>(x.d[3]);
        int const g = static_cast<int>(bc.d[2]);
        int const n = static_cast<int>(bc.d[3]);
        int const dHasHdim = desc[kD].dims.nbDims == 2 ? 1 : 0;
        ssd_dt_params_t const dtp = dtParams(kDT_SOFTPLUS, kDT_MIN, kDT_MAX);
        auto const* A = static_cast<float const*>(in[kA]);
        auto const* D = static_cast<float const*>(in[kD]);
        auto const* dtBias = static_cast<float const*>(in[kDT_BIAS]);
        // TensorRT passes no workspace size to enqueue; it allocated getWorkspaceSize for the profile's largest
        // shapes, which covers these.
        size_t const bytes = ssd_scan_workspace_size(b, l, h, p, g, n, intAttr(kCHUNK_SIZE), dtype);
        // ssd_scan picks the recurrence for short prompts and decode (l = 1), so no chunk is paid for there.
        return ssd_scan(in[kX], in[kDT], A, in[kB], in[kC], D, dHasHdim, dtBias,
            static_cast<float const*>(in[kINITIAL_STATE]), out[kY], static_cast<float*>(out[kFINAL_STATE]), b, l, h, p,
            g, n, intAttr(kCHUNK_SIZE), dtp, dtype, workspace, bytes, stream);
    }
};

IPluginV3* create(AttrValues const& values)
{
    return new (std::nothrow) SsdChunkScanPlugin(ssdChunkScanSpec(), values);
}

} // namespace

PluginSpec const& ssdChunkScanSpec()
{
    using R = Role;
    static PluginSpec const spec{"SsdChunkScan", kNB_INPUTS,
        {R::kACTIVATION, R::kACTIVATION, R::kFLOAT32, R::kACTIVATION, R::kACTIVATION, R::kFLOAT32, R::kFLOAT32,
            R::kFLOAT32, /* outputs */ R::kACTIVATION, R::kFLOAT32},
        {
            {"chunk_size", AttrType::kINT, false, 256.0F},
            {"dt_softplus", AttrType::kINT, false, 1.0F},
            {"dt_min", AttrType::kFLOAT, false, 0.0F},
            {"dt_max", AttrType::kFLOAT, false, std::numeric_limits<float>::infinity()},
        },
        checkAttributes, create};
    return spec;
}

} // namespace ssd_trt
