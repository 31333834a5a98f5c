"""Accuracy of an export on text (docs/quantization.md): held-out perplexity, the top-1 token at every position,
and greedy continuations, run on ONNX Runtime from the export directory alone.

Perplexity needs every position's logits: the export must have ``logits = "all"``. Windows start from zero states
(each window is scored on its own, the first token of each without context).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UserError
from .interface import INPUT_IDS, LOGITS, read_metadata
from .runtime.feeds import zero_states


@dataclass(frozen=True)
class Score:
    nll: float  # mean negative log-likelihood per token, nats
    tokens: int
    top1: np.ndarray  # [windows, length] the argmax token at every position

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll)

    def agreement(self, other: "Score") -> float:
        """Fraction of positions whose top-1 token equals ``other``'s (teacher-forced: same inputs everywhere)."""
        return float((self.top1 == other.top1).mean())


def score(export_dir: Path, windows: np.ndarray, batch: int = 8, provider: str = "cpu") -> Score:
    """``windows`` [n, length + 1] token ids: each window's first ``length`` tokens in, the next tokens scored."""
    from .runtime.ort_runner import ort_session

    meta = read_metadata(export_dir)
    if meta.logits != "all" or meta.graph != "unified":
        raise UserError(f"{export_dir}: perplexity needs a unified export with every position's logits "
                        f"(--logits all); this one has logits={meta.logits}, graph={meta.graph}")
    session = ort_session(export_dir, provider)
    vocab = meta.config.vocab_size  # rows past it are padding
    total, count, top1 = 0.0, 0, []
    for i in range(0, len(windows), batch):
        w = np.asarray(windows[i:i + batch], np.int64)
        logits = session.run([LOGITS], {INPUT_IDS: w[:, :-1], **zero_states(meta, len(w))})[0]
        z = np.asarray(logits[..., :vocab], np.float64)
        z -= z.max(-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
        total -= float(np.take_along_axis(logp, w[:, 1:, None], -1).sum())
        count += w[:, 1:].size
        top1.append(z.argmax(-1))
    return Score(total / count, count, np.concatenate(top1))


def greedy(export_dir: Path, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    """Greedy continuations of each prompt (no EOS stop), through the generation loop of ``ssd-deploy run``."""
    from .generate import SamplingOptions, generate
    from .runtime.backends import OrtBackend

    backend = OrtBackend(export_dir)
    return [generate(backend, [p], SamplingOptions(max_new_tokens=new_tokens))[0] for p in prompts]


def prefix_agreement(runs: list[list[int]], reference: list[list[int]]) -> float:
    """Mean fraction of each continuation that equals the reference's before the first differing token."""
    fractions = []
    for out, ref in zip(runs, reference):
        same = next((i for i, (a, b) in enumerate(zip(out, ref)) if a != b), min(len(out), len(ref)))
        fractions.append(same / max(len(ref), 1))
    return float(np.mean(fractions))
