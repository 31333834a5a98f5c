"""Decode steps replayed from CUDA graphs, one capture per batch size, the states updated in place.

A decode step is a few short kernels per layer. Launched one by one from Python, a step of the 130m model costs
20-40 ms on an H200 whatever the kernels (benchmarks/RESULTS.md): launch- and Python-bound. A captured graph
replays the same kernels with one launch.

Ownership (docs/performance.md, "Decode with CUDA graphs"): the graph of batch size b owns one set of state
tensors, its buffers, and a replay reads and rewrites exactly those (the model's ``forward(in_place=True)``): no
state is copied per step. ``graphs(ids, conv, ssm)`` hands the states over:

* given that graph's buffers themselves (what the previous call of batch size b returned: the steady state of a
  decode loop), nothing is copied: the step updates them in place;
* given any other tensors (a prefill's states, a new batch), those are copied into the buffers once and left as
  they were.

What a call returns, logits and states, ARE the graph's buffers: valid until the next call of the same batch size,
which overwrites them whatever it is given. A caller that keeps states past that call copies them first (the
backends say so through ``Backend.decode_reuses_states``; serving/sequences.py does it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

Step = Callable[[Tensor, list[Tensor], list[Tensor]], tuple[Tensor, list[Tensor], list[Tensor]]]


@dataclass
class _Captured:
    replay: Callable[[], Tensor]  # the graph's replay (or, not captured, the step itself) -> logits
    ids: Tensor
    states: list[Tensor]  # the buffers: conv states, then ssm states


def _same(given: list[Tensor], buffers: list[Tensor]) -> bool:
    """The given tensors are the buffers (the same memory, laid out the same)."""
    return len(given) == len(buffers) and all(
        a is b or (a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()
                   and a.dtype == b.dtype) for a, b in zip(given, buffers))


class DecodeGraphs:
    def __init__(self, step: Step, capture: bool = True):
        """``step(ids [b, 1], conv states, ssm states) -> (logits, conv states, ssm states)`` on CUDA tensors,
        updating the states it is given in place and returning those same tensors. ``capture=False`` runs the step
        eagerly on the same buffers, with the same ownership (for tests of the callers on the CPU)."""
        self.step, self.capture = step, capture
        self.captured: dict[int, _Captured] = {}
        self.handovers = 0  # calls that copied states into the buffers (tests and benchmarks read it)

    def __call__(self, ids: Tensor, conv: list[Tensor], ssm: list[Tensor]):
        """(logits, conv states, ssm states) after one step: the graph's buffers (see the module's docstring)."""
        g = self.captured.get(ids.shape[0]) or self._capture(ids, conv, ssm)
        g.ids.copy_(ids)
        given = [*conv, *ssm]
        if not _same(given, g.states):
            torch._foreach_copy_(g.states, given)
            self.handovers += 1
        return g.replay(), g.states[:len(conv)], g.states[len(conv):]

    def _capture(self, ids: Tensor, conv: list[Tensor], ssm: list[Tensor]) -> _Captured:
        static_ids, states = ids.clone(), [torch.empty_like(t) for t in (*conv, *ssm)]
        n = len(conv)

        def run() -> Tensor:
            logits, new_conv, new_ssm = self.step(static_ids, states[:n], states[n:])
            if not _same([*new_conv, *new_ssm], states):
                raise ValueError("DecodeGraphs: the step must update the states it is given in place and return "
                                 "them")
            return logits

        if self.capture:
            torch._foreach_copy_(states, [*conv, *ssm])  # the warm-up step runs on finite values
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # lazy initialisation (cuBLAS handles, Triton compiles) is not capturable
                run()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                logits = run()

            def replay() -> Tensor:
                graph.replay()
                return logits
        else:
            replay = run
        # the warm-up step rewrote the buffers: __call__ hands the given states over before the first replay
        self.captured[ids.shape[0]] = g = _Captured(replay, static_ids, states)
        return g
