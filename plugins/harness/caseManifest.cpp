#include "caseManifest.h"
#include <cmath>
#include <fstream>
#include <limits>
#include <sstream>
#include <stdexcept>

namespace harness
{
using namespace nvinfer1;

size_t dataTypeBytes(DataType type)
{
    return type == DataType::kFLOAT || type == DataType::kINT32 ? 4 : 2;
}

size_t TensorSpec::bytes() const
{
    size_t n = dataTypeBytes(type);
    for (int64_t e : extents)
    {
        n *= static_cast<size_t>(e);
    }
    return n;
}

namespace
{

DataType parseType(std::string const& s)
{
    if (s == "f32")
    {
        return DataType::kFLOAT;
    }
    if (s == "f16")
    {
        return DataType::kHALF;
    }
    if (s == "bf16")
    {
        return DataType::kBF16;
    }
    if (s == "i32")
    {
        return DataType::kINT32;
    }
    throw std::runtime_error("unknown dtype " + s);
}

float parseFloat(std::string const& s)
{
    if (s == "inf")
    {
        return std::numeric_limits<float>::infinity();
    }
    if (s == "-inf")
    {
        return -std::numeric_limits<float>::infinity();
    }
    return std::stof(s);
}

TensorSpec parseTensor(std::istringstream& line)
{
    TensorSpec t;
    std::string type;
    line >> t.name >> type;
    t.type = parseType(type);
    std::vector<std::string> rest;
    for (std::string token; line >> token;)
    {
        rest.push_back(token);
    }
    if (rest.empty())
    {
        throw std::runtime_error("tensor " + t.name + " without file");
    }
    t.file = rest.back();
    rest.pop_back();
    for (std::string const& token : rest)
    {
        size_t const eq = token.find('=');
        t.symbols.push_back(eq == std::string::npos ? "" : token.substr(0, eq));
        t.extents.push_back(std::stoll(eq == std::string::npos ? token : token.substr(eq + 1)));
    }
    return t;
}

} // namespace

CaseManifest CaseManifest::read(std::string const& dir)
{
    std::ifstream file(dir + "/case.txt");
    if (!file)
    {
        throw std::runtime_error("cannot read " + dir + "/case.txt");
    }
    CaseManifest m;
    m.dir = dir;
    for (std::string text; std::getline(file, text);)
    {
        std::istringstream line(text);
        std::string key;
        if (!(line >> key))
        {
            continue;
        }
        if (key == "plugin")
        {
            line >> m.plugin;
        }
        else if (key == "attr")
        {
            std::string name, type, value;
            line >> name >> type >> value;
            if (type == "i32")
            {
                m.fields.i32(name, std::stoi(value));
            }
            else if (type == "i64")
            {
                m.fields.i64(name, std::stoll(value));
            }
            else if (type == "f32")
            {
                m.fields.f32(name, parseFloat(value));
            }
            else
            {
                throw std::runtime_error("unknown attribute type " + type);
            }
        }
        else if (key == "input")
        {
            m.inputs.push_back(parseTensor(line));
        }
        else if (key == "output")
        {
            m.outputs.push_back(parseTensor(line));
        }
        else if (key == "time")
        {
            line >> m.timeRepeats;
        }
        else
        {
            throw std::runtime_error("unknown line: " + text);
        }
    }
    if (m.plugin.empty() || m.inputs.empty() || m.outputs.empty())
    {
        throw std::runtime_error(dir + "/case.txt needs plugin, inputs and outputs");
    }
    return m;
}

} // namespace harness
