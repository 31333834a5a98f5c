// The library's entry points: RegisterCustomOps, what ONNX Runtime calls for
// SessionOptions.register_custom_ops_library (Python) / RegisterCustomOpsLibrary_V2 (C), and SsdOrtCustomOps, the
// ops it registers, for tests and tools that inspect the library without a session.
#include "ortOp.h"
#include <mutex>

namespace
{

//! Domains handed to session options must outlive every session made from them, which this library cannot see
//! end: they are kept until the process exits (one small object per SessionOptions that loads the library).
std::mutex gDomainsMutex;
std::vector<OrtCustomOpDomain*> gDomains;

} // namespace

extern "C"
{

ORT_EXPORT OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options, OrtApiBase const* apiBase)
{
    OrtApi const* api = apiBase->GetApi(ssd_ort::kOrtApiVersion);
    if (api == nullptr)
    {
        // no OrtApi, so no OrtStatus to say it with: the runtime itself is older than the API this library needs
        return nullptr;
    }
    auto const& ops = ssd_ort::customOps();
    char const* name = ops.front().impl->contract->domain; // one domain for the library, as the trt lowering has
    OrtCustomOpDomain* domain = nullptr;
    if (OrtStatus* s = api->CreateCustomOpDomain(name, &domain))
    {
        return s;
    }
    for (ssd_ort::CustomOp const& op : ops)
    {
        if (OrtStatus* s = api->CustomOpDomain_Add(domain, &op))
        {
            api->ReleaseCustomOpDomain(domain);
            return s;
        }
    }
    if (OrtStatus* s = api->AddCustomOpDomain(options, domain))
    {
        api->ReleaseCustomOpDomain(domain);
        return s;
    }
    std::lock_guard<std::mutex> lock(gDomainsMutex);
    gDomains.push_back(domain);
    return nullptr;
}

ORT_EXPORT size_t SsdOrtCustomOps(OrtCustomOp const* const** ops)
{
    static std::vector<OrtCustomOp const*> const all = [] {
        std::vector<OrtCustomOp const*> pointers;
        for (ssd_ort::CustomOp const& op : ssd_ort::customOps())
        {
            pointers.push_back(&op);
        }
        return pointers;
    }();
    *ops = all.data();
    return all.size();
}

} // extern "C"
