"""Time the CUDA kernels (ssd_deploy/kernels.py) at the docs/performance.md shapes, against the ceilings of this GPU.

One run measures, in this order: the ceilings (device-to-device copy bandwidth, bf16 matmul rate), then prefill
(ssd_scan, bf16, two interleaved rounds with the anchor), decode (ssd_step, fp32 state, CUDA graphs), causal_conv1d
and gated_rmsnorm. When ``mamba_ssm``'s Triton kernels import (put a copy on PYTHONPATH), mamba_chunk_scan_combined
and selective_state_update run on the same inputs beside them, with the relative difference of the outputs. Times
are medians of CUDA event timings after warm-up; every prefill input is several times the L2. Results go to --out
(JSON, rewritten after each measurement) and a table on stdout.

    PYTHONPATH=.:third_party/mamba python benchmarks/gpu_kernels_check.py --out results.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ssd_deploy import kernels  # noqa: E402

PREFILL_SHAPES = [  # b, l, h, p, n, g (docs/performance.md)
    (8, 2048, 24, 64, 128, 1),
    (4, 4096, 80, 64, 128, 1),
    (1, 8192, 128, 64, 128, 8),
    (4, 16384, 128, 64, 128, 8),
]
MAMBA_REFERENCE_MS = [0.50, 0.97, 0.59, 5.11]  # docs/performance.md's mamba_ssm figures, another run: for reference only
DECODE = dict(h=128, p=64, n=128, g=8)
L2_BYTES = 50 * 2**20


def timed(fn, reps: int, inner: int = 1, warmup: int = 2) -> float:
    """Median milliseconds per call of ``fn``: ``reps`` CUDA-event timings of ``inner`` back-to-back calls each, so
    that the host's launch overhead hides behind the GPU's work wherever the kernels are longer than it."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) / inner)
    return statistics.median(times)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm()).item()


class Report:
    def __init__(self, path: str | None):
        self.path, self.data, self.rows = path, {"meta": {}, "results": []}, []

    def add(self, **row):
        self.data["results"].append(row)
        self.rows.append(row)
        print(json.dumps(row), flush=True)
        self.save()

    def save(self):
        if self.path:
            Path(self.path).write_text(json.dumps(self.data, indent=1))


def ceilings(rep: Report) -> tuple[float, float]:
    n = 2**28  # 1 GiB of fp32 per buffer
    src = torch.randn(n, device="cuda")
    dst = torch.empty_like(src)
    ms = timed(lambda: dst.copy_(src), 20)
    copy_gbs = 2 * src.numel() * 4 / ms / 1e6
    del src, dst
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms_mm = timed(lambda: a @ b, 20)
    tflops = 2 * 8192**3 / ms_mm / 1e9
    rep.data["meta"].update(copy_GBps=copy_gbs, bf16_matmul_TFLOPs=tflops)
    rep.add(kind="ceiling", what="d2d copy 1 GiB", ms=ms, GBps=copy_gbs)
    rep.add(kind="ceiling", what="bf16 matmul 8192^3 random", ms=ms_mm, TFLOPs=tflops)
    return copy_gbs, tflops


def prefill_inputs(b, l, h, p, n, g, gen):
    dev, bf = "cuda", torch.bfloat16
    x = torch.randn(b, l, h, p, device=dev, generator=gen).to(bf)
    dt = (torch.randn(b, l, h, device=dev, generator=gen) * 0.5).to(bf)
    A = -torch.exp(torch.rand(h, device=dev, generator=gen) * math.log(16))
    B = torch.randn(b, l, g, n, device=dev, generator=gen).to(bf)
    C = torch.randn(b, l, g, n, device=dev, generator=gen).to(bf)
    D = torch.randn(h, device=dev, generator=gen)
    dt_bias = torch.log(torch.expm1(0.001 + 0.099 * torch.rand(h, device=dev, generator=gen)))
    return x, dt, A, B, C, D, dt_bias


