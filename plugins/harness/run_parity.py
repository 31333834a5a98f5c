#!/usr/bin/env python3
"""Builds the TensorRT plugin library and the harness, runs the harness's host checks and, on a GPU, every parity
case of parity_cases.py through the plugins' enqueue; compares with the float64 reference and prints a table.

    PYTHONPATH=. python plugins/harness/run_parity.py [--build-dir DIR] [--arch 90] [--host-only] [--json FILE]

Exit status 0 only when the build, every host check and every case passed. No TensorRT is needed: the harness
drives the plugins through their IPluginV3 interfaces itself (plugins/README.md).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path[:0] = [str(REPO), str(HERE)]  # ssd_deploy from the checkout (as the tests use it), parity_cases beside

import parity_cases  # noqa: E402

PLUGIN_LIB = "libssd_trt_plugins.so"
AUTOREG_LIB = "libssd_trt_plugins_autoreg.so"
FAKE_NVINFER = "libssd_fake_nvinfer.so"
HARNESS = "ssd_plugin_harness"


def default_arch() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            return f"{major}{minor}"
    except ImportError:
        pass
    return "90"


def build(build_dir: Path, arch: str, trt_include: str | None, log) -> None:
    """Configure and build plugins/ (kernels for one architecture, to stay fast), with the plugin targets."""
    configure = ["cmake", "-S", str(REPO / "plugins"), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
                 f"-DSSD_CUDA_ARCHS={arch}"]
    if shutil.which("ninja"):
        configure += ["-G", "Ninja"]
    if trt_include:
        configure.append(f"-DTensorRT_INCLUDE_DIR={trt_include}")
    for cmd in (configure, ["cmake", "--build", str(build_dir), "--parallel", str(os.cpu_count() or 2)]):
        print("$", " ".join(cmd), file=log, flush=True)
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
    missing = [f for f in (PLUGIN_LIB, AUTOREG_LIB, FAKE_NVINFER, HARNESS) if not (build_dir / f).exists()]
    if missing:
        raise SystemExit(f"build produced no {', '.join(missing)} (TensorRT headers not found? see {log.name})")


def host_checks(build_dir: Path) -> bool:
    cmd = [str(build_dir / HARNESS), "check", *(str(build_dir / f) for f in (PLUGIN_LIB, AUTOREG_LIB, FAKE_NVINFER))]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    failures = [line for line in proc.stdout.splitlines() if line.startswith("FAIL")]
    print("\n".join(failures + proc.stdout.splitlines()[-2:]))
    return proc.returncode == 0


def parity(build_dir: Path, work: Path, seed: int, timed: bool) -> list[dict]:
    cases = parity_cases.all_cases(seed, timed=timed)
    dirs = [parity_cases.write_case(c, work) for c in cases]
    proc = subprocess.run([str(build_dir / HARNESS), "run", str(build_dir / PLUGIN_LIB), *map(str, dirs)],
                          capture_output=True, text=True)
    (work / "harness.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode not in (0, 1):  # 1: some case failed, reported per case below; else a crash
        print(f"harness exited with {proc.returncode}; see {work / 'harness.log'}")
    rows = []
    for case, d in zip(cases, dirs):
        result = dict(line.split(" ", 1) for line in (d / "result.txt").read_text().splitlines()) \
            if (d / "result.txt").exists() else {"status": "not run"}
        row = {"case": case.name, "status": result.get("status"), "error": result.get("error"),
               "workspace_bytes": int(result.get("workspace_bytes", 0)),
               "repeat_identical": result.get("repeat_identical") == "1",
               "median_ms": float(result["median_ms"]) if "median_ms" in result else None, "errors": {}}
        ok = row["status"] == "ok"
        if ok:
            for t in case.outputs:
                err = parity_cases.rel_err(parity_cases.read_output(d, t), t.value)
                row["errors"][t.name] = err
                ok = ok and err <= parity_cases.TOLERANCE[case.dtype]  # NaN fails
        row["pass"] = ok
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    lines = [f"{'case':58s} {'result':6s} {'max rel err':>11s} {'tol':>7s} {'repeat':>6s} {'ms':>8s}"]
    for r in rows:
        worst = max(r["errors"].values(), key=lambda e: math.inf if math.isnan(e) else e) if r["errors"] else None
        tol = parity_cases.TOLERANCE[r["case"].split("-")[1]]
        err = "-" if worst is None else f"{worst:.2e}"
        ms = "" if r["median_ms"] is None else f"{r['median_ms']:.4f}"
        repeat = "same" if r["repeat_identical"] else "DIFF"
        note = "" if r["status"] == "ok" else f"  {r['status']}: {r['error']}"
        lines.append(f"{r['case']:58s} {'ok' if r['pass'] else 'FAIL':6s} {err:>11s} {tol:7.0e} {repeat:>6s} {ms:>8s}"
                     + note)
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build-dir", type=Path, default=REPO / "plugins" / "build" / "trt")
    ap.add_argument("--arch", default=None, help="SM architecture for the kernels (default: this GPU's, else 90)")
    ap.add_argument("--trt-include", default=None, help="TensorRT include dir (default: cmake's search)")
    ap.add_argument("--skip-build", action="store_true", help="use an existing build in --build-dir")
    ap.add_argument("--host-only", action="store_true", help="build and run the host checks, no GPU cases")
    ap.add_argument("--seed", type=int, default=None, help="input seed (default: fresh, printed)")
    ap.add_argument("--no-timing", action="store_true", help="skip the enqueue timings of the model-sized cases")
    ap.add_argument("--work", type=Path, default=None, help="keep case files here (default: a temporary dir)")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args(argv)

    args.build_dir.mkdir(parents=True, exist_ok=True)
    if not args.skip_build:
        t0 = time.perf_counter()
        with open(args.build_dir / "build.log", "w") as log:
            try:
                build(args.build_dir, args.arch or default_arch(), args.trt_include, log)
            except subprocess.CalledProcessError:
                print(f"build failed; see {log.name}")
                return 1
        print(f"built in {time.perf_counter() - t0:.0f} s ({args.build_dir})")
    ok = host_checks(args.build_dir)
    summary = {"host_checks": ok}
    if not args.host_only:
        seed = args.seed if args.seed is not None else secrets.randbits(31)
        print(f"seed {seed}")
        work = args.work or Path(tempfile.mkdtemp(prefix="ssd_parity_"))
        rows = parity(args.build_dir, work, seed, timed=not args.no_timing)
        summary.update(seed=seed, cases=rows)
        print(table(rows))
        passed = sum(r["pass"] for r in rows)
        print(f"parity: {passed} of {len(rows)} cases passed")
        ok = ok and passed == len(rows)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
