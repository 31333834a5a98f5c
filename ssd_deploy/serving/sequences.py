"""Per-sequence recurrent state for a server that has no state of its own to offer (Triton's python backend):
the states of every live sequence, keyed by correlation id, and the batching of their steps (docs/serving.md).

One ``Sequences.run(steps)`` per batch the server hands over:

* a step's tokens continue its sequence from the states the sequence's last step left (zeros at START);
* every one-token step of the batch goes through ONE backend call: their states are gathered into a batch, run,
  and each sequence keeps its row of the result. When the batch is exactly the sequences of one earlier call in
  the same order (the steady state of a decode loop), that call's batched states are passed on as they are:
  nothing is copied. On a backend whose one-token calls rewrite the states they returned before
  (``Backend.decode_reuses_states``: the torch backend's CUDA graphs), the other live batches of that size are
  copied first, so that no sequence's state is overwritten by another batch's step;
* longer steps (a prompt, or several tokens appended) go through ``prefill``: one batched call for equal lengths,
  one packed call on a backend that packs, else one call each;
* a rejected step (empty, out-of-vocabulary ids, longer than the recipe's prefill range, no state) leaves its
  sequence as it was and the other steps of the batch unaffected;
* a sequence is released at its END step, or when it has been idle longer than the idle timeout.

States stay backend-native (numpy for ONNX Runtime on the CPU, device tensors for CUDA backends).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

if TYPE_CHECKING:
    from ..runtime.backends import Backend


@dataclass(frozen=True)
class Step:
    sequence: int  # correlation id
    ids: np.ndarray  # [tokens] int64
    start: bool = False
    end: bool = False


@dataclass(frozen=True)
class Result:
    logits: np.ndarray | None = None  # [padded vocab] float32, last position
    error: str | None = None


def _map(states, fn):
    """Applies ``fn`` to every tensor of a backend's states (a dict, or tuples/lists of tensors)."""
    if isinstance(states, dict):
        return {k: fn(v) for k, v in states.items()}
    if isinstance(states, (tuple, list)):
        return type(states)(_map(s, fn) for s in states)
    return fn(states)


def _rows(states, i: int, j: int):
    return _map(states, lambda t: t[i:j])


class _Batch:
    """The states of one backend call: ``size`` rows, one per sequence that took part."""

    __slots__ = ("states", "size")

    def __init__(self, states, size: int):
        self.states, self.size = states, size


@dataclass
class _Live:
    batch: _Batch
    row: int
    last_used: float


def prefill(backend: Backend, prompts: list[np.ndarray], states) -> tuple[np.ndarray, object]:
    """Runs the steps of more than one token of n sequences from their stacked states [n, ...]: (last-token
    logits [n, V], states [n, ...]). Equal lengths in one batched call; different lengths in one packed call where
    the backend packs (a ``--graph packed`` export, docs/op-contracts.md "Packed sequences"), else one call each
    (Mamba has no attention mask to pad unequal prompts with); token by token on a decode-only graph."""
    from ..generate import _forward_prompt

    if len({p.size for p in prompts}) == 1:
        return _forward_prompt(backend, np.stack(prompts), states)
    if backend.packed:
        return backend.forward_packed([p.tolist() for p in prompts], states)
    parts = [_forward_prompt(backend, p[None, :], _rows(states, i, i + 1)) for i, p in enumerate(prompts)]
    return np.concatenate([logits for logits, _ in parts]), backend.concat_states([s for _, s in parts])


