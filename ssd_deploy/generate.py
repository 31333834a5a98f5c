"""Generation over any stateful backend: prefill the prompts (one packed call where the backend packs), then decode
token by token with the carried states; greedy or sampled (temperature, top-k, top-p); stops on EOS or the token
limit."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import UserError
from .runtime.backends import Backend

TOKENIZER_FILE = "tokenizer.json"
EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|eos|>")


@dataclass(frozen=True)
class SamplingOptions:
    max_new_tokens: int = 32
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: no limit
    top_p: float = 1.0
    seed: int | None = None
    eos_id: int | None = None

    def check(self):
        if self.max_new_tokens < 1:
            raise UserError("--max-new-tokens must be at least 1")
        if not (math.isfinite(self.temperature) and self.temperature >= 0) or self.top_k < 0 \
                or not 0 < self.top_p <= 1:
            raise UserError(f"need a finite temperature >= 0, top-k >= 0 and 0 < top-p <= 1 (got temperature "
                            f"{self.temperature}, top-k {self.top_k}, top-p {self.top_p})")


def sample(logits: np.ndarray, opts: SamplingOptions, rng: np.random.Generator) -> np.ndarray:
    """logits [b, V] → token ids [b]."""
    if opts.temperature == 0:
        return logits.argmax(-1)
    z = logits.astype(np.float64) / opts.temperature
    if opts.top_k:
        kth = np.sort(z, axis=-1)[:, -min(opts.top_k, z.shape[-1])][:, None]
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    if opts.top_p < 1:
        order = np.argsort(-p, axis=-1)
        sorted_p = np.take_along_axis(p, order, -1)
        outside = np.cumsum(sorted_p, -1) - sorted_p >= opts.top_p  # keep the smallest set reaching top_p
        mask = np.zeros_like(p, dtype=bool)
        np.put_along_axis(mask, order, outside, -1)
        p = np.where(mask, 0.0, p)
        p /= p.sum(-1, keepdims=True)
    return np.array([rng.choice(p.shape[-1], p=row) for row in p])


def check_prompts(prompts: list[list[int]], vocab_size: int):
    """Every prompt non-empty and every id a token of the vocabulary, before any backend sees them (a backend would
    read past its embedding, or fail deep inside)."""
    if not prompts:
        raise UserError("no prompts")
    for i, p in enumerate(prompts):
        where = f"prompt {i + 1}" if len(prompts) > 1 else "prompt"
        if len(p) == 0:
            raise UserError(f"{where} is empty")
        bad = next((t for t in p if not isinstance(t, (int, np.integer)) or not 0 <= t < vocab_size), None)
        if bad is not None:
            raise UserError(f"{where}: token id {bad} is outside the model's vocabulary (0..{vocab_size - 1})")


def _forward_prompt(backend: Backend, ids: np.ndarray, states):
    """One call, or one call per token where the graph takes one token per call (a --graph decode export)."""
    if not backend.one_token_per_call:
        return backend.forward(ids, states)
    for i in range(ids.shape[1]):
        logits, states = backend.forward(ids[:, i:i + 1], states)
    return logits, states


def prefill(backend: Backend, prompts: list[list[int]]):
    """One call for equal-length prompts; prompts of different lengths in one packed call where the backend packs
    (docs/op-contracts.md, "Packed sequences"), else one call each and the states stacked (no padding: Mamba has no
    attention mask, and a pad token would enter the state). The prompts are checked (``check_prompts``)."""
    if len({len(p) for p in prompts}) == 1:
        return _forward_prompt(backend, np.array(prompts, np.int64), backend.zero_states(len(prompts)))
    if backend.packed:
        return backend.forward_packed(prompts, backend.zero_states(len(prompts)))
    parts = []
    for p in prompts:
        logits, states = _forward_prompt(backend, np.array([p], np.int64), backend.zero_states(1))
        # where a one-token call rewrites what the last one returned (decode_reuses_states), the next prompt's
        # steps would overwrite these states: a copy of them is kept (concat_states of one part copies)
        parts.append((logits, backend.concat_states([states]) if backend.decode_reuses_states else states))
    return np.concatenate([logits for logits, _ in parts]), backend.concat_states([s for _, s in parts])


def check_limits(recipe: dict, prompts: list[list[int]]):
    """The export recipe's shape ranges are what the deployment (and a TensorRT engine) was built for."""
    if not recipe:
        return
    longest, batch = max(len(p) for p in prompts), len(prompts)
    if longest > recipe["prefill"][1]:
        raise UserError(f"a prompt of {longest} tokens exceeds the export recipe's prefill range "
                        f"(at most {recipe['prefill'][1]})")
    if batch > recipe["batch"][1]:
        raise UserError(f"{batch} prompts exceed the export recipe's batch range (at most {recipe['batch'][1]})")


def generate(backend: Backend, prompts: list[list[int]], opts: SamplingOptions,
             on_tokens: Callable[[np.ndarray, np.ndarray], None] | None = None) -> list[list[int]]:
    """Returns the new tokens of each prompt. ``on_tokens(tokens [b], alive [b])`` streams each step's tokens."""
    opts.check()
    check_prompts(prompts, backend.config.vocab_size)
    check_limits(backend.recipe, prompts)
    vocab = backend.config.vocab_size  # rows past it are padding: never sampled
    rng = np.random.default_rng(opts.seed)
    logits, states = prefill(backend, prompts)
    out: list[list[int]] = [[] for _ in prompts]
    alive = np.ones(len(prompts), dtype=bool)
    for step in range(opts.max_new_tokens):
        if np.isnan(logits[:, :vocab]).any():
            raise UserError(f"the model produced NaN logits ({'after the prefill' if step == 0 else f'at step {step}'}"
                            f"): its weights or the export are broken (`ssd-deploy validate` compares it with the "
                            f"checkpoint)")
        tokens = sample(logits[:, :vocab], opts, rng)
        for i in np.flatnonzero(alive):
            out[i].append(int(tokens[i]))
        if on_tokens:
            on_tokens(tokens, alive.copy())
        if opts.eos_id is not None:
            alive &= tokens != opts.eos_id
        if not alive.any() or step == opts.max_new_tokens - 1:
            break
        logits, states = backend.forward(tokens[:, None], states)
    return out


def find_tokenizer(model_dir: Path, given: Path | None):
    """A local tokenizer.json (the file or a directory holding one): the given one, else the one beside the model;
    None when there is none (then prompts and outputs are token ids)."""
    from tokenizers import Tokenizer

    candidates = [Path(given)] if given else [Path(model_dir)]
    for c in candidates:
        path = c / TOKENIZER_FILE if c.is_dir() else c
        if path.is_file():
            try:
                return Tokenizer.from_file(str(path))
            except Exception as e:  # tokenizers raises plain Exceptions for malformed files
                raise UserError(f"{path}: not a readable tokenizer ({e})") from None
        if given:
            raise UserError(f"{given}: no {TOKENIZER_FILE} there")
    return None


def default_eos(tokenizer) -> int | None:
    if tokenizer is None:
        return None
    for tok in EOS_CANDIDATES:
        i = tokenizer.token_to_id(tok)
        if i is not None:
            return i
    return None
