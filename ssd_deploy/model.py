"""The Mamba-2 language model in PyTorch, calling the four ``ssd_deploy::`` ops (block order: docs/op-contracts.md).

Prefill and decode share one code path: ``forward`` takes and returns the per-layer conv and ssm states, so a prompt
can be fed whole, in pieces, or token by token. Module and parameter names follow mamba_ssm's checkpoint keys
(``backbone.layers.N.mixer.in_proj.weight`` ...), so a mamba_ssm state dict loads as it is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import Mamba2Config
from .ssd import ops  # noqa: F401  (registers torch.ops.ssd_deploy)

# Parameters that stay float32 whatever the model dtype: they are tiny and the op contracts take them in fp32.
FP32_PARAMS = ("A_log", "D", "dt_bias", "conv1d.weight", "conv1d.bias", "mixer.norm.weight")

States = list[Tensor]


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, residual: Tensor, delta: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(rmsnorm(residual + delta) in the weight's dtype, residual + delta in the residual's dtype): the block's
        residual add and its norm together, so that on CUDA one Triton kernel does both (a decode step's launches
        and a prefill's elementwise passes, docs/performance.md)."""
        from .ssd import triton

        fused = triton.add_rmsnorm(residual, delta, self.weight, self.eps)
        if fused is not None:
            return fused
        if delta is not None:
            residual = residual + delta.to(residual.dtype)
        v = residual.float()
        v = v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + self.eps)
        return (v * self.weight.float()).to(self.weight.dtype), residual


class GatedNormWeight(nn.Module):
    """Holds ``mixer.norm.weight``; the computation is the ``gated_rmsnorm`` op."""

    def __init__(self, d: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))


