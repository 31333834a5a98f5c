"""The TensorRT route with the public API: export, prove the graph, build an engine, prove the engine, generate with
the states kept on the GPU.

Two routes:

* ``plugins`` (TensorRT 10/11 and a CUDA GPU): the ``trt`` flavor, whose SSD ops are ssd-deploy's plugin nodes
  (``plugins/``), recipe ``trt-datacenter-bf16`` by default (``trt-jetson-orin-fp16`` on a Jetson: samples/jetson).
* ``rtx`` (TensorRT-RTX, ``SSD_DEPLOY_TENSORRT=tensorrt_rtx``): the ``portable`` flavor (TensorRT-RTX loads no
  plugins), recipe ``trt-portable-fp16``. TensorRT-RTX builds ahead of time, without a GPU.

Each step runs where what it needs is present; otherwise it prints ``not run here (needs ...)`` and the exact
command to run where it is. Usage::

    python samples/tensorrt/tensorrt_route.py CKPT WORKDIR [--route plugins|rtx] [--recipe NAME] [--dtype fp32]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
from pathlib import Path

import ssd_deploy

ROOT = Path(__file__).resolve().parents[2]
ROUTES = {"plugins": ("trt-datacenter-bf16", "tensorrt"), "rtx": ("trt-portable-fp16", "tensorrt_rtx")}


def have(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def gpu_capability() -> str | None:
    """This machine's CUDA compute capability ("9.0"), None without a GPU."""
    import torch

    if not torch.cuda.is_available():
        return None
    return "{}.{}".format(*torch.cuda.get_device_capability())


def step(title: str, command: list, missing: str | None) -> bool:
    """Prints the step and its CLI equivalent; False (and why) where it cannot run here."""
    print(f"\n== {title}\n   $ {shlex.join(str(c) for c in command)}")
    if missing:
        print(f"   not run here (needs {missing})")
        return False
    return True


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ckpt", type=Path)
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--route", choices=ROUTES, default=None,
                    help="default: rtx when SSD_DEPLOY_TENSORRT=tensorrt_rtx or only TensorRT-RTX is installed")
    ap.add_argument("--recipe", default=None, help="export recipe (default: the route's)")
    ap.add_argument("--dtype", default=None, help="override the recipe's dtype (fp32 validates on a CPU)")
    ap.add_argument("--plugins", type=Path, default=ROOT / "plugins" / "build" / "libssd_trt_plugins.so")
    ap.add_argument("--prompt-ids", default="1,2,3,4,5,6,7,8")
    args = ap.parse_args(argv)

    env = os.environ.get("SSD_DEPLOY_TENSORRT")
    route = args.route or ("rtx" if env == "tensorrt_rtx" or (not have("tensorrt") and have("tensorrt_rtx"))
                           else "plugins")
    recipe, package = args.recipe or ROUTES[route][0], ROUTES[route][1]
    if route == "rtx":
        os.environ["SSD_DEPLOY_TENSORRT"] = "tensorrt_rtx"
    out = args.workdir / route
    dtype = ["--dtype", args.dtype] if args.dtype else []
    has_trt, gpu = have(package), gpu_capability()
    has_gpu = gpu is not None

    # 1. export (any machine)
    step("export", ["ssd-deploy", "export", args.ckpt, "-o", out, "--recipe", recipe, *dtype], None)
    ssd_deploy.export(args.ckpt, out, recipe=recipe, dtype=args.dtype)
    meta = ssd_deploy.inspect(out)["metadata"]
    print(f"   {out}: {meta['flavor']} flavor, {meta['dtype']}")

    # 2. the graph against PyTorch on ONNX Runtime (a trt export through its validation copy); ONNX Runtime's CPU
    #    provider has no bf16 MatMul, so a bf16 export validates on the CUDA provider
    provider = "cuda" if meta["dtype"] == "bf16" else "cpu"
    if step("validate the graph on ONNX Runtime",
            ["ssd-deploy", "validate", out, "--against", args.ckpt, "--provider", provider],
            "a CUDA GPU and onnxruntime-gpu (bf16)" if provider == "cuda" and not has_gpu else None):
        report = ssd_deploy.validate(out, args.ckpt, provider=provider)
        print(f"   {'PASS' if report.ok else 'FAIL'}: worst relative error {max(e.rel for e in report.errors):.2e}")
        if not report.ok:
            raise SystemExit(1)

    # 3. the plugin library (trt flavor only): CUDA kernels + TensorRT plugins, needs nvcc and TensorRT's headers
    plugins = None
    if meta["flavor"] == "trt":
        plugins = args.plugins
        if step("build the plugin library", ["ssd-deploy", "plugins", "build"],
                None if plugins.is_file() else "nvcc and TensorRT headers; run it once on the target machine"):
            print(f"   {plugins} is there")

    # 4. the engine: TensorRT builds for the GPU it runs on; TensorRT-RTX builds ahead of time without one
    build_cmd = ["ssd-deploy", "build", out] + (["--plugins", plugins] if plugins else [])
    missing = (f"the {package} Python package" if not has_trt else
               None if route == "rtx" else
               "a CUDA GPU" if not has_gpu else
               f"the plugin library {plugins}" if plugins and not plugins.is_file() else None)
    built = step("build the TensorRT engine", build_cmd, missing)
    if built:
        result = ssd_deploy.build(out, plugins=plugins)
        print(f"   wrote {result.engine} and {result.sidecar.name} ({result.record.label}); profiles "
              + ", ".join(f"{p.name} batch {p.batch} seq {p.seq}" for p in result.record.profiles))

    # 5-6. run the engine: needs the GPU it was built for (an ahead-of-time engine: one of its targets)
    targets = result.record.compute_targets if built else []
    runnable = built and has_gpu and (not targets or gpu in targets)
    why = ("the engine of step 4" if not built else "a CUDA GPU" if not has_gpu else
           f"a GPU of compute capability {', '.join(targets)}; this one is {gpu}")
    if step("validate the engine", ["ssd-deploy", "validate", out, "--against", args.ckpt, "--backend", "trt"]
            + (["--plugins", plugins] if plugins else []), None if runnable else why):
        report = ssd_deploy.validate(out, args.ckpt, backend="trt", plugins=plugins)
        print(f"   {'PASS' if report.ok else 'FAIL'}")
    prompt = [int(t) for t in args.prompt_ids.split(",")]
    if step("generate: states stay on the GPU between decode steps (TensorRT device tensors)",
            ["ssd-deploy", "run", out, "--backend", "trt", "--input-ids", args.prompt_ids]
            + (["--plugins", plugins] if plugins else []), None if runnable else why):
        backend = ssd_deploy.open_backend(out, backend="trt", plugins=plugins)
        print("   ", ssd_deploy.generate(backend, [prompt], max_new_tokens=16)[0])


if __name__ == "__main__":
    main()
