"""Serving backends on one GPU, side by side in one run: PyTorch eager (the ops' PyTorch listings, the
anchor), the PyTorch model on our Triton kernels, each also with its decode steps replayed from CUDA graphs, and
ONNX Runtime's CUDA provider on the `portable` and `ort` exports and on the `trt` export with our CUDA kernels as
custom ops (plugins/ort_custom_ops, row `ort-trt-customops`), for random checkpoints of the 130m and 2.7b presets in
fp16 and bf16.

Each point is `ssd_deploy.bench`'s: prefill tokens/s (median of repeats after a warm-up) and decode ms/token with
the carried states (median of steps), checked in the same run against the float32 PyTorch listings on the GPU:
relative error of the last-position logits after the prefill and after one decode step. ONNX Runtime runs with
IO binding (states stay on the device). A profile of one prefill and one step per ONNX Runtime session (130m)
says which provider ran each node and where the time went.

Two phases, so that checkpoints and exports (CPU work) can be made while other things happen:

    PYTHONPATH=. python benchmarks/bench_backends_gpu.py prepare --work /tmp/sb     # checkpoints + exports
    PYTHONPATH=. python benchmarks/bench_backends_gpu.py bench --work /tmp/sb --out OUT

`decode` times ONNX Runtime's decode steps on the decode exports (`--graph decode`, made by `prepare`) with and
without ONNX Runtime's CUDA graphs (docs/performance.md, "ONNX Runtime CUDA graphs"), beside the PyTorch model on
Triton with CUDA graphs; the prompt is fed one token per call, then each step is timed (median of --steps):

    PYTHONPATH=. python benchmarks/bench_backends_gpu.py prepare --work /tmp/sb --graphs decode --dtypes fp16
    PYTHONPATH=. python benchmarks/bench_backends_gpu.py decode --work /tmp/sb --out OUT --dtypes fp16

needs onnxruntime-gpu (CUDA 13 build) for the ONNX Runtime rows, and the custom-op library (`ssd-deploy plugins
build` with ONNX Runtime headers, or --ort-custom-ops PATH) for the `ort-trt-customops` row; without them those rows
say why they are missing.
"""

from __future__ import annotations

import datetime
import json
import multiprocessing
import os
import subprocess
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import click
import numpy as np

from ssd_deploy import bench
from ssd_deploy.checkpoint import random_model, write_checkpoint
from ssd_deploy.onnx.export import ExportOptions, export
from ssd_deploy.presets import preset

FLAVORS = ("portable", "ort")  # exports ONNX Runtime runs as they are
# what `ort-cuda-fp16` makes: prompts through the chunked standard-op scan (RESULTS.md run 3); the others: defaults
EXPORT_OPTIONS = {"ort": {"prefill": "chunked"}}
DECODE_FLAVORS = ("portable", "ort", "trt")  # decode exports, timed with and without ONNX Runtime's CUDA graphs
CUSTOM_OPS_FLAVOR = "trt"  # runs with the custom-op library: its plugin nodes on our CUDA kernels
CUSTOM_OPS_LABEL = "ort-trt-customops"
# preset → (dtypes, batches, prompt lengths)
PLAN = {"130m": (("fp16", "bf16"), (1, 8), (128, 512, 2048)),
        "2.7b": (("fp16", "bf16"), (1, 8), (512, 2048)),
        "tiny": (("fp32", "fp16"), (1, 2), (40,))}  # a smoke run of this script (--provider cpu works too)


def _log(msg: str):
    click.echo(f"[{time.strftime('%H:%M:%S')}] {msg}", err=True)


def _export_dir(work: Path, name: str, dtype: str, flavor: str) -> Path:
    return work / f"{name}-{dtype}-{flavor}"


def _decode_dir(work: Path, name: str, dtype: str, flavor: str) -> Path:
    return work / f"{name}-{dtype}-{flavor}-decode"


