#include "pluginSpec.h"
#include "pluginLogging.h"
#include <cstring>
#include <limits>

namespace ssd_trt
{
using nvinfer1::PluginField;
using nvinfer1::PluginFieldCollection;
using nvinfer1::PluginFieldType;

int32_t PluginSpec::anchor() const
{
    for (int32_t i = 0; i < nbInputs; ++i)
    {
        if (roles[i] == Role::kACTIVATION)
        {
            return i;
        }
    }
    return -1;
}

namespace
{

//! The field's single value as an integer, if its type is one.
bool readInteger(PluginField const& field, int64_t& out)
{
    switch (field.type)
    {
    case PluginFieldType::kINT8: out = *static_cast<int8_t const*>(field.data); return true;
    case PluginFieldType::kINT16: out = *static_cast<int16_t const*>(field.data); return true;
    case PluginFieldType::kINT32: out = *static_cast<int32_t const*>(field.data); return true;
    case PluginFieldType::kINT64: out = *static_cast<int64_t const*>(field.data); return true;
    default: return false;
    }
}

bool readValue(AttrSpec const& attr, PluginField const& field, AttrValue& value, std::string& error)
{
    int64_t integer{};
    bool const isInteger = readInteger(field, integer);
    if (attr.type == AttrType::kINT)
    {
        if (!isInteger)
        {
            error = "must be an integer field (kINT32)";
            return false;
        }
        if (integer < std::numeric_limits<int32_t>::min() || integer > std::numeric_limits<int32_t>::max())
        {
            error = "does not fit in int32";
            return false;
        }
        value.i = static_cast<int32_t>(integer);
        return true;
    }
    if (isInteger)
    {
        value.f = static_cast<float>(integer);
        return true;
    }
    if (field.type == PluginFieldType::kFLOAT32)
    {
        value.f = *static_cast<float const*>(field.data);
        return true;
    }
    if (field.type == PluginFieldType::kFLOAT64)
    {
        value.f = static_cast<float>(*static_cast<double const*>(field.data));
        return true;
    }
    error = "must be a float field (kFLOAT32)";
    return false;
}

} // namespace

bool parseAttributes(PluginSpec const& spec, PluginFieldCollection const* fc, AttrValues& values, std::string& error)
{
    size_t const n = spec.attrs.size();
    values.assign(n, AttrValue{});
    std::vector<bool> seen(n, false);
    int32_t const nbFields = fc != nullptr ? fc->nbFields : 0;
    for (int32_t f = 0; f < nbFields; ++f)
    {
        PluginField const& field = fc->fields[f];
        if (field.name == nullptr)
        {
            continue;
        }
        size_t a = 0;
        while (a < n && std::strcmp(spec.attrs[a].name, field.name) != 0)
        {
            ++a;
        }
        if (a == n)
        {
            reportWarning(std::string(spec.name) + ": ignoring unknown field '" + field.name + "'");
            continue;
        }
        if (field.length != 1 || field.data == nullptr)
        {
            error = std::string("field '") + field.name + "' must hold exactly one value";
            return false;
        }
        std::string problem;
        if (!readValue(spec.attrs[a], field, values[a], problem))
        {
            error = std::string("field '") + field.name + "' " + problem;
            return false;
        }
        seen[a] = true;
    }
    for (size_t a = 0; a < n; ++a)
    {
        AttrSpec const& attr = spec.attrs[a];
        if (seen[a])
        {
            continue;
        }
        if (attr.required)
        {
            error = std::string("missing required field '") + attr.name + "'";
            return false;
        }
        if (attr.type == AttrType::kINT)
        {
            values[a].i = static_cast<int32_t>(attr.defaultValue);
        }
        else
        {
            values[a].f = attr.defaultValue;
        }
    }
    error = spec.checkAttributes(values);
    return error.empty();
}

std::vector<PluginField> attributeFields(PluginSpec const& spec, AttrValue const* values)
{
    std::vector<PluginField> fields;
    fields.reserve(spec.attrs.size());
    for (size_t a = 0; a < spec.attrs.size(); ++a)
    {
        AttrSpec const& attr = spec.attrs[a];
        bool const isInt = attr.type == AttrType::kINT;
        void const* data = nullptr;
        if (values != nullptr)
        {
            data = isInt ? static_cast<void const*>(&values[a].i) : static_cast<void const*>(&values[a].f);
        }
        fields.emplace_back(attr.name, data, isInt ? PluginFieldType::kINT32 : PluginFieldType::kFLOAT32, 1);
    }
    return fields;
}

} // namespace ssd_trt
