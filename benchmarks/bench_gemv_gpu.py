"""The decode step's norm + projection kernel (``ssd_deploy/ssd/triton/gemv.py``) alone on one GPU, against the
weight-read floor and cuBLAS: what to tune it by.

    PYTHONPATH=. python benchmarks/bench_gemv_gpu.py --out DIR [--presets 130m,2.7b] [--batches 1,8]

For each preset's three projections of a decode step (RMSNorm + in_proj, gated RMSNorm + out_proj + residual add,
RMSNorm + lm_head), bf16 weights, at each batch: every config of ``gemv.CONFIGS`` forced, the autotuned choice
(plain launches and programmatic dependent launches), and cuBLAS's ``F.linear`` on the already-normalised rows (the
projection alone: what the norms and the residual add ride on). Each is checked against the float64 listing first
(relative error <= 1e-2), then timed as device time per call: a CUDA graph of one call per weight copy, over enough
copies that no weight is found in the L2 (as in a decode step, where every layer's weights are new), CUDA events
around whole replays, median of 20. A chain of dependent calls is what a decode step is, so the per-call time holds
the launch latency too; GB/s is weight bytes / time. The copy bandwidth (one torch copy of 1 GiB) is measured in the
same run. A markdown table is printed last; everything goes to DIR/bench_gemv_gpu.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import statistics
import subprocess
from pathlib import Path

import torch
import torch.nn.functional as F

from ssd_deploy.presets import preset
from ssd_deploy.ssd import reference
from ssd_deploy.ssd.triton.gemv import CONFIGS, _norm_gemv_kernel, norm_gemv

L2_BYTES = 50 * 2**20  # H100/H200; copies cover 4x this
DTYPE = torch.bfloat16
EPS = 1e-5


def graph_ms(calls) -> float:
    """Median device ms per call of ``calls`` (a list of zero-argument functions) replayed from one CUDA graph."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # compiles and tunes outside the capture
        for call in calls:
            call()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    for _ in range(3):
        graph.replay()
    times = []
    for _ in range(20):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / len(calls))
    return statistics.median(times)


def copy_gbs() -> float:
    src = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = graph_ms([lambda: dst.copy_(src)])
    return 2 * src.numel() / ms / 1e6


def projections(cfg) -> dict:
    """name: (N, K, gated, groups) of a decode step's three projections."""
    return {"in_proj": (cfg.d_in_proj, cfg.d_model, False, 1),
            "out_proj": (cfg.d_model, cfg.d_inner, True, cfg.ngroups),
            "lm_head": (cfg.padded_vocab_size, cfg.d_model, False, 1)}


@torch.no_grad()
def bench_projection(n, k, gated, groups, b, gen) -> dict:
    weight_bytes = n * k * 2
    copies = max(2, math.ceil(4 * L2_BYTES / weight_bytes))
    ws = [(torch.randn(n, k, generator=gen) / math.sqrt(k)).to(DTYPE).cuda() for _ in range(copies)]
    x = torch.randn(b, k, generator=gen).to(DTYPE).cuda()
    z = torch.randn(b, k, generator=gen).to(DTYPE).cuda() if gated else None
    nw = (1 + 0.2 * torch.randn(k, generator=gen)).to(torch.float32 if gated else DTYPE).cuda()
    res = torch.randn(b, n, generator=gen).cuda() if gated else None
    kw = {"gate": z, "group_size": k // groups, "residual": res} if gated else {}

    if gated:
        normed = reference.gated_rmsnorm(x.double(), z.double(), nw.double(), EPS, k // groups)
    else:
        v = x.double()
        normed = v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + EPS) * nw.double()
    ref = normed @ ws[0].double().T + (res.double() if gated else 0)
    normed16 = normed.to(DTYPE)

    variants = {f"cfg{i} {c.kwargs['BLOCK_N']}x{c.kwargs['BLOCK_K']} w{c.num_warps} s{c.num_stages}":
                (lambda w, c=c: norm_gemv(x, nw, EPS, w, config=c, **kw)) for i, c in enumerate(CONFIGS)}
    variants["tuned"] = lambda w: norm_gemv(x, nw, EPS, w, **kw)
    variants["tuned, PDL"] = lambda w: norm_gemv(x, nw, EPS, w, pdl=True, **kw)
    variants["cuBLAS F.linear (projection only)"] = lambda w: F.linear(normed16, w)
    out = {"N": n, "K": k, "gated": gated, "groups": groups, "batch": b, "weight_bytes": weight_bytes,
           "copies": copies, "variants": {}}
    for name, fn in variants.items():
        got = fn(ws[0]).double() + (res.double() if gated and name.startswith("cuBLAS") else 0)
        err = float((got - ref).norm() / ref.norm())
        row = {"rel_err": err}
        if not err <= 1e-2:  # NaN too
            row["error"] = "parity failed: not timed"
        else:
            row["us"] = 1e3 * graph_ms([lambda w=w: fn(w) for w in ws])
            row["GBps"] = weight_bytes / row["us"] / 1e3
        out["variants"][name] = row
    tuned = {str(key): str(cfg) for key, cfg in _norm_gemv_kernel.cache.items()}
    out["tuned_configs"] = tuned
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--presets", default="130m,2.7b")
    ap.add_argument("--batches", default="1,8")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    report = {"date": datetime.date.today().isoformat(), "commit": commit, "device": torch.cuda.get_device_name(),
              "torch": torch.__version__, "copy_GBps": copy_gbs(), "rows": []}
    gen = torch.Generator().manual_seed(0)
    for name in args.presets.split(","):
        cfg = preset(name)
        for b in (int(v) for v in args.batches.split(",")):
            for proj, (n, k, gated, groups) in projections(cfg).items():
                row = {"preset": name, "projection": proj, **bench_projection(n, k, gated, groups, b, gen)}
                report["rows"].append(row)
                (args.out / "bench_gemv_gpu.json").write_text(json.dumps(report, indent=1))
    print(f"\n{report['device']}, {report['date']}, commit {commit}; bf16 weights; copy {report['copy_GBps']:.0f} GB/s")
    print("| preset, projection, b | N x K | variant | us per call | GB/s | rel err |")
    print("|---|---|---|---|---|---|")
    for r in report["rows"]:
        for v, row in r["variants"].items():
            t = f"{row['us']:.2f} | {row['GBps']:.0f}" if "us" in row else f"{row['error']} | -"
            print(f"| {r['preset']}, {r['projection']}, {r['batch']} | {r['N']} x {r['K']} | {v} | {t} | "
                  f"{row['rel_err']:.1e} |")


if __name__ == "__main__":
    main()