def _export_one(args) -> str:
    ckpt, out, flavor, dtype, graph = args
    if (out / "model.onnx").is_file():
        return f"{out.name}: already there"
    t = time.perf_counter()
    options = EXPORT_OPTIONS.get(flavor, {}) if graph == "unified" else {}  # a decode graph has no prefill
    export(ckpt, out, ExportOptions(flavor=flavor, dtype=dtype, logits="last", graph=graph, **options))
    return f"{out.name}: exported in {time.perf_counter() - t:.0f} s"


def prepare(work: Path, presets: list[str], jobs: int, exports: bool = True, dtypes: list[str] | None = None,
            graphs: tuple[str, ...] = ("unified", "decode"), flavors: tuple[str, ...] | None = None):
    work.mkdir(parents=True, exist_ok=True)
    tasks = []
    for name in presets:
        ckpt = work / f"ckpt-{name}"
        if not (ckpt / "config.json").is_file():
            t = time.perf_counter()
            write_checkpoint(random_model(preset(name), seed=0), ckpt, "hf")
            _log(f"checkpoint {name} written in {time.perf_counter() - t:.0f} s")
        tasks += [(ckpt, _export_dir(work, name, d, f), f, d, "unified") for d in dtypes or PLAN[name][0]
                  for f in (*FLAVORS, CUSTOM_OPS_FLAVOR) if exports and "unified" in graphs and f in (flavors or f)]
        tasks += [(ckpt, _decode_dir(work, name, d, f), f, d, "decode") for d in dtypes or PLAN[name][0]
                  for f in DECODE_FLAVORS if exports and "decode" in graphs and f in (flavors or f)]
    # the exporter is mostly single-threaded Python; spawn, since forking a process that has run torch's thread
    # pools can deadlock the children
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        for msg in pool.map(_export_one, tasks):
            _log(msg)
    _log("prepare: done")


def ort_placement(export_dir: Path, backend, ids: np.ndarray) -> dict:
    """Nodes and kernel time per provider, and the slowest op types, from ONNX Runtime's profile of one prefill
    and one decode step (the second of two such pairs: the first pays for cuDNN's algorithm search)."""
    import onnxruntime as ort

    from ssd_deploy.interface import model_path
    from ssd_deploy.runtime.ort_runner import PROVIDER_OPTIONS, PROVIDERS

    opts = ort.SessionOptions()
    opts.enable_profiling = True
    opts.log_severity_level = 3
    if backend.custom_ops is not None:
        opts.register_custom_ops_library(str(backend.custom_ops))
    providers = PROVIDERS[backend.provider]
    sess = backend.session
    backend.session = ort.InferenceSession(str(model_path(export_dir)), opts, providers=providers,
                                           provider_options=[PROVIDER_OPTIONS.get(p, {}) for p in providers])
    try:
        for _ in range(2):
            logits, states = backend.forward(ids, backend.zero_states(ids.shape[0]))
            backend.forward(logits.argmax(-1)[:, None], states)
        profile = Path(backend.session.end_profiling())
    finally:
        backend.session = sess
    events = json.loads(profile.read_text())
    profile.unlink()
    runs = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    by_provider, by_op = {}, {}
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time") or e["ts"] < runs[2]:
            continue
        prov, op = e["args"].get("provider", "?"), e["args"].get("op_name", "?")
        n, us = by_provider.get(prov, (0, 0))
        by_provider[prov] = (n + 1, us + e["dur"])
        by_op[f"{op}@{prov}"] = by_op.get(f"{op}@{prov}", 0) + e["dur"]
    return {"nodes_and_us_by_provider": by_provider,
            "top_ops_us": dict(sorted(by_op.items(), key=lambda kv: -kv[1])[:8])}


def _custom_ops(given: Path | None) -> Path:
    from ssd_deploy.kernels import ort_custom_ops_path

    return given if given is not None else ort_custom_ops_path()


