"""bench: prefill tokens/s and decode ms/token over a batch × length grid, for each backend side by side in one
run (warm-up first, median of repeats), with each backend's last-position logits compared with the first
backend's (the PyTorch reference when present) on the same prompts."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import numpy as np

from .runtime.backends import Backend


@dataclass
class Point:
    backend: str
    batch: int
    length: int
    prefill_ms: float
    prefill_tok_s: float
    decode_ms: float
    rel_err_vs_first: float | None


def _timed(backend: Backend, fn):
    backend.synchronize()
    start = time.perf_counter()
    result = fn()
    backend.synchronize()
    return time.perf_counter() - start, result


def measure(backend: Backend, ids: np.ndarray, steps: int, repeats: int):
    """(median prefill seconds, median decode-step seconds, prefill logits)."""
    zero = backend.zero_states(ids.shape[0])
    backend.forward(ids, zero)  # warm-up: sessions, kernels, allocator
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
    return statistics.median(prefill_times), statistics.median(step_times), logits


def run(backends: list[Backend], batches: list[int], lengths: list[int], steps: int = 8, repeats: int = 3,
        seed: int = 0, progress=None) -> list[Point]:
    vocab = backends[0].config.vocab_size
    rng = np.random.default_rng(seed)
    points = []
    for b in batches:
        for length in lengths:
            ids = rng.integers(0, vocab, (b, length))
            first = None
            for backend in backends:
                t_pre, t_step, logits = measure(backend, ids, steps, repeats)
                if first is None:
                    first, err = logits, None
                else:
                    err = float(np.linalg.norm(logits - first) / np.linalg.norm(first))
                points.append(Point(backend.name, b, length, t_pre * 1e3, b * length / t_pre, t_step * 1e3, err))
                if progress:
                    progress(points[-1])
    return points


def table(points: list[Point]) -> str:
    lines = [f"{'backend':<22} {'batch':>5} {'length':>6} {'prefill ms':>11} {'tokens/s':>10} {'decode ms':>10} "
             f"{'rel err':>9}"]
    for p in points:
        err = "ref" if p.rel_err_vs_first is None else f"{p.rel_err_vs_first:.1e}"
        lines.append(f"{p.backend:<22} {p.batch:>5} {p.length:>6} {p.prefill_ms:>11.2f} {p.prefill_tok_s:>10.1f} "
                     f"{p.decode_ms:>10.2f} {err:>9}")
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