def prefill_floor(b, l, h, p, n, g, copy_gbs, tflops, q=256):
    """docs/performance.md's floors: one pass over x, y, B, C, dt (bf16) and the final state (fp32); FLOPs of full QxQ blocks,
    CB once per group, two state products per token-head."""
    tokens = b * l
    flops = tokens * h * (2 * q * p + 4 * p * n) + tokens * g * 2 * q * n
    nbytes = 2 * (2 * tokens * h * p + 2 * tokens * g * n + tokens * h) + 4 * b * h * p * n
    return flops, nbytes, flops / tflops / 1e9, nbytes / copy_gbs / 1e6


def bench_prefill(rep, copy_gbs, tflops, mamba, reps):
    gen = torch.Generator(device="cuda").manual_seed(0)
    for shape, mamba_reference in zip(PREFILL_SHAPES, MAMBA_REFERENCE_MS):
        b, l, h, p, n, g = shape
        x, dt, A, B, C, D, dt_bias = prefill_inputs(b, l, h, p, n, g, gen)
        flops, nbytes, t_c, t_m = prefill_floor(b, l, h, p, n, g, copy_gbs, tflops)
        impls = {"cuda (tile 128)": lambda: kernels.ssd_scan(x, dt, A, B, C, D, dt_bias, None, chunk_size=256)}
        if mamba is not None:
            impls["mamba_ssm chunk 256"] = lambda: mamba["scan"](x, dt, A, B, C, 256, D=D, dt_bias=dt_bias,
                                                                 dt_softplus=True, return_final_states=True)
        # two rounds, interleaved: the spread between rounds is the noise floor of the comparison
        rounds = {name: [] for name in impls}
        for _ in range(2):
            for name, fn in impls.items():
                rounds[name].append(timed(fn, reps, inner=5))
        outs = {name: fn() for name, fn in impls.items()}
        for name, times in rounds.items():
            ms = min(times)
            row = dict(kind="prefill", impl=name, shape=shape, ms=ms, ms_rounds=times, TFLOPs=flops / ms / 1e9,
                       frac_matmul=flops / ms / 1e9 / tflops, GBps=nbytes / ms / 1e6,
                       frac_copy=nbytes / ms / 1e6 / copy_gbs)
            if name.startswith("cuda"):
                row.update(floor_compute_ms=t_c, floor_memory_ms=t_m, mamba_reference_ms=mamba_reference)
                if mamba is not None:
                    row["speedup_vs_mamba_same_run"] = min(rounds["mamba_ssm chunk 256"]) / ms
            rep.add(**row)
        if mamba is not None:
            (y, s), (y_m, s_m) = outs.values()
            rep.add(kind="prefill_parity", shape=shape, what="cuda vs mamba_ssm", rel_y=rel(y, y_m),
                    rel_state=rel(s, s_m))
        del x, dt, B, C, outs
        torch.cuda.empty_cache()


def graph_of(fn) -> torch.cuda.CUDAGraph:
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()  # warm-up outside capture (loads modules, autotunes)
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g