def _open_all(makers: dict, what: str) -> tuple[dict, dict]:
    """Each backend its maker opens, by label, and why any could not be opened (said, not fatal)."""
    from ssd_deploy.errors import UserError

    opened, missing = {}, {}
    for label, make in makers.items():
        try:
            opened[label] = make()
        except (UserError, OSError, RuntimeError) as e:
            missing[label] = str(e)[:500]
            _log(f"{what} {label}: not run: {missing[label]}")
    return opened, missing


def open_backends(work: Path, name: str, dtype: str, provider: str, custom_ops: Path | None = None):
    from ssd_deploy.runtime.backends import OrtBackend, TorchBackend

    ckpt = work / f"ckpt-{name}"
    makers = {f"torch-{provider}": lambda: TorchBackend(ckpt, provider, dtype, triton=False)}
    if provider == "cuda":
        makers.update({f"torch-cuda{'-triton' * t}{'-graphs' * g}": (lambda t=t, g=g: TorchBackend(
            ckpt, "cuda", dtype, triton=t, cuda_graphs=g)) for t, g in ((True, False), (False, True), (True, True))})
    makers.update({f: (lambda f=f: OrtBackend(_export_dir(work, name, dtype, f), provider)) for f in FLAVORS})
    if provider == "cuda":
        makers[CUSTOM_OPS_LABEL] = lambda: OrtBackend(_export_dir(work, name, dtype, CUSTOM_OPS_FLAVOR), provider,
                                                      custom_ops=_custom_ops(custom_ops))
    return _open_all(makers, f"{name} {dtype}")


def machine() -> dict:
    import onnxruntime
    import torch

    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,clocks.mem",
                              "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
    except OSError:
        smi = "no nvidia-smi"
    return {"gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none", "nvidia_smi": smi,
            "torch": torch.__version__, "cuda": torch.version.cuda, "onnxruntime": onnxruntime.__version__,
            "ort_providers": onnxruntime.get_available_providers(), "cpu_cores": os.cpu_count()}


def markdown(rows: list[dict]) -> str:
    lines = ["| preset | dtype | backend | batch | length | prefill tok/s | decode ms/token | err prefill | err step |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['preset']} | {r['dtype']} | {r['backend']} | {r['batch']} | {r['length']} | "
                     f"{r['prefill_tok_s']:,.0f} | {r['decode_ms']:.2f} | {r['prefill_err']:.1e} | "
                     f"{r['decode_err']:.1e} |")
    return "\n".join(lines)


def run_bench(work: Path, out: Path, presets: list[str], provider: str, steps: int, repeats: int, commit: str,
              custom_ops: Path | None = None):
    import torch

    from ssd_deploy.runtime.backends import TorchBackend

    out.mkdir(parents=True, exist_ok=True)
    result = {"date": datetime.date.today().isoformat(), "commit": commit, "machine": machine(),
              "steps": steps, "repeats": repeats, "rows": [], "missing": {}, "placement": {}}
    for name in presets:
        dtypes, batches, lengths = PLAN[name]
        reference = TorchBackend(work / f"ckpt-{name}", provider, "fp32", triton=False)
        for dtype in dtypes:
            backends, missing = open_backends(work, name, dtype, provider, custom_ops)
            result["missing"][f"{name}-{dtype}"] = missing
            points = bench.run(list(backends.values()), reference, list(batches), list(lengths), steps, repeats,
                               progress=lambda p: _log(f"{name} {dtype} {p.backend} b{p.batch} l{p.length}: "
                                                       f"{p.prefill_tok_s:,.0f} tok/s, {p.decode_ms:.2f} ms/token, "
                                                       f"err {p.prefill_err:.1e}/{p.decode_err:.1e}"))
            result["rows"] += [{"preset": name, "dtype": dtype, **asdict(p)} for p in points]
            if name != "2.7b":  # one profile per session is enough to see the placement
                ids = np.random.default_rng(1).integers(0, reference.config.vocab_size, (1, 512))
                for label, flavor in [*((f, f) for f in FLAVORS), (CUSTOM_OPS_LABEL, CUSTOM_OPS_FLAVOR)]:
                    if label in backends:
                        result["placement"][f"{name}-{dtype}-{label}"] = ort_placement(
                            _export_dir(work, name, dtype, flavor), backends[label], ids)
            del backends
            if provider == "cuda":
                torch.cuda.empty_cache()
            (out / "bench_backends_gpu.json").write_text(json.dumps(result, indent=2))
        del reference
    table = markdown(result["rows"])
    (out / "bench_backends_gpu.md").write_text(table + "\n")
    click.echo(json.dumps({"missing": result["missing"], "placement": result["placement"]}, indent=1))
    click.echo(table)


