"""Hardware counters of the SSD kernels, ours beside mamba_ssm's, at the kernel benchmark's shapes (Nsight Compute).

Where `bench_ssd_kernels.py` says how long each implementation takes, this says why: for every kernel one prefill
or one decode step launches, its duration, the share of the SM's and the memory system's peak it sustains, how busy
the tensor pipes are (``mma.sync`` HMMA and Hopper's warpgroup GMMA counted apart), issue-slot use, occupancy,
registers, and the warps' main stall reason. Two phases:

    ncu --profile-from-start off --nvtx --clock-control none --set detailed --metrics <TENSOR_METRICS> \\
        -o OUT/kernels -f python3 benchmarks/profile_kernels_gpu.py run [--mamba DIR]
    python3 benchmarks/profile_kernels_gpu.py table --report OUT/kernels.ncu-rep > OUT/kernels.md

``run`` calls each implementation once to compile and tune it, then once more between ``cudaProfilerStart`` and
``cudaProfilerStop`` inside an NVTX range naming the implementation and the shape, so ncu profiles exactly those
launches. ``table`` reads the report through ncu's own Python module (``ncu_report``, in ncu's ``extras/python``).
Clocks are left alone (``--clock-control none``): the device entry's method.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

# ncu 2025.3's spellings (its --names listing on the H200): mma.sync's pipe cycles, and warpgroup-MMA instructions
TENSOR_METRICS = ("sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,"
                  "sm__inst_executed_pipe_tensor_op_gmma.avg.pct_of_peak_sustained_active")
COLUMNS = {  # label: (metric, format)
    "µs": ("gpu__time_duration.sum", lambda v: f"{v / 1e3:.1f}"),
    "SM %": ("sm__throughput.avg.pct_of_peak_sustained_elapsed", "{:.0f}".format),
    "DRAM %": ("gpu__dram_throughput.avg.pct_of_peak_sustained_elapsed", "{:.0f}".format),
    "L2 %": ("lts__throughput.avg.pct_of_peak_sustained_elapsed", "{:.0f}".format),
    "HMMA %": ("sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active", "{:.0f}".format),
    "GMMA %": ("sm__inst_executed_pipe_tensor_op_gmma.avg.pct_of_peak_sustained_active", "{:.0f}".format),
    "issue %": ("smsp__issue_active.avg.pct_of_peak_sustained_active", "{:.0f}".format),
    "occupancy %": ("sm__warps_active.avg.pct_of_peak_sustained_active", "{:.0f}".format),
    "regs": ("launch__registers_per_thread", "{:.0f}".format),
    "grid": ("launch__grid_size", "{:.0f}".format),
}
# ncu's per-reason stall metrics (WarpStateStats section): smsp__average_warps_issue_stalled_<reason>_per_issue_active
STALLS = ("smsp__average_warps_issue_stalled_", "_per_issue_active.ratio")


def run(mamba: Path):
    import torch

    from bench_ssd_kernels import (CHUNK, DECODE_BATCHES, DECODE_HEADS, PREFILL_SHAPES, load_cuda_kernels,
                                   load_mamba, mamba_step_wrapper, random_inputs, triton_step)
    from ssd_deploy.ssd.triton.scan import ssd_scan

    scans = {"triton (ours)": lambda *a: ssd_scan(*a, chunk_size=CHUNK)}
    steps = {"triton (ours)": triton_step()}
    m_scan, m_step = load_mamba(mamba)
    scans["mamba_ssm"], steps["mamba_ssm"] = m_scan, mamba_step_wrapper(m_step)
    cuda, why = load_cuda_kernels()
    if cuda:
        scans["cuda (ours)"], steps["cuda (ours)"] = cuda
    else:
        print(f"our CUDA kernels not profiled: {why}", file=sys.stderr)

    def profiled(label, fn, args):
        fn(*args)  # compile, tune: outside the profiled range
        torch.cuda.synchronize()
        torch.cuda.nvtx.range_push(label)
        torch.cuda.profiler.start()
        fn(*args)
        torch.cuda.synchronize()
        torch.cuda.profiler.stop()
        torch.cuda.nvtx.range_pop()

    keys = ("x", "dt", "A", "B", "C", "D", "dt_bias")
    for shape in PREFILL_SHAPES:
        t = random_inputs(*shape)
        for name, fn in scans.items():
            profiled(f"prefill {','.join(map(str, shape))} {name}", fn, [t[k] for k in keys])
    h, p, n, g = DECODE_HEADS
    for batch in DECODE_BATCHES:
        t = random_inputs(batch, 1, h, p, n, g, seed=100)
        state = torch.randn(batch, h, p, n, device="cuda")
        args = (state, t["x"][:, 0], t["dt"][:, 0], t["A"], t["B"][:, 0], t["C"][:, 0], t["D"], t["dt_bias"])
        for name, fn in steps.items():
            profiled(f"decode b{batch} {name}", fn, args)


def ncu_report_module():
    ncu = shutil.which("ncu")
    if ncu is None:
        raise SystemExit("ncu is not on the PATH")
    root = Path(ncu).resolve().parent  # CUDA's bin/ncu launches the Nsight Compute install under /opt/nvidia
    for cand in [root / "extras" / "python", *root.parent.glob("*/extras/python"),
                 *sorted(Path("/opt/nvidia/nsight-compute").glob("*/extras/python"), reverse=True)]:
        if (cand / "ncu_report.py").is_file():
            sys.path.insert(0, str(cand))
            import ncu_report

            return ncu_report
    raise SystemExit(f"ncu_report.py not found near {root}")


def metric(action, name):
    m = action.metric_by_name(name)
    return None if m is None else m.as_double()


def nvtx_label(action) -> str:
    """The innermost push/pop range the kernel ran in (run() pushes one per profiled call)."""
    state = action.nvtx_state()
    ranges = [r for d in (state.domains() if state else []) for r in state.domain_by_id(d).push_pop_ranges()]
    return ranges[-1] if ranges else "?"


def table(report: Path, names: str | None = None):
    """The markdown table; with ``names``, instead the metric names of the first kernel that contain it (for
    finding a metric's spelling in this ncu version)."""
    ncu_report = ncu_report_module()
    ctx = ncu_report.load_report(str(report))
    if names is not None:
        print("\n".join(n for n in ctx.range_by_idx(0).action_by_idx(0).metric_names() if names in n))
        return
    print("| range | kernel | " + " | ".join(COLUMNS) + " | top stall (cycles per issue) |")
    print("|---" * (len(COLUMNS) + 3) + "|")
    for r in range(ctx.num_ranges()):
        rng = ctx.range_by_idx(r)
        for a in range(rng.num_actions()):
            action = rng.action_by_idx(a)
            label = nvtx_label(action)
            cells = []
            for metric_name, fmt in COLUMNS.values():
                v = metric(action, metric_name)
                cells.append("–" if v is None else fmt(v))
            stalls = {n[len(STALLS[0]):-len(STALLS[1])]: action.metric_by_name(n).as_double()
                      for n in action.metric_names() if n.startswith(STALLS[0]) and n.endswith(STALLS[1])
                      and "not_issued" not in n}
            top = sorted(stalls.items(), key=lambda kv: -kv[1])[:2]
            print(f"| {label} | {action.name()[:48]} | " + " | ".join(cells) + " | "
                  + ", ".join(f"{k} {v:.1f}" for k, v in top) + " |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--mamba", type=Path, default=Path("third_party/mamba"))
    t = sub.add_parser("table")
    t.add_argument("--report", type=Path, required=True)
    t.add_argument("--names", default=None, help="list the metric names containing this instead")
    args = ap.parse_args()
    run(args.mamba) if args.cmd == "run" else table(args.report, args.names)


if __name__ == "__main__":
    main()
