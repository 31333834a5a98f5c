"""Whole models on one GPU, ssd-deploy beside mamba_ssm in one process, same random weights (issue 15's table).

For each preset (random weights, seed 0, bf16): mamba_ssm's ``MambaLMHeadModel`` (from its source tree, Triton
kernels only: ``use_mem_eff_path=False``, no causal-conv1d extension) loads ssd-deploy's state dict as it is (same
keys); ssd-deploy's ``Mamba2LM`` runs on its Triton kernels in two configurations:

* ``ssd-scan-only``: only the SSD scan and step on Triton, the conv, the norms and the residual add on their PyTorch
  listings (the configuration before the conv/norm kernels: the "before" of this run);
* ``ssd-all``: every op and the residual add + RMSNorm on Triton (``ssd_deploy.ssd.triton.register``); a decode
  step's conv and SSM step in one fused in-place kernel (``ssd/triton/decode.py``);
* ``ssd-all-2k`` (decode only): the same with that conv and SSM step in two in-place kernels (``decode_fused`` off):
  what the fusion saves;
* ``ssd-all-gemv`` (decode only): ``ssd-all`` with the decode step's norms folded into Triton GEMVs (opt-in,
  ``triton.enabled("cuda", ("decode_gemv",))``: three launches per layer, ``ssd/triton/gemv.py``) instead of the
  norms and cuBLAS's projections apart (five);
* ``ssd-all-gemv-nopdl`` (decode only): the same with its kernels launched plainly (``decode_pdl`` off) instead of
  as programmatic dependent launches.

Prefill: one forward of b × l tokens returning the last position's logits (``num_last_tokens=1`` for mamba_ssm),
CUDA events, median of repeats after warm-up. Decode: ssd-deploy's per-step time with its CUDA graphs
(``runtime.cuda_graphs.DecodeGraphs`` as the torch backend runs it: the prefill's states handed over once, then each
step updates the graph's own states in place) and the bare graph replay; the kernels one step launches (torch
profiler on the eager in-place step, in total and per layer, and the kernels seen in one profiled replay);
mamba_ssm's ``generate(cg=True)`` timed at two lengths, the difference per token (its prefill cancels).
Parity in the same run: bf16 last-position logits of each side against ssd-deploy's fp32 listings; at fp32 (130m)
mamba_ssm vs ssd-deploy's listings and 32 greedy tokens compared. ``--profile`` writes torch.profiler tables of one
8 × 2048 prefill per side.

``--onnx WORK`` adds the ONNX artifacts of the same weights on ONNX Runtime's CUDA provider, in the same run: the
exports ``bench_backends_gpu.py prepare --work WORK --dtypes fp16`` made (checkpoint from the same seed): the
`ort` flavor as the ``ort-cuda-fp16`` recipe makes it (``ort-ort``), and the `trt` flavor, the graph TensorRT
receives, with its plugin nodes on our CUDA kernels (plugins/ort_custom_ops; ``ort-trt-customops``). Times are
``ssd_deploy.bench``'s (wall clock around a synchronised call, IO binding: states stay on the device), parity
against the same fp32 listings.

    MAMBA_SSM_SRC=.gpu/mamba_src PYTHONPATH=.:benchmarks python benchmarks/bench_model_gpu.py --out OUT \
        [--presets 130m,2.7b] [--onnx WORK [--ort-custom-ops LIB]]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from contextlib import contextmanager, nullcontext
from functools import partial
from pathlib import Path

import numpy as np
import torch

from ssd_deploy.checkpoint import random_model
from ssd_deploy.presets import preset
from ssd_deploy.runtime.cuda_graphs import DecodeGraphs
from ssd_deploy.ssd import triton as tri

SCAN_ONLY_OFF = ("causal_conv1d", "gated_rmsnorm", "add_rmsnorm")  # left on their listings in "ssd-scan-only"
OFF = {"ssd-scan-only": SCAN_ONLY_OFF, "ssd-all": (), "ssd-all-2k": ("decode_fused",), "ssd-all-gemv": (),
       "ssd-all-gemv-nopdl": ("decode_pdl",)}
ON = {"ssd-all-gemv": ("decode_gemv",), "ssd-all-gemv-nopdl": ("decode_gemv",)}  # opt-in kernels (triton.enabled)


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cuda_time(fn, warmup=2, repeats=10) -> list[float]:
    """Milliseconds per call, CUDA events around each call, after warm-up."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return times


