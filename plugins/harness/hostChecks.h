// Checks of the plugin library that need no GPU: creators, fields, attribute parsing and serialisation, dtypes and
// formats, output shapes through our own IExprBuilder, shape checks at build and run time, workspace sizing, and
// (with the fake registry) self-registration. Returns the number of failures.
#pragma once
#include <string>

namespace harness
{

int runHostChecks(std::string const& pluginLib, std::string const& autoregLib, std::string const& fakeRegistryLib);

} // namespace harness
