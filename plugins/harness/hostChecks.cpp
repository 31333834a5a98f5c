#include "hostChecks.h"
#include "contracts.h"
#include "exprBuilder.h"
#include "harnessUtil.h"
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <dlfcn.h>
#include <limits>
#include <stdexcept>

namespace harness
{
using namespace nvinfer1;

namespace
{

//! One extent of a shape written in a case: a constant, a symbol ("b"), or a symbol minus one ("k-1").
struct Extent
{
    Extent(int64_t c)
        : constant(c)
    {
    }
    Extent(int c) // a literal 0 would otherwise be ambiguous with a null symbol
        : constant(c)
    {
    }
    Extent(char const* s)
        : symbol(s)
    {
        size_t const n = symbol.size();
        if (n > 2 && symbol.compare(n - 2, 2, "-1") == 0)
        {
            symbol.resize(n - 2);
            constant = -1;
        }
    }
    bool isConstant() const
    {
        return symbol.empty();
    }
    int64_t value(Env const& env) const
    {
        return isConstant() ? constant : env.at(symbol) + constant;
    }
    std::string symbol;
    int64_t constant{0};
};
using Shape = std::vector<Extent>;

struct ShapeCase
{
    std::string plugin;
    Fields fields;
    std::vector<Shape> inputs;
    std::vector<Shape> outputs; // empty: getOutputShapes must refuse the inputs
    std::string what;
};

Fields validFields(std::string const& plugin)
{
    Fields f;
    if (plugin == "SsdChunkScan" || plugin == "SsdChunkScanPacked")
    {
        f.i32("chunk_size", 64).i32("dt_softplus", 0).f32("dt_min", 0.001F).f32("dt_max", 0.1F);
    }
    else if (plugin == "SsdStateUpdate")
    {
        f.i32("dt_softplus", 0).f32("dt_min", 0.002F).f32("dt_max", 0.2F);
    }
    else if (plugin == "CausalConv1d" || plugin == "CausalConv1dPacked")
    {
        f.i32("silu", 0);
    }
    else
    {
        f.f32("eps", 1e-6F).i32("group_size", 32);
    }
    return f;
}

std::vector<ShapeCase> shapeCases()
{
    std::vector<ShapeCase> cases{
        {"SsdChunkScan", validFields("SsdChunkScan"),
            {{"b", "l", 8, 16}, {"b", "l", 8}, {8}, {"b", "l", 2, 32}, {"b", "l", 2, 32}, {8}, {8}, {"b", 8, 16, 32}},
            {{"b", "l", 8, 16}, {"b", 8, 16, 32}}, "D [h]"},
        {"SsdChunkScan", validFields("SsdChunkScan"),
            {{"b", "l", 8, 16}, {"b", "l", 8}, {8}, {"b", "l", 2, 32}, {"b", "l", 2, 32}, {8, 16}, {8},
                {"b", 8, 16, 32}},
            {{"b", "l", 8, 16}, {"b", 8, 16, 32}}, "D [h,p]"},
        {"SsdStateUpdate", validFields("SsdStateUpdate"),
            {{"b", 8, 16, 32}, {"b", 8, 16}, {"b", 8}, {8}, {"b", 2, 32}, {"b", 2, 32}, {8, 16}, {8}},
            {{"b", 8, 16}, {"b", 8, 16, 32}}, "D [h,p]"},
        {"CausalConv1d", validFields("CausalConv1d"), {{"b", "l", 96}, {96, 4}, {96}, {"b", 96, 3}},
            {{"b", "l", 96}, {"b", 96, 3}}, "static k"},
        {"CausalConv1d", validFields("CausalConv1d"), {{"b", "l", 96}, {96, "k"}, {96}, {"b", 96, "km1"}},
            {{"b", "l", 96}, {"b", 96, "k-1"}}, "dynamic k"},
        {"GatedRmsNorm", validFields("GatedRmsNorm"), {{"b", "l", 128}, {"b", "l", 128}, {128}}, {{"b", "l", 128}},
            "groups of 32"},
        // packed: b sequences (cu_seqlens of bp1 = b+1 offsets) on l tokens
        {"SsdChunkScanPacked", validFields("SsdChunkScanPacked"),
            {{1, "l", 8, 16}, {1, "l", 8}, {8}, {1, "l", 2, 32}, {1, "l", 2, 32}, {8, 16}, {8}, {"b", 8, 16, 32},
                {"bp1"}},
            {{1, "l", 8, 16}, {"b", 8, 16, 32}}, "packed, D [h,p]"},
        {"CausalConv1dPacked", validFields("CausalConv1dPacked"),
            {{1, "l", 96}, {96, "k"}, {96}, {"b", 96, "km1"}, {"bp1"}}, {{1, "l", 96}, {"b", 96, "k-1"}},
            "packed, dynamic k"},
        // Inputs that break the contract: getOutputShapes must refuse them.
        {"SsdChunkScan", validFields("SsdChunkScan"),
            {{"b", 8, 16}, {"b", "l", 8}, {8}, {"b", "l", 2, 32}, {"b", "l", 2, 32}, {8}, {8}, {"b", 8, 16, 32}}, {},
            "x of rank 3"},
        {"SsdChunkScan", validFields("SsdChunkScan"),
            {{"b", "l", 8, 16}, {"b", "l", 8}, {7}, {"b", "l", 2, 32}, {"b", "l", 2, 32}, {8}, {8}, {"b", 8, 16, 32}},
            {}, "A of 7 heads, x of 8"},
        {"SsdChunkScan", validFields("SsdChunkScan"),
            {{"b", "l", 8, 16}, {"b", "l", 8}, {8}, {"b", "l", 3, 32}, {"b", "l", 3, 32}, {8}, {8}, {"b", 8, 16, 32}},
            {}, "8 heads in 3 groups"},
        {"SsdChunkScan", validFields("SsdChunkScan"),
            {{"b", "l", 8, 16}, {"b", "l", 8}, {8}, {"b", "l", 2, 32}, {"b", "l", 2, 32}, {8}, {8}, {"b", 8, 16, 16}},
            {}, "initial_state n 16, B n 32"},
        {"SsdStateUpdate", validFields("SsdStateUpdate"),
            {{"b", 8, 16, 32}, {"b", 8, 16}, {"b", 8}, {8}, {"b", 2, 32}, {"b", 2, 32}, {8, 8}, {8}}, {},
            "D [h,8], p 16"},
        {"CausalConv1d", validFields("CausalConv1d"), {{"b", "l", 96}, {96, 4}, {96}, {"b", 96, 2}}, {},
            "conv_state of 2 columns, k 4"},
        {"CausalConv1d", validFields("CausalConv1d"), {{"b", "l", 96}, {96, 1}, {96}, {"b", 96, 0}}, {}, "k 1"},
        {"GatedRmsNorm", validFields("GatedRmsNorm"), {{"b", "l", 100}, {"b", "l", 100}, {100}}, {},
            "d 100, group_size 32"},
        {"SsdChunkScanPacked", validFields("SsdChunkScanPacked"),
            {{2, "l", 8, 16}, {2, "l", 8}, {8}, {2, "l", 2, 32}, {2, "l", 2, 32}, {8}, {8}, {"b", 8, 16, 32}, {"bp1"}},
            {}, "x of batch 2"},
        {"SsdChunkScanPacked", validFields("SsdChunkScanPacked"),
            {{1, "l", 8, 16}, {1, "l", 8}, {8}, {1, "l", 2, 32}, {1, "l", 2, 32}, {8}, {8}, {3, 8, 16, 32}, {3}}, {},
            "3 states, 3 offsets"},
        {"CausalConv1dPacked", validFields("CausalConv1dPacked"), {{1, "l", 96}, {96, 4}, {96}, {3, 96, 3}, {5}}, {},
            "3 states, 5 offsets"},
        {"GatedRmsNorm", validFields("GatedRmsNorm"), {{"b", "l", 128}, {"b", "l", 64}, {128}}, {}, "z narrower"},
    };
    return cases;
}

PluginPtr create(PluginLibrary const& lib, std::string const& name, Fields fields, TensorRTPhase phase)
{
    return PluginPtr(lib.creator(name).createPlugin(name.c_str(), fields.collection(), phase));
}

DataType roleType(char role, DataType io)
{
    return role == 'A' ? io : (role == 'I' ? DataType::kINT32 : DataType::kFLOAT);
}

bool isFloatIo(DataType t)
{
    return t == DataType::kFLOAT || t == DataType::kHALF || t == DataType::kBF16;
}

void checkCreators(Checker& c, PluginLibrary const& lib)
{
    c.expect(lib.creators.size() == contracts().size(), "getCreators returns one creator per plugin");
    for (Contract const& k : contracts())
    {
        IPluginCreatorV3One* creator = nullptr;
        try
        {
            creator = &lib.creator(k.name);
        }
        catch (std::exception const& e)
        {
            c.expect(false, e.what());
            continue;
        }
        InterfaceInfo const info = creator->getInterfaceInfo();
        c.expect(info.major == 1 && info.minor == 0, k.name + ": creator interface PLUGIN CREATOR_V3ONE 1.0");
        c.expect(std::strcmp(creator->getPluginVersion(), "1") == 0, k.name + ": version \"1\"");
        c.expect(std::strcmp(creator->getPluginNamespace(), "") == 0, k.name + ": empty namespace");
        PluginFieldCollection const* names = creator->getFieldNames();
        bool same = names != nullptr && names->nbFields == static_cast<int32_t>(k.fields.size());
        for (int32_t i = 0; same && i < names->nbFields; ++i)
        {
            same = k.fields[i].name == names->fields[i].name && k.fields[i].type == names->fields[i].type
                && names->fields[i].length == 1;
        }
        c.expect(same, k.name + ": getFieldNames lists exactly the README's attributes, types and order");
    }
}

void checkPluginInterfaces(Checker& c, PluginLibrary const& lib)
{
    for (Contract const& k : contracts())
    {
        PluginPtr plugin = create(lib, k.name, validFields(k.name), TensorRTPhase::kBUILD);
        if (!c.expect(plugin != nullptr, k.name + ": createPlugin from valid fields"))
        {
            continue;
        }
        c.expect(std::strcmp(plugin->getInterfaceInfo().kind, "PLUGIN") == 0, k.name + ": IPluginV3 kind");
        auto* core = capability<IPluginV3OneCore>(*plugin, PluginCapabilityType::kCORE);
        auto* build = capability<IPluginV3OneBuild>(*plugin, PluginCapabilityType::kBUILD);
        auto* runtime = capability<IPluginV3OneRuntime>(*plugin, PluginCapabilityType::kRUNTIME);
        if (!c.expect(core != nullptr && build != nullptr && runtime != nullptr, k.name + ": three capabilities"))
        {
            continue;
        }
        c.expect(std::strcmp(core->getInterfaceInfo().kind, "PLUGIN_V3ONE_CORE") == 0
                && std::strcmp(build->getInterfaceInfo().kind, "PLUGIN_V3ONE_BUILD") == 0
                && std::strcmp(runtime->getInterfaceInfo().kind, "PLUGIN_V3ONE_RUNTIME") == 0,
            k.name + ": capability interface kinds");
        c.expect(k.name == core->getPluginName() && std::strcmp(core->getPluginVersion(), "1") == 0
                && std::strcmp(core->getPluginNamespace(), "") == 0,
            k.name + ": core name, version, namespace");
        int32_t const nbOutputs = static_cast<int32_t>(k.roles.size()) - k.nbInputs;
        c.expect(build->getNbOutputs() == nbOutputs, k.name + ": getNbOutputs");

        int32_t const anchor = static_cast<int32_t>(k.roles.find('A'));
        for (DataType io : {DataType::kFLOAT, DataType::kHALF, DataType::kBF16})
        {
            std::vector<DataType> inTypes(k.nbInputs);
            for (int32_t i = 0; i < k.nbInputs; ++i)
            {
                inTypes[i] = roleType(k.roles[i], io);
            }
            std::vector<DataType> outTypes(nbOutputs, DataType::kINT8);
            bool ok = build->getOutputDataTypes(outTypes.data(), nbOutputs, inTypes.data(), k.nbInputs) == 0;
            for (int32_t o = 0; ok && o < nbOutputs; ++o)
            {
                ok = outTypes[o] == roleType(k.roles[k.nbInputs + o], io);
            }
            c.expect(ok, k.name + ": getOutputDataTypes for I/O dtype " + std::to_string(static_cast<int>(io)));

            // supportsFormatCombination, position by position as TensorRT asks: the all-valid combination is
            // accepted; each single change of dtype or format is judged by the README's roles.
            std::vector<DynamicPluginTensorDesc> descs(k.roles.size());
            for (size_t p = 0; p < k.roles.size(); ++p)
            {
                descs[p].desc.type = roleType(k.roles[p], io);
                descs[p].desc.format = TensorFormat::kLINEAR;
                descs[p].desc.dims.nbDims = 1;
                descs[p].desc.dims.d[0] = 1;
            }
            int32_t const n = static_cast<int32_t>(k.roles.size());
            for (int32_t p = 0; p < n; ++p)
            {
                std::string const where = k.name + " pos " + std::to_string(p) + " io " + std::to_string(int(io));
                c.expect(build->supportsFormatCombination(p, descs.data(), k.nbInputs, nbOutputs),
                    where + ": valid combination accepted");
                for (DataType t : {DataType::kFLOAT, DataType::kHALF, DataType::kBF16, DataType::kINT32,
                         DataType::kINT8, DataType::kINT64})
                {
                    auto changed = descs;
                    changed[p].desc.type = t;
                    bool const expected = k.roles[p] != 'A' ? t == roleType(k.roles[p], io)
                                                            : (p == anchor ? isFloatIo(t) : t == io);
                    c.expect(build->supportsFormatCombination(p, changed.data(), k.nbInputs, nbOutputs) == expected,
                        where + ": dtype " + std::to_string(static_cast<int>(t)) + (expected ? " accepted" : " refused"));
                }
                auto changed = descs;
                changed[p].desc.format = TensorFormat::kHWC8;
                c.expect(!build->supportsFormatCombination(p, changed.data(), k.nbInputs, nbOutputs),
                    where + ": non-linear format refused");
            }
        }
        std::vector<DataType> outTypes(nbOutputs);
        std::vector<DataType> intTypes(k.nbInputs, DataType::kINT32);
        c.expect(build->getOutputDataTypes(outTypes.data(), nbOutputs, intTypes.data(), k.nbInputs) != 0,
            k.name + ": getOutputDataTypes refuses int32 activations");
        for (int32_t i = 0; i < k.nbInputs; ++i)
        {
            // one input off its role: a half parameter or state, or an activation of another dtype than the anchor
            std::vector<DataType> types(k.nbInputs);
            for (int32_t j = 0; j < k.nbInputs; ++j)
            {
                types[j] = roleType(k.roles[j], DataType::kFLOAT);
            }
            types[i] = DataType::kHALF;
            // Valid only when input i is the sole activation input (then the node is simply half).
            bool const sole = i == anchor && k.roles.substr(0, k.nbInputs).find('A', anchor + 1) == std::string::npos;
            bool const refused = build->getOutputDataTypes(outTypes.data(), nbOutputs, types.data(), k.nbInputs) != 0;
            c.expect(refused != sole,
                k.name + ": getOutputDataTypes with input " + std::to_string(i) + " half, the rest float32 "
                    + (sole ? "accepted" : "refused"));
        }
    }
}

void checkAttributes(Checker& c, PluginLibrary const& lib)
{
    float const inf = std::numeric_limits<float>::infinity();
    for (Contract const& k : contracts())
    {
        // Serialise, restore in the runtime phase, clone, attach: the fields must survive unchanged.
        Fields const given = validFields(k.name);
        PluginPtr built = create(lib, k.name, given, TensorRTPhase::kBUILD);
        if (!c.expect(built != nullptr, k.name + ": build-phase plugin"))
        {
            continue;
        }
        auto* rt = capability<IPluginV3OneRuntime>(*built, PluginCapabilityType::kRUNTIME);
        Fields const serialised = Fields::copyOf(*rt->getFieldsToSerialize());
        c.expect(serialised == given, k.name + ": serialised fields equal the given ones: " + serialised.str());
        PluginPtr restored = create(lib, k.name, serialised, TensorRTPhase::kRUNTIME);
        if (!c.expect(restored != nullptr, k.name + ": runtime-phase plugin from serialised fields"))
        {
            continue;
        }
        auto* restoredRt = capability<IPluginV3OneRuntime>(*restored, PluginCapabilityType::kRUNTIME);
        c.expect(Fields::copyOf(*restoredRt->getFieldsToSerialize()) == given, k.name + ": restored fields");
        PluginPtr cloned(built->clone());
        built.reset(); // the clone must not point into the original
        c.expect(cloned != nullptr
                && Fields::copyOf(*capability<IPluginV3OneRuntime>(*cloned, PluginCapabilityType::kRUNTIME)
                                       ->getFieldsToSerialize())
                    == given,
            k.name + ": clone keeps the fields after the original is gone");
        PluginPtr attached(restoredRt->attachToContext(nullptr));
        c.expect(attached != nullptr
                && Fields::copyOf(*capability<IPluginV3OneRuntime>(*attached, PluginCapabilityType::kRUNTIME)
                                       ->getFieldsToSerialize())
                    == given,
            k.name + ": attachToContext keeps the fields");
    }

    // Defaults of the op contract for absent optional attributes (the ONNX parser skips absent attributes).
    struct DefaultCase
    {
        std::string plugin;
        Fields expected;
    };
    std::vector<DefaultCase> defaults{
        {"SsdChunkScan", Fields().i32("chunk_size", 256).i32("dt_softplus", 1).f32("dt_min", 0.F).f32("dt_max", inf)},
        {"SsdStateUpdate", Fields().i32("dt_softplus", 1).f32("dt_min", 0.F).f32("dt_max", inf)},
        {"CausalConv1d", Fields().i32("silu", 1)},
    };
    for (DefaultCase& d : defaults)
    {
        PluginPtr p = create(lib, d.plugin, Fields(), TensorRTPhase::kBUILD);
        c.expect(p != nullptr
                && Fields::copyOf(*capability<IPluginV3OneRuntime>(*p, PluginCapabilityType::kRUNTIME)
                                       ->getFieldsToSerialize())
                    == d.expected,
            d.plugin + ": defaults for absent attributes");
    }

    // Other integer widths, and integers for float attributes (onnx.helper writes dt_min=0 as INT).
    {
        PluginPtr p = create(lib, "SsdChunkScan", Fields().i64("chunk_size", 128).i32("dt_min", 0).i32("dt_max", 1),
            TensorRTPhase::kBUILD);
        c.expect(p != nullptr
                && Fields::copyOf(*capability<IPluginV3OneRuntime>(*p, PluginCapabilityType::kRUNTIME)
                                       ->getFieldsToSerialize())
                    == Fields().i32("chunk_size", 128).i32("dt_softplus", 1).f32("dt_min", 0.F).f32("dt_max", 1.F),
            "SsdChunkScan: INT64 chunk_size and INT32 dt_min/dt_max accepted and normalised");
    }

    // Refused: missing required fields, wrong types, out-of-range values.
    struct Refused
    {
        std::string plugin;
        Fields fields;
        std::string what;
    };
    std::vector<Refused> refused{
        {"GatedRmsNorm", Fields().i32("group_size", 32), "missing eps"},
        {"GatedRmsNorm", Fields().f32("eps", 1e-5F), "missing group_size"},
        {"GatedRmsNorm", Fields().f32("eps", 0.F).i32("group_size", 32), "eps 0"},
        {"GatedRmsNorm", Fields().f32("eps", 1e-5F).i32("group_size", 0), "group_size 0"},
        {"GatedRmsNorm", Fields().f32("eps", 1e-5F).f32("group_size", 32.F), "float group_size"},
        {"SsdChunkScan", Fields().f32("chunk_size", 64.F), "float chunk_size"},
        {"SsdChunkScan", Fields().i32("chunk_size", 0), "chunk_size 0"},
        {"SsdChunkScan", Fields().i64("chunk_size", int64_t(1) << 40), "chunk_size beyond int32"},
        {"SsdChunkScan", Fields().i32("dt_softplus", 2), "dt_softplus 2"},
        {"SsdStateUpdate", Fields().f32("dt_min", 0.2F).f32("dt_max", 0.1F), "dt_min > dt_max"},
        {"SsdStateUpdate", Fields().f32("dt_min", std::nanf("")), "dt_min NaN"},
        {"CausalConv1d", Fields().i32("silu", 3), "silu 3"},
    };
    {
        // two values in a field that holds one
        int32_t two[2] = {1, 0};
        refused.push_back({"CausalConv1d", Fields().add("silu", PluginFieldType::kINT32, two, 2, 4), "silu of 2"});
    }
    for (Refused& r : refused)
    {
        PluginPtr p = create(lib, r.plugin, r.fields, TensorRTPhase::kBUILD);
        c.expect(p == nullptr, r.plugin + ": createPlugin refuses " + r.what);
    }
}

void checkShapes(Checker& c, PluginLibrary const& lib)
{
    std::vector<Env> const envs{{{"b", 3}, {"l", 17}, {"k", 4}, {"km1", 3}, {"bp1", 4}},
        {{"b", 1}, {"l", 1}, {"k", 2}, {"km1", 1}, {"bp1", 2}}};
    for (ShapeCase& sc : shapeCases())
    {
        std::string const where = sc.plugin + " (" + sc.what + ")";
        PluginPtr plugin = create(lib, sc.plugin, sc.fields, TensorRTPhase::kBUILD);
        if (!c.expect(plugin != nullptr, where + ": createPlugin"))
        {
            continue;
        }
        auto* build = capability<IPluginV3OneBuild>(*plugin, PluginCapabilityType::kBUILD);
        ExprBuilder eb;
        std::vector<DimsExprs> in(sc.inputs.size());
        for (size_t i = 0; i < sc.inputs.size(); ++i)
        {
            in[i].nbDims = static_cast<int32_t>(sc.inputs[i].size());
            for (size_t d = 0; d < sc.inputs[i].size(); ++d)
            {
                Extent const& e = sc.inputs[i][d];
                in[i].d[d] = e.isConstant() ? eb.makeConstant(e.constant) : eb.makeSymbol(e.symbol);
            }
        }
        int32_t const nbOutputs = build->getNbOutputs();
        std::vector<DimsExprs> out(nbOutputs);
        int32_t const rc = build->getOutputShapes(
            in.data(), static_cast<int32_t>(in.size()), nullptr, 0, out.data(), nbOutputs, eb);
        if (sc.outputs.empty())
        {
            c.expect(rc != 0, where + ": getOutputShapes refuses");
            continue;
        }
        if (!c.expect(rc == 0 && static_cast<int32_t>(sc.outputs.size()) == nbOutputs, where + ": getOutputShapes"))
        {
            continue;
        }
        for (int32_t o = 0; o < nbOutputs; ++o)
        {
            Shape const& want = sc.outputs[o];
            bool ok = out[o].nbDims == static_cast<int32_t>(want.size());
            for (size_t d = 0; ok && d < want.size(); ++d)
            {
                Expr const& e = ExprBuilder::unwrap(*out[o].d[d]);
                // Static extents must stay build-time constants (TensorRT plans memory with them).
                ok = e.constant() == want[d].isConstant();
                for (Env const& env : envs)
                {
                    ok = ok && e.evaluate(env) == want[d].value(env);
                }
            }
            c.expect(ok, where + ": output " + std::to_string(o) + " shape");
        }
    }
}

Dims concrete(Shape const& s, Env const& env, bool dynamicAsUnknown)
{
    Dims d{};
    d.nbDims = static_cast<int32_t>(s.size());
    for (size_t i = 0; i < s.size(); ++i)
    {
        d.d[i] = dynamicAsUnknown && !s[i].isConstant() ? -1 : s[i].value(env);
    }
    return d;
}

void checkConfigure(Checker& c, PluginLibrary const& lib)
{
    Env const env{{"b", 2}, {"l", 5}, {"k", 4}, {"km1", 3}, {"bp1", 3}};
    for (ShapeCase& sc : shapeCases())
    {
        if (sc.outputs.empty())
        {
            continue;
        }
        std::string const where = sc.plugin + " (" + sc.what + ")";
        PluginPtr plugin = create(lib, sc.plugin, sc.fields, TensorRTPhase::kBUILD);
        auto* build = capability<IPluginV3OneBuild>(*plugin, PluginCapabilityType::kBUILD);
        auto* runtime = capability<IPluginV3OneRuntime>(*plugin, PluginCapabilityType::kRUNTIME);
        auto describe = [&](std::vector<Shape> const& shapes, bool unknown) {
            std::vector<DynamicPluginTensorDesc> v(shapes.size());
            for (size_t i = 0; i < shapes.size(); ++i)
            {
                v[i].desc.dims = concrete(shapes[i], env, unknown);
                v[i].desc.type = DataType::kFLOAT;
                v[i].desc.format = TensorFormat::kLINEAR;
                v[i].min = concrete(shapes[i], env, false);
                v[i].max = v[i].min;
                v[i].opt = v[i].min;
            }
            return v;
        };
        auto in = describe(sc.inputs, true);
        auto out = describe(sc.outputs, true);
        int32_t const nIn = static_cast<int32_t>(in.size());
        int32_t const nOut = static_cast<int32_t>(out.size());
        c.expect(build->configurePlugin(in.data(), nIn, out.data(), nOut) == 0, where + ": configurePlugin");
        out[0].desc.dims.d[out[0].desc.dims.nbDims - 1] += 1;
        c.expect(build->configurePlugin(in.data(), nIn, out.data(), nOut) != 0,
            where + ": configurePlugin refuses a wrong output extent");

        auto runtimeDescs = [&](std::vector<Shape> const& shapes) {
            std::vector<PluginTensorDesc> v(shapes.size());
            for (size_t i = 0; i < shapes.size(); ++i)
            {
                v[i].dims = concrete(shapes[i], env, false);
                v[i].type = DataType::kFLOAT;
                v[i].format = TensorFormat::kLINEAR;
            }
            return v;
        };
        auto rin = runtimeDescs(sc.inputs);
        auto rout = runtimeDescs(sc.outputs);
        c.expect(runtime->onShapeChange(rin.data(), nIn, rout.data(), nOut) == 0, where + ": onShapeChange");
        rin[0].dims.d[0] += 1; // batch of the first input differs from the others
        c.expect(runtime->onShapeChange(rin.data(), nIn, rout.data(), nOut) != 0,
            where + ": onShapeChange refuses inconsistent batches");
    }
}

void checkWorkspace(Checker& c, PluginLibrary const& lib)
{
    auto workspace = [&](char const* name, std::vector<Shape> const& shapes) {
        PluginPtr p = create(lib, name, validFields(name), TensorRTPhase::kBUILD);
        auto* build = capability<IPluginV3OneBuild>(*p, PluginCapabilityType::kBUILD);
        std::vector<DynamicPluginTensorDesc> in(shapes.size());
        for (size_t i = 0; i < shapes.size(); ++i)
        {
            in[i].max = concrete(shapes[i], Env{}, false);
            in[i].min = in[i].max;
            in[i].desc.dims = in[i].max;
            in[i].desc.type = i == 0 ? DataType::kBF16 : DataType::kFLOAT;
        }
        return build->getWorkspaceSize(in.data(), static_cast<int32_t>(in.size()), nullptr, 2);
    };
    auto chunkScanWorkspace = [&](int64_t b, int64_t l) {
        return workspace("SsdChunkScan",
            {{b, l, 24, 64}, {b, l, 24}, {24}, {b, l, 1, 128}, {b, l, 1, 128}, {24}, {24}, {b, 24, 64, 128}});
    };
    // packed: s sequences on T tokens; sized for the chunked path whatever the mean length
    auto packedScanWorkspace = [&](int64_t s, int64_t t) {
        return workspace("SsdChunkScanPacked",
            {{1, t, 24, 64}, {1, t, 24}, {24}, {1, t, 1, 128}, {1, t, 1, 128}, {24}, {24}, {s, 24, 64, 128}, {s + 1}});
    };
    size_t const small = chunkScanWorkspace(2, 64);
    size_t const longer = chunkScanWorkspace(2, 4096);
    size_t const wider = chunkScanWorkspace(8, 4096);
    std::printf("SsdChunkScan workspace (bf16, h24 p64 n128 Q64): b2 l64 %zu, b2 l4096 %zu, b8 l4096 %zu bytes\n",
        small, longer, wider);
    c.expect(small <= longer && longer <= wider, "SsdChunkScan workspace grows with the profile's largest shapes");
    size_t const fewShort = packedScanWorkspace(2, 64);
    size_t const manyShort = packedScanWorkspace(16, 64);
    std::printf("SsdChunkScanPacked workspace (bf16, h24 p64 n128): s2 T64 %zu, s16 T64 %zu bytes\n", fewShort,
        manyShort);
    c.expect(fewShort > 0 && fewShort < manyShort && manyShort <= packedScanWorkspace(16, 4096),
        "SsdChunkScanPacked workspace: a chain buffer per sequence and head whatever the mean length");
    c.expect(workspace("CausalConv1dPacked", {{1, 64, 96}, {96, 4}, {96}, {5, 96, 3}, {6}}) >= 6 * sizeof(int32_t),
        "CausalConv1dPacked workspace holds the tile table");
    for (char const* name : {"SsdStateUpdate", "CausalConv1d", "GatedRmsNorm"})
    {
        PluginPtr p = create(lib, name, validFields(name), TensorRTPhase::kBUILD);
        auto* build = capability<IPluginV3OneBuild>(*p, PluginCapabilityType::kBUILD);
        c.expect(build->getWorkspaceSize(nullptr, 0, nullptr, 0) == 0, std::string(name) + ": no workspace");
    }
}

using RegistryCount = int32_t (*)();
using RegistryEntry = char const* (*) (int32_t);

std::vector<std::string> registryEntries(void* fake)
{
    auto const count = reinterpret_cast<RegistryCount>(dlsym(fake, "ssd_fake_registry_count"));
    auto const entry = reinterpret_cast<RegistryEntry>(dlsym(fake, "ssd_fake_registry_entry"));
    std::vector<std::string> entries;
    for (int32_t i = 0; i < count(); ++i)
    {
        entries.emplace_back(entry(i));
    }
    return entries;
}

} // namespace

int runHostChecks(std::string const& pluginLib, std::string const& autoregLib, std::string const& fakeRegistryLib)
{
    Checker c;
    try
    {
        // The fake libnvinfer goes in first, so that a library that registers itself at load would do so now.
        void* fake = nullptr;
        if (!fakeRegistryLib.empty())
        {
            fake = dlopen(fakeRegistryLib.c_str(), RTLD_NOW | RTLD_GLOBAL);
            if (fake == nullptr)
            {
                throw std::runtime_error(std::string("dlopen fake registry: ") + dlerror());
            }
        }
        PluginLibrary const lib = PluginLibrary::load(pluginLib);
        if (fake != nullptr)
        {
            c.expect(registryEntries(fake).empty(), "libssd_trt_plugins registers nothing by itself");
        }
        checkCreators(c, lib);
        checkPluginInterfaces(c, lib);
        checkAttributes(c, lib);
        checkShapes(c, lib);
        checkConfigure(c, lib);
        checkWorkspace(c, lib);
        if (fake != nullptr && !autoregLib.empty())
        {
            PluginLibrary const autoreg = PluginLibrary::load(autoregLib);
            // Registration order is the library's, not the contracts' (alphabetical): compare as sets, duplicates
            // still counted.
            std::vector<std::string> entries = registryEntries(fake);
            std::vector<std::string> expected;
            for (Contract const& k : contracts())
            {
                expected.push_back(k.name + "/1/");
            }
            std::sort(entries.begin(), entries.end());
            std::sort(expected.begin(), expected.end());
            std::string got;
            for (std::string const& e : entries)
            {
                got += e + " ";
            }
            c.expect(entries == expected, "autoreg library registered each creator once, namespace \"\": " + got);
            c.expect(autoreg.creators.size() == contracts().size(), "autoreg library exports getCreators too");
        }
    }
    catch (std::exception const& e)
    {
        c.expect(false, std::string("exception: ") + e.what());
    }
    std::printf("host checks: %d of %d failed\n", c.failures(), c.checks());
    return c.failures();
}

} // namespace harness