class Mamba2Mixer(nn.Module):
    def __init__(self, cfg: Mamba2Config):
        super().__init__()
        self.cfg = cfg
        h = cfg.nheads
        self.in_proj = nn.Linear(cfg.d_model, cfg.d_in_proj, bias=cfg.bias)
        self.conv1d = nn.Conv1d(cfg.conv_dim, cfg.conv_dim, cfg.d_conv, groups=cfg.conv_dim, bias=cfg.conv_bias)
        self.dt_bias = nn.Parameter(torch.zeros(h))
        self.A_log = nn.Parameter(torch.zeros(h))
        self.D = nn.Parameter(torch.ones(cfg.d_inner if cfg.D_has_hdim else h))
        self.norm = GatedNormWeight(cfg.d_inner)
        self.out_proj = nn.Linear(cfg.d_inner, cfg.d_model, bias=cfg.bias)

    def forward(self, u: Tensor, conv_state: Tensor, ssm_state: Tensor, decode: bool = False,
                cu_seqlens: Tensor | None = None, in_place: bool = False):
        """``cu_seqlens`` [n+1]: u [1, T, d_model] holds n sequences end to end and the states are theirs, [n, ...]
        (the packed ops). ``in_place`` (one token, ``decode``): the new states are written into ``conv_state`` and
        ``ssm_state``, which are returned (the CUDA-graph decode, runtime/cuda_graphs.py)."""
        cfg = self.cfg
        b, l, _ = u.shape
        z, xBC, dt = torch.split(self.in_proj(u), [cfg.d_inner, cfg.conv_dim, cfg.nheads], dim=-1)
        if in_place:
            y = self._step_in_place(xBC, dt, conv_state, ssm_state)
        else:
            y, conv_state, ssm_state = self._ssm(xBC, dt, conv_state, ssm_state, decode, cu_seqlens)
        y = torch.ops.ssd_deploy.gated_rmsnorm(y.reshape(b, l, cfg.d_inner), z,
                                               self.norm.weight.float(), cfg.norm_eps, cfg.group_size)
        return self.out_proj(y), conv_state, ssm_state

    def _D(self) -> Tensor:
        cfg = self.cfg
        return self.D.float().reshape(cfg.nheads, cfg.headdim) if cfg.D_has_hdim else self.D.float()

    def _ssm(self, xBC: Tensor, dt: Tensor, conv_state: Tensor, ssm_state: Tensor, decode: bool,
             cu_seqlens: Tensor | None):
        """The conv and the SSM through the ops: (y, new conv state, new ssm state)."""
        cfg = self.cfg
        b, l, _ = xBC.shape
        h, p, g, n = cfg.nheads, cfg.headdim, cfg.ngroups, cfg.d_state
        conv_bias = None if self.conv1d.bias is None else self.conv1d.bias.float()
        if cu_seqlens is not None:
            xBC, conv_state = torch.ops.ssd_deploy.causal_conv1d_packed(
                xBC, self.conv1d.weight.float().squeeze(1), conv_bias, conv_state, cu_seqlens, True)
        else:
            xBC, conv_state = torch.ops.ssd_deploy.causal_conv1d(
                xBC, self.conv1d.weight.float().squeeze(1), conv_bias, conv_state, True)
        x, B, C = torch.split(xBC, [cfg.d_inner, g * n, g * n], dim=-1)
        A = -torch.exp(self.A_log.float())
        D = self._D()
        if decode:  # the split decode graph / the torch runner's step: one token, no chunk machinery
            y, ssm_state = torch.ops.ssd_deploy.ssd_step(
                ssm_state, x.reshape(b, h, p), dt.reshape(b, h), A, B.reshape(b, g, n), C.reshape(b, g, n), D,
                self.dt_bias.float(), True, cfg.dt_min, cfg.dt_max)
        elif cu_seqlens is not None:
            y, ssm_state = torch.ops.ssd_deploy.ssd_scan_packed(
                x.reshape(b, l, h, p), dt, A, B.reshape(b, l, g, n), C.reshape(b, l, g, n), D,
                self.dt_bias.float(), ssm_state, cu_seqlens, cfg.chunk_size, True, cfg.dt_min, cfg.dt_max)
        else:
            y, ssm_state = torch.ops.ssd_deploy.ssd_scan(
                x.reshape(b, l, h, p), dt, A, B.reshape(b, l, g, n), C.reshape(b, l, g, n), D,
                self.dt_bias.float(), ssm_state, cfg.chunk_size, True, cfg.dt_min, cfg.dt_max)
        return y, conv_state, ssm_state

    def _step_in_place(self, xBC: Tensor, dt: Tensor, conv_state: Tensor, ssm_state: Tensor) -> Tensor:
        """One token (xBC [b, 1, conv_dim], dt [b, 1, h]) with the states rewritten: y [b, h, p]. The Triton
        in-place decode kernel where registered (one launch, A = -exp(A_log) inside; ssd/triton/decode.py), else the
        ops and a copy into the states."""
        from .ssd import triton

        cfg = self.cfg
        if xBC.shape[1] != 1:
            raise ValueError(f"in-place decode takes one token per call, got {xBC.shape[1]}")
        conv_bias = None if self.conv1d.bias is None else self.conv1d.bias.float()
        y = triton.decode_step_(xBC[:, 0], dt[:, 0], conv_state, ssm_state, self.conv1d.weight.float().squeeze(1),
                                conv_bias, self.A_log.float(), self._D(), self.dt_bias.float(), headdim=cfg.headdim,
                                ngroups=cfg.ngroups, dt_min=cfg.dt_min, dt_max=cfg.dt_max)
        if y is None:
            y, new_conv, new_ssm = self._ssm(xBC, dt, conv_state, ssm_state, True, None)
            conv_state.copy_(new_conv)
            ssm_state.copy_(new_ssm)
        return y


class Block(nn.Module):
    def __init__(self, cfg: Mamba2Config):
        super().__init__()
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mixer = Mamba2Mixer(cfg)

    def step_in_place(self, residual: Tensor, conv_state: Tensor, ssm_state: Tensor,
                      residual_dtype: torch.dtype) -> Tensor:
        """One token through the block with the norms folded into the projections (``triton.norm_gemv``, three
        launches: RMSNorm + in_proj, the in-place decode step, gated RMSNorm + out_proj + residual add): residual
        [b, d_model] in, the next residual in ``residual_dtype`` out; the states rewritten."""
        from .ssd import triton

        m, cfg = self.mixer, self.mixer.cfg
        zxbcdt = triton.norm_gemv(residual, self.norm.weight, cfg.norm_eps, m.in_proj.weight, m.in_proj.bias)
        z, xBC, dt = torch.split(zxbcdt, [cfg.d_inner, cfg.conv_dim, cfg.nheads], dim=-1)
        y = m._step_in_place(xBC[:, None], dt[:, None], conv_state, ssm_state)
        return triton.norm_gemv(y.reshape(residual.shape[0], cfg.d_inner), m.norm.weight, cfg.norm_eps,
                                m.out_proj.weight, m.out_proj.bias, gate=z, group_size=cfg.group_size,
                                residual=residual, residual_dtype=residual_dtype)


