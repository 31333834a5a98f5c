#include "harnessUtil.h"
#include <cmath>
#include <cstdio>
#include <cstring>
#include <dlfcn.h>
#include <sstream>
#include <stdexcept>

namespace harness
{
using namespace nvinfer1;

bool Checker::expect(bool ok, std::string const& what)
{
    ++mChecks;
    if (!ok)
    {
        ++mFailures;
        std::printf("FAIL: %s\n", what.c_str());
    }
    return ok;
}

PluginLibrary PluginLibrary::load(std::string const& path)
{
    PluginLibrary lib;
    lib.handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (lib.handle == nullptr)
    {
        throw std::runtime_error("dlopen " + path + ": " + dlerror());
    }
    using GetCreators = IPluginCreatorInterface* const* (*) (int32_t&);
    auto const getCreators = reinterpret_cast<GetCreators>(dlsym(lib.handle, "getCreators"));
    if (getCreators == nullptr)
    {
        throw std::runtime_error(path + " exports no getCreators");
    }
    int32_t n = 0;
    IPluginCreatorInterface* const* creators = getCreators(n);
    lib.creators.assign(creators, creators + n);
    return lib;
}

IPluginCreatorV3One& PluginLibrary::creator(std::string const& name) const
{
    for (IPluginCreatorInterface* c : creators)
    {
        if (std::strcmp(c->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0)
        {
            auto* v3 = static_cast<IPluginCreatorV3One*>(c);
            if (name == v3->getPluginName())
            {
                return *v3;
            }
        }
    }
    throw std::runtime_error("no creator named " + name);
}

size_t fieldElementBytes(PluginFieldType type)
{
    switch (type)
    {
    case PluginFieldType::kINT8:
    case PluginFieldType::kCHAR: return 1;
    case PluginFieldType::kFLOAT16:
    case PluginFieldType::kBF16:
    case PluginFieldType::kINT16: return 2;
    case PluginFieldType::kFLOAT32:
    case PluginFieldType::kINT32: return 4;
    case PluginFieldType::kFLOAT64:
    case PluginFieldType::kINT64: return 8;
    default: throw std::runtime_error("field type the harness does not copy");
    }
}

Fields::Fields(Fields const& other)
    : mEntries(other.mEntries)
{
}

Fields& Fields::operator=(Fields const& other)
{
    mEntries = other.mEntries;
    return *this;
}

Fields& Fields::add(std::string const& name, PluginFieldType type, void const* data, int32_t length, size_t elementBytes)
{
    auto const* bytes = static_cast<uint8_t const*>(data);
    mEntries.push_back(Entry{name, type, length, std::vector<uint8_t>(bytes, bytes + elementBytes * length)});
    return *this;
}

Fields& Fields::i32(std::string const& name, int32_t value)
{
    return add(name, PluginFieldType::kINT32, &value, 1, sizeof(value));
}

Fields& Fields::i64(std::string const& name, int64_t value)
{
    return add(name, PluginFieldType::kINT64, &value, 1, sizeof(value));
}

Fields& Fields::f32(std::string const& name, float value)
{
    return add(name, PluginFieldType::kFLOAT32, &value, 1, sizeof(value));
}

Fields Fields::copyOf(PluginFieldCollection const& fc)
{
    Fields f;
    for (int32_t i = 0; i < fc.nbFields; ++i)
    {
        PluginField const& field = fc.fields[i];
        f.add(field.name, field.type, field.data, field.length, fieldElementBytes(field.type));
    }
    return f;
}

PluginFieldCollection const* Fields::collection()
{
    mView.clear();
    for (Entry const& e : mEntries)
    {
        mView.emplace_back(e.name.c_str(), e.bytes.data(), e.type, e.length);
    }
    mCollection.nbFields = static_cast<int32_t>(mView.size());
    mCollection.fields = mView.data();
    return &mCollection;
}

bool Fields::operator==(Fields const& other) const
{
    if (mEntries.size() != other.mEntries.size())
    {
        return false;
    }
    for (size_t i = 0; i < mEntries.size(); ++i)
    {
        Entry const& a = mEntries[i];
        Entry const& b = other.mEntries[i];
        if (a.name != b.name || a.type != b.type || a.length != b.length || a.bytes != b.bytes)
        {
            return false;
        }
    }
    return true;
}

std::string Fields::str() const
{
    std::ostringstream os;
    for (Entry const& e : mEntries)
    {
        os << e.name << ":";
        if (e.type == PluginFieldType::kINT32 && e.length == 1)
        {
            int32_t v;
            std::memcpy(&v, e.bytes.data(), sizeof(v));
            os << v << "(i32) ";
        }
        else if (e.type == PluginFieldType::kFLOAT32 && e.length == 1)
        {
            float v;
            std::memcpy(&v, e.bytes.data(), sizeof(v));
            os << v << "(f32) ";
        }
        else
        {
            os << "type" << static_cast<int32_t>(e.type) << "x" << e.length << " ";
        }
    }
    return os.str();
}

} // namespace harness
