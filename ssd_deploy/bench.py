"""bench: prefill tokens/s and decode ms/token over a batch × length grid, for each backend side by side in one
run (warm-up first, median of repeats). Each point also checks parity: the backend's last-position logits after
the prefill and after one decode step, against a reference backend (the float32 PyTorch listings) fed the same
prompt and the same next token."""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import UserError
from .progress import QUIET, Reporter
from .runtime.backends import Backend
from .runtime.kinds import EXPORTED_HERE, TORCH_VARIANTS


@dataclass
class Point:
    backend: str  # the row's label: the backend's name, with the export's folder where two would read the same
    dtype: str
    batch: int
    length: int
    prefill_ms: float  # median of the repeats
    prefill_tok_s: float
    decode_ms: float  # median of the steps
    prefill_err: float  # relative error of the last-position logits against the reference
    decode_err: float  # the same after one decode step with the carried states
    # the spread: a busy machine swings timings, and a median alone hides it
    prefill_ms_min: float = 0.0
    prefill_ms_max: float = 0.0
    decode_ms_min: float = 0.0
    decode_ms_max: float = 0.0


def _timed(backend: Backend, fn):
    backend.synchronize()
    start = time.perf_counter()
    result = fn()
    backend.synchronize()
    return time.perf_counter() - start, result


