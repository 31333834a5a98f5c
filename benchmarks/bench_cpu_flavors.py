"""CPU flavors side by side in one run: the PyTorch eager reference (the anchor) vs ONNX Runtime on the `portable`
export vs ONNX Runtime on the `ort` export, on a random checkpoint of a preset (default 130m).

Prefill tokens/s at batch × prompt length (default 1, 4 × 512, 2048) and decode-step latency at each decode batch
(default 1, 8); warm-up first, median of repeats. Every backend predicts last-token logits only (what generation
needs, and what the shipped recipes export) and is checked against the reference's logits, after the prefill and
after one decode step, before its numbers count. Goals (docs/performance.md): `ort` prefill >= 2x and decode >= 2x faster than
PyTorch eager; portable within 1.5x of `ort`.

    PYTHONPATH=. python benchmarks/bench_cpu_flavors.py [--preset 130m] [--workdir DIR] [--repeats 3] [--json]

The default run takes about 8 minutes on 2 cores (both exports included; ``--workdir`` keeps checkpoint and exports
for the next run).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import click
import numpy as np
import onnxruntime
import torch

from ssd_deploy.bench import measure, parity, reference_logits
from ssd_deploy.checkpoint import random_model, write_checkpoint
from ssd_deploy.onnx.export import ExportOptions, export
from ssd_deploy.presets import preset
from ssd_deploy.runtime.backends import open_backend

FLAVORS = ("portable", "ort")
DECODE_PROMPT = 16  # decode is timed after a short prefill: a step's cost does not depend on the prompt's length
MAX_REL_ERR = 1e-3  # fp32 end to end is 1e-4 (docs/verification.md); last-token logits of long prompts get a little slack


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": cpu, "cores": os.cpu_count(), "load_avg_1m": os.getloadavg()[0], "torch_threads":
            torch.get_num_threads(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__}


def prepare(workdir: Path, preset_name: str, log) -> tuple[Path, dict[str, Path]]:
    """The checkpoint and one export per flavor, made once per workdir."""
    ckpt = workdir / f"ckpt-{preset_name}"
    if not (ckpt / "config.json").is_file():
        log(f"writing a random {preset_name} checkpoint")
        write_checkpoint(random_model(preset(preset_name), seed=0), ckpt, "hf")
    exports = {}
    for flavor in FLAVORS:
        out = workdir / f"{flavor}-{preset_name}"
        if not (out / "model.onnx").is_file():
            log(f"exporting the {flavor} flavor")
            t = time.perf_counter()
            export(ckpt, out, ExportOptions(flavor=flavor, logits="last"))
            log(f"  {time.perf_counter() - t:.0f} s")
        exports[flavor] = out
    return ckpt, exports


def run(ckpt: Path, exports: dict[str, Path], prefill_batches, prefill_lens, decode_batches, repeats: int,
        steps: int, log) -> list[dict]:
    backends = {"torch": open_backend(ckpt, "torch"), **{f: open_backend(exports[f], "ort") for f in FLAVORS}}
    vocab = backends["torch"].config.vocab_size
    rng = np.random.default_rng(0)
    rows = []
    cases = [("prefill", b, n) for b in prefill_batches for n in prefill_lens] + \
        [("decode", b, DECODE_PROMPT) for b in decode_batches]
    for kind, b, n in cases:
        ids = rng.integers(0, vocab, (b, n))
        expected = reference_logits(backends["torch"], ids)
        for engine, backend in backends.items():  # side by side: every engine on the same prompt, in turn
            prefill, step = measure(backend, ids, steps=steps if kind == "decode" else 1,
                                    repeats=repeats if kind == "prefill" else 1)
            err = max(parity(backend, ids, expected))
            if err > MAX_REL_ERR:
                raise SystemExit(f"{backend.name}: logits differ from the reference (rel err {err:.1e})")
            row = {"kind": kind, "engine": engine, "backend": backend.name, "batch": b, "length": n, "rel_err": err}
            row.update({"ms": prefill * 1e3, "tokens_per_s": b * n / prefill} if kind == "prefill"
                       else {"ms": step * 1e3})
            rows.append(row)
            log(f"  {kind:<7} {engine:<8} b{b:<2} l{n:<5} {row['ms']:9.1f} ms"
                + (f"  {row['tokens_per_s']:7.1f} tok/s" if kind == "prefill" else ""))
    return rows


def ratios(rows: list[dict]) -> list[dict]:
    """Speed of `ort` over the reference and over `portable`, per case (> 1: ort is faster)."""
    ms = {(r["kind"], r["batch"], r["length"], r["engine"]): r["ms"] for r in rows}
    cases = sorted({(r["kind"], r["batch"], r["length"]) for r in rows}, key=lambda c: (c[0] != "prefill", c))
    return [{"kind": k, "batch": b, "length": n, "ort_vs_torch": ms[(k, b, n, "torch")] / ms[(k, b, n, "ort")],
             "ort_vs_portable": ms[(k, b, n, "portable")] / ms[(k, b, n, "ort")]} for k, b, n in cases]


def markdown(rows: list[dict], rat: list[dict]) -> str:
    lines = ["| case | batch | tokens | torch eager | ORT portable | ORT ort | ort vs torch | ort vs portable |",
             "|---|---|---|---|---|---|---|---|"]
    cell = {(r["kind"], r["batch"], r["length"], r["engine"]): r for r in rows}
    for q in rat:
        key = (q["kind"], q["batch"], q["length"])
        fmt = (lambda r: f"{r['tokens_per_s']:.0f} tok/s") if q["kind"] == "prefill" else \
            (lambda r: f"{r['ms']:.1f} ms")
        vals = [fmt(cell[(*key, engine)]) for engine in ("torch", "portable", "ort")]
        lines.append(f"| {q['kind']} | {q['batch']} | {q['length'] if q['kind'] == 'prefill' else 1} | "
                     f"{' | '.join(vals)} | {q['ort_vs_torch']:.2f}x | {q['ort_vs_portable']:.2f}x |")
    return "\n".join(lines)


@click.command()
@click.option("--preset", "preset_name", default="130m", show_default=True)
@click.option("--workdir", type=click.Path(path_type=Path), default=None,
              help="keeps the checkpoint and exports between runs (default: a temporary directory)")
@click.option("--prefill-batches", default="1,4", show_default=True)
@click.option("--prefill-lens", default="512,2048", show_default=True)
@click.option("--decode-batches", default="1,8", show_default=True)
@click.option("--repeats", type=int, default=3, show_default=True, help="prefill repeats (median)")
@click.option("--steps", type=int, default=20, show_default=True, help="decode steps timed (median)")
@click.option("--json", "as_json", is_flag=True, help="print the results as JSON instead of a table")
def main(preset_name, workdir, prefill_batches, prefill_lens, decode_batches, repeats, steps, as_json):
    log = (lambda msg: click.echo(msg, err=True)) if as_json else click.echo
    with tempfile.TemporaryDirectory(prefix="bench-cpu-flavors-") as tmp:
        work = Path(workdir) if workdir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        ckpt, exports = prepare(work, preset_name, log)
        machine = _machine()
        rows = run(ckpt, exports, _ints(prefill_batches), _ints(prefill_lens), _ints(decode_batches), repeats,
                   steps, log)
    machine["load_avg_1m_after"] = os.getloadavg()[0]
    result = {"date": datetime.date.today().isoformat(), "commit": _commit(), "preset": preset_name,
              "dtype": "fp32", "logits": "last", "repeats": repeats, "decode_steps": steps, "machine": machine,
              "rows": rows, "ratios": ratios(rows)}
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(f"\n{result['date']}, commit {result['commit']}, {machine['cpu']} ({machine['cores']} cores, "
                   f"load {machine['load_avg_1m']:.1f} → {machine['load_avg_1m_after']:.1f}), {preset_name} fp32")
        click.echo(markdown(rows, result["ratios"]))


if __name__ == "__main__":
    main()
