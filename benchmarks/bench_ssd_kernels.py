"""SSD kernels side by side on one GPU: our Triton kernels, mamba_ssm's Triton kernels, our CUDA kernels.

    PYTHONPATH=. python3 benchmarks/bench_ssd_kernels.py --out DIR [--commit HASH] [--mamba third_party/mamba]

Prefill: the docs/performance.md shapes in bf16, chunk 256, no initial state; ours ``ssd_deploy.ssd.triton.scan.ssd_scan``
against ``mamba_chunk_scan_combined`` (final state returned by both). Decode: one step at batch 1, 4, 16, 64
(h128 p64 n128 g8, bf16 activations, fp32 state updated in place) against ``selective_state_update``, with Triton
block-size variants and a bandwidth anchor (the state read and written in place by one torch kernel).

mamba_ssm is read from a source copy (``third_party/mamba``, carried to the GPU machine): only its Triton modules
are imported, under a stand-in ``mamba_ssm`` package, because its ``__init__`` pulls CUDA extensions not built
there. Our CUDA kernels come from ``ssd_deploy.kernels`` when it imports and its ``build()`` succeeds (for this
GPU's architecture only); otherwise they are reported 'not available' with the reason.

Every implementation is checked against the reference before it is timed (prefill: the fp32 chunked listing on
the same rounded inputs; decode: the float64 step). Times come from CUDA graphs that run the implementation once
per input set, over enough rotating sets that nothing is found in the L2; CUDA events around whole replays, median
of 20, in 5 rounds interleaved across implementations (the median round is reported, with the rounds' spread). So
they are device times without Python launch overhead; ``eager_ms`` (``triton.testing.do_bench``, median, L2 flushed
before each run) keeps it, for comparison. A profiler pass gives each kernel's share. The copy bandwidth and the
bf16 matmul rate are measured in the same run and give the floors: prefill max(flops / matmul rate, bytes / copy
bandwidth) with flops = b·l·(h·(4pn + 2Qp) + g·2Qn) and bytes = x, dt, B, C read once, y and the final state written
once (the docs/performance.md counts); decode 2·state bytes (+ the small tensors) / copy bandwidth. A markdown table is printed
last; everything goes to DIR/bench_ssd_kernels.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import subprocess
import sys
import types
from pathlib import Path

import torch
import triton
from triton.testing import do_bench

from ssd_deploy.ssd import reference
from ssd_deploy.ssd.triton import scan as triton_scan
from ssd_deploy.ssd.triton.scan import ssd_scan
from ssd_deploy.ssd.triton.step import default_block_p, ssd_step

PREFILL_SHAPES = [(8, 2048, 24, 64, 128, 1), (4, 4096, 80, 64, 128, 1), (1, 8192, 128, 64, 128, 8),
                  (4, 16384, 128, 64, 128, 8)]  # b, l, h, p, n, g
DECODE_BATCHES = [1, 4, 16, 64]
DECODE_HEADS = (128, 64, 128, 8)  # h, p, n, g
CHUNK = 256
DTYPE = torch.bfloat16
PARITY_TOL = 1e-2


def median_ms(fn) -> float:
    return do_bench(fn, warmup=50, rep=300, return_mode="median")


def ceilings() -> dict:
    """Device copy bandwidth (bytes read + written) and bf16 matmul rate on random data."""
    src = torch.randn(2 ** 28, device="cuda")  # 1 GiB
    dst = torch.empty_like(src)
    copy_ms = median_ms(lambda: dst.copy_(src))
    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    mm_ms = median_ms(lambda: a @ b)
    return {"copy_GBps": 2 * src.numel() * 4 / copy_ms / 1e6, "bf16_TFLOPs": 2 * 8192 ** 3 / mm_ms / 1e9}


def load_mamba(root: Path):
    """mamba_ssm's Triton entry points, imported without running mamba_ssm/__init__.py."""
    pkg = types.ModuleType("mamba_ssm")
    pkg.__path__ = [str(root / "mamba_ssm")]
    sys.modules["mamba_ssm"] = pkg
    from mamba_ssm.ops.triton.selective_state_update import selective_state_update
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    def scan(x, dt, A, B, C, D, dt_bias):
        return mamba_chunk_scan_combined(x, dt, A, B, C, CHUNK, D=D, dt_bias=dt_bias, dt_softplus=True,
                                         return_final_states=True)

    def step(state, x, dt, A, B, C, D, dt_bias):
        """In place, as Mamba2.step calls it: per-head parameters broadcast over p and n."""
        h, p, n = state.shape[1:]
        return selective_state_update(state, x, dt[..., None].expand(-1, -1, p), A[:, None, None].expand(h, p, n),
                                      B, C, D=D[:, None].expand(h, p), dt_bias=dt_bias[:, None].expand(h, p),
                                      dt_softplus=True)

    return scan, step


