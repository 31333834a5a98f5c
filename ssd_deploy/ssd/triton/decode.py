"""A layer's SSM part of one decode step with its states updated IN PLACE: the conv window
(``conv.causal_conv1d_step_``), then the SSM step (``step.ssd_step`` with ``state_out = state`` and
A = -exp(A_log) taken in the kernel). Two launches where the ops take four (conv, -exp(A_log) as two, step), and no
new state buffers: what a CUDA graph that owns its states replays (runtime/cuda_graphs.py, docs/performance.md).

Not an op: export traces the ops, which are functional; the model calls this only for ``forward(in_place=True)``.
The conv and the step stay two kernels: a fused one would have every head of a group read the group's B and C
windows while one program rewrites them, a race between programs that only a grid-wide ordering could settle.
"""

from __future__ import annotations

from .conv import causal_conv1d_step_
from .step import ssd_step


def decode_step_(xBC, dt, conv_state, ssm_state, conv_weight, conv_bias, A_log, D, dt_bias, *, headdim: int,
                 ngroups: int, dt_min: float, dt_max: float):
    """xBC [b, d + 2gn] and dt [b, h] (rows may be strided: slices of in_proj's output), the block's conv (SiLU)
    and SSM parameters (A_log, not A) → y [b, h, p] in xBC's dtype; conv_state [b, d + 2gn, k-1] and ssm_state
    [b, h, p, n] rewritten."""
    b, h = dt.shape
    d = h * headdim
    gn = (xBC.shape[1] - d) // 2
    xBC = causal_conv1d_step_(xBC, conv_weight, conv_bias, conv_state, True)
    x = xBC[:, :d].view(b, h, headdim)
    B, C = (xBC[:, d + i * gn:d + (i + 1) * gn].view(b, ngroups, gn // ngroups) for i in range(2))
    y, _ = ssd_step(ssm_state, x, dt, A_log, B, C, D, dt_bias, True, dt_min, dt_max, state_out=ssm_state,
                    A_log=True)
    return y