def summary(times: list[float]) -> dict:
    s = sorted(times)
    return {"median": statistics.median(s), "min": s[0], "max": s[-1], "n": len(s)}


def rel(a, b) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


def mamba_ssm_model(cfg, sd, dtype):
    from mamba_ssm.models.config_mamba import MambaConfig
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel

    mc = MambaConfig(d_model=cfg.d_model, n_layer=cfg.n_layer, vocab_size=cfg.vocab_size,
                     ssm_cfg={"layer": "Mamba2", "d_state": cfg.d_state, "d_conv": cfg.d_conv, "expand": cfg.expand,
                              "headdim": cfg.headdim, "ngroups": cfg.ngroups, "chunk_size": cfg.chunk_size,
                              "use_mem_eff_path": False},
                     rms_norm=True, residual_in_fp32=cfg.residual_in_fp32, fused_add_norm=True,
                     pad_vocab_size_multiple=cfg.pad_vocab_size_multiple, tie_embeddings=cfg.tie_embeddings)
    m = MambaLMHeadModel(mc, device="cuda", dtype=dtype)
    result = m.load_state_dict(sd, strict=not cfg.tie_embeddings)
    missing = [k for k in result.missing_keys if k != "lm_head.weight"]
    assert not missing and not result.unexpected_keys, result
    return m.eval()


@contextmanager
def ours_config(name: str):
    """The context in which a configuration of ours runs."""
    with tri.disabled("cuda", OFF[name]) if OFF[name] else nullcontext(), \
            tri.enabled("cuda", ON[name]) if name in ON else nullcontext():
        yield