def load_cuda_kernels():
    """Our CUDA kernels (ssd_deploy.kernels), built here for this GPU; (scan, step) or why they are not available."""
    try:
        import ssd_deploy.kernels as kernels

        major, minor = torch.cuda.get_device_capability()
        kernels.build(archs=[f"{major}{minor}"])

        def scan(x, dt, A, B, C, D, dt_bias):
            return kernels.ssd_scan(x, dt, A, B, C, D, dt_bias, None, chunk_size=CHUNK, dt_softplus=True)

        def step(state, x, dt, A, B, C, D, dt_bias):
            """In place, like the others."""
            return kernels.ssd_step(state, x, dt, A, B, C, D, dt_bias, dt_softplus=True,
                                    out=(torch.empty_like(x), state))

        return (scan, step), None
    except Exception as e:  # any failure to import or build means: not available, say why
        return None, f"{type(e).__name__}: {e}"


def random_inputs(b, l, h, p, n, g, seed=0) -> dict:
    """bf16 activations; dt' ≈ softplus(N(0, .5²) + inverse softplus(log-uniform [1e-3, 1e-1])); A in [-16, -1]."""
    gen = torch.Generator(device="cuda").manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, device="cuda", generator=gen)

    dt_target = torch.exp(torch.rand(h, device="cuda", generator=gen) * math.log(100) + math.log(1e-3))
    return dict(x=rnd(b, l, h, p).to(DTYPE), dt=(0.5 * rnd(b, l, h)).to(DTYPE),
                A=-torch.exp(torch.rand(h, device="cuda", generator=gen) * math.log(16)),
                B=rnd(b, l, g, n).to(DTYPE), C=rnd(b, l, g, n).to(DTYPE), D=rnd(h),
                dt_bias=dt_target + torch.log(-torch.expm1(-dt_target)))


def rel_err(out, ref) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def prefill_floor(b, l, h, p, n, g, ceil) -> dict:
    flops = b * l * (h * (4 * p * n + 2 * CHUNK * p) + g * 2 * CHUNK * n)
    es = torch.finfo(DTYPE).bits // 8
    nbytes = es * (2 * b * l * h * p + 2 * b * l * g * n + b * l * h) + 4 * b * h * p * n
    compute_ms = flops / ceil["bf16_TFLOPs"] / 1e9
    memory_ms = nbytes / ceil["copy_GBps"] / 1e6
    return {"compute_ms": compute_ms, "memory_ms": memory_ms, "floor_ms": max(compute_ms, memory_ms)}


def set_count(set_bytes: int, l2_bytes: int) -> int:
    """Input sets to rotate through so that a graph replay finds none of its inputs in the L2."""
    return max(2, math.ceil(3 * l2_bytes / set_bytes))


