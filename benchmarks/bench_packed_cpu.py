"""Packed prefill vs one call per prompt on the CPU, side by side in one run (docs/op-contracts.md, "Packed
sequences"): 8 prompts of mixed lengths (default 16..512 tokens, seed 0) on a random checkpoint of a preset (default
130m), fp32, last-position logits.

For the PyTorch model (torch backend) and for each ONNX flavor (portable, ort) on ONNX Runtime CPU:
- prefill: the 8 prompts one call each (a unified export; the states stacked) vs one packed call (a
  ``--graph packed`` export; the torch backend takes cu_seqlens itself);
- decode: one step of the 8 sequences through the unified graph vs through the packed graph (8 sequences of one
  token each): what making cu_seqlens an input of the one graph would cost every decode step.
Parity before the numbers count: the packed prefill's logits (and the step after it) against the one-by-one ones.
Warm-up first; median of ``--repeats`` interleaved rounds.

    PYTHONPATH=. python benchmarks/bench_packed_cpu.py [--preset 130m] [--workdir DIR] [--repeats 5] [--json]
"""

from __future__ import annotations

import datetime
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import click
import numpy as np

from bench_cpu_flavors import _commit, _machine
from ssd_deploy.checkpoint import random_model, write_checkpoint
from ssd_deploy.onnx.export import ExportOptions, export
from ssd_deploy.presets import preset
from ssd_deploy.runtime.backends import open_backend

FLAVORS = ("portable", "ort")
MAX_REL_ERR = 1e-4  # fp32 end to end (docs/verification.md)


def prepare(work: Path, preset_name: str, flavors: list[str], log) -> tuple[Path, dict]:
    ckpt = work / f"ckpt-{preset_name}"
    if not (ckpt / "config.json").is_file():
        log(f"writing a random {preset_name} checkpoint")
        write_checkpoint(random_model(preset(preset_name), seed=0), ckpt, "hf")
    exports = {}
    for flavor in flavors:
        for graph in ("unified", "packed"):
            out = work / f"{flavor}-{graph}-{preset_name}"
            if not (out / "model.onnx").is_file():
                log(f"exporting {flavor} {graph}")
                t = time.perf_counter()
                export(ckpt, out, ExportOptions(flavor=flavor, graph=graph, logits="last"))
                log(f"  {time.perf_counter() - t:.0f} s")
            exports[flavor, graph] = out
    return ckpt, exports


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _rel(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


def one_by_one(backend, prompts):
    parts = [backend.forward(np.array([p]), backend.zero_states(1)) for p in prompts]
    return np.concatenate([lg for lg, _ in parts]), backend.concat_states([s for _, s in parts])


def run(ckpt: Path, exports: dict, lengths: list[int], repeats: int, torch_engine: bool, log) -> list[dict]:
    engines = {"torch": (open_backend(ckpt, "torch"),) * 2} if torch_engine else {}
    engines.update({f: (open_backend(exports[f, "unified"], "ort"), open_backend(exports[f, "packed"], "ort"))
                    for f in sorted({f for f, _ in exports})})
    vocab = next(iter(engines.values()))[0].config.vocab_size
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, vocab, n).tolist() for n in lengths]
    n = len(prompts)
    cases = {  # name: engine → callable
        "prefill one by one": lambda unified, packed: one_by_one(unified, prompts),
        "prefill packed": lambda unified, packed: packed.forward_packed(prompts, packed.zero_states(n)),
    }
    times = {(c, e): [] for c in list(cases) + ["decode unified", "decode packed"] for e in engines}
    errs = {}
    for rnd in range(repeats + 1):  # round 0 is the warm-up
        for engine, (unified, packed) in engines.items():
            results = {}
            for case, fn in cases.items():
                t, results[case] = _timed(lambda: fn(unified, packed))
                if rnd:
                    times[case, engine].append(t)
            (ref, ref_states), (got, got_states) = results["prefill one by one"], results["prefill packed"]
            token = ref.argmax(-1)[:, None]
            t_u, (step_ref, _) = _timed(lambda: unified.forward(token, ref_states))
            t_p, (step_got, _) = _timed(lambda: packed.forward(token, got_states))
            if rnd:
                times["decode unified", engine].append(t_u)
                times["decode packed", engine].append(t_p)
            errs[engine] = max(errs.get(engine, 0.0), _rel(got, ref), _rel(step_got, step_ref))
            if not errs[engine] <= MAX_REL_ERR:
                raise SystemExit(f"{engine}: packed logits differ from one-by-one (rel err {errs[engine]:.1e})")
        log(f"round {rnd}/{repeats} done")
    rows = []
    for engine in engines:
        row = {"engine": engine, "backends": [b.name for b in engines[engine]], "rel_err": errs[engine]}
        row.update({case.replace(" ", "_") + "_ms": statistics.median(times[case, engine]) * 1e3
                    for case in ("prefill one by one", "prefill packed", "decode unified", "decode packed")})
        rows.append(row)
    return rows


