"""The four ops of docs/op-contracts.md as ``torch.library`` custom ops (``torch.ops.ssd_deploy.*``).

The model calls only these, so that one traced graph keeps each op as one node, which the exporter lowers three
ways (portable / ort / trt), and so that faster kernels (Triton, CUDA) register as implementations of the same ops
for their device. The default implementation is the PyTorch reference listing (``reference.py``).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import reference

NAMESPACE = "ssd_deploy"


@torch.library.custom_op(f"{NAMESPACE}::ssd_scan", mutates_args=())
def ssd_scan(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, dt_bias: Tensor,
             initial_state: Optional[Tensor], chunk_size: int, dt_softplus: bool, dt_min: float,
             dt_max: float) -> tuple[Tensor, Tensor]:
    y, state = reference.ssd_chunked(x, dt, A, B, C, D, dt_bias, initial_state, chunk_size=chunk_size,
                                     dt_softplus=dt_softplus, dt_min=dt_min, dt_max=dt_max)
    return y, state.float().contiguous()


@ssd_scan.register_fake
def _(x, dt, A, B, C, D, dt_bias, initial_state, chunk_size, dt_softplus, dt_min, dt_max):
    b, _, h, p = x.shape
    return torch.empty_like(x), x.new_empty(b, h, p, B.shape[-1], dtype=torch.float32)


@torch.library.custom_op(f"{NAMESPACE}::ssd_step", mutates_args=())
def ssd_step(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, dt_bias: Tensor,
             dt_softplus: bool, dt_min: float, dt_max: float) -> tuple[Tensor, Tensor]:
    y, new = reference.ssd_step(state, x, dt, A, B, C, D, dt_bias, dt_softplus=dt_softplus, dt_min=dt_min,
                                dt_max=dt_max)
    return y, new.float().contiguous()


@ssd_step.register_fake
def _(state, x, dt, A, B, C, D, dt_bias, dt_softplus, dt_min, dt_max):
    return torch.empty_like(x), torch.empty_like(state, dtype=torch.float32)


@torch.library.custom_op(f"{NAMESPACE}::causal_conv1d", mutates_args=())
def causal_conv1d(x: Tensor, weight: Tensor, bias: Optional[Tensor], conv_state: Tensor,
                  silu: bool) -> tuple[Tensor, Tensor]:
    y, new = reference.causal_conv1d(x, weight, bias, conv_state, silu=silu)
    return y, new.contiguous()


@causal_conv1d.register_fake
def _(x, weight, bias, conv_state, silu):
    return torch.empty_like(x), torch.empty_like(conv_state)


# Packed sequences (docs/op-contracts.md, "Packed sequences"): separate ops rather than optional inputs of the two
# above, so that the unpacked ops, their kernels and their lowerings stay exactly as they are, and each flavor
# lowers the packed form on its own. x [1, T, ...] holds n sequences end to end, cut by cu_seqlens [n+1] int64;
# states are per sequence, [n, ...].

@torch.library.custom_op(f"{NAMESPACE}::ssd_scan_packed", mutates_args=())
def ssd_scan_packed(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, dt_bias: Tensor,
                    initial_states: Tensor, cu_seqlens: Tensor, chunk_size: int, dt_softplus: bool, dt_min: float,
                    dt_max: float) -> tuple[Tensor, Tensor]:
    y, states = reference.ssd_chunked_packed(x, dt, A, B, C, D, dt_bias, cu_seqlens, initial_states,
                                             chunk_size=chunk_size, dt_softplus=dt_softplus, dt_min=dt_min,
                                             dt_max=dt_max)
    return y, states.float().contiguous()


@ssd_scan_packed.register_fake
def _(x, dt, A, B, C, D, dt_bias, initial_states, cu_seqlens, chunk_size, dt_softplus, dt_min, dt_max):
    return torch.empty_like(x), torch.empty_like(initial_states, dtype=torch.float32)


@torch.library.custom_op(f"{NAMESPACE}::causal_conv1d_packed", mutates_args=())
def causal_conv1d_packed(x: Tensor, weight: Tensor, bias: Optional[Tensor], conv_states: Tensor,
                         cu_seqlens: Tensor, silu: bool) -> tuple[Tensor, Tensor]:
    y, new = reference.causal_conv1d_packed(x, weight, bias, conv_states, cu_seqlens, silu=silu)
    return y, new.contiguous()


@causal_conv1d_packed.register_fake
def _(x, weight, bias, conv_states, cu_seqlens, silu):
    return torch.empty_like(x), torch.empty_like(conv_states)


@torch.library.custom_op(f"{NAMESPACE}::gated_rmsnorm", mutates_args=())
def gated_rmsnorm(y: Tensor, z: Tensor, weight: Tensor, eps: float, group_size: int) -> Tensor:
    return reference.gated_rmsnorm(y, z, weight, eps, group_size)


@gated_rmsnorm.register_fake
def _(y, z, weight, eps, group_size):
    return torch.empty_like(y)
