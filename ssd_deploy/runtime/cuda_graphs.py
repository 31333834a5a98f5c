"""Decode steps replayed from CUDA graphs, one capture per batch size.

A decode step is a few dozen short kernels per layer. Launched one by one from Python, a step of the 130m model
costs 20-40 ms on an H200 whatever the kernels (benchmarks/RESULTS.md): launch- and Python-bound. A captured graph
replays the same kernels with one launch. Inputs are copied into the graph's static buffers and outputs copied out
of them: callers keep the plain semantics of a forward call (what a step returns is never overwritten by the next
one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

Step = Callable[[Tensor, list[Tensor], list[Tensor]], tuple[Tensor, list[Tensor], list[Tensor]]]


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    ids: Tensor
    states: list[Tensor]  # conv states, then ssm states
    logits: Tensor
    new_states: list[Tensor]


class DecodeGraphs:
    def __init__(self, step: Step):
        """``step(ids [b, 1], conv states, ssm states) -> (logits, conv states, ssm states)``, on CUDA tensors."""
        self.step = step
        self.captured: dict[int, _Captured] = {}

    def __call__(self, ids: Tensor, conv: list[Tensor], ssm: list[Tensor]):
        g = self.captured.get(ids.shape[0]) or self._capture(ids, conv, ssm)
        g.ids.copy_(ids)
        torch._foreach_copy_(g.states, [*conv, *ssm])
        g.graph.replay()
        out = [torch.empty_like(t) for t in g.new_states]
        torch._foreach_copy_(out, g.new_states)
        return g.logits.clone(), out[:len(conv)], out[len(conv):]

    def _capture(self, ids: Tensor, conv: list[Tensor], ssm: list[Tensor]) -> _Captured:
        static_ids, states = ids.clone(), [t.clone() for t in (*conv, *ssm)]
        n = len(conv)

        def run():
            return self.step(static_ids, states[:n], states[n:])

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # lazy initialisation (cuBLAS handles, Triton compiles) cannot be captured
            run()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            logits, new_conv, new_ssm = run()
        self.captured[ids.shape[0]] = g = _Captured(graph, static_ids, states, logits, [*new_conv, *new_ssm])
        return g