def capture(fn, sets) -> torch.cuda.CUDAGraph:
    """A CUDA graph that runs ``fn`` once per input set (already warmed up: compiled and tuned)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for s in sets:
            fn(*s)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for s in sets:
            fn(*s)
    return graph


def replay_ms(graph, nsets, reps=20) -> float:
    """Median time of one call, from CUDA events around whole replays."""
    graph.replay()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / nsets)
    return sorted(times)[reps // 2]


def interleaved_ms(graphs: dict, nsets, rounds=5) -> dict:
    """Each graph timed in turn, ``rounds`` times over: drifting clocks hit every implementation alike, and the
    spread of one implementation's rounds says how far to trust a ratio."""
    per = {name: [] for name in graphs}
    for _ in range(rounds):
        for name, graph in graphs.items():
            per[name].append(replay_ms(graph, nsets))
    return {name: {"ms": sorted(v)[len(v) // 2], "spread": (max(v) - min(v)) / sorted(v)[len(v) // 2],
                   "rounds": v} for name, v in per.items()}


def kernel_breakdown(fn, args, calls=3) -> dict:
    """Device time per kernel (µs per call) from the PyTorch profiler."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn(*args)
        torch.cuda.synchronize()
    out = {}
    for e in prof.key_averages():
        us = getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)
        if us > 0:
            out[e.key[:40]] = round(us / calls, 1)
    return out


def time_all(impls: dict, sets, check) -> dict:
    """Check each implementation on the first set (also its warm-up), then time the ones that passed."""
    results, graphs = {}, {}
    for name, fn in impls.items():
        try:
            results[name] = check(fn)
            results[name]["eager_ms"] = median_ms(lambda: fn(*sets[0]))
            graphs[name] = capture(fn, sets)
        except Exception as e:  # a broken implementation is reported, not fatal to the others
            results[name] = {"error": f"{type(e).__name__}: {e}"}
    for name, timing in interleaved_ms(graphs, len(sets)).items():
        results[name].update(timing)
    return results


def bench_prefill(shape, impls: dict, ceil, l2_bytes) -> dict:
    first = random_inputs(*shape)
    keys = ("x", "dt", "A", "B", "C", "D", "dt_bias")
    set_bytes = sum(first[k].numel() * first[k].element_size() for k in keys)
    sets = [[first[k] for k in keys]] + [[t[k] for k in keys] for t in (
        random_inputs(*shape, seed=i) for i in range(1, set_count(set_bytes, l2_bytes)))]
    with torch.device("cuda"):  # the reference listing creates some tensors without a device
        y_ref, s_ref = reference.ssd_chunked(*(v.float() for v in sets[0]), chunk_size=CHUNK)

    def check(fn):
        y, final = fn(*sets[0])
        return {"err_y": rel_err(y, y_ref), "err_state": rel_err(final, s_ref)}

    row = {"shape": shape, "sets": len(sets), **prefill_floor(*shape, ceil), "impls": time_all(impls, sets, check)}
    row["kernels_us"] = {name: kernel_breakdown(fn, sets[0]) for name, fn in impls.items()
                         if "error" not in row["impls"][name]}
    del y_ref, s_ref, sets
    torch.cuda.empty_cache()
    return row


def bench_decode(batch, impls: dict, ceil, l2_bytes) -> dict:
    h, p, n, g = DECODE_HEADS
    state_bytes = batch * h * p * n * 4
    sets = []
    for i in range(set_count(state_bytes, l2_bytes)):
        t = random_inputs(batch, 1, h, p, n, g, seed=100 + i)
        state = torch.randn(batch, h, p, n, device="cuda")
        sets.append((state, t["x"][:, 0], t["dt"][:, 0], t["A"], t["B"][:, 0], t["C"][:, 0], t["D"], t["dt_bias"]))
    nbytes = 2 * state_bytes + sum(v.numel() * v.element_size() for v in sets[0][1:])
    pristine = [v.clone() for v in sets[0]]  # the timed steps update the states in place
    y_ref, s_ref = reference.ssd_step(*(v.double() for v in pristine))

    def check(fn):
        state = pristine[0].clone()
        y, new = fn(state, *pristine[1:])
        if y is None:  # the bandwidth anchor computes nothing to check
            return {}
        return {"err_y": rel_err(y, y_ref), "err_state": rel_err(state if new is None else new, s_ref)}

    row = {"batch": batch, "bytes": nbytes, "floor_us": nbytes / ceil["copy_GBps"] / 1e3, "sets": len(sets),
           "impls": time_all(impls, sets, check)}
    row["finite_after"] = all(bool(s[0].isfinite().all()) for s in sets)
    for e in row["impls"].values():
        if "ms" in e:
            e["us"] = e["ms"] * 1e3
    return row


def triton_step(block_p=None):
    def step(state, x, dt, A, B, C, D, dt_bias):
        return ssd_step(state, x, dt, A, B, C, D, dt_bias, state_out=state, block_p=block_p)
    return step


def mamba_step_wrapper(step):
    def run(state, *rest):
        return step(state, *rest), None  # y; the state is updated in place
    return run


def state_rewrite(state, *rest):
    """Bandwidth anchor: reads and writes the state in place like a step, with no math to speak of."""
    state.mul_(1.0)
    return None, None


def environment(commit: str | None) -> dict:
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.total",
                          "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
    props = torch.cuda.get_device_properties(0)
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "gpu": torch.cuda.get_device_name(0), "nvidia_smi": smi, "sms": props.multi_processor_count,
            "l2_bytes": props.L2_cache_size, "torch": torch.__version__, "triton": triton.__version__,
            "commit": commit}


def fmt(v, spec):
    return "—" if v is None else format(v, spec)


def ratio(t, base) -> str:
    return f"{t / base:.2f}x" if t and base else "—"


def errors(e) -> str:
    if "error" in e:
        return e["error"][:120]
    if "err_y" not in e:
        return "—"
    failed = max(e["err_y"], e["err_state"]) > PARITY_TOL  # NaN compares False: check finiteness too
    failed = failed or not math.isfinite(e["err_y"] + e["err_state"])
    return f"{e['err_y']:.1e} / {e['err_state']:.1e}" + (" FAIL" if failed else "")


def table(env, ceil, prefill, decode) -> str:
    lines = [f"SSD kernels on {env['gpu']}, {env['date']}, commit {env['commit']}, torch {env['torch']}, "
             f"triton {env['triton']}; copy {ceil['copy_GBps']:.0f} GB/s, bf16 matmul {ceil['bf16_TFLOPs']:.0f} "
             "TFLOP/s (measured in this run). Times: CUDA-graph replays over rotating inputs, median of interleaved "
             "rounds (spread = (max - min) / median); eager = do_bench with L2 flush, launch overhead included.", "",
             "| prefill b, l, h, p, n, g | impl | ms | spread | vs mamba_ssm | eager ms | floor ms (compute/memory) "
             "| of floor | rel err y / state |", "|---|---|---|---|---|---|---|---|---|"]
    for row in prefill:
        base = row["impls"].get("mamba_ssm", {}).get("ms")
        for name, e in row["impls"].items():
            ms = e.get("ms")
            lines.append(f"| {', '.join(map(str, row['shape']))} | {name} | {fmt(ms, '.3f')} | "
                         f"{fmt(e.get('spread'), '.0%')} | {ratio(ms, base)} | "
                         f"{fmt(e.get('eager_ms'), '.3f')} | {row['compute_ms']:.3f} / {row['memory_ms']:.3f} | "
                         f"{fmt(row['floor_ms'] / ms if ms else None, '.0%')} | {errors(e)} |")
    lines += ["", "| decode batch (h128 p64 n128 g8) | impl | µs per step | spread | vs mamba_ssm | floor µs | "
              "of copy bw | rel err y / state |", "|---|---|---|---|---|---|---|---|"]
    for row in decode:
        base = row["impls"].get("mamba_ssm", {}).get("us")
        for name, e in row["impls"].items():
            us = e.get("us")
            lines.append(f"| {row['batch']} | {name} | {fmt(us, '.2f')} | {fmt(e.get('spread'), '.0%')} | "
                         f"{ratio(us, base)} | {row['floor_us']:.2f} | "
                         f"{fmt(row['floor_us'] / us if us else None, '.0%')} | {errors(e)} |")
    lines += ["", "Device time per kernel, µs per call (profiler, eager):"]
    for row in prefill:
        for name, kernels in row["kernels_us"].items():
            parts = ", ".join(f"{k} {v:.0f}" for k, v in sorted(kernels.items(), key=lambda kv: -kv[1]))
            lines.append(f"- {', '.join(map(str, row['shape']))} {name}: {parts}")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--commit", default=None)
    ap.add_argument("--mamba", type=Path, default=Path("third_party/mamba"))
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 reference stays fp32

    env = environment(args.commit)
    ceil = ceilings()
    print(json.dumps({"env": env, "ceilings": ceil}), flush=True)
    scans = {"triton (ours)": lambda *a: ssd_scan(*a, chunk_size=CHUNK)}
    steps = {"triton (ours)": triton_step()}
    for bp in (4, 8, 16, 32):
        steps[f"triton bp={bp}"] = triton_step(bp)
    try:
        m_scan, m_step = load_mamba(args.mamba)
        scans["mamba_ssm"], steps["mamba_ssm"] = m_scan, mamba_step_wrapper(m_step)
    except Exception as e:
        env["mamba_ssm"] = f"not available: {type(e).__name__}: {e}"
    cuda, why = load_cuda_kernels()
    if cuda:
        scans["cuda (ours)"], steps["cuda (ours)"] = cuda
    env["cuda_kernels"] = "available" if cuda else f"not available: {why}"
    print(json.dumps({"mamba_ssm": env.get("mamba_ssm", "available"), "cuda": env["cuda_kernels"]}), flush=True)

    prefill = []
    for shape in PREFILL_SHAPES:
        prefill.append(bench_prefill(shape, scans, ceil, env["l2_bytes"]))
        prefill[-1]["triton_configs"] = {k: str(getattr(getattr(triton_scan, k), "best_config", None))
                                         for k in ("_cb_kernel", "_states_kernel", "_out_kernel")}
        print(json.dumps(prefill[-1]), flush=True)
    steps["state read+write (torch mul_)"] = state_rewrite
    decode = []
    for batch in DECODE_BATCHES:
        decode.append(bench_decode(batch, steps, ceil, env["l2_bytes"]))
        decode[-1]["default_block_p"] = default_block_p(batch, DECODE_HEADS[0], DECODE_HEADS[1])
        print(json.dumps(decode[-1]), flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_ssd_kernels.json").write_text(json.dumps(
        {"env": env, "ceilings": ceil, "prefill": prefill, "decode": decode}, indent=1))
    print(table(env, ceil, prefill, decode))


if __name__ == "__main__":
    main()
