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
from .runtime.backends import Backend


@dataclass
class Point:
    backend: str
    batch: int
    length: int
    prefill_ms: float
    prefill_tok_s: float
    decode_ms: float
    prefill_err: float  # relative error of the last-position logits against the reference
    decode_err: float  # the same after one decode step with the carried states


def _timed(backend: Backend, fn):
    backend.synchronize()
    start = time.perf_counter()
    result = fn()
    backend.synchronize()
    return time.perf_counter() - start, result


def _rel(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


def measure(backend: Backend, ids: np.ndarray, steps: int, repeats: int):
    """(median prefill seconds, median decode-step seconds)."""
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


def run(backends: list[Backend], reference: Backend, batches: list[int], lengths: list[int], steps: int = 8,
        repeats: int = 3, seed: int = 0, progress=None) -> list[Point]:
    vocab = reference.config.vocab_size
    rng = np.random.default_rng(seed)
    points = []
    for b in batches:
        for length in lengths:
            ids = rng.integers(0, vocab, (b, length))
            expected = reference_logits(reference, ids)
            for backend in backends:
                t_pre, t_step = measure(backend, ids, steps, repeats)
                points.append(Point(backend.name, b, length, t_pre * 1e3, b * length / t_pre, t_step * 1e3,
                                    *parity(backend, ids, expected)))
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
            packed: bool = False, progress=None) -> Comparison:
    """The backends ``names`` (``runtime.kinds.TORCH_VARIANTS`` on the checkpoint, ``portable`` and ``ort`` on
    exports made here) and ONNX Runtime on each of ``exports``, measured side by side against the float32 PyTorch
    listings; with ``packed``, also one call per prompt vs one packed call."""
    from .onnx.export import export
    from .onnx.options import ExportOptions
    from .runtime.backends import OrtBackend, TorchBackend
    from .runtime.kinds import TORCH_VARIANTS

    unknown = set(names) - {*TORCH_VARIANTS, "portable", "ort"}
    if unknown or not (names or exports):
        raise UserError(f"backends: choose among {', '.join(TORCH_VARIANTS)}, portable, ort "
                        f"(got {', '.join(names) or 'none'})")
    if provider != "cuda" and any(any(TORCH_VARIANTS.get(n, ())) for n in names):
        raise UserError("Triton kernels and CUDA graphs need --provider cuda")
    if not Path(ckpt, "config.json").is_file():
        raise UserError(f"{ckpt}: not a checkpoint directory (no config.json)")
    if not batches or not lengths or min(*batches, *lengths) < 1:
        raise UserError("batches and lengths: expected positive integers")
    flavors = [f for f in names if f in ("portable", "ort")]
    with tempfile.TemporaryDirectory(prefix="ssd-deploy-bench-") as tmp:
        # last-position logits only, as generation needs: all-position logits would time a [b, l, vocab] copy
        made = [export(ckpt, Path(tmp) / f, ExportOptions(flavor=f, dtype=dtype, logits="last")).parent
                for f in flavors]
        runners = [TorchBackend(ckpt, provider, dtype, *TORCH_VARIANTS[n]) for n in names if n in TORCH_VARIANTS]
        runners += [OrtBackend(e, provider) for e in [*made, *exports]]
        reference = next((r for r in runners if r.name == f"torch-{provider}" and dtype == "fp32"), None) \
            or TorchBackend(ckpt, provider, "fp32", triton=False)
        points = run(runners, reference, list(batches), list(lengths), steps, repeats, progress=progress)
        packed_points = []
        if packed:  # each flavor's unified export one prompt at a time, its packed export in one call
            pairs = [(r, r) for r in runners if r.packed]
            for flavor, unified in zip(flavors, made):
                opts = ExportOptions(flavor=flavor, dtype=dtype, logits="last", graph="packed")
                pairs.append((OrtBackend(unified, provider),
                              OrtBackend(export(ckpt, Path(tmp) / f"{flavor}-packed", opts).parent, provider)))
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
    lines = [f"{'backend':<22} {'batch':>5} {'length':>6} {'prefill ms':>11} {'tokens/s':>10} {'decode ms':>10} "
             f"{'err pre':>8} {'err step':>8}"]
    for p in points:
        lines.append(f"{p.backend:<22} {p.batch:>5} {p.length:>6} {p.prefill_ms:>11.2f} {p.prefill_tok_s:>10.1f} "
                     f"{p.decode_ms:>10.2f} {p.prefill_err:>8.1e} {p.decode_err:>8.1e}")
    return "\n".join(lines)


def to_json(points: list[Point]) -> list[dict]:
    return [asdict(p) for p in points]


def plot(points: list[Point], path) -> None:
    """tokens/s against prompt length, one line per backend and batch."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from .errors import UserError

        raise UserError("--plot needs matplotlib (pip install 'ssd-deploy[bench]')") from None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key in sorted({(p.backend, p.batch) for p in points}):
        pts = sorted((p.length, p.prefill_tok_s) for p in points if (p.backend, p.batch) == key)
        ax.plot(*zip(*pts), marker="o", label=f"{key[0]} (batch {key[1]})")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("prompt length (tokens)")
    ax.set_ylabel("prefill tokens/s")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