def markdown(rows: list[dict], total: int) -> str:
    lines = ["| engine | prefill one by one | prefill packed | packed speed-up | decode b8 unified | decode b8 packed "
             "graph | max rel err |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        a, b = r["prefill_one_by_one_ms"], r["prefill_packed_ms"]
        lines.append(f"| {r['engine']} | {a:.0f} ms ({total / a * 1e3:.0f} tok/s) | {b:.0f} ms ({total / b * 1e3:.0f}"
                     f" tok/s) | {a / b:.2f}x | {r['decode_unified_ms']:.1f} ms | {r['decode_packed_ms']:.1f} ms | "
                     f"{r['rel_err']:.1e} |")
    return "\n".join(lines)


@click.command()
@click.option("--preset", "preset_name", default="130m", show_default=True)
@click.option("--workdir", type=click.Path(path_type=Path), default=None,
              help="keeps the checkpoint and exports between runs (default: a temporary directory)")
@click.option("--prompts", "n_prompts", type=int, default=8, show_default=True)
@click.option("--min-len", type=int, default=16, show_default=True)
@click.option("--max-len", type=int, default=512, show_default=True)
@click.option("--repeats", type=int, default=5, show_default=True)
@click.option("--flavors", default=",".join(FLAVORS), show_default=True)
@click.option("--torch/--no-torch", "torch_engine", default=True, show_default=True,
              help="also the PyTorch model (the torch backend), the slowest of the three")
@click.option("--json", "as_json", is_flag=True)
def main(preset_name, workdir, n_prompts, min_len, max_len, repeats, flavors, torch_engine, as_json):
    log = (lambda msg: click.echo(msg, err=True)) if as_json else click.echo
    lengths = np.random.default_rng(0).integers(min_len, max_len + 1, n_prompts).tolist()
    with tempfile.TemporaryDirectory(prefix="bench-packed-") as tmp:
        work = Path(workdir) if workdir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        ckpt, exports = prepare(work, preset_name, [f for f in flavors.split(",") if f], log)
        machine = _machine()
        rows = run(ckpt, exports, lengths, repeats, torch_engine, log)
    machine["load_avg_1m_after"] = os.getloadavg()[0]
    result = {"date": datetime.date.today().isoformat(), "commit": _commit(), "preset": preset_name,
              "lengths": lengths, "repeats": repeats, "machine": machine, "rows": rows}
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(f"\n{result['date']}, commit {result['commit']}, {machine['cpu']} ({machine['cores']} cores, load "
                   f"{machine['load_avg_1m']:.1f} → {machine['load_avg_1m_after']:.1f}), {preset_name} fp32, "
                   f"prompts {lengths} ({sum(lengths)} tokens)")
        click.echo(markdown(rows, sum(lengths)))


if __name__ == "__main__":
    main()
