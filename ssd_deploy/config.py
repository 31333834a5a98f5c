"""Mamba2Config: the typed, validated model configuration, read from either on-disk format.

Two formats are understood: mamba_ssm's ``config.json`` (``d_model``, ``n_layer``, ``ssm_cfg: {layer: Mamba2, ...}``)
and Hugging Face's ``Mamba2Config`` (``model_type: mamba2``, ``hidden_size``, ``num_heads``, ...). Both map onto one
dataclass; derived dimensions are properties so they can never disagree with the fields.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UserError

CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class Mamba2Config:
    d_model: int
    n_layer: int
    vocab_size: int  # as the checkpoint states it; the embedding has padded_vocab_size rows
    d_state: int = 128
    d_conv: int = 4
    expand: int = 2
    headdim: int = 64
    ngroups: int = 1
    chunk_size: int = 256
    D_has_hdim: bool = False
    dt_min: float = 0.0  # dt_limit: clamp of dt after softplus
    dt_max: float = math.inf
    bias: bool = False
    conv_bias: bool = True
    norm_eps: float = 1e-5
    residual_in_fp32: bool = True
    pad_vocab_size_multiple: int = 16
    tie_embeddings: bool = True

    def __post_init__(self):
        for name in ("d_model", "n_layer", "vocab_size", "d_state", "d_conv", "expand", "headdim", "ngroups",
                     "chunk_size", "pad_vocab_size_multiple"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise UserError(f"config: {name} must be a positive integer, got {v!r}")
        if self.d_conv < 2:
            raise UserError(f"config: d_conv must be at least 2, got {self.d_conv}")
        if self.d_inner % self.headdim:
            raise UserError(f"config: expand*d_model = {self.d_inner} is not a multiple of headdim {self.headdim}")
        if self.nheads % self.ngroups:
            raise UserError(f"config: nheads {self.nheads} is not a multiple of ngroups {self.ngroups}")
        if not (0.0 <= self.dt_min <= self.dt_max):
            raise UserError(f"config: dt_limit ({self.dt_min}, {self.dt_max}) must satisfy 0 <= min <= max")
        if not self.norm_eps > 0:
            raise UserError(f"config: norm epsilon must be positive, got {self.norm_eps}")

    # derived dimensions (notation of docs/op-contracts.md)
    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def nheads(self) -> int:
        return self.d_inner // self.headdim

    @property
    def conv_dim(self) -> int:
        """d_conv channels of the conv: x, B and C concatenated."""
        return self.d_inner + 2 * self.ngroups * self.d_state

    @property
    def d_in_proj(self) -> int:
        return 2 * self.d_inner + 2 * self.ngroups * self.d_state + self.nheads

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_size_multiple
        return -(-self.vocab_size // m) * m

    @property
    def group_size(self) -> int:
        """Channels per group of the gated RMSNorm."""
        return self.d_inner // self.ngroups

    def state_shapes(self, batch: int | str = "batch") -> dict[str, tuple]:
        """Per-layer state shapes (docs/graph-interface.md): conv [b, conv_dim, k-1], ssm [b, h, p, n]."""
        return {"conv": (batch, self.conv_dim, self.d_conv - 1),
                "ssm": (batch, self.nheads, self.headdim, self.d_state)}

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["dt_max"] = None if math.isinf(self.dt_max) else self.dt_max  # JSON has no infinity
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Mamba2Config":
        d = dict(d)
        if d.get("dt_max") is None:
            d["dt_max"] = math.inf
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise UserError(f"config: unknown keys {sorted(unknown)}")
        return cls(**d)

    # on-disk formats
    def to_mamba_ssm(self) -> dict[str, Any]:
        return {
            "d_model": self.d_model, "d_intermediate": 0, "n_layer": self.n_layer, "vocab_size": self.vocab_size,
            "ssm_cfg": {"layer": "Mamba2", "d_state": self.d_state, "d_conv": self.d_conv, "expand": self.expand,
                        "headdim": self.headdim, "ngroups": self.ngroups, "chunk_size": self.chunk_size,
                        "D_has_hdim": self.D_has_hdim, "rmsnorm": True, "norm_before_gate": False,
                        "dt_limit": [self.dt_min, self.dt_max],
                        "bias": self.bias, "conv_bias": self.conv_bias},
            "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True, "norm_epsilon": self.norm_eps,
            "residual_in_fp32": self.residual_in_fp32, "fused_add_norm": True,
            "pad_vocab_size_multiple": self.pad_vocab_size_multiple, "tie_embeddings": self.tie_embeddings,
        }

    def to_hf(self) -> dict[str, Any]:
        """HF stores the already padded vocabulary size (its embedding is not padded again)."""
        if self.D_has_hdim:
            raise UserError("the Hugging Face Mamba2 format has no D per head-dim (D_has_hdim)")
        return {
            "model_type": "mamba2", "architectures": ["Mamba2ForCausalLM"], "hidden_size": self.d_model,
            "num_hidden_layers": self.n_layer, "vocab_size": self.padded_vocab_size, "num_heads": self.nheads,
            "head_dim": self.headdim, "state_size": self.d_state, "n_groups": self.ngroups, "expand": self.expand,
            "conv_kernel": self.d_conv, "chunk_size": self.chunk_size, "use_conv_bias": self.conv_bias,
            "use_bias": self.bias, "norm_before_gate": False, "rms_norm": True,
            "layer_norm_epsilon": self.norm_eps,
            "time_step_limit": [self.dt_min, self.dt_max],  # json writes inf as Infinity, as HF does
            "residual_in_fp32": self.residual_in_fp32, "tie_word_embeddings": self.tie_embeddings,
            "pad_vocab_size_multiple": self.pad_vocab_size_multiple,
        }


def _limit(v, what: str) -> tuple[float, float]:
    if v is None:
        return 0.0, math.inf
    if not isinstance(v, (list, tuple)) or len(v) != 2:
        raise UserError(f"config: {what} must be a pair [min, max], got {v!r}")
    lo, hi = v
    try:
        return float(lo or 0.0), math.inf if hi is None else float(hi)
    except (TypeError, ValueError):
        raise UserError(f"config: {what} must hold numbers, got {v!r}") from None


def _require(d: dict, keys: list[str], fmt: str):
    missing = [k for k in keys if k not in d]
    if missing:
        raise UserError(f"config: {fmt} config.json lacks {', '.join(missing)}")


def _from_mamba_ssm(d: dict) -> Mamba2Config:
    _require(d, ["d_model", "n_layer", "vocab_size"], "mamba_ssm")
    ssm = d.get("ssm_cfg") or {}
    layer = ssm.get("layer", "Mamba1")
    if layer != "Mamba2":
        raise UserError(f"config: ssm_cfg.layer is {layer!r}; only Mamba2 models are supported")
    if d.get("d_intermediate", 0):
        raise UserError("config: d_intermediate > 0 (MLP blocks between mixers) is not supported")
    if d.get("attn_layer_idx"):
        raise UserError("config: attention layers (attn_layer_idx) are not supported")
    if ssm.get("d_ssm") not in (None, d["d_model"] * ssm.get("expand", 2)):
        raise UserError("config: d_ssm smaller than d_inner (gated-MLP part in the mixer) is not supported")
    if not ssm.get("rmsnorm", True) or ssm.get("norm_before_gate", False):
        raise UserError("config: only the gated RMSNorm with norm_before_gate=False is supported")
    if not d.get("rms_norm", True):
        raise UserError("config: rms_norm=False (LayerNorm blocks) is not supported")
    dt_min, dt_max = _limit(ssm.get("dt_limit"), "ssm_cfg.dt_limit")
    keep = {k: ssm[k] for k in ("d_state", "d_conv", "expand", "headdim", "ngroups", "chunk_size", "D_has_hdim",
                                "bias", "conv_bias") if k in ssm}
    return Mamba2Config(
        d_model=d["d_model"], n_layer=d["n_layer"], vocab_size=d["vocab_size"], dt_min=dt_min, dt_max=dt_max,
        norm_eps=d.get("norm_epsilon", 1e-5), residual_in_fp32=d.get("residual_in_fp32", True),
        pad_vocab_size_multiple=d.get("pad_vocab_size_multiple", 8), tie_embeddings=d.get("tie_embeddings", True),
        **keep)


def _from_hf(d: dict) -> Mamba2Config:
    _require(d, ["hidden_size", "num_hidden_layers", "vocab_size"], "Hugging Face")
    hidden, expand = d["hidden_size"], d.get("expand", 2)
    headdim = d.get("head_dim", 64)
    nheads = d.get("num_heads", expand * hidden // headdim)
    if nheads * headdim != expand * hidden:
        raise UserError(f"config: num_heads*head_dim = {nheads * headdim} differs from "
                        f"expand*hidden_size = {expand * hidden}")
    if d.get("norm_before_gate", False):
        raise UserError("config: norm_before_gate=True is not supported (the contract gates before normalising)")
    if not d.get("rms_norm", True):
        raise UserError("config: rms_norm=False is not supported")
    dt_min, dt_max = _limit(d.get("time_step_limit"), "time_step_limit")
    return Mamba2Config(
        d_model=hidden, n_layer=d["num_hidden_layers"], vocab_size=d["vocab_size"], d_state=d.get("state_size", 128),
        d_conv=d.get("conv_kernel", 4), expand=expand, headdim=headdim, ngroups=d.get("n_groups", 1),
        chunk_size=d.get("chunk_size", 256), dt_min=dt_min, dt_max=dt_max, bias=d.get("use_bias", False),
        conv_bias=d.get("use_conv_bias", True), norm_eps=d.get("layer_norm_epsilon", 1e-5),
        residual_in_fp32=d.get("residual_in_fp32", True),
        # HF never pads the embedding: its vocab_size already is the row count
        pad_vocab_size_multiple=1, tie_embeddings=d.get("tie_word_embeddings", True))


def parse_config(d: Any) -> tuple[Mamba2Config, str]:
    """Returns the config and the format name ('hf' or 'mamba_ssm')."""
    if not isinstance(d, dict):
        raise UserError("config: config.json must hold a JSON object")
    try:
        if d.get("model_type") == "mamba2" or "hidden_size" in d:
            return _from_hf(d), "hf"
        if "d_model" in d:
            return _from_mamba_ssm(d), "mamba_ssm"
    except TypeError as e:  # a field of the wrong JSON type reaching the dataclass
        raise UserError(f"config: malformed value ({e})") from None
    model_type = d.get("model_type")
    if model_type:
        raise UserError(f"config: model_type {model_type!r} is not a Mamba-2 model")
    raise UserError("config: neither a mamba_ssm nor a Hugging Face Mamba2 config.json")


def load_config(ckpt_dir: Path) -> tuple[Mamba2Config, str]:
    path = Path(ckpt_dir) / CONFIG_FILE
    if not path.is_file():
        raise UserError(f"{ckpt_dir}: no {CONFIG_FILE} (is this a checkpoint directory?)")
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: malformed JSON ({e})") from None
    return parse_config(d)