def _rel(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


def timings(backend: Backend, ids: np.ndarray, steps: int, repeats: int) -> tuple[list[float], list[float]]:
    """Seconds of each timed prefill and of each decode step (warm-up calls first, not counted)."""
    backend.forward(ids, backend.zero_states(ids.shape[0]))  # warm-up: sessions, kernels, allocator
    prefill_times, logits, states = [], None, None
    for _ in range(repeats):
        t, (logits, states) = _timed(backend, lambda: backend.forward(ids, backend.zero_states(ids.shape[0])))
        prefill_times.append(t)
    token = logits.argmax(-1)[:, None]
    backend.forward(token, states)  # warm-up of the single-token path
    step_times = []
    for _ in range(steps):
        t, (step_logits, states) = _timed(backend, lambda: backend.forward(token, states))
        step_times.append(t)
        token = step_logits.argmax(-1)[:, None]
    return prefill_times, step_times


def measure(backend: Backend, ids: np.ndarray, steps: int, repeats: int):
    """(median prefill seconds, median decode-step seconds)."""
    prefill_times, step_times = timings(backend, ids, steps, repeats)
    return statistics.median(prefill_times), statistics.median(step_times)


def parity(backend: Backend, ids: np.ndarray, expected: tuple[np.ndarray, np.ndarray]) -> tuple[float, float]:
    """Relative errors of the prefill logits and of the next step's logits (the reference's greedy token fed to
    both, so that the two steps see the same input)."""
    logits, states = backend.forward(ids, backend.zero_states(ids.shape[0]))
    step_logits, _ = backend.forward(expected[0].argmax(-1)[:, None], states)
    return _rel(logits, expected[0]), _rel(step_logits, expected[1])


def reference_logits(reference: Backend, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    logits, states = reference.forward(ids, reference.zero_states(ids.shape[0]))
    return logits, reference.forward(logits.argmax(-1)[:, None], states)[0]


def labels(backends: list[Backend], folders: list[Path | None]) -> list[str]:
    """Row labels: each backend's name; where two would read the same, the export's folder is added (and a count
    where even that repeats)."""
    names = [b.name for b in backends]
    out = [n if names.count(n) == 1 or f is None else f"{n} ({Path(f).name})" for n, f in zip(names, folders)]
    return [lab if out.count(lab) == 1 else f"{lab} #{out[:i + 1].count(lab)}" for i, lab in enumerate(out)]


def run(backends: list[Backend], reference: Backend, batches: list[int], lengths: list[int], steps: int = 8,
        repeats: int = 3, seed: int = 0, progress=None, names: list[str] | None = None,
        display: Reporter = QUIET) -> list[Point]:
    """Every backend on the same prompts, point by point. ``progress`` is called with each finished Point;
    ``names`` label the rows (default: the backends' names); ``display`` shows the point being measured."""
    vocab = reference.config.vocab_size
    rng = np.random.default_rng(seed)
    names = names or [b.name for b in backends]
    points = []
    with display.bar("bench", total=len(batches) * len(lengths) * len(backends)) as advance:
        for b in batches:
            for length in lengths:
                ids = rng.integers(0, vocab, (b, length))
                advance(f"reference logits, batch {b}, length {length}", 0)
                expected = reference_logits(reference, ids)
                for name, backend in zip(names, backends):
                    advance(f"{name}, batch {b}, length {length}", 0)  # said before the point runs
                    pre, step = timings(backend, ids, steps, repeats)
                    t_pre, t_step = statistics.median(pre), statistics.median(step)
                    err_pre, err_step = parity(backend, ids, expected)
                    points.append(Point(
                        backend=name, dtype=backend.dtype, batch=b, length=length, prefill_ms=t_pre * 1e3,
                        prefill_tok_s=b * length / t_pre, decode_ms=t_step * 1e3, prefill_err=err_pre,
                        decode_err=err_step, prefill_ms_min=min(pre) * 1e3, prefill_ms_max=max(pre) * 1e3,
                        decode_ms_min=min(step) * 1e3, decode_ms_max=max(step) * 1e3))
                    advance()
                    if progress:
                        progress(points[-1])
    return points


@dataclass
class PackedPoint:
    """Prefill of prompts of different lengths: one call per prompt vs one packed call (docs/op-contracts.md,
    "Packed sequences")."""
    backend: str  # the packed one ("name one by one / name packed" when they differ)
    lengths: list
    one_by_one_ms: float
    packed_ms: float
    speedup: float
    err: float  # the packed call's last logits against the one-by-one ones (relative)


def _one_by_one(backend: Backend, prompts: list[list[int]]) -> np.ndarray:
    return np.concatenate([backend.forward(np.array([p]), backend.zero_states(1))[0] for p in prompts])


def run_packed(pairs: list[tuple[Backend, Backend]], lengths: list[int], repeats: int = 3, seed: int = 0,
               progress=None) -> list[PackedPoint]:
    """For each (backend, packing backend) pair (the same backend, or an ONNX Runtime one on a unified export and
    one on a packed export), one prompt of each length: median time of one call per prompt vs one packed call."""
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(0, pairs[0][0].config.vocab_size, n).tolist() for n in lengths]
    points = []
    for single, packed in pairs:
        expected = _one_by_one(single, prompts)  # also the warm-up
        packed.forward_packed(prompts, packed.zero_states(len(prompts)))
        t_one = statistics.median(_timed(single, lambda: _one_by_one(single, prompts))[0] for _ in range(repeats))
        runs = [_timed(packed, lambda: packed.forward_packed(prompts, packed.zero_states(len(prompts))))
                for _ in range(repeats)]
        t_packed = statistics.median(t for t, _ in runs)
        name = packed.name if single is packed else f"{single.name} / {packed.name}"
        points.append(PackedPoint(name, list(lengths), t_one * 1e3, t_packed * 1e3, t_one / t_packed,
                                  _rel(runs[-1][1][0], expected)))
        if progress:
            progress(points[-1])
    return points


@dataclass
class Comparison:
    points: list[Point]  # one per backend, batch and length
    packed: list[PackedPoint]  # one per backend that packs (empty unless asked)


def compare(ckpt: Path, names: list[str], exports: list[Path] = (), provider: str = "cpu", dtype: str = "fp32",
            batches: list[int] = (1,), lengths: list[int] = (128, 512), steps: int = 8, repeats: int = 3,
            packed: bool = False, progress=None, display: Reporter = QUIET) -> Comparison:
    """The backends ``names`` (``runtime.kinds.TORCH_VARIANTS`` on the checkpoint, ``portable`` and ``ort`` on
    exports made here) and ONNX Runtime on each of ``exports``, measured side by side against the float32 PyTorch
    listings; with ``packed``, also one call per prompt vs one packed call. Rows are labelled by ``labels``;
    ``display`` shows each export and point as it runs."""
    from .onnx.export import export
    from .onnx.options import ExportOptions
    from .runtime.backends import OrtBackend, TorchBackend

    unknown = set(names) - {*TORCH_VARIANTS, *EXPORTED_HERE}
    if unknown or not (names or exports):
        raise UserError(f"backends: choose among {', '.join([*TORCH_VARIANTS, *EXPORTED_HERE])} "
                        f"(got {', '.join(names) or 'none'})")
    if provider != "cuda" and any(any(TORCH_VARIANTS.get(n, ())) for n in names):
        raise UserError("Triton kernels and CUDA graphs need --provider cuda")
    if not Path(ckpt, "config.json").is_file():
        raise UserError(f"{ckpt}: not a checkpoint directory (no config.json)")
    if not batches or not lengths or min(*batches, *lengths) < 1:
        raise UserError("batches and lengths: expected positive integers")
    flavors = [f for f in names if f in EXPORTED_HERE]
    with tempfile.TemporaryDirectory(prefix="ssd-deploy-bench-") as tmp:
        # last-position logits only, as generation needs: all-position logits would time a [b, l, vocab] copy
        made = [export(ckpt, Path(tmp) / f, ExportOptions(flavor=f, dtype=dtype, logits="last"),
                       progress=display).parent for f in flavors]
        runners = [TorchBackend(ckpt, provider, dtype, *TORCH_VARIANTS[n]) for n in names if n in TORCH_VARIANTS]
        folders = [None] * (len(runners) + len(made)) + [Path(e) for e in exports]
        runners += [OrtBackend(e, provider) for e in [*made, *exports]]
        reference = next((r for r in runners if r.name == f"torch-{provider}" and dtype == "fp32"), None) \
            or TorchBackend(ckpt, provider, "fp32", triton=False)
        points = run(runners, reference, list(batches), list(lengths), steps, repeats, progress=progress,
                     names=labels(runners, folders), display=display)
        packed_points = []
        if packed:  # each flavor's unified export one prompt at a time, its packed export in one call
            pairs = [(r, r) for r in runners if r.packed]
            for flavor, unified in zip(flavors, made):
                opts = ExportOptions(flavor=flavor, dtype=dtype, logits="last", graph="packed")
                pairs.append((OrtBackend(unified, provider),
                              OrtBackend(export(ckpt, Path(tmp) / f"{flavor}-packed", opts, progress=display).parent,
                                         provider)))
            packed_points = run_packed(pairs, list(lengths), repeats)
    return Comparison(points, packed_points)


def packed_table(points: list[PackedPoint]) -> str:
    lines = [f"{'backend (one by one / packed)':<48} {'one by one ms':>13} {'packed ms':>10} {'speed-up':>8} "
             f"{'err':>8}"]
    for p in points:
        lines.append(f"{p.backend:<48} {p.one_by_one_ms:>13.2f} {p.packed_ms:>10.2f} {p.speedup:>7.2f}x "
                     f"{p.err:>8.1e}")
    return "\n".join(lines)


def table(points: list[Point]) -> str:
    """One row per point; timings as median [min-max] over the repeats (prefill) and steps (decode)."""
    lines = [f"{'backend':<26} {'dtype':<5} {'batch':>5} {'length':>6} {'prefill ms [min-max]':>24} "
             f"{'tokens/s':>10} {'decode ms [min-max]':>22} {'err pre':>8} {'err step':>8}"]
    for p in points:
        pre = f"{p.prefill_ms:.2f} [{p.prefill_ms_min:.2f}-{p.prefill_ms_max:.2f}]"
        dec = f"{p.decode_ms:.2f} [{p.decode_ms_min:.2f}-{p.decode_ms_max:.2f}]"
        lines.append(f"{p.backend:<26} {p.dtype:<5} {p.batch:>5} {p.length:>6} {pre:>24} {p.prefill_tok_s:>10.1f} "
                     f"{dec:>22} {p.prefill_err:>8.1e} {p.decode_err:>8.1e}")
    return "\n".join(lines)


def to_json(points: list[Point]) -> list[dict]:
    return [asdict(p) for p in points]


def require_matplotlib():
    """--plot's dependency, checked before anything is measured."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UserError("--plot needs matplotlib (pip install 'ssd-deploy[bench]')") from None


def plot(points: list[Point], path, title: str = "") -> None:
    """Two panels against prompt length, one line per backend and batch: prefill tokens/s and decode ms/token,
    each with its min-max spread; the title says what was measured (dtype, provider, checkpoint)."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (pre, dec) = plt.subplots(1, 2, figsize=(12, 4.8))
    for key in sorted({(p.backend, p.dtype, p.batch) for p in points}):
        pts = sorted((p for p in points if (p.backend, p.dtype, p.batch) == key), key=lambda p: p.length)
        label = f"{key[0]} {key[1]} (batch {key[2]})"
        x = [p.length for p in pts]
        tok = [p.prefill_tok_s for p in pts]  # tokens/s of the slowest and fastest prefill
        tok_lo = [p.batch * p.length / (p.prefill_ms_max / 1e3) if p.prefill_ms_max else t for p, t in zip(pts, tok)]
        tok_hi = [p.batch * p.length / (p.prefill_ms_min / 1e3) if p.prefill_ms_min else t for p, t in zip(pts, tok)]
        line, = pre.plot(x, tok, marker="o", label=label)
        pre.fill_between(x, tok_lo, tok_hi, color=line.get_color(), alpha=0.15)
        dec.plot(x, [p.decode_ms for p in pts], marker="o", color=line.get_color(), label=label)
        dec.fill_between(x, [p.decode_ms_min for p in pts], [p.decode_ms_max for p in pts], color=line.get_color(),
                         alpha=0.15)
    for ax, ylabel, what in ((pre, "prefill tokens/s", "prefill"), (dec, "decode ms/token", "decode")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("prompt length (tokens)")
        ax.set_ylabel(ylabel)
        ax.set_title(what)
        ax.grid(True, alpha=0.3)
    dec.legend(fontsize=8)
    dtypes = ", ".join(sorted({p.dtype for p in points}))
    fig.suptitle(f"ssd-deploy bench ({dtypes}{'; ' + title if title else ''}); median, band: min-max")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
