"""Serving overhead, measured: decode steps through a real Triton server (the binary bundled in nvidia-pytriton,
python-backend repository written by ``serve-repo``) against the same steps in-process, at several concurrencies.

For each concurrency C: C client threads each start a sequence (a short prompt, not timed), meet at a barrier, then
send ``--steps`` greedy decode requests one after the other (the next token fed back), each request timed from send
to answer. The server batches the steps of the sequences it has at hand into one runtime call. In-process: the same
runtime on the same model runs C sequences' decode steps as ONE batched call per step (the best a server could do),
timed per call. Reported: decode tokens/s of all sequences together, and p50/p99 latency per decode step.

    PYTHONPATH=. python benchmarks/bench_serving.py [--preset 130m] [--concurrency 1,4,16,64] [--steps 16] [--json]
    # GPU (the python model runs the PyTorch model with Triton kernels and CUDA-graph decode on each instance's GPU):
    PYTHONPATH=. python benchmarks/bench_serving.py --runtime torch --provider cuda --dtype bf16 \\
        --preset 130m --concurrency 1,16,64 --steps 64

``--runtime ort`` (default) serves the ``cpu-fp32`` recipe's export (``ort`` flavor, fp32, last-token logits);
``--runtime torch`` serves the checkpoint itself. One model instance (per GPU with ``--provider cuda``: on a machine
with two GPUs Triton puts one instance on each).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import tempfile
import threading
import time
from pathlib import Path

import click
import numpy as np

from bench_cpu_flavors import _commit
from ssd_deploy.checkpoint import random_model, write_checkpoint
from ssd_deploy.presets import preset
from ssd_deploy.serving import server as triton
from ssd_deploy.serving.client import SequenceClient
from ssd_deploy.serving.pbtxt import NEXT_TOKEN, ServeOptions
from ssd_deploy.serving.repository import write_repository

PROMPT = 16
IDLE_TIMEOUT_S = 3600.0  # sequences wait at the barrier until all C prompts are in: never release them meanwhile


def _stats(lat_s: list[float], tokens: int, wall_s: float) -> dict:
    ms = np.array(lat_s) * 1e3
    return {"tokens_per_s": tokens / wall_s, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "steps": len(lat_s)}


def served(url: str, concurrency: int, steps: int, vocab: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    prompts = rng.integers(0, vocab, (concurrency, PROMPT))
    barrier = threading.Barrier(concurrency + 1)
    lat: list[list[float]] = [[] for _ in range(concurrency)]
    errors = []

    def one(i, client):
        try:
            seq = 10_000 * (concurrency + 1) + i
            out = client.step(seq, prompts[i], start=True, outputs=(NEXT_TOKEN,))
            barrier.wait()
            for s in range(steps):
                t0 = time.perf_counter()
                out = client.step(seq, [int(out[NEXT_TOKEN].reshape(-1)[0])], end=s == steps - 1,
                                  outputs=(NEXT_TOKEN,))
                lat[i].append(time.perf_counter() - t0)
        except Exception as e:  # reported, and the run fails
            errors.append(e)
            barrier.abort()

    with SequenceClient(url, "mamba2") as client:
        threads = [threading.Thread(target=one, args=(i, client)) for i in range(concurrency)]
        for t in threads:
            t.start()
        barrier.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return _stats([x for per in lat for x in per], concurrency * steps, wall)


def in_process(backend, concurrency: int, steps: int, vocab: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    logits, states = backend.forward(rng.integers(0, vocab, (concurrency, PROMPT)), backend.zero_states(concurrency))
    lat = []
    for _ in range(steps):
        t0 = time.perf_counter()
        logits, states = backend.forward(logits[:, :vocab].argmax(-1)[:, None], states)
        backend.synchronize()
        lat.append(time.perf_counter() - t0)
    return {**_stats(lat, concurrency * steps, sum(lat)), "steps": steps}


@click.command()
@click.option("--preset", "preset_name", default="130m", show_default=True)
@click.option("--concurrency", default="1,4,16,64", show_default=True)
@click.option("--steps", type=int, default=16, show_default=True, help="decode steps per sequence")
@click.option("--runtime", type=click.Choice(["ort", "torch"]), default="ort", show_default=True)
@click.option("--provider", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True,
              help="torch runtime: the model's dtype")
@click.option("--queue-delay-us", type=int, default=1000, show_default=True)
@click.option("--workdir", type=click.Path(path_type=Path), default=None, help="keep checkpoint and export here")
@click.option("--json", "as_json", type=click.Path(path_type=Path), default=None, help="write the results here")
def main(preset_name, concurrency, steps, runtime, provider, dtype, queue_delay_us, workdir, as_json):
    from ssd_deploy.runtime.backends import OrtBackend, TorchBackend

    levels = [int(c) for c in concurrency.split(",")]
    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="bench-serving-"))
    cfg = preset(preset_name)
    ckpt = work / "checkpoint"
    if not (ckpt / "config.json").is_file():
        write_checkpoint(random_model(cfg, seed=0), ckpt, "hf")
    if runtime == "ort":
        from ssd_deploy.onnx.export import export, resolve_options

        model = work / "export-cpu-fp32"
        if not (model / "model.onnx").is_file():
            opts, resolved = resolve_options("cpu-fp32")
            export(ckpt, model, opts, resolved)
    else:
        model = ckpt
    repo = work / f"repo-{runtime}-{provider}-{dtype}-{queue_delay_us}-{max(levels)}"
    if not repo.exists():
        write_repository(model, repo, ServeOptions(backend="python", runtime=runtime, provider=provider,
                                                   max_batch=max(levels), max_sequences=max(levels),
                                                   queue_delay_us=queue_delay_us, idle_timeout_s=IDLE_TIMEOUT_S),
                         dtype=dtype)
    backend = OrtBackend(model, provider) if runtime == "ort" else TorchBackend(model, provider, dtype,
                                                                                  cuda_graphs=provider == "cuda")
    vocab = backend.config.vocab_size
    rows = []
    t0 = time.perf_counter()
    srv = triton.start(repo, timeout_s=600)
    print(f"server ready in {time.perf_counter() - t0:.1f} s ({srv.url})", flush=True)
    try:
        served(srv.url, 1, 2, vocab, seed=99)  # warm-up
        in_process(backend, 1, 2, vocab, seed=99)
        for c in levels:
            s = served(srv.url, c, steps, vocab, seed=c)
            p = in_process(backend, c, steps, vocab, seed=c)
            rows.append({"concurrency": c, "served": s, "in_process": p})
            print(f"C={c:3d}  served {s['tokens_per_s']:8.1f} tok/s  p50 {s['p50_ms']:8.1f} ms  p99 "
                  f"{s['p99_ms']:8.1f} ms | in-process batched {p['tokens_per_s']:8.1f} tok/s  p50 "
                  f"{p['p50_ms']:8.1f} ms  p99 {p['p99_ms']:8.1f} ms", flush=True)
    finally:
        srv.stop()
    result = {"date": datetime.date.today().isoformat(), "commit": _commit(), "machine": platform.node(),
              "cores": os.cpu_count(), "load_avg_1m_end": os.getloadavg()[0], "preset": preset_name,
              "runtime": runtime, "provider": provider, "dtype": dtype if runtime == "torch" else "fp32",
              "backend": backend.name, "steps": steps, "prompt": PROMPT, "queue_delay_us": queue_delay_us,
              "rows": rows}
    if as_json:
        Path(as_json).write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
