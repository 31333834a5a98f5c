"""The CPU export against the mobius graph (issue 15, "The CPU too"): the graph a CPU user deploys (the `cpu-fp32`
recipe, `ort` flavor) and the graph onnxruntime/mobius builds for the same Hugging Face checkpoint, fp32, on the same
ONNX Runtime (CPU provider, the same session options), side by side in one run.

* parity first: last-position logits after a prefill (relative error <= 1e-4 between the two graphs, and each
  against the PyTorch float32 reference) and 16 greedy tokens decoded by each graph from its own states, equal;
* prefill, 1 x PROMPT tokens from zero states: tokens/s, median of repeats, the graphs interleaved call by call so
  that both see the same load;
* decode step, batch 1, states carried from a prefill: ms, median over many steps, interleaved in blocks;
* the machine's floors in the same run: sgemm GFLOP/s at the model's GEMM shapes (torch and ONNX Runtime's own
  MatMul) turned into a prefill tokens/s ceiling, and the read bandwidth turned into the time one decode step
  needs to read the fp32 weights once;
* ONNX Runtime's profiler (SessionOptions.enable_profiling) on each graph: time per op type in a prefill and in a
  decode step.

Our export is timed twice in the same run: as ``ssd-deploy`` (what OrtBackend does: prompts on ``model.onnx``,
decode steps on its decode companion ``decode.onnx``, docs/graph-interface.md) and as ``ssd-deploy unified`` (the
old form: every call on ``model.onnx``, whose conv is an ``If`` on the length). Each graph is one ONNX Runtime
session per file, as ``ssd-deploy run`` opens them. The process's resident memory after opening each graph's
sessions is recorded too (the companion is a second session on the same weights file).

mobius is the PyPI package ``mobius-onnx`` (the ``bench`` extra); without it the script says so and stops.
``--export LABEL=DIR`` adds more exports to the same run (an export made by another commit, for a before/after;
with a ``decode.onnx`` its decode steps run there).

    PYTHONPATH=. python benchmarks/bench_cpu_mobius.py [--workdir DIR] [--repeats 7] [--steps 60] [--json OUT]
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np
import onnxruntime as ort
import torch

from bench_cpu_flavors import _commit
from ssd_deploy.checkpoint import load_model, random_model, write_checkpoint
from ssd_deploy.interface import DECODE_FILE
from ssd_deploy.onnx.export import export, resolve_options
from ssd_deploy.presets import preset

MAX_REL_ERR = 1e-4  # fp32 end to end (docs/verification.md)
GREEDY_STEPS = 16


def _machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo")
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                if line.startswith("model name")), "") if cpuinfo.exists() else platform.processor()
    return {"cpu": cpu, "cores": os.cpu_count(), "load_avg": list(os.getloadavg()), "onnxruntime": ort.__version__,
            "torch": torch.__version__, "torch_threads": torch.get_num_threads()}


def session_options(profile_prefix: str | None = None) -> ort.SessionOptions:
    """The same options for every graph: ONNX Runtime's defaults (all graph optimizations, one intra-op thread per
    core), as `ssd-deploy run` opens its sessions."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    return opts


@dataclass
class Graph:
    """One ONNX graph with the carried-state interface both builders share: input_ids, then per layer the conv
    and ssm states; logits, then the new states in the same order (checked by shape)."""
    name: str
    path: Path
    decode_path: Path | None = None  # a decode companion: one-token calls run there
    session: ort.InferenceSession = field(init=False)
    decode_session: ort.InferenceSession | None = field(init=False, default=None)
    rss_mib: float = field(init=False, default=0.0)  # resident memory the sessions added when opened

    def __post_init__(self):
        before = _rss_mib()
        self.open()
        self.rss_mib = _rss_mib() - before

    def open(self, profile_prefix: str | None = None):
        self.session = ort.InferenceSession(str(self.path), session_options(profile_prefix),
                                            providers=["CPUExecutionProvider"])
        if self.decode_path is not None:
            self.decode_session = ort.InferenceSession(
                str(self.decode_path), session_options(profile_prefix and profile_prefix + "-decode"),
                providers=["CPUExecutionProvider"])
        ins, outs = self.session.get_inputs(), self.session.get_outputs()
        self.ids_name, self.state_in = ins[0].name, [i.name for i in ins[1:]]
        self.state_out = [o.name for o in outs[1:]]
        self.state_shapes = [i.shape[1:] for i in ins[1:]]
        for i, o in zip(ins[1:], outs[1:]):
            assert i.shape[1:] == o.shape[1:], f"{self.name}: state {i.name} {i.shape} vs {o.name} {o.shape}"

    def zero_states(self, batch: int = 1) -> dict:
        return {n: np.zeros([batch, *s], np.float32) for n, s in zip(self.state_in, self.state_shapes)}

    def __call__(self, ids: np.ndarray, states: dict):
        session = self.decode_session if self.decode_session is not None and ids.shape[1] == 1 else self.session
        out = session.run(None, {self.ids_name: ids, **states})
        return out[0][:, -1], dict(zip(self.state_in, out[1:]))