def prefill_graph(model, ids):
    """A replay function of one prefill (zero states, last-position logits) captured in a CUDA graph."""
    conv, ssm = model.init_states(ids.shape[0], "cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # first calls compile and tune: not capturable
        for _ in range(2):
            model(ids, conv, ssm, last_token_only=True)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        model(ids, conv, ssm, last_token_only=True)
    return graph.replay


def gpu_kernels(fn) -> dict:
    """Kernel (and copy) launches on the GPU during one call of ``fn``: name -> [launches, device µs], from the
    torch profiler. CUPTI sees the whole process, so ONNX Runtime's kernels (its own and our custom ops') count too."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    out = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            n, us = out.get(e.name, (0, 0.0))
            out[e.name] = (n + 1, us + e.device_time_total)
    return out


def cuda_kernels(fn) -> Counter:
    """Launches during one call of ``fn``, by kernel name."""
    return Counter({name: n for name, (n, _) in gpu_kernels(fn).items()})


def kernel_profile(fn, top: int = 10) -> dict:
    """Launches and device time of one call of ``fn``, in total and for its costliest kernels."""
    k = gpu_kernels(fn)
    return {"launches": sum(n for n, _ in k.values()), "device_us": sum(us for _, us in k.values()),
            "top": {name[:90]: [n, round(us, 1)] for name, (n, us) in sorted(k.items(), key=lambda kv: -kv[1][1])[:top]}}


def launch_counts(model, b: int, replay) -> dict:
    """Launches of one decode step: the eager in-place step (what the graph holds), per step and per layer, its
    most frequent kernels, and the kernels the profiler sees in one replay of the captured graph."""
    conv, ssm = model.init_states(b, "cuda")
    token = torch.zeros(b, 1, dtype=torch.long, device="cuda")
    eager = cuda_kernels(lambda: model(token, conv, ssm, decode=True, last_token_only=True, in_place=True))
    total = sum(eager.values())
    return {"per_step": total, "per_layer": total / model.cfg.n_layer, "top": dict(eager.most_common(8)),
            "in_replay": sum(cuda_kernels(replay).values())}


def warm_up(seconds: float = 5.0):
    """Keeps the GPU busy before the first timing: the first point of a cold run measured up to 2x slower on both
    sides (clocks ramping)."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        a @ a
    torch.cuda.synchronize()


def onnx_backends(work: Path, name: str, dtype: str, custom_ops: Path | None) -> tuple[dict, dict]:
    """The ONNX Runtime CUDA rows, by label: (backend, its decode-graph backend or None), and why
    any is missing. The decode graphs (``--graph decode`` exports of the same flavor, ONNX Runtime's CUDA graphs:
    runtime/ort_graphs.py) take over the unified export's prefill states, as a server would."""
    from bench_backends_gpu import CUSTOM_OPS_FLAVOR, CUSTOM_OPS_LABEL, _custom_ops, _decode_dir, _export_dir

    from ssd_deploy.errors import UserError
    from ssd_deploy.runtime.backends import OrtBackend

    flavors = {"ort-ort": ("ort", None), CUSTOM_OPS_LABEL: (CUSTOM_OPS_FLAVOR, lambda: _custom_ops(custom_ops))}
    opened, missing = {}, {}
    for label, (flavor, ops) in flavors.items():
        try:
            backend = OrtBackend(_export_dir(work, name, dtype, flavor), "cuda", custom_ops=ops and ops())
        except (UserError, OSError, RuntimeError, ImportError) as e:
            missing[label] = str(e)[:500]
            log(f"{name} {label}: not run: {missing[label]}")
            continue
        try:
            graphs = OrtBackend(_decode_dir(work, name, dtype, flavor), "cuda", custom_ops=ops and ops(),
                                cuda_graph=True)
        except (UserError, OSError, RuntimeError, ImportError) as e:
            graphs, missing[f"{label}-decode-graphs"] = None, str(e)[:500]
            log(f"{name} {label}-decode-graphs: not run: {missing[f'{label}-decode-graphs']}")
        opened[label] = (backend, graphs)
    return opened, missing


def graph_decode(unified, graphs, host, steps: int) -> dict:
    """Decode ms/token through ``graphs`` from the unified export's prefill states, and the relative error of its
    first step against the unified graph's own step from the same states."""
    from ssd_deploy import bench

    logits, states = unified.forward(host, unified.zero_states(host.shape[0]))
    token = logits.argmax(-1)[:, None]
    want, _ = unified.forward(token, states)
    got, states = graphs.forward(token, states)
    out = {"err_vs_unified_step": float(np.linalg.norm(got - want) / np.linalg.norm(want))}
    carry = [got, states]

    def step():
        carry[0], carry[1] = graphs.forward(carry[0].argmax(-1)[:, None], carry[1])

    for _ in range(3):  # warm-up: the first call of a batch size captures its graphs
        step()
    times = []
    for _ in range(steps):
        t, _ = bench._timed(graphs, step)
        times.append(t * 1e3)
    out["decode_ms"] = summary(times)
    out["step_kernels"] = kernel_profile(step)  # what one replay launches: the decode gap's profile
    return out


def onnx_points(backends: dict, ids: torch.Tensor, ref: torch.Tensor, decode_tokens: int, repeats: int,
                profile: bool) -> dict:
    """Prefill ms and decode ms/token of each ONNX Runtime backend on the same prompt, parity against ``ref``, and
    its decode graphs' ms/token; with ``profile``, the device time of a prefill by kernel (CUPTI)."""
    from ssd_deploy import bench

    host = ids.cpu().numpy()
    out = {}
    for label, (backend, graphs) in backends.items():
        logits, _ = backend.forward(host, backend.zero_states(host.shape[0]))
        pre, step = bench.timings(backend, host, decode_tokens, repeats)
        out[label] = {"prefill_ms": summary([t * 1e3 for t in pre]), "decode_ms": summary([t * 1e3 for t in step]),
                      "err": rel(torch.from_numpy(logits), ref.cpu()), "dtype": backend.dtype}
        if graphs is not None:
            out[label]["decode_graphs"] = graph_decode(backend, graphs, host, decode_tokens)
        if profile:
            out[label]["prefill_kernels"] = kernel_profile(
                lambda: backend.forward(host, backend.zero_states(host.shape[0])))
    return out


@torch.no_grad()
def bench_preset(name: str, batches, length: int, decode_tokens: int, profile_dir: Path | None,
                 onnx: tuple[Path, str, Path | None] | None = None, configs: tuple[str, ...] = tuple(OFF),
                 save=lambda res: None) -> dict:
    cfg = preset(name)
    log(f"{name}: random weights")
    base = random_model(cfg, seed=0)
    sd = {k: v for k, v in base.state_dict().items()}
    ours = random_model(cfg, seed=0).cast(torch.bfloat16).cuda().eval()
    listing32 = base.cuda().eval()  # fp32 listings: the parity reference
    theirs = mamba_ssm_model(cfg, sd, torch.bfloat16)
    res = {"preset": name, "config": cfg.to_dict(), "points": []}
    ort, res["onnx_missing"] = onnx_backends(onnx[0], name, onnx[1], onnx[2]) if onnx else ({}, {})
    gen = torch.Generator().manual_seed(1)
    for b in batches:
        ids = torch.randint(0, cfg.vocab_size, (b, length), generator=gen).cuda()
        point = {"batch": b, "length": length}

        # parity first (bf16 vs the fp32 listings, last position)
        with tri.disabled("cuda"):
            ref = listing32(ids, *listing32.init_states(b, "cuda"), last_token_only=True)[0][:, -1]
        prefill_configs = [c for c in ("ssd-scan-only", "ssd-all") if c in configs]
        for conf in prefill_configs:
            with ours_config(conf):
                point[f"err_{conf}"] = rel(ours(ids, *ours.init_states(b, "cuda"), last_token_only=True)[0][:, -1],
                                           ref)
        point["err_mamba_ssm"] = rel(theirs(ids, num_last_tokens=1).logits[:, -1], ref)

        # prefill
        for conf in prefill_configs:
            with ours_config(conf):
                t = cuda_time(lambda: ours(ids, *ours.init_states(b, "cuda"), last_token_only=True))
            point[f"prefill_ms_{conf}"] = summary(t)
        point["prefill_ms_mamba_ssm"] = summary(cuda_time(lambda: theirs(ids, num_last_tokens=1)))
        # the same prefill replayed from a CUDA graph captured for this (batch, length): what a server with
        # bucketed prompt lengths runs; a 130m prefill is launch-bound without it
        point["prefill_ms_ssd-all-graph"] = summary(cuda_time(prefill_graph(ours, ids)))

        # decode: ours through CUDA graphs, after a real prefill: its states handed over at the first step, then
        # each step updates the graph's own states in place (the steady state of a decode loop)
        for conf in configs:
            with ours_config(conf):
                _, conv, ssm = ours(ids, *ours.init_states(b, "cuda"), last_token_only=True)
                graphs = DecodeGraphs(partial(ours, decode=True, last_token_only=True, in_place=True))
                tok = ids[:, -1:].clone()
                state = [conv, ssm]

                def step():
                    logits, state[0], state[1] = graphs(tok, state[0], state[1])

                point[f"decode_ms_{conf}"] = summary(cuda_time(step, warmup=3, repeats=decode_tokens))
                point[f"decode_handovers_{conf}"] = graphs.handovers  # 1: the prefill's states, never per step
                replay = graphs.captured[b].replay
                point[f"decode_replay_ms_{conf}"] = summary(cuda_time(replay, warmup=3, repeats=decode_tokens))
                point[f"launches_{conf}"] = launch_counts(ours, b, replay)
        # mamba_ssm: generate(cg=True) at two lengths, the difference per token (its graph cache is per batch size:
        # run batches in increasing order, a smaller batch after a larger one trips its assertions)
        short, long_ = 8, 8 + decode_tokens

        def gen_ms(n):
            return cuda_time(lambda: theirs.generate(ids, max_length=length + n, cg=True, top_k=1), warmup=1,
                             repeats=3)
        t_short, t_long = statistics.median(gen_ms(short)), statistics.median(gen_ms(long_))
        point["decode_ms_mamba_ssm"] = {"median": (t_long - t_short) / decode_tokens}
        if ort:
            point["onnx"] = onnx_points(ort, ids, ref, decode_tokens, repeats=10, profile=b == max(batches))
        res["points"].append(point)
        save(res)
        log(f"{name} b{b}: " + json.dumps({k: (v.get("median", v) if isinstance(v, dict) else v) for k, v in point.items()}))

        if profile_dir is not None and b == max(batches):
            from torch.profiler import ProfilerActivity, profile

            for label, fn in (("ssd-all", lambda: ours(ids, *ours.init_states(b, "cuda"), last_token_only=True)),
                              ("mamba_ssm", lambda: theirs(ids, num_last_tokens=1))):
                fn()
                torch.cuda.synchronize()
                with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                    fn()
                    torch.cuda.synchronize()
                (profile_dir / f"profile_{name}_b{b}_{label}.txt").write_text(
                    prof.key_averages().table(sort_by="cuda_time_total", row_limit=25))
    del ours, theirs, listing32, base, ort
    torch.cuda.empty_cache()
    return res


@torch.no_grad()
def fp32_crosscheck() -> dict:
    """130m at fp32: mamba_ssm vs ssd-deploy's listings, last-position logits and 32 greedy tokens."""
    cfg = preset("130m")
    base = random_model(cfg, seed=0)
    sd = dict(base.state_dict())
    ours = base.cuda().eval()
    theirs = mamba_ssm_model(cfg, sd, torch.float32)
    ids = torch.randint(0, cfg.vocab_size, (1, 64), generator=torch.Generator().manual_seed(2)).cuda()
    with tri.disabled("cuda"):
        ref = ours(ids, *ours.init_states(1, "cuda"), last_token_only=True)[0][:, -1]
        out = theirs(ids, num_last_tokens=1).logits[:, -1]
        toks, (conv, ssm), cur = [], ours.init_states(1, "cuda"), ids
        for _ in range(32):
            logits, conv, ssm = ours(cur, conv, ssm, decode=cur.shape[1] == 1, last_token_only=True)
            cur = logits[:, -1, :cfg.vocab_size].argmax(-1, keepdim=True)
            toks.append(int(cur))
    theirs_toks = theirs.generate(ids, max_length=64 + 32, cg=False, top_k=1)[0, 64:].tolist()
    return {"logits_rel_err": rel(out, ref), "greedy_identical": toks == theirs_toks, "ours": toks,
            "theirs": theirs_toks}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--presets", default="130m,2.7b")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--length", type=int, default=2048)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--onnx", type=Path, default=None, help="bench_backends_gpu.py prepare's work folder")
    ap.add_argument("--onnx-dtype", default="fp16")
    ap.add_argument("--ort-custom-ops", type=Path, default=None)
    ap.add_argument("--configs", default=",".join(OFF), help=f"ssd-deploy configurations to run, of {', '.join(OFF)} "
                    "(prefill: ssd-scan-only and ssd-all; ssd-all always runs)")
    args = ap.parse_args()
    configs = tuple(dict.fromkeys(["ssd-all", *args.configs.split(",")]))
    unknown = [c for c in configs if c not in OFF]
    if unknown:
        ap.error(f"unknown configuration(s) {unknown}")
    sys.path.insert(0, os.environ.get("MAMBA_SSM_SRC", ".gpu/mamba_src"))
    assert tri.register("cuda"), "Triton kernels not registered"
    warm_up()
    args.out.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    report = {"date": datetime.date.today().isoformat(), "commit": commit or os.environ.get("COMMIT", "?"),
              "device": torch.cuda.get_device_name(), "torch": torch.__version__, "presets": []}
    report["fp32_crosscheck"] = fp32_crosscheck()
    log(f"fp32 cross-check: {report['fp32_crosscheck']['logits_rel_err']:.2e}, greedy identical: "
        f"{report['fp32_crosscheck']['greedy_identical']}")
    def save(res: dict):  # after every point: a run stopped by its time limit keeps what it measured
        report["presets"] = [p for p in report["presets"] if p is not res] + [res]
        (args.out / "bench_model_gpu.json").write_text(json.dumps(report, indent=1))

    for name in args.presets.split(","):
        bench_preset(name, [int(b) for b in args.batches.split(",")], args.length, args.decode_tokens,
                     args.out if args.profile else None,
                     (args.onnx, args.onnx_dtype, args.ort_custom_ops) if args.onnx else None, configs, save)
    tables(report, configs, args.length)  # the short tables, last


