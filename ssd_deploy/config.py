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
FORMATS = ("hf", "mamba_ssm")  # the two on-disk conventions (config keys and weight names) a checkpoint follows

# Bounds of every dimension: what the kernels and graphs can hold, with room above every released Mamba-2 (the
# largest, Codestral 7B: d_model 4096, 64 layers, 128 heads, d_state 128, chunk 256). A config past them is a
# mistake or an attack, and is refused before anything is allocated (a checkpoint's weights must then also match
# these shapes: checkpoint.py).
INT_LIMITS = {
    "d_model": (1, 32768),
    "n_layer": (1, 512),
    "vocab_size": (1, 1 << 21),  # 2M tokens; released vocabularies are at most 256k
    "d_state": (1, 512),  # the CUDA kernels' kRecurrentMaxN (kernels.py MAX_STATE_SIZE)
    "d_conv": (2, 8),  # kMaxK of the CUDA causal_conv1d (kernels.py MAX_CONV_WIDTH); Mamba-2 uses 4
    "expand": (1, 16),
    "headdim": (1, 1024),
    "ngroups": (1, 1024),
    # the portable graph holds two Q x Q triangular constants (4 MiB each at 1024, 1 GiB at 16384); the Triton
    # kernels use the largest power of two <= Q; results never depend on Q beyond rounding (docs/op-contracts.md)
    "chunk_size": (1, 1024),
    "pad_vocab_size_multiple": (1, 4096),
}
BOOL_FIELDS = ("D_has_hdim", "bias", "conv_bias", "residual_in_fp32", "tie_embeddings")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


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
        for name, (lo, hi) in INT_LIMITS.items():
            v = getattr(self, name)
            if not _is_int(v) or v < 1:
                raise UserError(f"config: {name} must be a positive integer, got {v!r}")
            if not lo <= v <= hi:
                raise UserError(f"config: {name} = {v} is outside {lo}..{hi}, what ssd-deploy supports")
        for name in BOOL_FIELDS:
            if not isinstance(getattr(self, name), bool):
                raise UserError(f"config: {name} must be true or false, got {getattr(self, name)!r}")
        for name in ("dt_min", "dt_max", "norm_eps"):
            if not _is_number(getattr(self, name)):
                raise UserError(f"config: {name} must be a number, got {getattr(self, name)!r}")
        if self.d_inner % self.headdim:
            raise UserError(f"config: expand*d_model = {self.d_inner} is not a multiple of headdim {self.headdim}")
        if self.nheads % self.ngroups:
            raise UserError(f"config: nheads {self.nheads} is not a multiple of ngroups {self.ngroups}")
        if not (0.0 <= self.dt_min <= self.dt_max) or math.isinf(self.dt_min):
            raise UserError(f"config: dt_limit ({self.dt_min}, {self.dt_max}) must satisfy 0 <= min <= max, min "
                            f"finite")
        if not 0 < self.norm_eps < 1:
            raise UserError(f"config: norm epsilon must be in (0, 1), got {self.norm_eps}")

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
        if not isinstance(d, dict):
            raise UserError(f"config: expected a JSON object, got {type(d).__name__}")
        d = decode_special_floats(d)
        if d.get("dt_max") is None:
            d["dt_max"] = math.inf
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise UserError(f"config: unknown keys {sorted(unknown)}")
        missing = {"d_model", "n_layer", "vocab_size"} - set(d)
        if missing:
            raise UserError(f"config: lacks {', '.join(sorted(missing))}")
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


# transformers >= 5 writes non-finite floats as {"__float__": "Infinity"} (configuration_utils
# _encode_special_floats); older releases and mamba_ssm wrote bare Infinity / NaN, which json.loads reads itself
_FLOAT_TAGS = {"Infinity": math.inf, "-Infinity": -math.inf, "NaN": math.nan}


