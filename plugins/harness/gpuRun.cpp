#include "gpuRun.h"
#include "caseManifest.h"
#include "exprBuilder.h"
#include "harnessUtil.h"
#include <algorithm>
#include <cstdio>
#include <cuda_runtime_api.h>
#include <fstream>
#include <stdexcept>

namespace harness
{
using namespace nvinfer1;

namespace
{

void cudaCheck(cudaError_t e, char const* what)
{
    if (e != cudaSuccess)
    {
        throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
    }
}

void require(bool ok, std::string const& what)
{
    if (!ok)
    {
        throw std::runtime_error(what);
    }
}

struct DeviceBuffer
{
    void* ptr{nullptr};
    size_t bytes{0};
    explicit DeviceBuffer(size_t n)
        : bytes(n)
    {
        if (n > 0)
        {
            cudaCheck(cudaMalloc(&ptr, n), "cudaMalloc");
        }
    }
    DeviceBuffer(DeviceBuffer&& o) noexcept
        : ptr(o.ptr)
        , bytes(o.bytes)
    {
        o.ptr = nullptr;
    }
    DeviceBuffer(DeviceBuffer const&) = delete;
    ~DeviceBuffer()
    {
        cudaFree(ptr);
    }
};

std::vector<char> readFile(std::string const& path, size_t expected)
{
    std::ifstream f(path, std::ios::binary);
    std::vector<char> data((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    require(f.good() || f.eof(), "cannot read " + path);
    require(data.size() == expected, path + ": " + std::to_string(data.size()) + " bytes, expected "
            + std::to_string(expected));
    return data;
}

Dims dimsOf(TensorSpec const& t, int64_t dynamicFactor, bool dynamicAsUnknown)
{
    Dims d{};
    d.nbDims = static_cast<int32_t>(t.extents.size());
    for (size_t i = 0; i < t.extents.size(); ++i)
    {
        bool const dynamic = !t.symbols[i].empty();
        d.d[i] = dynamic && dynamicAsUnknown ? -1 : (dynamic ? t.extents[i] * dynamicFactor : t.extents[i]);
    }
    return d;
}

DynamicPluginTensorDesc buildDesc(TensorSpec const& t)
{
    DynamicPluginTensorDesc d{};
    d.desc.dims = dimsOf(t, 1, true);
    d.desc.type = t.type;
    d.desc.format = TensorFormat::kLINEAR;
    d.desc.scale = -1.F;
    d.opt = dimsOf(t, 1, false);
    d.max = dimsOf(t, 2, false);
    d.min = d.opt;
    for (int32_t i = 0; i < d.min.nbDims; ++i)
    {
        d.min.d[i] = t.symbols[i].empty() ? d.min.d[i] : 1;
    }
    return d;
}

PluginTensorDesc runtimeDesc(TensorSpec const& t)
{
    PluginTensorDesc d{};
    d.dims = dimsOf(t, 1, false);
    d.type = t.type;
    d.format = TensorFormat::kLINEAR;
    d.scale = -1.F;
    return d;
}

//! The build phase, as the builder drives it; returns the serialised fields and the workspace size.
Fields buildPhase(CaseManifest& m, IPluginCreatorV3One& creator, size_t& workspace)
{
    PluginPtr plugin(creator.createPlugin(m.plugin.c_str(), m.fields.collection(), TensorRTPhase::kBUILD));
    require(plugin != nullptr, "createPlugin (build phase) refused the fields");
    auto* build = capability<IPluginV3OneBuild>(*plugin, PluginCapabilityType::kBUILD);
    int32_t const nIn = static_cast<int32_t>(m.inputs.size());
    int32_t const nOut = static_cast<int32_t>(m.outputs.size());
    require(build->getNbOutputs() == nOut, "getNbOutputs");

    std::vector<DataType> inTypes;
    for (TensorSpec const& t : m.inputs)
    {
        inTypes.push_back(t.type);
    }
    std::vector<DataType> outTypes(nOut);
    require(build->getOutputDataTypes(outTypes.data(), nOut, inTypes.data(), nIn) == 0, "getOutputDataTypes");
    for (int32_t o = 0; o < nOut; ++o)
    {
        require(outTypes[o] == m.outputs[o].type, "getOutputDataTypes: output " + m.outputs[o].name);
    }

    ExprBuilder eb;
    Env env;
    std::vector<DimsExprs> inExprs(nIn);
    for (int32_t i = 0; i < nIn; ++i)
    {
        TensorSpec const& t = m.inputs[i];
        inExprs[i].nbDims = static_cast<int32_t>(t.extents.size());
        for (size_t d = 0; d < t.extents.size(); ++d)
        {
            bool const dynamic = !t.symbols[d].empty();
            inExprs[i].d[d] = dynamic ? eb.makeSymbol(t.symbols[d]) : eb.makeConstant(t.extents[d]);
            if (dynamic)
            {
                env[t.symbols[d]] = t.extents[d];
            }
        }
    }
    std::vector<DimsExprs> outExprs(nOut);
    require(build->getOutputShapes(inExprs.data(), nIn, nullptr, 0, outExprs.data(), nOut, eb) == 0,
        "getOutputShapes");
    for (int32_t o = 0; o < nOut; ++o)
    {
        TensorSpec const& t = m.outputs[o];
        bool ok = outExprs[o].nbDims == static_cast<int32_t>(t.extents.size());
        for (size_t d = 0; ok && d < t.extents.size(); ++d)
        {
            Expr const& e = ExprBuilder::unwrap(*outExprs[o].d[d]);
            ok = e.evaluate(env) == t.extents[d] && e.constant() == t.symbols[d].empty();
        }
        require(ok, "getOutputShapes: output " + t.name);
    }

    std::vector<DynamicPluginTensorDesc> descs;
    for (TensorSpec const& t : m.inputs)
    {
        descs.push_back(buildDesc(t));
    }
    for (TensorSpec const& t : m.outputs)
    {
        descs.push_back(buildDesc(t));
    }
    for (int32_t pos = 0; pos < nIn + nOut; ++pos)
    {
        require(build->supportsFormatCombination(pos, descs.data(), nIn, nOut),
            "supportsFormatCombination refuses position " + std::to_string(pos));
    }
    require(build->configurePlugin(descs.data(), nIn, descs.data() + nIn, nOut) == 0, "configurePlugin");
    workspace = build->getWorkspaceSize(descs.data(), nIn, descs.data() + nIn, nOut);
    auto* runtime = capability<IPluginV3OneRuntime>(*plugin, PluginCapabilityType::kRUNTIME);
    PluginFieldCollection const* serialised = runtime->getFieldsToSerialize();
    require(serialised != nullptr, "getFieldsToSerialize");
    return Fields::copyOf(*serialised);
}

void runCase(PluginLibrary const& lib, std::string const& dir, std::ofstream& result)
{
    CaseManifest m = CaseManifest::read(dir);
    IPluginCreatorV3One& creator = lib.creator(m.plugin);
    size_t workspace = 0;
    Fields serialised = buildPhase(m, creator, workspace);
    result << "workspace_bytes " << workspace << "\n";

    // Runtime phase: a fresh plugin from the serialised fields, as deserialising an engine does.
    PluginPtr restored(creator.createPlugin(m.plugin.c_str(), serialised.collection(), TensorRTPhase::kRUNTIME));
    require(restored != nullptr, "createPlugin (runtime phase) refused the serialised fields");
    auto* restoredRt = capability<IPluginV3OneRuntime>(*restored, PluginCapabilityType::kRUNTIME);
    PluginPtr attached(restoredRt->attachToContext(nullptr));
    require(attached != nullptr, "attachToContext");
    auto* runtime = capability<IPluginV3OneRuntime>(*attached, PluginCapabilityType::kRUNTIME);

    int32_t const nIn = static_cast<int32_t>(m.inputs.size());
    int32_t const nOut = static_cast<int32_t>(m.outputs.size());
    std::vector<PluginTensorDesc> inDesc, outDesc;
    for (TensorSpec const& t : m.inputs)
    {
        inDesc.push_back(runtimeDesc(t));
    }
    for (TensorSpec const& t : m.outputs)
    {
        outDesc.push_back(runtimeDesc(t));
    }
    require(runtime->onShapeChange(inDesc.data(), nIn, outDesc.data(), nOut) == 0, "onShapeChange");

    std::vector<DeviceBuffer> inBuf, outBuf;
    std::vector<void const*> inPtr;
    std::vector<void*> outPtr;
    for (TensorSpec const& t : m.inputs)
    {
        std::vector<char> host = readFile(dir + "/" + t.file, t.bytes());
        inBuf.emplace_back(t.bytes());
        cudaCheck(cudaMemcpy(inBuf.back().ptr, host.data(), host.size(), cudaMemcpyHostToDevice), "upload");
        inPtr.push_back(inBuf.back().ptr);
    }
    for (TensorSpec const& t : m.outputs)
    {
        outBuf.emplace_back(t.bytes());
        outPtr.push_back(outBuf.back().ptr);
    }
    DeviceBuffer ws(workspace);
    cudaStream_t stream{};
    cudaCheck(cudaStreamCreate(&stream), "cudaStreamCreate");

    auto enqueue = [&]() {
        int32_t const rc = runtime->enqueue(inDesc.data(), outDesc.data(), inPtr.data(), outPtr.data(), ws.ptr, stream);
        require(rc == 0, "enqueue returned " + std::to_string(rc));
    };
    auto poisonedRun = [&]() {
        for (DeviceBuffer& b : outBuf)
        {
            cudaCheck(cudaMemsetAsync(b.ptr, 0xFF, b.bytes, stream), "poison output");
        }
        if (ws.bytes > 0)
        {
            cudaCheck(cudaMemsetAsync(ws.ptr, 0xFF, ws.bytes, stream), "poison workspace");
        }
        enqueue();
        cudaCheck(cudaStreamSynchronize(stream), "enqueue (sync)");
        cudaCheck(cudaGetLastError(), "enqueue (last error)");
        std::vector<std::vector<char>> out;
        for (DeviceBuffer& b : outBuf)
        {
            out.emplace_back(b.bytes);
            cudaCheck(cudaMemcpy(out.back().data(), b.ptr, b.bytes, cudaMemcpyDeviceToHost), "download");
        }
        return out;
    };

    auto const first = poisonedRun();
    for (int32_t o = 0; o < nOut; ++o)
    {
        std::ofstream f(dir + "/" + m.outputs[o].file, std::ios::binary);
        f.write(first[o].data(), static_cast<std::streamsize>(first[o].size()));
        require(f.good(), "cannot write " + m.outputs[o].file);
    }
    result << "repeat_identical " << (poisonedRun() == first ? 1 : 0) << "\n";

    if (m.timeRepeats > 0)
    {
        cudaEvent_t start{}, stop{};
        cudaCheck(cudaEventCreate(&start), "cudaEventCreate");
        cudaCheck(cudaEventCreate(&stop), "cudaEventCreate");
        for (int32_t i = 0; i < 5; ++i)
        {
            enqueue();
        }
        std::vector<float> ms;
        for (int32_t i = 0; i < m.timeRepeats; ++i)
        {
            cudaCheck(cudaEventRecord(start, stream), "cudaEventRecord");
            enqueue();
            cudaCheck(cudaEventRecord(stop, stream), "cudaEventRecord");
            cudaCheck(cudaEventSynchronize(stop), "cudaEventSynchronize");
            float t = 0.F;
            cudaCheck(cudaEventElapsedTime(&t, start, stop), "cudaEventElapsedTime");
            ms.push_back(t);
        }
        std::sort(ms.begin(), ms.end());
        result << "median_ms " << ms[ms.size() / 2] << "\n";
        cudaEventDestroy(start);
        cudaEventDestroy(stop);
    }
    cudaCheck(cudaStreamDestroy(stream), "cudaStreamDestroy");
}

} // namespace

int runGpuCases(std::string const& pluginLib, std::vector<std::string> const& caseDirs)
{
    PluginLibrary const lib = PluginLibrary::load(pluginLib);
    int failures = 0;
    for (size_t i = 0; i < caseDirs.size(); ++i)
    {
        std::string const& dir = caseDirs[i];
        std::ofstream result(dir + "/result.txt");
        try
        {
            runCase(lib, dir, result);
            result << "status ok\n";
            std::printf("CASE ok   %s\n", dir.c_str());
        }
        catch (std::exception const& e)
        {
            ++failures;
            result << "status fail\nerror " << e.what() << "\n";
            std::printf("CASE FAIL %s: %s\n", dir.c_str(), e.what());
            // A sticky CUDA error (e.g. an illegal address) poisons every later case: stop here.
            if (cudaGetLastError() != cudaSuccess || cudaDeviceSynchronize() != cudaSuccess)
            {
                std::printf("CUDA context is broken; the %zu remaining cases are not run\n", caseDirs.size() - i - 1);
                return failures + static_cast<int>(caseDirs.size() - i - 1);
            }
        }
    }
    std::printf("gpu cases: %d of %zu failed\n", failures, caseDirs.size());
    return failures;
}

} // namespace harness