def tables(report: dict, configs: tuple[str, ...], length: int):
    """The short tables (markdown) of a report."""
    print(f"\n{report['device']}, {report['date']}, commit {report['commit']}; bf16, prompt {length}")
    points = [(p["preset"], q) for p in report["presets"] for q in p["points"]]
    pre_confs = [c for c in ("ssd-scan-only", "ssd-all") if c in configs] + ["ssd-all-graph", "mamba_ssm"]
    print(f"| model, b | prefill ms: {' / '.join(pre_confs)} | mamba_ssm ÷ ssd-all, ÷ ssd-all-graph | err: ssd-all / "
          "mamba_ssm |")
    for name, q in points:
        pre = {c: q[f"prefill_ms_{c}"]["median"] for c in pre_confs}
        print(f"| {name}, {q['batch']} | {' / '.join(f'{pre[c]:.2f}' for c in pre_confs)} | "
              f"{pre['mamba_ssm'] / pre['ssd-all']:.2f}x, {pre['mamba_ssm'] / pre['ssd-all-graph']:.2f}x | "
              f"{q['err_ssd-all']:.1e} / {q['err_mamba_ssm']:.1e} |")
    print(f"\n| model, b | decode ms/token (replay): {' / '.join(configs)} / mamba_ssm | mamba_ssm ÷ each | launches "
          "per step (per layer) |")
    for name, q in points:
        theirs = q["decode_ms_mamba_ssm"]["median"]
        ms = [f"{q[f'decode_ms_{c}']['median']:.3f} ({q[f'decode_replay_ms_{c}']['median']:.3f})" for c in configs]
        print(f"| {name}, {q['batch']} | {' / '.join(ms)} / {theirs:.3f} | "
              + ", ".join(f"{theirs / q[f'decode_ms_{c}']['median']:.2f}x" for c in configs) + " | "
              + ", ".join(f"{q[f'launches_{c}']['per_step']} ({q[f'launches_{c}']['per_layer']:.2f})"
                          for c in configs) + " |")
    onnx_rows = [(p["preset"], q, label, r) for p in report["presets"] for q in p["points"]
                 for label, r in q.get("onnx", {}).items()]
    if onnx_rows:
        print("\n| model, b | ONNX Runtime CUDA | prefill ms (mamba_ssm ÷ it) | decode ms/token (mamba_ssm ÷ it) | "
              "decode graphs ms/token (mamba_ssm ÷ it) | err |")
        for name, q, label, r in onnx_rows:
            pre, dec, theirs = r["prefill_ms"]["median"], r["decode_ms"]["median"], q["decode_ms_mamba_ssm"]["median"]
            g = r.get("decode_graphs")
            graphs = f"{g['decode_ms']['median']:.3f} ({theirs / g['decode_ms']['median']:.2f}x)" if g else "–"
            print(f"| {name}, {q['batch']} | {label} ({r['dtype']}) | {pre:.2f} "
                  f"({q['prefill_ms_mamba_ssm']['median'] / pre:.2f}x) | {dec:.3f} ({theirs / dec:.2f}x) | {graphs} | "
                  f"{r['err']:.1e} |")
    for p in report["presets"]:
        for label, why in p.get("onnx_missing", {}).items():
            print(f"{p['preset']} {label}: not run: {why[:200]}")


if __name__ == "__main__":
    main()