def bench_decode(rep, copy_gbs, mamba, reps):
    h, p, n, g = DECODE["h"], DECODE["p"], DECODE["n"], DECODE["g"]
    gen = torch.Generator(device="cuda").manual_seed(1)
    for b in (1, 16, 64):
        state_bytes = b * h * p * n * 4
        layers = max(1, math.ceil(3 * L2_BYTES / state_bytes))  # distinct states per graph: past the L2
        states = [torch.randn(b, h, p, n, device="cuda", generator=gen) for _ in range(layers)]
        x = torch.randn(b, h, p, device="cuda", generator=gen).bfloat16()
        dt = (torch.randn(b, h, device="cuda", generator=gen) * 0.5).bfloat16()
        B = torch.randn(b, g, n, device="cuda", generator=gen).bfloat16()
        C = torch.randn(b, g, n, device="cuda", generator=gen).bfloat16()
        A = -torch.exp(torch.rand(h, device="cuda", generator=gen) * math.log(16))
        D = torch.randn(h, device="cuda", generator=gen)
        dt_bias = torch.log(torch.expm1(0.001 + 0.099 * torch.rand(h, device="cuda", generator=gen)))
        y = torch.empty_like(x)
        nbytes = 2 * state_bytes + 2 * (2 * x.numel() + dt.numel() + 2 * B.numel())

        def ours(s):
            return lambda: kernels.ssd_step(s, x, dt, A, B, C, D, dt_bias, out=(y, s))

        impls = {"cuda": ours}
        if mamba is not None:
            A_e, dtb_e, D_e = A[:, None, None].expand(h, p, n), dt_bias[:, None].expand(h, p), D[:, None].expand(h, p)
            dt_e = dt[..., None].expand(b, h, p)

            def theirs(s):
                return lambda: mamba["step"](s, x, dt_e, A_e, B, C, D=D_e, dt_bias=dtb_e, dt_softplus=True)
            impls["mamba_ssm selective_state_update"] = theirs
        for name, make in impls.items():
            # one step per graph launch (what a one-layer decode loop pays), then graphs of `layers` steps:
            # on one state (it stays in L2) and on distinct states (each step reads its state from HBM)
            one = graph_of(make(states[0]))
            us_one = timed(one.replay, reps, inner=20) * 1e3
            hot_fn = make(states[0])
            hot = graph_of(lambda: [hot_fn() for _ in range(layers)])
            us_hot = timed(hot.replay, reps) * 1e3 / layers
            fns = [make(s) for s in states]
            cold = graph_of(lambda: [f() for f in fns])
            ms_cold = timed(cold.replay, reps) / layers
            rep.add(kind="decode", impl=name, b=b, us_one_step_graph=us_one, us_per_step_hot=us_hot,
                    us_per_step_cold=ms_cold * 1e3, layers_in_graph=layers, GBps_cold=nbytes / ms_cold / 1e6,
                    frac_copy_cold=nbytes / ms_cold / 1e6 / copy_gbs)
        del states
        torch.cuda.empty_cache()


