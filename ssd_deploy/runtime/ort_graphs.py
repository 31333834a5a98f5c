"""One-token steps of a decode graph replayed from ONNX Runtime's CUDA graphs, one pair of graphs per batch size.

A decode step on ONNX Runtime's CUDA provider launches every node from the host, and its time is launch and
dispatch (benchmarks/RESULTS.md, run 3). With ``enable_cuda_graph`` the session captures a run's kernels once and
replays them with one launch; a replay reads and writes the very device addresses the capture saw, so every input
and output is bound (IO binding) to a buffer that lives as long as the graph (docs/performance.md, "ONNX Runtime
CUDA graphs").

Ownership follows runtime/cuda_graphs.py's contract (``Backend.decode_reuses_states``). A graph's outputs cannot
be its inputs (a node may read a state after another has written the output), so batch size b owns two sets of
state buffers, sides 0 and 1, and two captured graphs: side 0's reads set 0 and writes set 1, side 1's the reverse
(run option ``gpu_graph_id`` 2b and 2b + 1). ``graphs(ids, states)``:

* given one side's buffers themselves (the tensors the previous call of batch size b returned: the steady state
  of a decode loop), replays that side's graph: nothing is copied;
* given any other states (a prefill's, a new batch), copies them into side 0's buffers once, leaves them as they
  were, and replays side 0.

What a call returns, logits and states, ARE buffers of batch size b: valid until the next call of that batch size,
which may overwrite them whatever it is given. A caller that keeps states past that call copies them first.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..interface import INPUT_IDS, LOGITS, ExportMetadata
from .feeds import state_specs
from .ort_runner import NO_GRAPH, bind_tensor, run_options


@dataclass
class _Batch:
    ids: torch.Tensor  # [b, 1] int64
    logits: torch.Tensor  # [b, 1, V]: both sides write it
    sides: tuple[dict, dict]  # state name -> buffer, sets 0 and 1
    bindings: list = field(default_factory=list)  # side i's IO binding: set i in, set 1 - i out
    options: list = field(default_factory=list)  # side i's run options (its graph id)


def _is(given: dict, buffers: dict) -> bool:
    """The given states are those buffers, the very tensors a call returned (checked by identity: a step pays for
    this check on every state; anything else, even an alias of the buffers, is copied in, which is still right)."""
    return len(given) == len(buffers) and all(given.get(k) is t for k, t in buffers.items())


class OrtDecodeGraphs:
    def __init__(self, session, meta: ExportMetadata, vocab: int, logits_dtype: torch.dtype, device: str = "cuda"):
        """``session``: an ONNX Runtime session of a one-token graph, created with CUDA graphs on
        (``ort_session(..., cuda_graph=True)``). ``device="cpu"`` runs the same bindings and ownership on a CPU
        session, whose provider ignores the graph ids (for tests of the bookkeeping without a GPU)."""
        self.session, self.meta, self.vocab, self.logits_dtype, self.device = session, meta, vocab, logits_dtype, device
        self.batches: dict[int, _Batch] = {}
        self.handovers = 0  # calls that copied states into the buffers (tests and benchmarks read it)

    def __call__(self, ids: np.ndarray, states: dict) -> tuple[torch.Tensor, dict]:
        """(logits [b, 1, V], states) after one step: buffers of batch size b (see the module's docstring)."""
        g = self.batches.get(ids.shape[0]) or self._prepare(ids.shape[0])
        side = next((i for i in (0, 1) if _is(states, g.sides[i])), None)
        if side is None:
            side = 0
            for name, buffer in g.sides[0].items():
                buffer.copy_(torch.as_tensor(states[name]))
            self.handovers += 1
        g.ids.copy_(torch.from_numpy(np.ascontiguousarray(ids, np.int64)))
        self._synchronize()  # torch's copies must land before ONNX Runtime's stream reads the buffers
        # a side's first run captures its graph (and runs it), later runs replay it; returns once the stream is done
        self.session.run_with_iobinding(g.bindings[side], g.options[side])
        return g.logits, dict(g.sides[1 - side])

    def _prepare(self, b: int) -> _Batch:
        """Batch size b's buffers and bindings, and one run without a graph: the session's allocations for this
        batch size happen there, not during the capture that follows."""
        zeros = lambda shape, dtype: torch.zeros(shape, dtype=dtype, device=self.device)  # noqa: E731
        sides = tuple({name: zeros(shape, dtype.torch) for name, (shape, dtype) in state_specs(self.meta, b).items()}
                      for _ in range(2))
        g = _Batch(zeros((b, 1), torch.int64), zeros((b, 1, self.vocab), self.logits_dtype), sides)
        for side in (0, 1):
            binding = self.session.io_binding()
            bind_tensor(binding.bind_input, INPUT_IDS, g.ids)
            for s in self.meta.states:
                bind_tensor(binding.bind_input, s.name, sides[side][s.name])
                bind_tensor(binding.bind_output, s.output, sides[1 - side][s.name])
            bind_tensor(binding.bind_output, LOGITS, g.logits)
            g.bindings.append(binding)
            g.options.append(run_options(2 * b + side))
        self._synchronize()
        self.session.run_with_iobinding(g.bindings[0], run_options(NO_GRAPH))
        self.batches[b] = g
        return g

    def _synchronize(self):
        if self.device == "cuda":
            torch.cuda.synchronize()
