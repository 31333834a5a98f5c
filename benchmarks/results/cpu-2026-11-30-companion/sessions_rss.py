"""RSS and speed of ways to open the unified + decode companion sessions (one process per option)."""
import json, os, sys, time, statistics, resource
import numpy as np, onnx, onnxruntime as ort
d = sys.argv[1]; option = sys.argv[2]
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"): return int(line.split()[1]) / 1024
def shared_initializers():
    proto = onnx.load(f"{d}/model.onnx", load_external_data=False)
    data = np.memmap(f"{d}/model.onnx.data", dtype=np.uint8, mode="r")
    vals = {}
    for t in proto.graph.initializer:
        if t.data_location != onnx.TensorProto.EXTERNAL: continue
        e = {x.key: x.value for x in t.external_data}
        off, n = int(e["offset"]), int(e["length"])
        arr = data[off:off + n].view(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).reshape(list(t.dims))
        vals[t.name] = ort.OrtValue.ortvalue_from_numpy(arr)
    return vals
def opts(prepack=True, shared=None):
    so = ort.SessionOptions(); so.log_severity_level = 3
    if not prepack: so.add_session_config_entry("session.disable_prepacking", "1")
    if shared:
        for k, v in shared.items(): so.add_initializer(k, v)
    return so
P = ["CPUExecutionProvider"]
r0 = rss()
shared = shared_initializers() if "shared" in option else None
prepack = "noprepack" not in option
uni = ort.InferenceSession(f"{d}/model.onnx", opts(prepack, shared), providers=P)
r1 = rss()
dec = ort.InferenceSession(f"{d}/decode.onnx", opts(prepack if "decprepack" not in option else True, shared), providers=P) if "single" not in option else uni
r2 = rss()
ins = uni.get_inputs()
def zeros(): return {i.name: np.zeros([1, *i.shape[1:]], np.float32) for i in ins[1:]}
ids = np.random.default_rng(0).integers(0, 50000, (1, 512))
outs = [o.name for o in uni.get_outputs()]
def call(s, ids, st):
    o = s.run(None, {"input_ids": ids, **st}); return o[0], {i.name: v for i, v in zip(ins[1:], o[1:])}
pt = []
for _ in range(3):
    t = time.perf_counter(); lg, st = call(uni, ids, zeros()); pt.append(time.perf_counter() - t)
r3 = rss()
tok = np.array([[int(lg[0, -1].argmax())]])
dt = []
for i in range(25):
    t = time.perf_counter(); lg, st = call(dec, tok, st); dt.append(time.perf_counter() - t)
    tok = np.array([[int(lg[0, -1].argmax())]])
r4 = rss()
print(json.dumps({"option": option, "rss_start": r0, "rss_unified": r1, "rss_both": r2, "rss_after_prefill": r3,
                  "rss_after_decode": r4, "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "prefill_s": statistics.median(pt), "decode_ms": statistics.median(dt[5:]) * 1e3,
                  "load": os.getloadavg()[0], "logits_sum": float(lg.sum())}))
