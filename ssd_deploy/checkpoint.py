"""Checkpoint directories: read (config + weights → Mamba2LM) and write (random checkpoints in either format).

Local directories only; nothing is downloaded. Weights come from safetensors (one file, or shards with an index)
or ``pytorch_model.bin`` (``torch.load(weights_only=True)``). Key schemes of mamba_ssm and Hugging Face are both
accepted; they differ only in ``backbone.embedding`` vs ``backbone.embeddings``.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .atomic import atomic_dir
from .config import CONFIG_FILE, FORMATS, Mamba2Config, load_config
from .errors import UserError
from .model import Mamba2LM

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_FILE = "pytorch_model.bin"


def weight_files(ckpt_dir: Path) -> list[Path]:
    """The weight files of a checkpoint, in the order they are read."""
    d = Path(ckpt_dir)
    index = d / SAFETENSORS_INDEX
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError, TypeError) as e:
            raise UserError(f"{index}: malformed index ({e})") from None
        missing = [n for n in names if not (d / n).is_file()]
        if missing:
            raise UserError(f"{index}: shard files missing: {', '.join(missing)}")
        return [d / n for n in names]
    for name in (SAFETENSORS_FILE, BIN_FILE):
        if (d / name).is_file():
            return [d / name]
    raise UserError(f"{d}: no weights found (expected {SAFETENSORS_FILE}, {SAFETENSORS_INDEX} or {BIN_FILE})")


def _read(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".bin":
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle, zip and weights_only refusals all mean: not a usable weights file
            raise UserError(f"{path}: cannot read weights ({type(e).__name__}: {e})") from None
        if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise UserError(f"{path}: does not hold a flat state dict of tensors")
        return sd
    try:
        return load_file(path)
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path}: corrupt or truncated safetensors file ({e})") from None


def _normalise_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        if k.startswith("backbone.embeddings."):
            k = "backbone.embedding." + k[len("backbone.embeddings."):]
        out[k] = v
    return out


def read_state_dict(ckpt_dir: Path, cfg: Mamba2Config) -> dict[str, torch.Tensor]:
    """Reads, normalises and checks the weights against ``cfg``; lists every missing, unexpected or mis-shaped
    tensor in one error."""
    sd: dict[str, torch.Tensor] = {}
    for f in weight_files(ckpt_dir):
        sd.update(_read(f))
    sd = _normalise_keys(sd)
    with torch.device("meta"):  # shapes only: allocate nothing
        expected = {k: tuple(v.shape) for k, v in Mamba2LM(cfg).state_dict().items()}
    if cfg.tie_embeddings:
        expected.pop("lm_head.weight")
        sd.pop("lm_head.weight", None)  # released tied checkpoints store it anyway
    # an unpadded vocabulary: pad the rows with zeros, as mamba_ssm's padding does
    for key in ("backbone.embedding.weight", "lm_head.weight"):
        t = sd.get(key)
        if t is not None and t.dim() == 2 and t.shape[0] == cfg.vocab_size < cfg.padded_vocab_size:
            sd[key] = torch.cat([t, t.new_zeros(cfg.padded_vocab_size - cfg.vocab_size, t.shape[1])])
    problems = []
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    shapes = sorted(f"{k}: {tuple(sd[k].shape)} (expected {expected[k]})" for k in set(sd) & set(expected)
                    if tuple(sd[k].shape) != expected[k])
    if missing:
        problems.append(f"missing tensors: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {', '.join(unexpected)}")
    if shapes:
        problems.append(f"mis-shaped tensors: {'; '.join(shapes)}")
    if problems:
        raise UserError(f"{ckpt_dir}: weights do not match config.json: " + " | ".join(problems))
    return sd


def load_model(ckpt_dir: Path, dtype: torch.dtype = torch.float32) -> Mamba2LM:
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        raise UserError(f"{ckpt_dir}: not a directory")
    cfg, _ = load_config(ckpt_dir)
    sd = read_state_dict(ckpt_dir, cfg)
    with torch.device("meta"):  # no random init of weights about to be replaced
        model = Mamba2LM(cfg)
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=False, assign=True)
    if cfg.tie_embeddings:  # assign=True replaced the shared parameter on one side only
        model.lm_head.weight = model.backbone.embedding.weight
    return model.cast(dtype).eval()


def checkpoint_hash(ckpt_dir: Path) -> str:
    """sha256 over config.json and the weight files, for provenance in exported metadata."""
    h = hashlib.sha256()
    for f in [Path(ckpt_dir) / CONFIG_FILE, *weight_files(ckpt_dir)]:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


def random_model(cfg: Mamba2Config, seed: int = 0) -> Mamba2LM:
    """A model with random weights in the ranges mamba_ssm initialises to, but with non-trivial norms and D so that
    every parameter matters to the output (tests are only as sensitive as their weights)."""
    g = torch.Generator().manual_seed(seed)
    model = Mamba2LM(cfg)
    for name, p in model.named_parameters():
        shape = p.shape
        if name.endswith("A_log"):
            v = torch.log(torch.empty(shape).uniform_(1, 16, generator=g))
        elif name.endswith("dt_bias"):
            dt = torch.exp(torch.rand(shape, generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
            v = dt + torch.log(-torch.expm1(-dt))  # inverse softplus
        elif name.endswith(".D") or name.endswith("norm.weight") or name.endswith("norm_f.weight"):
            v = 1.0 + 0.2 * torch.randn(shape, generator=g)
        elif name.endswith("bias"):
            v = 0.1 * torch.randn(shape, generator=g)
        elif name.endswith("embedding.weight"):
            v = torch.randn(shape, generator=g)
        else:  # linear and conv weights: fan-in scaled
            v = torch.randn(shape, generator=g) / math.sqrt(shape[-1] if p.dim() > 1 else 1)
        p.data.copy_(v)
    return model.eval()


def write_checkpoint(model: Mamba2LM, out_dir: Path, fmt: str, max_shard_bytes: int | None = None,
                     force: bool = False) -> Path:
    """Writes ``model`` as a checkpoint directory in format 'hf' (safetensors, sharded over ``max_shard_bytes``)
    or 'mamba_ssm' (pytorch_model.bin, as the released checkpoints). Written to a temporary sibling and renamed."""
    if fmt not in FORMATS:
        raise UserError(f"unknown checkpoint format {fmt!r}; choose one of {', '.join(FORMATS)}")
    cfg = model.cfg
    conf = cfg.to_hf() if fmt == "hf" else cfg.to_mamba_ssm()
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_dir(out_dir, force, CONFIG_FILE) as tmp:
        (tmp / CONFIG_FILE).write_text(json.dumps(conf, indent=2) + "\n")
        if fmt == "mamba_ssm":
            torch.save({k: v.clone() for k, v in sd.items()}, tmp / BIN_FILE)
        else:
            sd = {("backbone.embeddings." + k[len("backbone.embedding."):]
                   if k.startswith("backbone.embedding.") else k): v for k, v in sd.items()}
            if cfg.tie_embeddings:
                sd.pop("lm_head.weight")
            _save_safetensors(sd, tmp, max_shard_bytes)
    return Path(out_dir)


def _save_safetensors(sd: dict[str, torch.Tensor], out: Path, max_shard_bytes: int | None):
    if max_shard_bytes is None or sum(v.numel() * v.element_size() for v in sd.values()) <= max_shard_bytes:
        save_file(sd, out / SAFETENSORS_FILE, metadata={"format": "pt"})
        return
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k in sorted(sd):
        nbytes = sd[k].numel() * sd[k].element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = sd[k]
        size += nbytes
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, out / name, metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
    total = sum(v.numel() * v.element_size() for v in sd.values())
    (out / SAFETENSORS_INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                                    indent=2))
