// SsdChunkScanPacked: the SSD scan over s sequences packed on one token axis, cut by cu_seqlens (int32, read on the
// device only). Node contract in README.md.
#include "ssdPluginBase.h"
#include <limits>
#include <new>

namespace ssd_trt
{
using namespace nvinfer1;

namespace
{

enum Input : int32_t { kX, kDT, kA, kB, kC, kD, kDT_BIAS, kINITIAL_STATES, kCU_SEQLENS, kNB_INPUTS };
enum Output : int32_t { kY, kFINAL_STATES };
enum Attr : int32_t { kCHUNK_SIZE, kDT_SOFTPLUS, kDT_MIN, kDT_MAX };

std::string checkAttributes(AttrValues const& v)
{
    if (v[kCHUNK_SIZE].i < 1)
    {
        return "chunk_size must be >= 1";
    }
    return checkDtAttributes(v[kDT_SOFTPLUS].i, v[kDT_MIN].f, v[kDT_MAX].f);
}

class SsdChunkScanPackedPlugin final : public SsdPluginBase
{
public:
    using SsdPluginBase::SsdPluginBase;

    IPluginV3* clone() noexcept override
    {
        return new (std::nothrow) SsdChunkScanPackedPlugin(*this);
    }

    size_t getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept override
    {
        if (nbInputs != kNB_INPUTS)
        {
            return 0;
        }
        // The profile's most sequences and tokens: the size covers every smaller s and T.
        Dims const& x = inputs[kX].max;
        Dims const& b = inputs[kB].max;
        Dims const& s = inputs[kINITIAL_STATES].max;
        ssd_dtype_t dtype{};
        if (x.nbDims != 4 || b.nbDims != 4 || s.nbDims != 4 || !toSsdDtype(inputs[kX].desc.type, dtype))
        {
            return 0; // configurePlugin has already refused such a node
        }
        return ssd_scan_packed_workspace_size(static_cast<int>(s.d[0]), static_cast<int>(x.d[1]),
            static_cast<int>(x.d[2]), static_cast<int>(x.d[3]), static_cast<int>(b.d[2]), static_cast<int>(b.d[3]),
            intAttr(kCHUNK_SIZE), dtype);
    }

private:
    void matchShapes(ShapeMatcher& m, Dims const* in, Dims const* out) const override
    {
        m.match("x", in[kX], {"1", "T", "h", "p"});
        m.match("dt", in[kDT], {"1", "T", "h"});
        m.match("A", in[kA], {"h"});
        m.match("B", in[kB], {"1", "T", "g", "n"});
        m.match("C", in[kC], {"1", "T", "g", "n"});
        if (in[kD].nbDims == 2)
        {
            m.match("D", in[kD], {"h", "p"});
        }
        else
        {
            m.match("D", in[kD], {"h"});
        }
        m.match("dt_bias", in[kDT_BIAS], {"h"});
        m.match("initial_states", in[kINITIAL_STATES], {"s", "h", "p", "n"});
        m.match("cu_seqlens", in[kCU_SEQLENS], {"s+1"});
        if (out != nullptr)
        {
            m.match("y", out[kY], {"1", "T", "h", "p"});
            m.match("final_states", out[kFINAL_STATES], {"s", "h", "p", "n"});
        }
        int64_t const h = m.get("h");
        int64_t const g = m.get("g");
        int64_t const s = m.get("s");
        int64_t const s1 = m.get("s+1");
        m.require(m.get("1") < 0 || m.get("1") == 1,
            "x must be [1, T, h, p]: the sequences end to end in a batch of one");
        m.require(!known(h, g) || (g > 0 && h % g == 0), "heads h must be a multiple of groups g");
        m.require(!known(s, s1) || s1 == s + 1, "cu_seqlens must hold s+1 offsets for s = initial_states.shape[0]");
        m.require(s != 0 && m.get("T") != 0, "need at least one sequence and one token");
    }

    void outputShapes(DimsExprs const* in, DimsExprs* out, IExprBuilder& /*exprBuilder*/) const override
    {
        out[kY] = in[kX];
        out[kFINAL_STATES] = in[kINITIAL_STATES];
    }

    int32_t launch(PluginTensorDesc const* desc, void const* const* in, void* const* out, void* workspace,
        ssd_dtype_t dtype, cudaStream_t stream) const override
    {
        Dims const& x = desc[kX].dims;
        Dims const& bc = desc[kB].dims;
        int const nseq = static_cast<int>(desc[kINITIAL_STATES].dims.d[0]);
        int const total = static_cast<int>(x.d[1]);
        int const h = static_cast<int>(x.d[2]);
        int const p = static_cast<int>(x.d[3]);
        int const g = static_cast<int>(bc.d[2]);
        int const n = static_cast<int>(bc.d[3]);
        // TensorRT allocated getWorkspaceSize for the profile's largest shapes, which covers these.
        size_t const bytes = ssd_scan_packed_workspace_size(nseq, total, h, p, g, n, intAttr(kCHUNK_SIZE), dtype);
        return ssd_scan_packed(in[kX], in[kDT], static_cast<float const*>(in[kA]), in[kB], in[kC],
            static_cast<float const*>(in[kD]), desc[kD].dims.nbDims == 2 ? 1 : 0,
            static_cast<float const*>(in[kDT_BIAS]), static_cast<float const*>(in[kINITIAL_STATES]),
            static_cast<int const*>(in[kCU_SEQLENS]), out[kY], static_cast<float*>(out[kFINAL_STATES]), nseq, total, h,
            p, g, n, intAttr(kCHUNK_SIZE), dtParams(kDT_SOFTPLUS, kDT_MIN, kDT_MAX), dtype, workspace, bytes, stream);
    }
};

IPluginV3* create(AttrValues const& values)
{
    return new (std::nothrow) SsdChunkScanPackedPlugin(ssdChunkScanPackedSpec(), values);
}

} // namespace

PluginSpec const& ssdChunkScanPackedSpec()
{
    using R = Role;
    static PluginSpec const spec{"SsdChunkScanPacked", kNB_INPUTS,
        {R::kACTIVATION, R::kACTIVATION, R::kFLOAT32, R::kACTIVATION, R::kACTIVATION, R::kFLOAT32, R::kFLOAT32,
            R::kFLOAT32, R::kINT32, /* outputs */ R::kACTIVATION, R::kFLOAT32},
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
