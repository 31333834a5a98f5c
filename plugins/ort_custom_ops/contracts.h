// GENERATED from plugins/<Plugin>/contract.toml by `python -m ssd_deploy.plugin_contracts --write`: do not edit.
// The node contracts as data for the ONNX Runtime custom-op library (plugins/ort_custom_ops): names, inputs and
// outputs (dtype role, optional, the shapes as symbols), attributes (type, required or default). The library's
// schemas, attribute reading, shape checks and output shapes come from these tables.
#pragma once
#include <cstdint>
#include <limits>

namespace ssd_ort
{

//! The node's activation dtype (fp32, fp16 or bf16, one per node: 'T' in the contracts), or always float32, or
//! always int32.
enum class Role : uint8_t
{
    kActivation,
    kFloat32,
    kInt32,
};

enum class AttrType : uint8_t
{
    kInt,
    kFloat,
};

//! One extent: the symbol's value plus offset ("k-1": {"k", -1}), or the constant offset when symbol is "".
struct Dim
{
    char const* symbol;
    int64_t offset;
};

struct Shape
{
    Dim const* dims;
    int32_t rank;
};

struct TensorContract
{
    char const* name;
    Role role;
    bool optional;
    Shape const* shapes; // the alternatives ("[h] or [h, p]")
    int32_t nbShapes;
};

struct AttrContract
{
    char const* name;
    AttrType type;
    bool required;
    double defaultValue; // unused when required
};

struct OpContract
{
    char const* name;
    char const* domain;
    int32_t version;
    TensorContract const* inputs;
    int32_t nbInputs;
    TensorContract const* outputs;
    int32_t nbOutputs;
    AttrContract const* attributes;
    int32_t nbAttributes;
};

namespace contracts
{
inline constexpr double kInf = std::numeric_limits<double>::infinity();

namespace CausalConv1d
{
namespace in { enum : int { x, weight, bias, conv_state }; }
namespace out { enum : int { y, conv_state_out }; }
namespace attr { enum : int { silu }; }
inline constexpr Dim kInput_x_0[] = {{"b", 0}, {"l", 0}, {"d", 0}};
inline constexpr Shape kInput_x[] = {{kInput_x_0, 3}};
inline constexpr Dim kInput_weight_0[] = {{"d", 0}, {"k", 0}};
inline constexpr Shape kInput_weight[] = {{kInput_weight_0, 2}};
inline constexpr Dim kInput_bias_0[] = {{"d", 0}};
inline constexpr Shape kInput_bias[] = {{kInput_bias_0, 1}};
inline constexpr Dim kInput_conv_state_0[] = {{"b", 0}, {"d", 0}, {"k", -1}};
inline constexpr Shape kInput_conv_state[] = {{kInput_conv_state_0, 3}};
inline constexpr TensorContract kInputs[] = {{"x", Role::kActivation, false, kInput_x, 1}, {"weight", Role::kFloat32, false, kInput_weight, 1}, {"bias", Role::kFloat32, false, kInput_bias, 1}, {"conv_state", Role::kFloat32, false, kInput_conv_state, 1}};
inline constexpr Dim kOutput_y_0[] = {{"b", 0}, {"l", 0}, {"d", 0}};
inline constexpr Shape kOutput_y[] = {{kOutput_y_0, 3}};
inline constexpr Dim kOutput_conv_state_out_0[] = {{"b", 0}, {"d", 0}, {"k", -1}};
inline constexpr Shape kOutput_conv_state_out[] = {{kOutput_conv_state_out_0, 3}};
inline constexpr TensorContract kOutputs[] = {{"y", Role::kActivation, false, kOutput_y, 1}, {"conv_state_out", Role::kFloat32, false, kOutput_conv_state_out, 1}};
inline constexpr AttrContract kAttributes[] = {{"silu", AttrType::kInt, false, 1.0}};
inline constexpr OpContract kContract{"CausalConv1d", "trt.plugins", 1, kInputs, 4, kOutputs, 2, kAttributes, 1};
} // namespace CausalConv1d

namespace CausalConv1dPacked
{
namespace in { enum : int { x, weight, bias, conv_states, cu_seqlens }; }
namespace out { enum : int { y, conv_states_out }; }
namespace attr { enum : int { silu }; }
inline constexpr Dim kInput_x_0[] = {{"", 1}, {"T", 0}, {"d", 0}};
inline constexpr Shape kInput_x[] = {{kInput_x_0, 3}};
inline constexpr Dim kInput_weight_0[] = {{"d", 0}, {"k", 0}};
inline constexpr Shape kInput_weight[] = {{kInput_weight_0, 2}};
inline constexpr Dim kInput_bias_0[] = {{"d", 0}};
inline constexpr Shape kInput_bias[] = {{kInput_bias_0, 1}};
inline constexpr Dim kInput_conv_states_0[] = {{"s", 0}, {"d", 0}, {"k", -1}};
inline constexpr Shape kInput_conv_states[] = {{kInput_conv_states_0, 3}};
inline constexpr Dim kInput_cu_seqlens_0[] = {{"s", 1}};
inline constexpr Shape kInput_cu_seqlens[] = {{kInput_cu_seqlens_0, 1}};
inline constexpr TensorContract kInputs[] = {{"x", Role::kActivation, false, kInput_x, 1}, {"weight", Role::kFloat32, false, kInput_weight, 1}, {"bias", Role::kFloat32, false, kInput_bias, 1}, {"conv_states", Role::kFloat32, false, kInput_conv_states, 1}, {"cu_seqlens", Role::kInt32, false, kInput_cu_seqlens, 1}};
inline constexpr Dim kOutput_y_0[] = {{"", 1}, {"T", 0}, {"d", 0}};
inline constexpr Shape kOutput_y[] = {{kOutput_y_0, 3}};
inline constexpr Dim kOutput_conv_states_out_0[] = {{"s", 0}, {"d", 0}, {"k", -1}};
inline constexpr Shape kOutput_conv_states_out[] = {{kOutput_conv_states_out_0, 3}};
inline constexpr TensorContract kOutputs[] = {{"y", Role::kActivation, false, kOutput_y, 1}, {"conv_states_out", Role::kFloat32, false, kOutput_conv_states_out, 1}};
inline constexpr AttrContract kAttributes[] = {{"silu", AttrType::kInt, false, 1.0}};
inline constexpr OpContract kContract{"CausalConv1dPacked", "trt.plugins", 1, kInputs, 5, kOutputs, 2, kAttributes, 1};
} // namespace CausalConv1dPacked

namespace GatedRmsNorm
{
namespace in { enum : int { y, z, weight }; }
namespace out { enum : int { out }; }
namespace attr { enum : int { eps, group_size }; }
inline constexpr Dim kInput_y_0[] = {{"b", 0}, {"l", 0}, {"d", 0}};
inline constexpr Shape kInput_y[] = {{kInput_y_0, 3}};
inline constexpr Dim kInput_z_0[] = {{"b", 0}, {"l", 0}, {"d", 0}};
inline constexpr Shape kInput_z[] = {{kInput_z_0, 3}};
inline constexpr Dim kInput_weight_0[] = {{"d", 0}};
inline constexpr Shape kInput_weight[] = {{kInput_weight_0, 1}};
inline constexpr TensorContract kInputs[] = {{"y", Role::kActivation, false, kInput_y, 1}, {"z", Role::kActivation, false, kInput_z, 1}, {"weight", Role::kFloat32, false, kInput_weight, 1}};
inline constexpr Dim kOutput_out_0[] = {{"b", 0}, {"l", 0}, {"d", 0}};
inline constexpr Shape kOutput_out[] = {{kOutput_out_0, 3}};
inline constexpr TensorContract kOutputs[] = {{"out", Role::kActivation, false, kOutput_out, 1}};
inline constexpr AttrContract kAttributes[] = {{"eps", AttrType::kFloat, true, 0.0}, {"group_size", AttrType::kInt, true, 0.0}};
inline constexpr OpContract kContract{"GatedRmsNorm", "trt.plugins", 1, kInputs, 3, kOutputs, 1, kAttributes, 2};
} // namespace GatedRmsNorm

namespace SsdChunkScan
{
namespace in { enum : int { x, dt, A, B, C, D, dt_bias, initial_state }; }
namespace out { enum : int { y, final_state }; }
namespace attr { enum : int { chunk_size, dt_softplus, dt_min, dt_max }; }
inline constexpr Dim kInput_x_0[] = {{"b", 0}, {"l", 0}, {"h", 0}, {"p", 0}};
inline constexpr Shape kInput_x[] = {{kInput_x_0, 4}};
inline constexpr Dim kInput_dt_0[] = {{"b", 0}, {"l", 0}, {"h", 0}};
inline constexpr Shape kInput_dt[] = {{kInput_dt_0, 3}};
inline constexpr Dim kInput_A_0[] = {{"h", 0}};
inline constexpr Shape kInput_A[] = {{kInput_A_0, 1}};
inline constexpr Dim kInput_B_0[] = {{"b", 0}, {"l", 0}, {"g", 0}, {"n", 0}};
inline constexpr Shape kInput_B[] = {{kInput_B_0, 4}};
inline constexpr Dim kInput_C_0[] = {{"b", 0}, {"l", 0}, {"g", 0}, {"n", 0}};
inline constexpr Shape kInput_C[] = {{kInput_C_0, 4}};
inline constexpr Dim kInput_D_0[] = {{"h", 0}};
inline constexpr Dim kInput_D_1[] = {{"h", 0}, {"p", 0}};
inline constexpr Shape kInput_D[] = {{kInput_D_0, 1}, {kInput_D_1, 2}};
inline constexpr Dim kInput_dt_bias_0[] = {{"h", 0}};
inline constexpr Shape kInput_dt_bias[] = {{kInput_dt_bias_0, 1}};
inline constexpr Dim kInput_initial_state_0[] = {{"b", 0}, {"h", 0}, {"p", 0}, {"n", 0}};
inline constexpr Shape kInput_initial_state[] = {{kInput_initial_state_0, 4}};
inline constexpr TensorContract kInputs[] = {{"x", Role::kActivation, false, kInput_x, 1}, {"dt", Role::kActivation, false, kInput_dt, 1}, {"A", Role::kFloat32, false, kInput_A, 1}, {"B", Role::kActivation, false, kInput_B, 1}, {"C", Role::kActivation, false, kInput_C, 1}, {"D", Role::kFloat32, false, kInput_D, 2}, {"dt_bias", Role::kFloat32, false, kInput_dt_bias, 1}, {"initial_state", Role::kFloat32, false, kInput_initial_state, 1}};
inline constexpr Dim kOutput_y_0[] = {{"b", 0}, {"l", 0}, {"h", 0}, {"p", 0}};
inline constexpr Shape kOutput_y[] = {{kOutput_y_0, 4}};
inline constexpr Dim kOutput_final_state_0[] = {{"b", 0}, {"h", 0}, {"p", 0}, {"n", 0}};
inline constexpr Shape kOutput_final_state[] = {{kOutput_final_state_0, 4}};
inline constexpr TensorContract kOutputs[] = {{"y", Role::kActivation, false, kOutput_y, 1}, {"final_state", Role::kFloat32, false, kOutput_final_state, 1}};
inline constexpr AttrContract kAttributes[] = {{"chunk_size", AttrType::kInt, false, 256.0}, {"dt_softplus", AttrType::kInt, false, 1.0}, {"dt_min", AttrType::kFloat, false, 0.0}, {"dt_max", AttrType::kFloat, false, kInf}};
inline constexpr OpContract kContract{"SsdChunkScan", "trt.plugins", 1, kInputs, 8, kOutputs, 2, kAttributes, 4};
} // namespace SsdChunkScan

namespace SsdChunkScanPacked
{
namespace in { enum : int { x, dt, A, B, C, D, dt_bias, initial_states, cu_seqlens }; }
namespace out { enum : int { y, final_states }; }
namespace attr { enum : int { chunk_size, dt_softplus, dt_min, dt_max }; }
inline constexpr Dim kInput_x_0[] = {{"", 1}, {"T", 0}, {"h", 0}, {"p", 0}};
inline constexpr Shape kInput_x[] = {{kInput_x_0, 4}};
inline constexpr Dim kInput_dt_0[] = {{"", 1}, {"T", 0}, {"h", 0}};
inline constexpr Shape kInput_dt[] = {{kInput_dt_0, 3}};
inline constexpr Dim kInput_A_0[] = {{"h", 0}};
inline constexpr Shape kInput_A[] = {{kInput_A_0, 1}};
inline constexpr Dim kInput_B_0[] = {{"", 1}, {"T", 0}, {"g", 0}, {"n", 0}};
inline constexpr Shape kInput_B[] = {{kInput_B_0, 4}};
inline constexpr Dim kInput_C_0[] = {{"", 1}, {"T", 0}, {"g", 0}, {"n", 0}};
inline constexpr Shape kInput_C[] = {{kInput_C_0, 4}};
inline constexpr Dim kInput_D_0[] = {{"h", 0}};
inline constexpr Dim kInput_D_1[] = {{"h", 0}, {"p", 0}};
inline constexpr Shape kInput_D[] = {{kInput_D_0, 1}, {kInput_D_1, 2}};
inline constexpr Dim kInput_dt_bias_0[] = {{"h", 0}};
inline constexpr Shape kInput_dt_bias[] = {{kInput_dt_bias_0, 1}};
inline constexpr Dim kInput_initial_states_0[] = {{"s", 0}, {"h", 0}, {"p", 0}, {"n", 0}};
inline constexpr Shape kInput_initial_states[] = {{kInput_initial_states_0, 4}};
inline constexpr Dim kInput_cu_seqlens_0[] = {{"s", 1}};
inline constexpr Shape kInput_cu_seqlens[] = {{kInput_cu_seqlens_0, 1}};
inline constexpr TensorContract kInputs[] = {{"x", Role::kActivation, false, kInput_x, 1}, {"dt", Role::kActivation, false, kInput_dt, 1}, {"A", Role::kFloat32, false, kInput_A, 1}, {"B", Role::kActivation, false, kInput_B, 1}, {"C", Role::kActivation, false, kInput_C, 1}, {"D", Role::kFloat32, false, kInput_D, 2}, {"dt_bias", Role::kFloat32, false, kInput_dt_bias, 1}, {"initial_states", Role::kFloat32, false, kInput_initial_states, 1}, {"cu_seqlens", Role::kInt32, false, kInput_cu_seqlens, 1}};
inline constexpr Dim kOutput_y_0[] = {{"", 1}, {"T", 0}, {"h", 0}, {"p", 0}};
inline constexpr Shape kOutput_y[] = {{kOutput_y_0, 4}};
inline constexpr Dim kOutput_final_states_0[] = {{"s", 0}, {"h", 0}, {"p", 0}, {"n", 0}};
inline constexpr Shape kOutput_final_states[] = {{kOutput_final_states_0, 4}};
inline constexpr TensorContract kOutputs[] = {{"y", Role::kActivation, false, kOutput_y, 1}, {"final_states", Role::kFloat32, false, kOutput_final_states, 1}};
inline constexpr AttrContract kAttributes[] = {{"chunk_size", AttrType::kInt, false, 256.0}, {"dt_softplus", AttrType::kInt, false, 1.0}, {"dt_min", AttrType::kFloat, false, 0.0}, {"dt_max", AttrType::kFloat, false, kInf}};
inline constexpr OpContract kContract{"SsdChunkScanPacked", "trt.plugins", 1, kInputs, 9, kOutputs, 2, kAttributes, 4};
} // namespace SsdChunkScanPacked

namespace SsdStateUpdate
{
namespace in { enum : int { state, x, dt, A, B, C, D, dt_bias }; }
namespace out { enum : int { y, new_state }; }
namespace attr { enum : int { dt_softplus, dt_min, dt_max }; }
inline constexpr Dim kInput_state_0[] = {{"b", 0}, {"h", 0}, {"p", 0}, {"n", 0}};
inline constexpr Shape kInput_state[] = {{kInput_state_0, 4}};
inline constexpr Dim kInput_x_0[] = {{"b", 0}, {"h", 0}, {"p", 0}};
inline constexpr Shape kInput_x[] = {{kInput_x_0, 3}};
inline constexpr Dim kInput_dt_0[] = {{"b", 0}, {"h", 0}};
inline constexpr Shape kInput_dt[] = {{kInput_dt_0, 2}};
inline constexpr Dim kInput_A_0[] = {{"h", 0}};
inline constexpr Shape kInput_A[] = {{kInput_A_0, 1}};
inline constexpr Dim kInput_B_0[] = {{"b", 0}, {"g", 0}, {"n", 0}};
inline constexpr Shape kInput_B[] = {{kInput_B_0, 3}};
inline constexpr Dim kInput_C_0[] = {{"b", 0}, {"g", 0}, {"n", 0}};
inline constexpr Shape kInput_C[] = {{kInput_C_0, 3}};
inline constexpr Dim kInput_D_0[] = {{"h", 0}};
inline constexpr Dim kInput_D_1[] = {{"h", 0}, {"p", 0}};
inline constexpr Shape kInput_D[] = {{kInput_D_0, 1}, {kInput_D_1, 2}};
inline constexpr Dim kInput_dt_bias_0[] = {{"h", 0}};
inline constexpr Shape kInput_dt_bias[] = {{kInput_dt_bias_0, 1}};
inline constexpr TensorContract kInputs[] = {{"state", Role::kFloat32, false, kInput_state, 1}, {"x", Role::kActivation, false, kInput_x, 1}, {"dt", Role::kActivation, false, kInput_dt, 1}, {"A", Role::kFloat32, false, kInput_A, 1}, {"B", Role::kActivation, false, kInput_B, 1}, {"C", Role::kActivation, false, kInput_C, 1}, {"D", Role::kFloat32, false, kInput_D, 2}, {"dt_bias", Role::kFloat32, false, kInput_dt_bias, 1}};
inline constexpr Dim kOutput_y_0[] = {{"b", 0}, {"h", 0}, {"p", 0}};
inline constexpr Shape kOutput_y[] = {{kOutput_y_0, 3}};
inline constexpr Dim kOutput_new_state_0[] = {{"b", 0}, {"h", 0}, {"p", 0}, {"n", 0}};
inline constexpr Shape kOutput_new_state[] = {{kOutput_new_state_0, 4}};
inline constexpr TensorContract kOutputs[] = {{"y", Role::kActivation, false, kOutput_y, 1}, {"new_state", Role::kFloat32, false, kOutput_new_state, 1}};
inline constexpr AttrContract kAttributes[] = {{"dt_softplus", AttrType::kInt, false, 1.0}, {"dt_min", AttrType::kFloat, false, 0.0}, {"dt_max", AttrType::kFloat, false, kInf}};
inline constexpr OpContract kContract{"SsdStateUpdate", "trt.plugins", 1, kInputs, 8, kOutputs, 2, kAttributes, 3};
} // namespace SsdStateUpdate

inline constexpr OpContract const* kAll[] = {&CausalConv1d::kContract, &CausalConv1dPacked::kContract, &GatedRmsNorm::kContract, &SsdChunkScan::kContract, &SsdChunkScanPacked::kContract, &SsdStateUpdate::kContract};
} // namespace contracts

} // namespace ssd_ort