def decode_special_floats(obj: Any) -> Any:
    """Every ``{"__float__": "Infinity" | "-Infinity" | "NaN"}`` in a JSON value replaced by its float."""
    if isinstance(obj, dict):
        if set(obj) == {"__float__"} and obj["__float__"] in _FLOAT_TAGS:
            return _FLOAT_TAGS[obj["__float__"]]
        return {k: decode_special_floats(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode_special_floats(v) for v in obj]
    return obj


_MISSING = object()


class _Fields:
    """Typed reads of one JSON object of a config.json: each value checked for its JSON type, named by its key."""

    def __init__(self, d: dict, where: str = ""):
        self.d, self.where = d, where

    def _get(self, key: str, default):
        v = self.d.get(key, default)
        if v is _MISSING:
            raise UserError(f"config: lacks {self.where}{key}")
        return v

    def int(self, key: str, default=_MISSING) -> int:
        v = self._get(key, default)
        if not _is_int(v):
            raise UserError(f"config: {self.where}{key} must be an integer, got {v!r}")
        return v

    def bool(self, key: str, default=_MISSING) -> bool:
        v = self._get(key, default)
        if not isinstance(v, bool):
            raise UserError(f"config: {self.where}{key} must be true or false, got {v!r}")
        return v

    def float(self, key: str, default=_MISSING) -> float:
        v = self._get(key, default)
        if not _is_number(v) or math.isnan(v):
            raise UserError(f"config: {self.where}{key} must be a number, got {v!r}")
        return float(v)

    def limit(self, key: str) -> tuple[float, float]:
        """A [min, max] clamp; null (or a null max) means none."""
        v = self.d.get(key)
        if v is None:
            return 0.0, math.inf
        if not isinstance(v, list) or len(v) != 2:
            raise UserError(f"config: {self.where}{key} must be a pair [min, max], got {v!r}")
        lo, hi = (0.0 if v[0] is None else v[0]), (math.inf if v[1] is None else v[1])
        if not (_is_number(lo) and _is_number(hi)) or math.isnan(lo) or math.isnan(hi):
            raise UserError(f"config: {self.where}{key} must hold numbers, got {v!r}")
        return float(lo), float(hi)


def _require(d: dict, keys: list[str], fmt: str):
    missing = [k for k in keys if k not in d]
    if missing:
        raise UserError(f"config: {fmt} config.json lacks {', '.join(missing)}")


def _from_mamba_ssm(d: dict) -> Mamba2Config:
    _require(d, ["d_model", "n_layer", "vocab_size"], "mamba_ssm")
    top = _Fields(d)
    ssm_cfg = d.get("ssm_cfg", {})
    if ssm_cfg is None:
        ssm_cfg = {}
    if not isinstance(ssm_cfg, dict):
        raise UserError(f"config: ssm_cfg must be a JSON object, got {ssm_cfg!r}")
    ssm = _Fields(ssm_cfg, "ssm_cfg.")
    layer = ssm_cfg.get("layer", "Mamba1")
    if layer != "Mamba2":
        raise UserError(f"config: ssm_cfg.layer is {layer!r}; only Mamba2 models are supported")
    if top.int("d_intermediate", 0):
        raise UserError("config: d_intermediate > 0 (MLP blocks between mixers) is not supported")
    attn = d.get("attn_layer_idx")
    if attn not in (None, []):
        raise UserError("config: attention layers (attn_layer_idx) are not supported")
    d_model, expand = top.int("d_model"), ssm.int("expand", 2)
    if ssm_cfg.get("d_ssm") is not None and ssm.int("d_ssm") != d_model * expand:
        raise UserError("config: d_ssm smaller than d_inner (gated-MLP part in the mixer) is not supported")
    if not ssm.bool("rmsnorm", True) or ssm.bool("norm_before_gate", False):
        raise UserError("config: only the gated RMSNorm with norm_before_gate=False is supported")
    if not top.bool("rms_norm", True):
        raise UserError("config: rms_norm=False (LayerNorm blocks) is not supported")
    dt_min, dt_max = ssm.limit("dt_limit")
    return Mamba2Config(
        d_model=d_model, n_layer=top.int("n_layer"), vocab_size=top.int("vocab_size"), d_state=ssm.int("d_state", 128),
        d_conv=ssm.int("d_conv", 4), expand=expand, headdim=ssm.int("headdim", 64), ngroups=ssm.int("ngroups", 1),
        chunk_size=ssm.int("chunk_size", 256), D_has_hdim=ssm.bool("D_has_hdim", False), dt_min=dt_min,
        dt_max=dt_max, bias=ssm.bool("bias", False), conv_bias=ssm.bool("conv_bias", True),
        norm_eps=top.float("norm_epsilon", 1e-5), residual_in_fp32=top.bool("residual_in_fp32", True),
        pad_vocab_size_multiple=top.int("pad_vocab_size_multiple", 8),
        tie_embeddings=top.bool("tie_embeddings", True))


def _from_hf(d: dict) -> Mamba2Config:
    _require(d, ["hidden_size", "num_hidden_layers", "vocab_size"], "Hugging Face")
    f = _Fields(d)
    hidden, expand = f.int("hidden_size"), f.int("expand", 2)
    headdim = f.int("head_dim", 64)
    if headdim < 1:
        raise UserError(f"config: head_dim must be a positive integer, got {headdim}")
    nheads = f.int("num_heads", expand * hidden // headdim)
    if nheads * headdim != expand * hidden:
        raise UserError(f"config: num_heads*head_dim = {nheads * headdim} differs from "
                        f"expand*hidden_size = {expand * hidden}")
    # norm_before_gate is not read: transformers' Mamba2 gates before normalising whatever the key says, and
    # releases written by transformers 4.44 (Codestral's among them) say true
    f.bool("norm_before_gate", False)
    if not f.bool("rms_norm", True):
        raise UserError("config: rms_norm=False is not supported")
    dt_min, dt_max = f.limit("time_step_limit")
    return Mamba2Config(
        d_model=hidden, n_layer=f.int("num_hidden_layers"), vocab_size=f.int("vocab_size"),
        d_state=f.int("state_size", 128), d_conv=f.int("conv_kernel", 4), expand=expand, headdim=headdim,
        ngroups=f.int("n_groups", 1), chunk_size=f.int("chunk_size", 256), dt_min=dt_min, dt_max=dt_max,
        bias=f.bool("use_bias", False), conv_bias=f.bool("use_conv_bias", True),
        norm_eps=f.float("layer_norm_epsilon", 1e-5), residual_in_fp32=f.bool("residual_in_fp32", True),
        # HF never pads the embedding: its vocab_size already is the row count
        pad_vocab_size_multiple=1, tie_embeddings=f.bool("tie_word_embeddings", True))


def parse_config(d: Any) -> tuple[Mamba2Config, str]:
    """Returns the config and the format name ('hf' or 'mamba_ssm')."""
    if not isinstance(d, dict):
        raise UserError("config: config.json must hold a JSON object")
    d = decode_special_floats(d)
    if d.get("model_type") == "mamba2" or "hidden_size" in d:
        return _from_hf(d), "hf"
    if "d_model" in d:
        return _from_mamba_ssm(d), "mamba_ssm"
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
    except OSError as e:
        raise UserError(f"{path}: cannot be read ({e.strerror or e})") from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise UserError(f"{path}: malformed JSON ({e})") from None
    return parse_config(d)
