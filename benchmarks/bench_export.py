"""Export cost: wall time and peak resident memory of `ssd-deploy export` for a preset (default 130m), each export
in a fresh process so the peak is the export's own. Goal (docs/performance.md): ≤ 30 s and peak RSS ≤ 2x the model's size.

    python benchmarks/bench_export.py [--preset 130m] [--flavor portable] [--repeats 3] [--json]
"""

from __future__ import annotations

import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click


def _run(args: list[str]) -> tuple[float, int]:
    """Wall seconds and the child's peak RSS in bytes (RUSAGE_CHILDREN holds the largest child so far, so each
    measured export runs in a fresh interpreter that spawns it and reports its own figure)."""
    code = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
            "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
            "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True, text=True).stdout
    wall, rss_kib = out.split()
    return float(wall), int(rss_kib) * 1024


@click.command()
@click.option("--preset", default="130m", show_default=True)
@click.option("--flavor", default="portable", show_default=True)
@click.option("--repeats", default=3, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def main(preset, flavor, repeats, as_json):
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "ckpt"
        subprocess.run(["ssd-deploy", "new", "-o", str(ckpt), "--preset", preset], check=True, stdout=subprocess.DEVNULL)
        model_bytes = sum(f.stat().st_size for f in ckpt.glob("*.safetensors"))
        runs = []
        for i in range(repeats):
            out = Path(tmp) / f"out{i}"
            runs.append(_run(["ssd-deploy", "export", str(ckpt), "-o", str(out), "--flavor", flavor]))
        onnx_bytes = sum(f.stat().st_size for f in (Path(tmp) / "out0").iterdir())
    walls = [w for w, _ in runs]
    peak = max(r for _, r in runs)
    result = {"preset": preset, "flavor": flavor, "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores",
              "model_bytes": model_bytes, "onnx_bytes": onnx_bytes, "wall_s_median": statistics.median(walls),
              "wall_s": walls, "peak_rss_bytes": peak, "peak_rss_over_model": peak / model_bytes,
              "date": time.strftime("%Y-%m-%d")}
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(f"export {preset} ({flavor}): median {result['wall_s_median']:.1f} s over {repeats} "
                   f"({', '.join(f'{w:.1f}' for w in walls)}); peak RSS {peak / 2**30:.2f} GiB = "
                   f"{result['peak_rss_over_model']:.2f}x the {model_bytes / 2**30:.2f} GiB model; "
                   f"ONNX {onnx_bytes / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