def decode_backends(work: Path, name: str, dtype: str, provider: str, custom_ops: Path | None):
    """The decode rows: PyTorch on Triton with CUDA graphs, and each decode export on ONNX Runtime CUDA, plain and
    with CUDA graphs (the `trt` one through the custom-op library). On the CPU (a smoke run of the script) the rows
    that need CUDA say why they are missing."""
    from ssd_deploy.runtime.backends import OrtBackend, TorchBackend

    makers = {}
    if provider == "cuda":
        makers["torch-cuda-triton-graphs"] = lambda: TorchBackend(work / f"ckpt-{name}", "cuda", dtype, triton=True,
                                                                  cuda_graphs=True)
    for flavor in DECODE_FLAVORS:
        ops = (lambda: _custom_ops(custom_ops)) if flavor == CUSTOM_OPS_FLAVOR else (lambda: None)
        for graphs in (False, True):
            makers[f"{flavor}-decode{'-customops' * (flavor == CUSTOM_OPS_FLAVOR)}{'-graphs' * graphs}"] = (
                lambda f=flavor, g=graphs, ops=ops: OrtBackend(_decode_dir(work, name, dtype, f), provider,
                                                               custom_ops=ops(), cuda_graph=g))
    return _open_all(makers, f"{name} {dtype}")


def decode_point(backend, reference, ids: np.ndarray, steps: int) -> dict:
    """The prompt fed one token per call (one call for a backend that prefills), the last logits and those after
    one greedy step against the reference's, then ``steps`` timed steps from there."""
    from ssd_deploy.generate import prefill

    expected, ref_states = reference.forward(ids, reference.zero_states(ids.shape[0]))
    logits, states = prefill(backend, ids.tolist())
    err_pre = bench._rel(logits, expected)
    token = expected.argmax(-1)[:, None]
    expected_step, _ = reference.forward(token, ref_states)
    logits, states = backend.forward(token, states)
    err_step = bench._rel(logits, expected_step)
    times = []
    for _ in range(steps):
        token = logits.argmax(-1)[:, None]
        t, (logits, states) = bench._timed(backend, lambda: backend.forward(token, states))
        times.append(t * 1e3)
    return {"batch": ids.shape[0], "decode_ms": float(np.median(times)), "decode_ms_min": min(times),
            "decode_ms_max": max(times), "prefill_err": err_pre, "decode_err": err_step}


def run_decode(work: Path, out: Path, presets: list[str], provider: str, steps: int, prompt: int, commit: str,
               custom_ops: Path | None = None, dtypes: list[str] | None = None):
    import torch

    from ssd_deploy.runtime.backends import TorchBackend

    out.mkdir(parents=True, exist_ok=True)
    result = {"date": datetime.date.today().isoformat(), "commit": commit, "machine": machine(), "steps": steps,
              "prompt": prompt, "rows": [], "missing": {}}
    for name in presets:
        planned, batches, _ = PLAN[name]
        reference = TorchBackend(work / f"ckpt-{name}", provider, "fp32", triton=False)
        for dtype in dtypes or planned:
            backends, result["missing"][f"{name}-{dtype}"] = decode_backends(work, name, dtype, provider, custom_ops)
            for batch in batches:
                ids = np.random.default_rng(batch).integers(0, reference.config.vocab_size, (batch, prompt))
                for label, backend in backends.items():
                    row = {"preset": name, "dtype": dtype, "backend": label, **decode_point(backend, reference, ids,
                                                                                           steps)}
                    _log(f"{name} {dtype} {label} b{batch}: {row['decode_ms']:.3f} ms/token "
                         f"[{row['decode_ms_min']:.3f}-{row['decode_ms_max']:.3f}], err "
                         f"{row['prefill_err']:.1e}/{row['decode_err']:.1e}")
                    result["rows"].append(row)
            del backends
            if provider == "cuda":
                torch.cuda.empty_cache()
            (out / "bench_ort_decode_graphs.json").write_text(json.dumps(result, indent=2))
        del reference
    lines = ["| preset | dtype | backend | batch | decode ms/token [min-max] | err prompt | err step |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['preset']} | {r['dtype']} | {r['backend']} | {r['batch']} | {r['decode_ms']:.3f} "
              f"[{r['decode_ms_min']:.3f}-{r['decode_ms_max']:.3f}] | {r['prefill_err']:.1e} | {r['decode_err']:.1e} |"
              for r in result["rows"]]
    (out / "bench_ort_decode_graphs.md").write_text("\n".join(lines) + "\n")
    click.echo(json.dumps({"missing": result["missing"]}, indent=1))
    click.echo("\n".join(lines))


