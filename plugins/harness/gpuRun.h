// GPU mode of the harness: each case runs the path TensorRT takes through a plugin, without TensorRT. Build phase
// (createPlugin from the node's fields, dtypes, formats, output shapes through our IExprBuilder, configurePlugin,
// getWorkspaceSize), serialisation (getFieldsToSerialize, createPlugin in the runtime phase, attachToContext), then
// onShapeChange and enqueue on real device buffers, outputs and workspace poisoned (0xFF bytes, NaN in every float
// format) before each run. Outputs are written next to the inputs for run_parity.py to compare; result.txt
// records the status, the workspace, whether two runs gave identical bytes and, if asked, the enqueue time.
#pragma once
#include <string>
#include <vector>

namespace harness
{

//! Returns the number of failed cases.
int runGpuCases(std::string const& pluginLib, std::vector<std::string> const& caseDirs);

} // namespace harness
