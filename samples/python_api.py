"""The public Python API end to end: export with a recipe, validate, generate, benchmark.

    ssd-deploy new -o ckpt/ && python samples/python_api.py ckpt/ work/
"""

import sys
from pathlib import Path

import ssd_deploy

ckpt, work = Path(sys.argv[1]), Path(sys.argv[2])
out = ssd_deploy.export(ckpt, work / "cpu", recipe="cpu-fp32")  # ort flavor, fp32, last-token logits
report = ssd_deploy.validate(out, ckpt)  # a prompt prefilled, 4 decode steps, every call vs PyTorch
print("validate:", "PASS" if report.ok else "FAIL", f"(worst relative error {max(e.rel for e in report.errors):.1e})")
backend = ssd_deploy.open_backend(out, backend="ort")
print("greedy: ", ssd_deploy.generate(backend, [[1, 2, 3, 4]], max_new_tokens=12)[0])
print("sampled:", ssd_deploy.generate(backend, [[1, 2, 3, 4]], max_new_tokens=12, temperature=0.8, top_k=40, seed=0)[0])
for p in ssd_deploy.benchmark(ckpt, backends=["torch"], exports=[out], lengths=[64], steps=4, repeats=2).points:
    print(f"{p.backend:<14} prefill {p.prefill_tok_s:9.1f} tokens/s   decode {p.decode_ms:7.2f} ms/token   "
          f"error after a step {p.decode_err:.1e}")
sys.exit(0 if report.ok else 1)