@click.group()
def main():
    pass


@main.command("prepare")
@click.option("--work", type=click.Path(path_type=Path), required=True)
@click.option("--presets", default="130m,2.7b", show_default=True)
@click.option("--jobs", type=int, default=4, show_default=True)
@click.option("--exports/--no-exports", default=True, show_default=True, help="--no-exports: the PyTorch rows only")
@click.option("--dtypes", default=None, help="comma-separated export dtypes (default: the preset's plan)")
@click.option("--graphs", default="unified,decode", show_default=True,
              help="which exports: unified (for bench), decode (for decode)")
@click.option("--flavors", default=None, help="comma-separated flavors to export (default: all)")
def prepare_cmd(work, presets, jobs, exports, dtypes, graphs, flavors):
    prepare(work, presets.split(","), jobs, exports, dtypes.split(",") if dtypes else None, tuple(graphs.split(",")),
            tuple(flavors.split(",")) if flavors else None)


@main.command("bench")
@click.option("--work", type=click.Path(path_type=Path), required=True)
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--presets", default="130m,2.7b", show_default=True)
@click.option("--provider", type=click.Choice(["cuda", "cpu"]), default="cuda", show_default=True)
@click.option("--steps", type=int, default=16, show_default=True)
@click.option("--repeats", type=int, default=5, show_default=True)
@click.option("--commit", default="unknown")
@click.option("--ort-custom-ops", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="libssd_ort_custom_ops.so (default: $SSD_DEPLOY_ORT_CUSTOM_OPS, else where `ssd-deploy plugins "
                   "build` puts it)")
def bench_cmd(work, out, presets, provider, steps, repeats, commit, ort_custom_ops):
    run_bench(work, out, presets.split(","), provider, steps, repeats, commit, ort_custom_ops)


@main.command("decode")
@click.option("--work", type=click.Path(path_type=Path), required=True)
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--presets", default="130m,2.7b", show_default=True)
@click.option("--provider", type=click.Choice(["cuda", "cpu"]), default="cuda", show_default=True)
@click.option("--steps", type=int, default=64, show_default=True, help="decode steps timed per point")
@click.option("--prompt", type=int, default=16, show_default=True, help="prompt tokens, fed one per call")
@click.option("--dtypes", default=None, help="comma-separated export dtypes (default: the preset's plan)")
@click.option("--commit", default="unknown")
@click.option("--ort-custom-ops", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="libssd_ort_custom_ops.so (default: $SSD_DEPLOY_ORT_CUSTOM_OPS, else where `ssd-deploy plugins "
                   "build` puts it)")
def decode_cmd(work, out, presets, provider, steps, prompt, dtypes, commit, ort_custom_ops):
    run_decode(work, out, presets.split(","), provider, steps, prompt, commit, ort_custom_ops,
               dtypes.split(",") if dtypes else None)


if __name__ == "__main__":
    main()