class Sequences:
    def __init__(self, backend: Backend, idle_timeout_s: float, max_prefill: int | None = None,
                 clock: Callable[[], float] = time.monotonic, log: Callable[[str], None] = lambda msg: None,
                 prefill_fn=prefill):
        self.backend = backend
        self.idle_timeout_s = idle_timeout_s
        self.vocab = backend.config.vocab_size
        self.max_prefill = max_prefill if max_prefill is not None else \
            (int(backend.recipe["prefill"][1]) if backend.recipe else None)
        self.clock, self.log, self.prefill = clock, log, prefill_fn
        self.live: dict[int, _Live] = {}
        self.lock = threading.Lock()  # run() and the idle sweep of another thread
        self._zero = None

    def __len__(self):
        return len(self.live)

    def _zero_state(self):
        if self._zero is None:
            self._zero = _Batch(self.backend.zero_states(1), 1)
        return self._zero

    def _check(self, step: Step) -> str | None:
        ids = step.ids
        if ids.ndim != 1 or ids.size == 0:
            return f"sequence {step.sequence}: expected input_ids of shape [1, tokens] with tokens >= 1, " \
                   f"got {ids.size} tokens"
        bad = ids[(ids < 0) | (ids >= self.vocab)]
        if bad.size:
            return f"sequence {step.sequence}: token id {int(bad[0])} is outside the vocabulary [0, {self.vocab})"
        if self.max_prefill is not None and ids.size > self.max_prefill:
            return f"sequence {step.sequence}: {ids.size} tokens in one request exceed the export recipe's " \
                   f"prefill range (at most {self.max_prefill})"
        if not step.start and step.sequence not in self.live:
            return f"sequence {step.sequence} has no state here: its first request must set sequence_start, and " \
                   f"a sequence idle for more than {self.idle_timeout_s:g} s is released"
        return None

    def run(self, steps: list[Step]) -> list[Result]:
        with self.lock:
            now = self.clock()
            self._sweep(now)
            results: list[Result | None] = [None] * len(steps)
            seen: set[int] = set()
            decode, longer = [], []
            for k, step in enumerate(steps):
                error = self._check(step) or \
                    (f"sequence {step.sequence}: two requests in one batch" if step.sequence in seen else None)
                seen.add(step.sequence)
                if error:
                    results[k] = Result(error=error)
                elif step.ids.size == 1:
                    decode.append(k)
                else:
                    longer.append(k)
            if decode:
                self._decode([(k, steps[k]) for k in decode], results, now)
            if longer:
                logits, states = self.prefill(self.backend, [steps[k].ids for k in longer],
                                              self._gather([steps[k] for k in longer]))
                batch = _Batch(states, len(longer))
                for row, k in enumerate(longer):
                    self._keep(steps[k].sequence, batch, row, now)
                    results[k] = Result(logits=logits[row])
            for step in steps:  # END releases the sequence even when its last step was rejected
                if step.end and self.live.pop(step.sequence, None) is not None:
                    self.log(f"sequence {step.sequence} ended; {len(self.live)} live")
            return results

    def _states_of(self, step: Step):
        live = self._zero_state() if step.start else self.live[step.sequence].batch
        row = 0 if step.start else self.live[step.sequence].row
        return live.states if live.size == 1 else _rows(live.states, row, row + 1)

    def _gather(self, steps: list[Step]):
        parts = [self._states_of(s) for s in steps]
        return parts[0] if len(parts) == 1 else self.backend.concat_states(parts)

    def _decode(self, items: list[tuple[int, Step]], results: list, now: float):
        """One backend call for every one-token step: gathered states in, each sequence's row out."""
        def where(step):
            if step.start:
                return (-1, 0)
            live = self.live[step.sequence]
            return (id(live.batch), live.row)

        items.sort(key=lambda kv: where(kv[1]))
        steps = [s for _, s in items]
        first = None if steps[0].start else self.live[steps[0].sequence].batch
        whole = first is not None and first.size == len(steps) and all(
            not s.start and self.live[s.sequence].batch is first and self.live[s.sequence].row == r
            for r, s in enumerate(steps))
        # the same sequences as one earlier call, in its order: its states as they are
        states = first.states if whole else self._gather(steps)
        if getattr(self.backend, "decode_reuses_states", False):
            self._keep_apart(len(steps), {s.sequence for s in steps})
        ids = np.array([[int(s.ids[0])] for s in steps], dtype=np.int64)
        logits, new = self.backend.forward(ids, states)
        batch = _Batch(new, len(steps))
        for row, (k, step) in enumerate(items):
            self._keep(step.sequence, batch, row, now)
            results[k] = Result(logits=logits[row])

    def _keep_apart(self, size: int, moving: set[int]):
        """Before a one-token call of ``size`` rows on a backend that rewrites the states its previous call of that
        size returned: every batch of that size that a sequence outside the call (``moving``) still holds gets its
        own copy. In a steady decode loop there is none: the call continues one batch, all of whose sequences
        move on."""
        held = {id(live.batch): live.batch for seq, live in self.live.items() if seq not in moving}
        for batch in held.values():
            if batch.size == size:
                batch.states = _map(batch.states, lambda t: t.clone())

    def _keep(self, sequence: int, batch: _Batch, row: int, now: float):
        if sequence not in self.live:
            self.log(f"sequence {sequence} started; {len(self.live) + 1} live")
        self.live[sequence] = _Live(batch, row, now)

    def sweep(self):
        """Releases the sequences idle for longer than the timeout (called by run, and by a timer)."""
        with self.lock:
            self._sweep(self.clock())

    def _sweep(self, now: float):
        for seq in [s for s, live in self.live.items() if now - live.last_used > self.idle_timeout_s]:
            idle = now - self.live.pop(seq).last_used
            self.log(f"sequence {seq} released after {idle:.1f} s idle (timeout {self.idle_timeout_s:g} s); "
                     f"{len(self.live)} live")
