import json, os, sys, time, statistics
import numpy as np, onnxruntime as ort
SPIN = os.environ.get("SPIN", "1")
def so():
    o = ort.SessionOptions(); o.log_severity_level = 3
    o.add_session_config_entry("session.intra_op.allow_spinning", SPIN); return o
P = ["CPUExecutionProvider"]
S = {k: ort.InferenceSession(v, so(), providers=P) for k, v in
     {"U": "/tmp/cpuw/comp130/model.onnx", "D": "/tmp/cpuw/comp130/decode.onnx"}.items()}
ins = S["U"].get_inputs()
def call(s, ids, st):
    o = s.run(None, {"input_ids": ids, **st}); return o[0], {i.name: v for i, v in zip(ins[1:], o[1:])}
ids = np.random.default_rng(0).integers(0, 50000, (1, 64))
lg, st = call(S["U"], ids, {i.name: np.zeros([1, *i.shape[1:]], np.float32) for i in ins[1:]})
tok = np.array([[int(lg[0, -1].argmax())]])
load0 = os.getloadavg()[0]
carried = {k: (tok, st) for k in S}
dt = {k: [] for k in S}
names = list(S)
for b in range(int(sys.argv[1]) if len(sys.argv) > 1 else 20):
    for k in names[b % len(names):] + names[:b % len(names)]:  # rotated: each follows each other equally
        tk, s = carried[k]
        for _ in range(3):
            t = time.perf_counter(); lg, s = call(S[k], tk, s); dt[k].append(time.perf_counter() - t)
        carried[k] = (tk, s)
ratios = {k: statistics.median([a / b for a, b in zip(dt[k], dt["U"])]) for k in S}
print(json.dumps({"ratio_vs_U_median_per_round": ratios, "decode_ms": {k: statistics.median(v) * 1e3 for k, v in dt.items()},
                  "mean_ms": {k: statistics.mean(v) * 1e3 for k, v in dt.items()},
                  "spin": SPIN, "load": [load0, os.getloadavg()[0]]}))
