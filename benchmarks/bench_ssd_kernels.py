"""SSD kernels side by side on one GPU: our Triton kernels, mamba_ssm's Triton kernels, our CUDA kernels.

    PYTHONPATH=. python3 benchmarks/bench_ssd_kernels.py --out DIR [--commit HASH] [--mamba third_party/mamba]

Prefill: the DESIGN §7 shapes in bf16, chunk 256, no initial state; ours ``ssd_deploy.ssd.triton.scan.ssd_scan``
against ``mamba_chunk_scan_combined`` (final state returned by both). Decode: one step at batch 1, 4, 16, 64
(h128 p64 n128 g8, bf16 activations, fp32 state updated in place), each in a CUDA graph of several steps on rotating
states (more bytes than the L2 holds), against ``selective_state_update``.

mamba_ssm is read from a source copy (``third_party/mamba``, carried to the GPU machine): only its Triton modules
are imported, under a stand-in ``mamba_ssm`` package, because its ``__init__`` pulls CUDA extensions not built
there. Our CUDA kernels come from ``ssd_deploy.kernels`` when it imports (built with its ``build()``), assumed to
take the ops' arguments; otherwise they are reported 'not available' with the reason.

Every implementation is checked against the fp32 chunked reference before it is timed. Times are medians
(``triton.testing.do_bench``, which flushes the L2 before every run; CUDA events around graph replays for decode),
after warm-up. The copy bandwidth and the bf16 matmul rate are measured in the same run and give the floors:
prefill max(flops / matmul rate, bytes / copy bandwidth) with flops = b·l·(h·(4pn + 2Qp) + g·2Qn) and bytes = x,
dt, B, C read once, y and the final state written once (the DESIGN §7 counts); decode 2·state bytes (+ the small
tensors) / copy bandwidth. A markdown table is printed last; everything goes to DIR/bench_ssd_kernels.json.
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
    """Our CUDA kernels (ssd_deploy.kernels), built here; (scan, step) or the reason they are not available."""
    try:
        import ssd_deploy.kernels as kernels

        if hasattr(kernels, "build"):
            kernels.build()

        def scan(x, dt, A, B, C, D, dt_bias):
            return kernels.ssd_scan(x, dt, A, B, C, D, dt_bias, None, CHUNK, True, 0.0, math.inf)

        def step(state, x, dt, A, B, C, D, dt_bias):
            return kernels.ssd_step(state, x, dt, A, B, C, D, dt_bias, True, 0.0, math.inf)

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


def bench_prefill(shape, impls: dict, ceil) -> dict:
    t = random_inputs(*shape)
    with torch.device("cuda"):  # the reference listing creates some tensors without a device
        y_ref, s_ref = reference.ssd_chunked(**{k: v.float() for k, v in t.items()}, chunk_size=CHUNK)
    args = [t[k] for k in ("x", "dt", "A", "B", "C", "D", "dt_bias")]
    row = {"shape": shape, **prefill_floor(*shape, ceil), "impls": {}}
    for name, fn in impls.items():
        try:
            y, final = fn(*args)  # also the warm-up that compiles and autotunes
            entry = {"err_y": rel_err(y, y_ref), "err_state": rel_err(final, s_ref)}
            entry["ms"] = median_ms(lambda: fn(*args))
        except Exception as e:
            entry = {"error": f"{type(e).__name__}: {e}"}
        row["impls"][name] = entry
    del y_ref, s_ref
    torch.cuda.empty_cache()
    return row


def graph_step_us(step, sets) -> float:
    """Median time of one step: a CUDA graph runs ``step`` once per input set (sets rotate the state through more
    memory than the L2 holds), replayed many times."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for s in sets:
            step(*s)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for s in sets:
            step(*s)
    for _ in range(5):
        graph.replay()
    times = []
    for _ in range(50):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / len(sets))
    return sorted(times)[len(times) // 2]


def bench_decode(batch, impls: dict, ceil, l2_bytes) -> dict:
    h, p, n, g = DECODE_HEADS
    state_bytes = batch * h * p * n * 4
    nsets = max(2, math.ceil(3 * l2_bytes / state_bytes))
    sets = []
    for i in range(nsets):
        t = random_inputs(batch, 1, h, p, n, g, seed=100 + i)
        state = torch.randn(batch, h, p, n, device="cuda")
        sets.append((state, t["x"][:, 0], t["dt"][:, 0], t["A"], t["B"][:, 0], t["C"][:, 0], t["D"], t["dt_bias"]))
    small = sum(v.numel() * v.element_size() for v in sets[0][1:])
    nbytes = 2 * state_bytes + small
    row = {"batch": batch, "bytes": nbytes, "floor_us": nbytes / ceil["copy_GBps"] / 1e3, "sets": nsets,
           "impls": {}}
    s0 = sets[0]
    args64 = [v.double() for v in s0]
    y_ref, s_ref = reference.ssd_step(*args64)
    for name, fn in impls.items():
        try:
            state = s0[0].clone()
            y, new = fn(state, *s0[1:])
            if new is None:  # mamba updates in place and returns y only
                new = state
            entry = {"err_y": rel_err(y, y_ref), "err_state": rel_err(new, s_ref)}
            entry["us"] = graph_step_us(fn, sets)
            entry["finite_after"] = all(bool(s[0].isfinite().all()) for s in sets)
        except Exception as e:
            entry = {"error": f"{type(e).__name__}: {e}"}
        row["impls"][name] = entry
    return row


def triton_step(block_p=None):
    def step(state, x, dt, A, B, C, D, dt_bias):
        return ssd_step(state, x, dt, A, B, C, D, dt_bias, state_out=state, block_p=block_p)
    return step


def mamba_step_wrapper(step):
    def run(state, *rest):
        return step(state, *rest), None
    return run


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


def table(env, ceil, prefill, decode) -> str:
    lines = [f"SSD kernels on {env['gpu']}, {env['date']}, commit {env['commit']}, torch {env['torch']}, "
             f"triton {env['triton']}; copy {ceil['copy_GBps']:.0f} GB/s, bf16 matmul {ceil['bf16_TFLOPs']:.0f} "
             "TFLOP/s (measured in this run)", "",
             "| prefill b, l, h, p, n, g | impl | ms | vs mamba_ssm | floor ms (compute/memory) | of floor | "
             "rel err y / state |", "|---|---|---|---|---|---|---|"]
    for row in prefill:
        base = row["impls"].get("mamba_ssm", {}).get("ms")
        for name, e in row["impls"].items():
            ms = e.get("ms")
            err = e.get("error") or f"{e['err_y']:.1e} / {e['err_state']:.1e}"
            lines.append(f"| {', '.join(map(str, row['shape']))} | {name} | {fmt(ms, '.3f')} | "
                         f"{fmt(ms / base if ms and base else None, '.2f')}x | {row['compute_ms']:.3f} / "
                         f"{row['memory_ms']:.3f} | {fmt(row['floor_ms'] / ms if ms else None, '.0%')} | {err} |")
    lines += ["", "| decode batch (h128 p64 n128 g8) | impl | µs per step | vs mamba_ssm | floor µs | of copy bw | "
              "rel err y / state |", "|---|---|---|---|---|---|---|"]
    for row in decode:
        base = row["impls"].get("mamba_ssm", {}).get("us")
        for name, e in row["impls"].items():
            us = e.get("us")
            err = e.get("error") or f"{e['err_y']:.1e} / {e['err_state']:.1e}"
            lines.append(f"| {row['batch']} | {name} | {fmt(us, '.2f')} | "
                         f"{fmt(us / base if us and base else None, '.2f')}x | {row['floor_us']:.2f} | "
                         f"{fmt(row['floor_us'] / us if us else None, '.0%')} | {err} |")
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
        prefill.append(bench_prefill(shape, scans, ceil))
        print(json.dumps(prefill[-1]), flush=True)
    env["triton_configs"] = {k: str(getattr(getattr(triton_scan, k), "best_config", None))
                             for k in ("_cb_kernel", "_states_kernel", "_out_kernel")}  # tuned at the last shape
    # the second Triton timing of each shape would show run-to-run spread; the first shape again does it cheaply
    prefill.append(bench_prefill(PREFILL_SHAPES[0], {"triton (ours), again": scans["triton (ours)"]}, ceil))
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