class Backbone(nn.Module):
    def __init__(self, cfg: Mamba2Config):
        super().__init__()
        self.embedding = nn.Embedding(cfg.padded_vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm_f = RMSNorm(cfg.d_model, cfg.norm_eps)


class Mamba2LM(nn.Module):
    def __init__(self, cfg: Mamba2Config):
        super().__init__()
        self.cfg = cfg
        self.backbone = Backbone(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.padded_vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.backbone.embedding.weight

    @property
    def dtype(self) -> torch.dtype:
        return self.backbone.embedding.weight.dtype

    def cast(self, dtype: torch.dtype) -> "Mamba2LM":
        """Casts to ``dtype`` except the small parameters that the op contracts take in float32."""
        self.to(dtype)
        for name, param in self.named_parameters():
            if name.endswith(FP32_PARAMS):
                param.data = param.data.float()
        return self

    def init_states(self, batch: int, device=None) -> tuple[States, States]:
        """Zero states, float32 (docs/graph-interface.md)."""
        shapes = self.cfg.state_shapes(batch)
        conv = [torch.zeros(shapes["conv"], device=device) for _ in range(self.cfg.n_layer)]
        ssm = [torch.zeros(shapes["ssm"], device=device) for _ in range(self.cfg.n_layer)]
        return conv, ssm

    def forward(self, input_ids: Tensor, conv_states: States, ssm_states: States, decode: bool = False,
                last_token_only: bool = False, cu_seqlens: Tensor | None = None, in_place: bool = False):
        """input_ids [b, l] → (logits [b, l or 1, padded_vocab], new conv states, new ssm states).

        Packed (``cu_seqlens`` [n+1] int64): input_ids [1, T] holds n sequences end to end, the states are [n, ...]
        in and out, and ``last_token_only`` gives each sequence's last-token logits, [n, 1, padded_vocab].

        ``in_place`` (decode, l = 1): the given state tensors are updated in place and returned, nothing else is
        allocated for them (runtime/cuda_graphs.py replays this with the states it owns); inside
        ``triton.enabled(names=("decode_gemv",))``, with the norms folded into the projections (``_step_in_place``,
        opt-in). Otherwise the given states are never written."""
        if in_place:
            if not decode or cu_seqlens is not None:
                raise ValueError("in_place needs decode=True and no cu_seqlens")
            from .ssd import triton

            if input_ids.shape[1] == 1 and triton.norm_gemv_enabled(input_ids.device.type, input_ids.shape[0]):
                return self._step_in_place(input_ids, conv_states, ssm_states)
        hidden = self.backbone.embedding(input_ids)
        residual = hidden.float() if self.cfg.residual_in_fp32 else hidden
        out = None  # the previous mixer's output, added to the residual by the next norm
        new_conv, new_ssm = [], []
        for layer, conv, ssm in zip(self.backbone.layers, conv_states, ssm_states):
            normed, residual = layer.norm(residual, out)
            out, conv, ssm = layer.mixer(normed, conv, ssm, decode, cu_seqlens, in_place)
            new_conv.append(conv)
            new_ssm.append(ssm)
        if last_token_only:
            last = slice(-1, None) if cu_seqlens is None else cu_seqlens[1:] - 1
            rows = (slice(None), last) if cu_seqlens is None else (0, last, None)
            residual, out = residual[rows], None if out is None else out[rows]
        normed, _ = self.backbone.norm_f(residual, out)
        logits = F.linear(normed, self.lm_head.weight)
        return logits, new_conv, new_ssm

    def _step_in_place(self, input_ids: Tensor, conv_states: States, ssm_states: States):
        """``forward(in_place=True)`` of one token with the norms folded into the projections: three launches per
        layer (``Block.step_in_place``), the embedding and the final RMSNorm + lm_head (docs/performance.md,
        "Decode with CUDA graphs"). The residual add happens in each block's last kernel, so the layer-0 residual
        is the embedding itself, whatever dtype the residual stream keeps."""
        from .ssd import triton

        residual = self.backbone.embedding(input_ids[:, 0])
        residual_dtype = torch.float32 if self.cfg.residual_in_fp32 else residual.dtype
        for layer, conv, ssm in zip(self.backbone.layers, conv_states, ssm_states):
            residual = layer.step_in_place(residual, conv, ssm, residual_dtype)
        norm_f = self.backbone.norm_f
        logits = triton.norm_gemv(residual, norm_f.weight, norm_f.eps, self.lm_head.weight)
        return logits[:, None], list(conv_states), list(ssm_states)
