// GENERATED from plugins/<Plugin>/contract.toml by `python -m ssd_deploy.plugin_contracts --write`: do not edit.
// The node contracts, read from the contract files rather than from the library's own specs, so that the harness
// checks the library against the contracts rather than against itself.
#pragma once
#include "NvInferRuntime.h"
#include <string>
#include <vector>

namespace harness
{

struct FieldContract
{
    std::string name;
    nvinfer1::PluginFieldType type;
};

struct Contract
{
    std::string name;
    int32_t nbInputs;
    //! 'A' activation (fp32/fp16/bf16, one dtype per node), 'F' always fp32, 'I' always int32; inputs then outputs.
    std::string roles;
    std::vector<FieldContract> fields;
};

inline std::vector<Contract> const& contracts()
{
    using T = nvinfer1::PluginFieldType;
    static std::vector<Contract> const all{
        {"CausalConv1d", 4, "AFFF" "AF", {{"silu", T::kINT32}}},
        {"CausalConv1dPacked", 5, "AFFFI" "AF", {{"silu", T::kINT32}}},
        {"GatedRmsNorm", 3, "AAF" "A", {{"eps", T::kFLOAT32}, {"group_size", T::kINT32}}},
        {"SsdChunkScan", 8, "AAFAAFFF" "AF", {{"chunk_size", T::kINT32}, {"dt_softplus", T::kINT32}, {"dt_min", T::kFLOAT32}, {"dt_max", T::kFLOAT32}}},
        {"SsdChunkScanPacked", 9, "AAFAAFFFI" "AF", {{"chunk_size", T::kINT32}, {"dt_softplus", T::kINT32}, {"dt_min", T::kFLOAT32}, {"dt_max", T::kFLOAT32}}},
        {"SsdStateUpdate", 8, "FAAFAAFF" "AF", {{"dt_softplus", T::kINT32}, {"dt_min", T::kFLOAT32}, {"dt_max", T::kFLOAT32}}},
    };
    return all;
}

} // namespace harness