def bench_conv_norm(rep, copy_gbs, reps):
    gen = torch.Generator(device="cuda").manual_seed(2)
    b, l, d, g, n, k = 4, 4096, 8192, 8, 128, 4
    d_conv = d + 2 * g * n
    x = torch.randn(b, l, d_conv, device="cuda", generator=gen).bfloat16()
    w = torch.randn(d_conv, k, device="cuda", generator=gen) * 0.5
    bias = torch.randn(d_conv, device="cuda", generator=gen)
    st = torch.randn(b, d_conv, k - 1, device="cuda", generator=gen)
    ms = timed(lambda: kernels.causal_conv1d(x, w, bias, st), reps, inner=5)
    nbytes = 2 * x.numel() * 2
    rep.add(kind="conv", shape=(b, l, d_conv, k), ms=ms, GBps=nbytes / ms / 1e6, frac_copy=nbytes / ms / 1e6 / copy_gbs)
    del x
    yv = torch.randn(b * l, d, device="cuda", generator=gen).bfloat16()
    zv = torch.randn(b * l, d, device="cuda", generator=gen).bfloat16()
    wn = torch.randn(d, device="cuda", generator=gen)
    ms = timed(lambda: kernels.gated_rmsnorm(yv, zv, wn, 1e-5, d // g), reps, inner=5)
    nbytes = 3 * yv.numel() * 2
    rep.add(kind="gated_rmsnorm", shape=(b * l, d, d // g), ms=ms, GBps=nbytes / ms / 1e6,
            frac_copy=nbytes / ms / 1e6 / copy_gbs)


def load_mamba():
    try:
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except Exception as e:  # noqa: BLE001  (any import failure just means: no anchor in this run)
        print(f"mamba_ssm Triton kernels not importable ({type(e).__name__}: {e}); measuring ours only")
        return None
    return {"scan": mamba_chunk_scan_combined, "step": selective_state_update}


def table(rep: Report) -> None:
    print("\n| kind | impl | shape/b | ms | TFLOP/s | GB/s | frac copy | frac matmul | note |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rep.rows:
        if r["kind"] == "prefill":
            rounds = "/".join(f"{t:.3f}" for t in r["ms_rounds"])
            note = f"rounds {rounds} ms"
            if "floor_compute_ms" in r:
                note += (f"; floor {max(r['floor_compute_ms'], r['floor_memory_ms']):.3f} ms; "
                         f"x{r.get('speedup_vs_mamba_same_run', float('nan')):.2f} vs mamba_ssm here "
                         f"(docs/performance.md: mamba {r['mamba_reference_ms']} ms)")
            print(f"| prefill | {r['impl']} | {tuple(r['shape'])} | {r['ms']:.3f} | {r['TFLOPs']:.0f} | "
                  f"{r['GBps']:.0f} | {r['frac_copy']:.2f} | {r['frac_matmul']:.2f} | {note} |")
        elif r["kind"] == "prefill_parity":
            print(f"| parity | {r['what']} | {tuple(r['shape'])} | | | | | | rel y {r['rel_y']:.2e}, "
                  f"state {r['rel_state']:.2e} |")
        elif r["kind"] == "decode":
            print(f"| decode | {r['impl']} | b={r['b']} | {r['us_per_step_cold'] / 1e3:.4f} | | {r['GBps_cold']:.0f} "
                  f"| {r['frac_copy_cold']:.2f} | | per step: cold {r['us_per_step_cold']:.2f} us, hot "
                  f"{r['us_per_step_hot']:.2f} us; one-step graph {r['us_one_step_graph']:.2f} us |")
        elif r["kind"] in ("conv", "gated_rmsnorm"):
            print(f"| {r['kind']} | cuda | {tuple(r['shape'])} | {r['ms']:.3f} | | {r['GBps']:.0f} | "
                  f"{r['frac_copy']:.2f} | | |")
        elif r["kind"] == "ceiling":
            print(f"| ceiling | {r['what']} | | {r['ms']:.3f} | {r.get('TFLOPs', 0):.0f} | {r.get('GBps', 0):.0f} "
                  f"| | | |")


def once():
    gen = torch.Generator(device="cuda").manual_seed(3)
    x, dt, A, B, C, D, dt_bias = prefill_inputs(*PREFILL_SHAPES[2], gen)
    kernels.ssd_scan(x, dt, A, B, C, D, dt_bias, None, chunk_size=128)
    h, p, n, g = DECODE["h"], DECODE["p"], DECODE["n"], DECODE["g"]
    xs, dts, _, Bs, Cs, _, _ = (t[:, 0].contiguous() if t.dim() > 1 else t
                                for t in prefill_inputs(16, 1, h, p, n, g, gen))
    state = torch.randn(16, h, p, n, device="cuda", generator=gen)
    kernels.ssd_step(state, xs, dts, A, Bs, Cs, D, dt_bias, out=(torch.empty_like(xs), state))
    xc = torch.randn(4, 4096, 10240, device="cuda", generator=gen).bfloat16()
    kernels.causal_conv1d(xc, torch.randn(10240, 4, device="cuda", generator=gen), None,
                          torch.randn(4, 10240, 3, device="cuda", generator=gen))
    torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="JSON results file")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--no-mamba", action="store_true", help="skip the mamba_ssm anchor")
    ap.add_argument("--only", choices=["prefill", "decode", "conv_norm"], action="append")
    ap.add_argument("--once", action="store_true",
                    help="launch one prefill (docs/performance.md shape 3), decode step (b=16) and conv each, for a profiler")
    args = ap.parse_args()
    if args.once:
        once()
        return
    rep = Report(args.out)
    props = torch.cuda.get_device_properties(0)
    rep.data["meta"].update(gpu=props.name, sms=props.multi_processor_count, torch=torch.__version__,
                            date=time.strftime("%Y-%m-%d %H:%M:%S %Z"), commit=os.environ.get("SSD_COMMIT", "?"),
                            library=str(kernels.library_path()))
    print(json.dumps(rep.data["meta"]), flush=True)
    copy_gbs, tflops = ceilings(rep)
    mamba = None if args.no_mamba else load_mamba()
    only = set(args.only or ["prefill", "decode", "conv_norm"])
    try:
        if "prefill" in only:
            bench_prefill(rep, copy_gbs, tflops, mamba, args.reps)
        if "decode" in only:
            bench_decode(rep, copy_gbs, mamba, args.reps)
        if "conv_norm" in only:
            bench_conv_norm(rep, copy_gbs, args.reps)
    finally:
        table(rep)


if __name__ == "__main__":
    main()
