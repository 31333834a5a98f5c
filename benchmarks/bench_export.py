"""Export cost: wall time and peak resident memory of `ssd-deploy new` and `ssd-deploy export` for a preset, each
command in a fresh process so the peak is its own. Goals (issue 14, streaming export): a Codestral-7B-shaped bf16
checkpoint exports to fp16 in every flavor with peak RSS <= 4 GiB and wall time <= 10 min on the 2-core, 24 GiB dev
machine; 2.7b fp32 -> fp16 <= 2 GiB peak; 130m <= 30 s.

    python benchmarks/bench_export.py [--preset 130m] [--ckpt-dtype fp32] [--dtype fp32] [--flavors portable]
        [--repeats 1] [--ckpt DIR] [--workdir DIR] [--json]

Each export is deleted once measured (a 7B export is ~15 GB); a checkpoint made here is deleted at the end, one given
with --ckpt is kept.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click


def _run(args: list[str]) -> tuple[float, int, float]:
    """Wall seconds, the child's peak RSS in bytes and its CPU seconds (user + system: on a machine shared with
    other jobs, wall time says more about them than about the export). RUSAGE_CHILDREN holds the largest child so
    far, so each measured command runs in a fresh interpreter that spawns it and reports its own figures."""
    code = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
            "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
            "r = resource.getrusage(resource.RUSAGE_CHILDREN); "
            "print(time.perf_counter() - t, r.ru_maxrss, r.ru_utime + r.ru_stime)")
    out = subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True, text=True).stdout
    wall, rss_kib, cpu = out.split()
    return float(wall), int(rss_kib) * 1024, float(cpu)


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file())


@click.command()
@click.option("--preset", default="130m", show_default=True)
@click.option("--ckpt-dtype", default="fp32", show_default=True, help="precision of the random checkpoint")
@click.option("--dtype", default="fp32", show_default=True, help="precision of the exports")
@click.option("--flavors", default="portable", show_default=True, help="comma-separated")
@click.option("--repeats", default=1, show_default=True)
@click.option("--ckpt", type=click.Path(path_type=Path), default=None, help="an existing checkpoint (kept)")
@click.option("--workdir", type=click.Path(path_type=Path), default=None, help="default: a temporary directory")
@click.option("--json", "as_json", is_flag=True)
def main(preset, ckpt_dtype, dtype, flavors, repeats, ckpt, workdir, as_json):
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-export-", dir=workdir))
    result = {"preset": preset, "ckpt_dtype": ckpt_dtype, "dtype": dtype, "date": time.strftime("%Y-%m-%d %H:%M"),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} "
                         f"at start", "exports": []}
    try:
        if ckpt is None:
            ckpt = work / "ckpt"
            wall, rss, cpu = _run(["ssd-deploy", "new", "-o", str(ckpt), "--preset", preset, "--dtype", ckpt_dtype])
            result["new"] = {"wall_s": wall, "peak_rss_bytes": rss, "cpu_s": cpu}
        result["model_bytes"] = sum(f.stat().st_size for f in Path(ckpt).glob("*.safetensors")) or _size(ckpt)
        for flavor in [f.strip() for f in flavors.split(",") if f.strip()]:
            runs = []
            for i in range(repeats):
                out = work / f"{flavor}-{i}"
                runs.append(_run(["ssd-deploy", "export", str(ckpt), "-o", str(out), "--flavor", flavor,
                                  "--dtype", dtype]))
                onnx_bytes = _size(out)
                shutil.rmtree(out)
            walls = [w for w, _, _ in runs]
            result["exports"].append({"flavor": flavor, "wall_s": walls, "wall_s_median": statistics.median(walls),
                                      "cpu_s": [c for _, _, c in runs], "peak_rss_bytes": max(r for _, r, _ in runs),
                                      "onnx_bytes": onnx_bytes, "load_average_after": os.getloadavg()[0]})
            e = result["exports"][-1]  # on stderr, also with --json: a long run stopped early keeps what it measured
            click.echo(f"export {preset} {ckpt_dtype} -> {dtype} ({flavor}): median {e['wall_s_median']:.0f} s "
                       f"({', '.join(f'{w:.0f}' for w in walls)}), CPU {e['cpu_s'][0]:.0f} s; "
                       f"peak RSS {e['peak_rss_bytes'] / 2**30:.2f} GiB;"
                       f" model {result['model_bytes'] / 2**30:.2f} GiB, ONNX {onnx_bytes / 2**30:.2f} GiB", err=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        if "new" in result:
            click.echo(f"new {preset} ({ckpt_dtype}): {result['new']['wall_s']:.0f} s, peak RSS "
                       f"{result['new']['peak_rss_bytes'] / 2**30:.2f} GiB")
        for e in result["exports"]:
            click.echo(f"export {e['flavor']}: {e['wall_s_median']:.0f} s (CPU {e['cpu_s'][0]:.0f} s), peak RSS "
                       f"{e['peak_rss_bytes'] / 2**30:.2f} GiB "
                       f"({e['peak_rss_bytes'] / result['model_bytes']:.2f}x the model)")


if __name__ == "__main__":
    main()
