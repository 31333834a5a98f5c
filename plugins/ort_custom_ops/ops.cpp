// The four ops of the `trt` flavor on ONNX Runtime's CUDA execution provider: each one's attribute range checks and
// its call into the ssd_kernels C ABI (plugins/kernels/ssd_kernels.h). Tensors, shapes and attributes are named
// through the generated contract enums (contracts.h), never by position; what ortOp.cpp already checked (dtypes,
// every shape symbol consistent) is not checked again, and the C ABI refuses the rest (h % g, n, k limits) with a
// code that is reported with its message.
#include "ortOp.h"
#include <cmath>

namespace ssd_ort
{
namespace
{
namespace c = contracts;

std::string checkDt(AttrValues const& v, int softplus, int min, int max)
{
    if (v[softplus].i != 0 && v[softplus].i != 1)
    {
        return "dt_softplus must be 0 or 1";
    }
    if (std::isnan(v[min].f) || std::isnan(v[max].f) || v[min].f > v[max].f)
    {
        return "need dt_min <= dt_max, neither NaN";
    }
    return "";
}

ssd_dt_params_t dtParams(NodeRun const& r, int softplus, int min, int max)
{
    return ssd_dt_params_t{r.intAttr(softplus), r.floatAttr(min), r.floatAttr(max)};
}

// ---- SsdChunkScan -------------------------------------------------------------------------------------------------

std::string checkScanAttributes(AttrValues const& v, int chunkSize, int softplus, int min, int max)
{
    if (v[chunkSize].i < 1)
    {
        return "chunk_size must be >= 1";
    }
    return checkDt(v, softplus, min, max);
}

std::string checkScan(AttrValues const& v)
{
    using namespace c::SsdChunkScan;
    return checkScanAttributes(v, attr::chunk_size, attr::dt_softplus, attr::dt_min, attr::dt_max);
}

int launchScan(NodeRun& r)
{
    using namespace c::SsdChunkScan;
    int const b = r.dim("b"), l = r.dim("l"), h = r.dim("h"), p = r.dim("p"), g = r.dim("g"), n = r.dim("n");
    int const chunk = r.intAttr(attr::chunk_size);
    size_t const bytes = ssd_scan_workspace_size(b, l, h, p, g, n, chunk, r.dtype());
    void* workspace = r.workspace(bytes);
    return ssd_scan(r.in(in::x), r.in(in::dt), r.inF32(in::A), r.in(in::B), r.in(in::C), r.inF32(in::D),
        r.rank(in::D) == 2 ? 1 : 0, r.inF32(in::dt_bias), r.inF32(in::initial_state), r.out(out::y),
        r.outF32(out::final_state), b, l, h, p, g, n, chunk, dtParams(r, attr::dt_softplus, attr::dt_min, attr::dt_max),
        r.dtype(), workspace, bytes, r.stream());
}

// ---- SsdChunkScanPacked: s sequences end to end, cu_seqlens int32 offsets on the device ------------------------

std::string checkScanPacked(AttrValues const& v)
{
    using namespace c::SsdChunkScanPacked;
    return checkScanAttributes(v, attr::chunk_size, attr::dt_softplus, attr::dt_min, attr::dt_max);
}

int launchScanPacked(NodeRun& r)
{
    using namespace c::SsdChunkScanPacked;
    int const s = r.dim("s"), total = r.dim("T"), h = r.dim("h"), p = r.dim("p"), g = r.dim("g"), n = r.dim("n");
    int const chunk = r.intAttr(attr::chunk_size);
    size_t const bytes = ssd_scan_packed_workspace_size(s, total, h, p, g, n, chunk, r.dtype());
    void* workspace = r.workspace(bytes);
    return ssd_scan_packed(r.in(in::x), r.in(in::dt), r.inF32(in::A), r.in(in::B), r.in(in::C), r.inF32(in::D),
        r.rank(in::D) == 2 ? 1 : 0, r.inF32(in::dt_bias), r.inF32(in::initial_states), r.inI32(in::cu_seqlens),
        r.out(out::y), r.outF32(out::final_states), s, total, h, p, g, n, chunk,
        dtParams(r, attr::dt_softplus, attr::dt_min, attr::dt_max), r.dtype(), workspace, bytes, r.stream());
}

// ---- SsdStateUpdate -----------------------------------------------------------------------------------------------

std::string checkStep(AttrValues const& v)
{
    using namespace c::SsdStateUpdate;
    return checkDt(v, attr::dt_softplus, attr::dt_min, attr::dt_max);
}

int launchStep(NodeRun& r)
{
    using namespace c::SsdStateUpdate;
    return ssd_step(r.inF32(in::state), r.in(in::x), r.in(in::dt), r.inF32(in::A), r.in(in::B), r.in(in::C),
        r.inF32(in::D), r.rank(in::D) == 2 ? 1 : 0, r.inF32(in::dt_bias), r.out(out::y), r.outF32(out::new_state),
        r.dim("b"), r.dim("h"), r.dim("p"), r.dim("g"), r.dim("n"),
        dtParams(r, attr::dt_softplus, attr::dt_min, attr::dt_max), r.dtype(), r.stream());
}

// ---- CausalConv1d -------------------------------------------------------------------------------------------------

std::string checkSilu(AttrValues const& v, int silu)
{
    return v[silu].i == 0 || v[silu].i == 1 ? "" : "silu must be 0 or 1";
}

std::string checkConv(AttrValues const& v)
{
    return checkSilu(v, c::CausalConv1d::attr::silu);
}

int launchConv(NodeRun& r)
{
    using namespace c::CausalConv1d;
    return ssd_causal_conv1d(r.in(in::x), r.inF32(in::weight), r.inF32(in::bias), r.inF32(in::conv_state),
        r.out(out::y), r.outF32(out::conv_state_out), r.dim("b"), r.dim("l"), r.dim("d"), r.dim("k"),
        r.intAttr(attr::silu), r.dtype(), r.stream());
}

// ---- CausalConv1dPacked -------------------------------------------------------------------------------------------

std::string checkConvPacked(AttrValues const& v)
{
    return checkSilu(v, c::CausalConv1dPacked::attr::silu);
}

int launchConvPacked(NodeRun& r)
{
    using namespace c::CausalConv1dPacked;
    int const s = r.dim("s");
    size_t const bytes = ssd_causal_conv1d_packed_workspace_size(s);
    void* workspace = r.workspace(bytes);
    return ssd_causal_conv1d_packed(r.in(in::x), r.inF32(in::weight), r.inF32(in::bias), r.inF32(in::conv_states),
        r.inI32(in::cu_seqlens), r.out(out::y), r.outF32(out::conv_states_out), s, r.dim("T"), r.dim("d"),
        r.dim("k"), r.intAttr(attr::silu), r.dtype(), workspace, bytes, r.stream());
}

// ---- GatedRmsNorm -------------------------------------------------------------------------------------------------

std::string checkNorm(AttrValues const& v)
{
    using namespace c::GatedRmsNorm;
    if (!std::isfinite(v[attr::eps].f) || v[attr::eps].f <= 0.F)
    {
        return "eps must be finite and > 0";
    }
    return v[attr::group_size].i >= 1 ? "" : "group_size must be >= 1";
}

int launchNorm(NodeRun& r)
{
    using namespace c::GatedRmsNorm;
    int64_t const rows = static_cast<int64_t>(r.dim("b")) * r.dim("l");
    if (rows > INT32_MAX)
    {
        return SSD_ERR_BAD_ARG;
    }
    return ssd_gated_rmsnorm(r.in(in::y), r.in(in::z), r.inF32(in::weight), r.out(out::out), static_cast<int>(rows),
        r.dim("d"), r.intAttr(attr::group_size), r.floatAttr(attr::eps), r.dtype(), r.stream());
}

} // namespace

std::vector<OpImpl> const& implementations()
{
    static std::vector<OpImpl> const all{
        {&c::SsdChunkScan::kContract, checkScan, launchScan},
        {&c::SsdStateUpdate::kContract, checkStep, launchStep},
        {&c::CausalConv1d::kContract, checkConv, launchConv},
        {&c::SsdChunkScanPacked::kContract, checkScanPacked, launchScanPacked},
        {&c::CausalConv1dPacked::kContract, checkConvPacked, launchConvPacked},
        {&c::GatedRmsNorm::kContract, checkNorm, launchNorm},
    };
    return all;
}

} // namespace ssd_ort
