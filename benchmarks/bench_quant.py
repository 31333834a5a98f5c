"""Weight-only int8/int4 quantization (docs/quantization.md): accuracy on the trained tiny model, CPU decode speed
on the 130m preset, side by side with fp32 in one run.

accuracy: the shipped model trained on Python's standard library (ssd_deploy/data/tiny-stdlib) exported fp32, fp16,
int8 and int4 (blocks 32/64/128; ort flavor, every position's logits), on ONNX Runtime CPU: held-out perplexity
(the corpus's held-out files, WINDOWS windows of LENGTH tokens from zero states), top-1 agreement with fp32 at every
held-out position (teacher-forced), and greedy continuations of PROMPTS held-out prompts x NEW_TOKENS tokens
compared with fp32's (the share of each continuation equal to fp32's before the first differing token).

speed: a random 130m checkpoint exported fp32, int8 and int4 in the portable and ort flavors (last-position logits),
decode steps at batch 1 after a 16-token prompt (median of --steps), each checked against the fp32 PyTorch listings
(bench.parity); with the weight-read floor measured in the same run: one read of a buffer of the fp32 export's
linear weights (in_proj, out_proj, lm_head: what a decode step reads), and of an eighth of it (int4).
Goal (issue 14): int4 decode <= 0.4x the fp32 step of the same flavor.

    PYTHONPATH=. python benchmarks/bench_quant.py accuracy [--workdir DIR] [--json]
    PYTHONPATH=. python benchmarks/bench_quant.py speed [--preset 130m] [--steps 40] [--flavors ort,portable]
        [--workdir DIR] [--json]
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # a shared machine: spinning OpenMP waits distort timings

import click  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime  # noqa: E402

from ssd_deploy import corpus  # noqa: E402
from ssd_deploy.onnx.export import ExportOptions, export  # noqa: E402

WINDOWS, LENGTH, PROMPTS, PROMPT_LEN, NEW_TOKENS = 64, 256, 16, 24, 32
ACCURACY = {  # name → export options besides the flavor
    "fp32": {}, "fp16": {"dtype": "fp16"},
    **{f"int8-b{b}": {"quant": "int8", "quant_block": b} for b in (32, 128)},
    **{f"int4-b{b}": {"quant": "int4", "quant_block": b} for b in (32, 64, 128)},
}
SPEED = {"fp32": {}, "int8": {"quant": "int8", "quant_block": 32}, "int4": {"quant": "int4", "quant_block": 32}}


def _context() -> dict:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "commit": commit,
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "onnxruntime": onnxruntime.__version__}


def _workdir(path):
    return Path(path) if path else Path(tempfile.mkdtemp(prefix="bench-quant-"))


def _export(ckpt, out: Path, **opts) -> Path:
    if not (out / "model.onnx").is_file():
        export(ckpt, out, ExportOptions(**opts))
    return out


@click.group()
def main():
    """Weight-only quantization: accuracy (tiny trained model) and decode speed (130m)."""


@main.command()
@click.option("--workdir", type=click.Path(path_type=Path), default=None, help="keeps exports for the next run")
@click.option("--json", "as_json", is_flag=True)
def accuracy(workdir, as_json):
    from tokenizers import Tokenizer

    from ssd_deploy.perplexity import greedy, prefix_agreement, score

    work = _workdir(workdir)
    ckpt = corpus.TRAINED_MODEL
    tok = Tokenizer.from_file(str(ckpt / "tokenizer.json"))
    windows = corpus.windows(corpus.token_stream(tok, "held-out"), LENGTH, WINDOWS)
    prompts = [list(map(int, w[:PROMPT_LEN])) for w in windows[:PROMPTS]]
    rows, base, base_greedy = [], None, None
    for name, opts in ACCURACY.items():
        d = _export(ckpt, work / name, flavor="ort", logits="all", **opts)
        s = score(d, windows)
        g = greedy(d, prompts, NEW_TOKENS)
        base, base_greedy = (s, g) if base is None else (base, base_greedy)
        size = sum(f.stat().st_size for f in d.iterdir())
        rows.append({"export": name, "perplexity": round(s.perplexity, 4),
                     "ppl_vs_fp32": round(s.perplexity / base.perplexity, 4),
                     "top1_agreement": round(s.agreement(base), 4),
                     "greedy_prefix_agreement": round(prefix_agreement(g, base_greedy), 4),
                     "greedy_identical": sum(a == b for a, b in zip(g, base_greedy)), "bytes": size})
        click.echo(f"  {name}: perplexity {s.perplexity:.3f}", err=True)
    result = {**_context(), "model": str(ckpt.name), "held_out_tokens": base.tokens, "windows": len(windows),
              "window": LENGTH, "prompts": len(prompts), "new_tokens": NEW_TOKENS, "rows": rows}
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"{'export':<10} {'perplexity':>10} {'vs fp32':>8} {'top-1 agr':>9} {'greedy agr':>10} "
               f"{'identical':>9} {'bytes':>9}")
    for r in rows:
        click.echo(f"{r['export']:<10} {r['perplexity']:>10.3f} {r['ppl_vs_fp32']:>8.4f} {r['top1_agreement']:>9.4f} "
                   f"{r['greedy_prefix_agreement']:>10.3f} {r['greedy_identical']:>5}/{len(prompts):<3} "
                   f"{r['bytes']:>9}")


def weight_read_ms(nbytes: int, repeats: int) -> float:
    """Median time of one pass over ``nbytes`` of float32 (numpy sum: a streaming read, two threads)."""
    import torch

    buf = torch.ones(nbytes // 4, dtype=torch.float32)
    buf.sum()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        buf.sum()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


@main.command()
@click.option("--preset", "preset_name", default="130m", show_default=True)
@click.option("--steps", type=int, default=40, show_default=True, help="decode steps timed (median)")
@click.option("--threads", type=int, default=2, show_default=True)
@click.option("--flavors", default="ort,portable", show_default=True)
@click.option("--workdir", type=click.Path(path_type=Path), default=None, help="keeps checkpoint and exports")
@click.option("--json", "as_json", is_flag=True)
def speed(preset_name, steps, threads, flavors, workdir, as_json):
    import torch

    from ssd_deploy.bench import measure, parity, reference_logits
    from ssd_deploy.checkpoint import random_model, write_checkpoint
    from ssd_deploy.presets import preset
    from ssd_deploy.runtime.backends import OrtBackend, TorchBackend

    torch.set_num_threads(threads)
    work = _workdir(workdir)
    cfg = preset(preset_name)
    ckpt = work / "checkpoint"
    if not (ckpt / "config.json").is_file():
        write_checkpoint(random_model(cfg, 0), ckpt, "hf")
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (1, 16))
    expected = reference_logits(TorchBackend(ckpt, "cpu", "fp32", triton=False), ids)
    linear = cfg.n_layer * (cfg.d_model * cfg.d_in_proj + cfg.d_inner * cfg.d_model) \
        + cfg.d_model * cfg.padded_vocab_size
    rows = []
    for flavor in flavors.split(","):
        for name, opts in SPEED.items():
            backend = OrtBackend(_export(ckpt, work / f"{flavor}-{name}", flavor=flavor, logits="last", **opts))
            err_pre, err_step = parity(backend, ids, expected)
            _, step_s = measure(backend, ids, steps, 1)
            rows.append({"flavor": flavor, "weights": name, "decode_ms": round(step_s * 1e3, 2),
                         "err_prefill": err_pre, "err_step": err_step})
            click.echo(f"  {flavor} {name}: {step_s * 1e3:.1f} ms/step", err=True)
    floor_fp32 = weight_read_ms(linear * 4, steps)
    floor_int4 = weight_read_ms(linear // 2, steps)
    for r in rows:
        fp32 = next(x for x in rows if x["flavor"] == r["flavor"] and x["weights"] == "fp32")
        r["vs_fp32"] = round(r["decode_ms"] / fp32["decode_ms"], 3)
    result = {**_context(), "preset": preset_name, "threads": threads, "steps": steps,
              "linear_weights_fp32_bytes": linear * 4, "floor_fp32_ms": round(floor_fp32, 2),
              "floor_int4_ms": round(floor_int4, 2), "rows": rows}
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"weight-read floor: fp32 {floor_fp32:.2f} ms ({linear * 4 / 1e6:.0f} MB), "
               f"int4 {floor_int4:.2f} ms")
    click.echo(f"{'flavor':<9} {'weights':<7} {'decode ms':>9} {'vs fp32':>8} {'err pre':>9} {'err step':>9}")
    for r in rows:
        click.echo(f"{r['flavor']:<9} {r['weights']:<7} {r['decode_ms']:>9.2f} {r['vs_fp32']:>8.3f} "
                   f"{r['err_prefill']:>9.2e} {r['err_step']:>9.2e}")


if __name__ == "__main__":
    main()