def _rss_mib() -> float:
    status = Path("/proc/self/status")
    if not status.exists():
        return float("nan")
    return next(int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith("VmRSS")) / 1024


def prepare(workdir: Path, preset_name: str, extra: dict[str, Path], log) -> tuple[Path, dict[str, tuple]]:
    """The random HF checkpoint, our cpu-fp32 export and the mobius graph of it, each made once per workdir: each
    graph's (model file, decode companion file or None)."""
    ckpt = workdir / f"ckpt-{preset_name}"
    if not (ckpt / "config.json").is_file():
        log(f"writing a random {preset_name} checkpoint (HF format)")
        write_checkpoint(random_model(preset(preset_name), seed=0), ckpt, "hf")
    ours = workdir / f"cpu-fp32-{preset_name}"
    if not (ours / DECODE_FILE).is_file():  # (a workdir of an earlier run holds an export without it)
        log("exporting with the cpu-fp32 recipe")
        opts, recipe = resolve_options("cpu-fp32")
        export(ckpt, ours, opts, recipe, force=True)
    mob = workdir / f"mobius-{preset_name}"
    if not (mob / "model.onnx").is_file():
        log("building the mobius graph")
        import mobius

        mobius.build(str(ckpt), dtype="f32", execution_provider="cpu").save(str(mob))
    companion = lambda d: d / DECODE_FILE if (d / DECODE_FILE).is_file() else None  # noqa: E731
    return ckpt, {"ssd-deploy": (ours / "model.onnx", ours / DECODE_FILE),
                  "ssd-deploy unified": (ours / "model.onnx", None),
                  **{k: (v / "model.onnx", companion(v)) for k, v in extra.items()}, "mobius": (mob / "model.onnx", None)}


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    v = min(a.shape[-1], b.shape[-1])  # a padded vocabulary on one side: the padding rows are never real tokens
    return float(np.linalg.norm(a[..., :v] - b[..., :v]) / np.linalg.norm(b[..., :v]))


def greedy(graph: Graph, ids: np.ndarray, steps: int) -> tuple[np.ndarray, list[int]]:
    logits, states = graph(ids, graph.zero_states(ids.shape[0]))
    first, tokens = logits, []
    for _ in range(steps):
        tokens.append(int(logits[0].argmax()))
        logits, states = graph(np.array([[tokens[-1]]]), states)
    return first, tokens


def check_parity(graphs: dict[str, Graph], ckpt: Path, ids: np.ndarray) -> dict:
    model = load_model(ckpt, torch.float32)
    with torch.no_grad():
        conv, ssm = model.init_states(1)
        ref = model(torch.from_numpy(ids), conv, ssm, last_token_only=True)[0][:, -1].numpy()
    runs = {name: greedy(g, ids, GREEDY_STEPS) for name, g in graphs.items()}
    mob_logits, mob_tokens = runs["mobius"]
    out = {}
    for name, (logits, tokens) in runs.items():
        out[name] = {"rel_err_vs_torch": _rel(logits, ref), "rel_err_vs_mobius": _rel(logits, mob_logits),
                     "greedy_equal_mobius": tokens == mob_tokens, "tokens": tokens}
    out["ok"] = all(v["rel_err_vs_mobius"] <= MAX_REL_ERR and v["rel_err_vs_torch"] <= MAX_REL_ERR
                    and v["greedy_equal_mobius"] for k, v in out.items())
    return out


def _rotated(names: list[str], i: int) -> list[str]:
    """The i-th round's order: rotated, so that no graph always follows itself (ONNX Runtime's worker threads spin
    a while after a call and slow the next session's call; alternating the order gave the middle graph of three
    that handicap every round)."""
    return names[i % len(names):] + names[:i % len(names)]


def time_prefill(graphs: dict[str, Graph], ids: np.ndarray, repeats: int) -> dict[str, float]:
    """Median seconds per prefill; call by call, the order of the graphs rotating."""
    times = defaultdict(list)
    names = list(graphs)
    for name in names:  # warm-up
        graphs[name](ids, graphs[name].zero_states())
    for r in range(repeats):
        for name in _rotated(names, r):
            g = graphs[name]
            states = g.zero_states()
            t = time.perf_counter()
            g(ids, states)
            times[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def time_decode(graphs: dict[str, Graph], ids: np.ndarray, steps: int, block: int = 5) -> dict[str, float]:
    """Median seconds per decode step (batch 1, states carried from a prefill of ``ids``), in blocks of ``block``
    steps per graph in turn (the order rotating)."""
    carried = {}
    for name, g in graphs.items():
        logits, states = g(ids, g.zero_states())
        carried[name] = (np.array([[int(logits[0].argmax())]]), states)
        g(*carried[name])  # warm-up of the one-token path
    times = defaultdict(list)
    names = list(graphs)
    for b in range(max(1, steps // block)):
        for name in _rotated(names, b):
            g, (token, states) = graphs[name], carried[name]
            for _ in range(block):
                t = time.perf_counter()
                logits, states = g(token, states)
                times[name].append(time.perf_counter() - t)
                token = np.array([[int(logits[0].argmax())]])
            carried[name] = (token, states)
    return {k: statistics.median(v) for k, v in times.items()}


# ---- floors ---------------------------------------------------------------------------------------------------------

def gemm_shapes(cfg, prompt: int) -> dict[str, tuple[int, int, int, int]]:
    """(m, k, n, count per forward) of the model's matrix products in a prefill of ``prompt`` tokens."""
    return {"in_proj": (prompt, cfg.d_model, cfg.d_in_proj, cfg.n_layer),
            "out_proj": (prompt, cfg.d_inner, cfg.d_model, cfg.n_layer),
            "lm_head (last token)": (1, cfg.d_model, cfg.padded_vocab_size, 1),
            "lm_head (all tokens)": (prompt, cfg.d_model, cfg.padded_vocab_size, 1)}


def _median_time(fn, repeats: int) -> float:
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def _ort_matmul(k: int, n: int) -> ort.InferenceSession:
    """One MatMul with a constant [k, n] weight: ONNX Runtime's own sgemm (MLAS, weights prepacked)."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((k, n), np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    return ort.InferenceSession(m.SerializeToString(), session_options(), providers=["CPUExecutionProvider"])


def floors(cfg, prompt: int, weight_bytes: int, repeats: int) -> dict:
    out = {"gemm": {}}
    for name, (m, k, n, count) in gemm_shapes(cfg, prompt).items():
        a, b = torch.randn(m, k), torch.randn(k, n)
        t_torch = _median_time(lambda: torch.matmul(a, b), repeats)
        sess, x = _ort_matmul(k, n), a.numpy()
        t_ort = _median_time(lambda: sess.run(None, {"x": x}), repeats)
        flops = 2.0 * m * k * n
        out["gemm"][name] = {"m": m, "k": k, "n": n, "count": count, "torch_gflops": flops / t_torch / 1e9,
                             "ort_gflops": flops / t_ort / 1e9, "torch_s": t_torch, "ort_s": t_ort}
    g = out["gemm"]
    body = {e: sum(g[s][f"{e}_s"] * g[s]["count"] for s in ("in_proj", "out_proj")) for e in ("torch", "ort")}
    for e in ("torch", "ort"):  # seconds of matrix products alone per prefill: the graph's lm_head choice included
        out[f"prefill_tok_s_ceiling_last_logits_{e}"] = prompt / (body[e] + g["lm_head (last token)"][f"{e}_s"])
        out[f"prefill_tok_s_ceiling_all_logits_{e}"] = prompt / (body[e] + g["lm_head (all tokens)"][f"{e}_s"])
    # read bandwidth: a sum over a buffer 8x the last-level cache; and a GEMV over the largest weight (the lm_head)
    buf = torch.randn(256 << 20 >> 2)
    t_sum = _median_time(lambda: buf.sum(), repeats)
    w, v = torch.randn(cfg.padded_vocab_size, cfg.d_model), torch.randn(cfg.d_model)
    t_mv = _median_time(lambda: torch.mv(w, v), repeats)
    out["read_gb_s_sum"] = buf.numel() * 4 / t_sum / 1e9
    out["read_gb_s_gemv"] = w.numel() * 4 / t_mv / 1e9
    out["weight_bytes"] = weight_bytes
    bw = max(out["read_gb_s_sum"], out["read_gb_s_gemv"])
    out["decode_floor_ms"] = weight_bytes / (bw * 1e9) * 1e3
    return out


# ---- profile --------------------------------------------------------------------------------------------------------

def profile(graph: Graph, ids: np.ndarray, steps: int, workdir: Path) -> dict:
    """Per op type, mean microseconds per call in one prefill and in one decode step (ONNX Runtime's profiler; fresh
    sessions, warm-up calls left out of the summary; the decode steps from the companion's session where the graph
    has one)."""
    prefix = str(workdir / f"profile-{graph.name.replace(' ', '-')}")
    graph.open(prefix)
    try:
        graph(ids, graph.zero_states())  # warm-up
        logits, states = graph(ids, graph.zero_states())
        token = np.array([[int(logits[0].argmax())]])
        graph(token, states)  # warm-up of the one-token path
        for _ in range(steps):
            logits, states = graph(token, states)
        traces = [json.loads(Path(graph.session.end_profiling()).read_text())]
        if graph.decode_session is not None:
            traces.append(json.loads(Path(graph.decode_session.end_profiling()).read_text()))
    finally:
        graph.open()
    # the runs of each session, in order: the unified one's warm-up and prefill, then (without a companion) the
    # decode warm-up and steps; the companion's decode warm-up and steps
    plan = [{1: "prefill", **{i: "decode" for i in range(3, 3 + steps)}}] if len(traces) == 1 else \
        [{1: "prefill"}, {i: "decode" for i in range(1, 1 + steps)}]
    per = {"prefill": defaultdict(float), "decode": defaultdict(float)}
    total = {"prefill": 0.0, "decode": 0.0}
    for trace, kinds in zip(traces, plan):
        runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in trace if e.get("name") == "model_run")
        for e in trace:
            if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
                continue
            idx = next((i for i, (a, b) in enumerate(runs) if a <= e["ts"] <= b), None)
            if idx in kinds:
                per[kinds[idx]][e["args"]["op_name"]] += e["dur"]
        for i, kind in kinds.items():
            total[kind] += runs[i][1] - runs[i][0]
    n = {"prefill": 1, "decode": steps}
    return {k: {"run_us": total[k] / n[k], "ops_us": dict(sorted(((op, us / n[k]) for op, us in per[k].items()),
                                                                  key=lambda t: -t[1]))} for k in per}


# ---- report ---------------------------------------------------------------------------------------------------------

def report(result: dict) -> str:
    names = list(result["prefill_s"])
    p, d, fl = result["prefill_s"], result["decode_s"], result["floors"]
    prompt = result["prompt"]
    rss = result.get("rss_mib", {})
    lines = [f"| graph | prefill 1x{prompt} tok/s | vs mobius | decode ms/step | vs mobius | sessions' RSS MiB |",
             "|---|---|---|---|---|---|"]
    for n in names:
        lines.append(f"| {n} | {prompt / p[n]:.0f} | {p['mobius'] / p[n]:.2f}x | {d[n] * 1e3:.2f} | "
                     f"{d[n] / d['mobius']:.2f}x | {rss.get(n, float('nan')):.0f} |")
    lines += ["", f"floors: prefill matrix products alone (torch sgemm) {fl['prefill_tok_s_ceiling_last_logits_torch']:.0f}"
              f" tok/s with last-token logits, {fl['prefill_tok_s_ceiling_all_logits_torch']:.0f} with all; "
              f"(ORT MatMul) {fl['prefill_tok_s_ceiling_last_logits_ort']:.0f} / "
              f"{fl['prefill_tok_s_ceiling_all_logits_ort']:.0f}; decode weight read "
              f"{fl['weight_bytes'] / 2**20:.0f} MiB at {max(fl['read_gb_s_sum'], fl['read_gb_s_gemv']):.1f} GB/s"
              f" = {fl['decode_floor_ms']:.2f} ms"]
    for name, g in fl["gemm"].items():
        lines.append(f"  sgemm {name} {g['m']}x{g['k']}x{g['n']}: torch {g['torch_gflops']:.1f} GFLOP/s, "
                     f"ORT {g['ort_gflops']:.1f}")
    for name, prof in result.get("profile", {}).items():
        for kind in ("prefill", "decode"):
            top = list(prof[kind]["ops_us"].items())[:10]
            lines.append(f"profile {name} {kind} ({prof[kind]['run_us'] / 1e3:.2f} ms/run): " +
                         ", ".join(f"{op} {us / 1e3:.2f}" for op, us in top))
    return "\n".join(lines)


def _labelled(_ctx, _param, values) -> dict[str, Path]:
    out = {}
    for v in values:
        label, _, path = v.partition("=")
        if not path or label in ("ssd-deploy", "ssd-deploy unified", "mobius"):
            raise click.BadParameter(f"{v!r}: expected LABEL=DIR with a label other than ssd-deploy/mobius")
        out[label] = Path(path)
    return out


@click.command()
@click.option("--preset", "preset_name", default="130m", show_default=True)
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keeps the checkpoint and both graphs for the next run (default: a temporary directory).")
@click.option("--export", "extra", multiple=True, callback=_labelled,
              help="LABEL=DIR: one more `ort` export to time beside the others (e.g. one made at another commit).")
@click.option("--prompt", default=512, show_default=True)
@click.option("--repeats", default=7, show_default=True, help="Prefills per graph (median).")
@click.option("--steps", default=60, show_default=True, help="Decode steps per graph (median).")
@click.option("--profile-steps", default=10, show_default=True, help="Decode steps in each profile (0: no profile).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None)
def main(preset_name, workdir, extra, prompt, repeats, steps, profile_steps, json_out):
    try:
        import mobius  # noqa: F401
    except ImportError:
        raise SystemExit("mobius is not installed (pip install -e '.[bench]' installs mobius-onnx): nothing to compare")
    log = lambda msg: click.echo(f"[{datetime.datetime.now():%H:%M:%S}] {msg}", err=True)  # noqa: E731
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory()
        workdir = Path(tmp.name)
    workdir.mkdir(parents=True, exist_ok=True)
    ckpt, paths = prepare(workdir, preset_name, extra, log)
    model = load_model(ckpt, torch.float32)
    cfg = model.cfg
    # what a decode step must read at least: every parameter once (the tied embedding table is read whole by the
    # lm_head, the other tables are not there)
    weight_bytes = sum(p.numel() * 4 for p in model.parameters())
    del model
    graphs = {name: Graph(name, *files) for name, files in paths.items()}
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (1, prompt))
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "commit": _commit(), "machine": _machine(), "preset": preset_name, "prompt": prompt,
              "graphs": {k: [str(f) for f in v if f is not None] for k, v in paths.items()},
              "rss_mib": {k: g.rss_mib for k, g in graphs.items()}}
    log("parity")
    result["parity"] = check_parity(graphs, ckpt, ids)
    if not result["parity"]["ok"]:
        log(f"PARITY FAILED: {json.dumps(result['parity'])}")
    log("timing prefill")
    result["prefill_s"] = time_prefill(graphs, ids, repeats)
    log("timing decode")
    result["decode_s"] = time_decode(graphs, ids[:, :16], steps)
    log("floors")
    result["floors"] = floors(cfg, prompt, weight_bytes, repeats)
    if profile_steps:
        log("profiles")
        result["profile"] = {name: profile(g, ids, profile_steps, workdir) for name, g in graphs.items()}
    result["machine"]["load_avg_end"] = list(os.getloadavg())
    click.echo(report(result))
    for name in graphs:
        click.echo(f"parity {name}: {json.dumps({k: v for k, v in result['parity'][name].items() if k != 'tokens'})}")
    if json_out:
        json_out.write_text(json.dumps(result, indent=1))
    if tmp:
        tmp.cleanup()
    if not result["parity"]["ok"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
