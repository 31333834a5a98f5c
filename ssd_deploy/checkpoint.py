"""Checkpoint directories: read (config + weights, tensor by tensor) and write (random checkpoints in either format).

Local directories only; nothing is downloaded. Weights come from safetensors (one file, or shards with an index)
or ``pytorch_model.bin`` (``torch.load(weights_only=True)``, memory-mapped where the file allows it). Key schemes of
mamba_ssm and Hugging Face are both accepted; they differ only in ``backbone.embedding`` vs ``backbone.embeddings``.

Reading is lazy (``Weights``): names, shapes and dtypes come from the files' headers and are checked against the
config before any tensor is read; tensors are then read one at a time (each shard opened for one tensor, so that no
mapping of a whole shard stays resident), checked for NaN/Inf and converted to the dtype the caller wants. Export
reads the files twice: ``scan`` (checks and the checkpoint's hash from one read) and ``chunks`` (blocks of rows for
the writer). Nothing here ever holds the whole model unless the caller keeps what it reads (``load_model`` does;
export does not).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .atomic import atomic_dir
from .config import CONFIG_FILE, FORMATS, Mamba2Config, load_config
from .errors import UserError
from .model import FP32_PARAMS, Mamba2LM

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_FILE = "pytorch_model.bin"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DEFAULT_MAX_SHARD = "5GB"  # transformers' save_pretrained default before 5.x; shards stay small enough to copy

# safetensors header dtypes that hold weights; everything else (ints, bools, fp8) is refused by name
_SAFETENSORS_FLOATS = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}
_FLOATS = set(_SAFETENSORS_FLOATS.values())
_PAD_ROWS = ("backbone.embedding.weight", "lm_head.weight")  # may hold vocab_size rows: padded as mamba_ssm pads


@dataclass(frozen=True)
class TensorRef:
    """Where one weight lives and what its header says, before any of it is read."""
    name: str  # normalised key (mamba_ssm scheme)
    file: Path
    key: str  # key inside the file
    shape: tuple[int, ...]
    dtype: torch.dtype | str  # a str: a header dtype that is not a torch float (refused by the checks)

    @property
    def nbytes(self) -> int:
        size = torch.empty((), dtype=self.dtype).element_size() if isinstance(self.dtype, torch.dtype) else 0
        return math.prod(self.shape) * size


def normalise_key(key: str) -> str:
    if key.startswith("backbone.embeddings."):
        return "backbone.embedding." + key[len("backbone.embeddings."):]
    return key


def _inside(ckpt_dir: Path, name: str, where: Path) -> Path:
    """The shard file ``name`` of the index ``where``, refused unless it is a plain relative path whose real location
    (symlinks followed) lies in the checkpoint directory."""
    if not isinstance(name, str) or not name or os.path.isabs(name) or ".." in Path(name).parts:
        raise UserError(f"{where}: shard path {name!r} leaves the checkpoint directory")
    path = ckpt_dir / name
    if os.path.commonpath([os.path.realpath(path), os.path.realpath(ckpt_dir)]) != os.path.realpath(ckpt_dir):
        raise UserError(f"{where}: shard {name!r} resolves outside the checkpoint directory (a symlink?)")
    return path


def _index(ckpt_dir: Path) -> dict[str, Path]:
    """key → shard file of a sharded checkpoint, from the index alone."""
    index = ckpt_dir / SAFETENSORS_INDEX
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise UserError(f"{index}: malformed index ({e})") from None
    if not isinstance(weight_map, dict) or not all(isinstance(k, str) for k in weight_map):
        raise UserError(f"{index}: malformed index (weight_map must map tensor names to shard files)")
    files = {name: _inside(ckpt_dir, name, index) for name in set(weight_map.values())}
    missing = sorted(name for name, path in files.items() if not path.is_file())
    if missing:
        raise UserError(f"{index}: shard files missing: {', '.join(missing)}")
    return {k: files[v] for k, v in weight_map.items()}


def weight_files(ckpt_dir: Path) -> list[Path]:
    """The weight files of a checkpoint, in the order they are hashed."""
    d = Path(ckpt_dir)
    if (d / SAFETENSORS_INDEX).is_file():
        return sorted(set(_index(d).values()))
    for name in (SAFETENSORS_FILE, BIN_FILE):
        if (d / name).is_file():
            return [d / name]
    raise UserError(f"{d}: no weights found (expected {SAFETENSORS_FILE}, {SAFETENSORS_INDEX} or {BIN_FILE})")


def _safetensors_header(path: Path) -> dict[str, tuple[tuple[int, ...], torch.dtype | str]]:
    try:
        with safe_open(path, framework="pt") as f:
            return {k: (tuple(f.get_slice(k).get_shape()), _SAFETENSORS_FLOATS.get(f.get_slice(k).get_dtype(),
                                                                                   f.get_slice(k).get_dtype()))
                    for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path}: corrupt or truncated safetensors file ({e})") from None


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    """A ``.bin`` state dict, memory-mapped when saved in torch's zip format (released mamba_ssm checkpoints are):
    tensors are then read from the file only when touched."""
    try:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):  # an old (non-zip) serialisation cannot be mapped; anything else is corrupt
                raise
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and weights_only refusals all mean: not a usable weights file
        raise UserError(f"{path}: cannot read weights ({type(e).__name__}: {e})") from None
    if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        raise UserError(f"{path}: does not hold a flat state dict of tensors")
    return sd


class Weights:
    """The weights of a checkpoint directory, checked against its config from the headers alone, read one tensor at
    a time. Raises ``UserError`` (naming the tensor and file) for: shards the index does not name for a tensor,
    duplicates, index paths outside the directory, missing / unexpected / mis-shaped tensors, non-float tensors."""

    def __init__(self, ckpt_dir: Path):
        self.dir = Path(ckpt_dir)
        if not self.dir.is_dir():
            raise UserError(f"{self.dir}: not a directory")
        self.cfg, self.format = load_config(self.dir)
        self._bin: dict[str, torch.Tensor] | None = None
        self._scanned: set[tuple[str, torch.dtype]] = set()  # (tensor, dtype) that scan() checked
        self._layouts: dict[Path, tuple[int, dict]] = {}  # safetensors file → where its tensors are (chunks)
        self.refs = self._check(self._refs())

    # -- what is where ------------------------------------------------------------------------------------------
    def _refs(self) -> dict[str, TensorRef]:
        d = self.dir
        found: list[TensorRef] = []
        if (d / SAFETENSORS_INDEX).is_file():
            index = _index(d)
            for path in sorted(set(index.values())):
                for key, (shape, dtype) in _safetensors_header(path).items():
                    named = index.get(key)
                    if named is None:
                        raise UserError(f"{path}: holds tensor {key!r}, which {SAFETENSORS_INDEX} does not list")
                    if named != path:
                        raise UserError(f"{path}: holds tensor {key!r}, which {SAFETENSORS_INDEX} places in "
                                        f"{named.name} (a shard may only hold what the index names)")
                    found.append(TensorRef(normalise_key(key), path, key, shape, dtype))
            listed = {r.key for r in found}
            absent = sorted(k for k in index if k not in listed)
            if absent:
                raise UserError(f"{d / SAFETENSORS_INDEX}: names tensors its shards do not hold: "
                                f"{', '.join(f'{k} ({index[k].name})' for k in absent)}")
        elif (d / SAFETENSORS_FILE).is_file():
            path = d / SAFETENSORS_FILE
            found = [TensorRef(normalise_key(k), path, k, s, t) for k, (s, t) in _safetensors_header(path).items()]
        elif (d / BIN_FILE).is_file():
            path = d / BIN_FILE
            self._bin = _load_bin(path)
            found = [TensorRef(normalise_key(k), path, k, tuple(v.shape), v.dtype) for k, v in self._bin.items()]
        else:
            weight_files(d)  # raises: no weights
        refs: dict[str, TensorRef] = {}
        for r in found:
            if r.name in refs:
                raise UserError(f"{d}: tensor {r.name} is stored twice (as {refs[r.name].key!r} in "
                                f"{refs[r.name].file.name} and as {r.key!r} in {r.file.name})")
            refs[r.name] = r
        return refs

    def _check(self, refs: dict[str, TensorRef]) -> dict[str, TensorRef]:
        cfg = self.cfg
        expected = expected_shapes(cfg)
        if cfg.tie_embeddings:
            refs.pop("lm_head.weight", None)  # released tied checkpoints store it anyway
        problems = []
        missing = sorted(set(expected) - set(refs))
        unexpected = sorted(set(refs) - set(expected))
        shapes = sorted(f"{k}: {refs[k].shape} (expected {expected[k]})" for k in set(refs) & set(expected)
                        if refs[k].shape != expected[k] and not self._unpadded(k, refs[k].shape))
        dtypes = sorted(f"{k} ({refs[k].dtype})" for k in set(refs) & set(expected) if refs[k].dtype not in _FLOATS)
        if missing:
            problems.append(f"missing tensors: {', '.join(missing)}")
        if unexpected:
            problems.append(f"unexpected tensors: {', '.join(unexpected)}")
        if shapes:
            problems.append(f"mis-shaped tensors: {'; '.join(shapes)}")
        if dtypes:
            problems.append(f"tensors that are not floating point (weights must be): {', '.join(dtypes)}")
        if problems:
            raise UserError(f"{self.dir}: weights do not match config.json: " + " | ".join(problems))
        return refs

    def _unpadded(self, name: str, shape: tuple) -> bool:
        cfg = self.cfg
        return (name in _PAD_ROWS and len(shape) == 2 and shape[0] == cfg.vocab_size < cfg.padded_vocab_size
                and shape[1] == cfg.d_model)

    # -- reading ------------------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        return list(self.refs)

    @property
    def nbytes(self) -> int:
        return sum(r.nbytes for r in self.refs.values())

    def ref(self, name: str) -> TensorRef:
        if self.cfg.tie_embeddings and name == "lm_head.weight":
            name = "backbone.embedding.weight"
        return self.refs[name]

    def _raw(self, r: TensorRef) -> torch.Tensor:
        if self._bin is not None:
            return self._bin[r.key]
        try:  # opened per tensor: the tensor is a view of the file's mapping, released with it
            with safe_open(r.file, framework="pt") as f:
                return f.get_tensor(r.key)
        except (SafetensorError, OSError) as e:
            raise UserError(f"{r.file}: cannot read tensor {r.key!r} ({e})") from None

    def read(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """One tensor (padded to the padded vocabulary where the checkpoint is not), converted to ``dtype``;
        refuses NaN/Inf, and values that ``dtype`` cannot hold, naming the tensor (unless ``scan`` already did for
        this tensor and dtype)."""
        r = self.ref(name)
        t = self._raw(r)
        if self._unpadded(r.name, tuple(t.shape)):
            t = torch.cat([t, t.new_zeros(self.cfg.padded_vocab_size - self.cfg.vocab_size, t.shape[1])])
        out = t if dtype is None else t.to(dtype)
        if (r.name, out.dtype) not in self._scanned:
            _check_extremes(r, *_extremes(t), out.dtype)
        return out

    def chunks(self, name: str, dtype: torch.dtype) -> Iterator[torch.Tensor]:
        """The tensor ``read`` gives, as consecutive blocks of rows (dim 0) of at most about CHUNK_BYTES as stored,
        each converted to ``dtype``: safetensors are read with plain file reads, so a writer holds one block, never
        the tensor nor a mapping of it (onnx/weights.py ``write_external``). Checked as ``read`` checks."""
        r = self.ref(name)
        check = (r.name, dtype) not in self._scanned
        rows = r.shape[0] if r.shape else 1
        row_bytes = r.nbytes // max(rows, 1)
        step = max(1, CHUNK_BYTES // max(row_bytes, 1))
        if self._bin is not None:
            blocks = (self._bin[r.key][i:i + step] for i in range(0, rows, step)) if r.shape else \
                iter([self._bin[r.key]])
        else:
            blocks = self._file_blocks(r, step, row_bytes)
        for block in blocks:
            if check:
                _check_extremes(r, *_extremes(block), dtype)
            yield block.to(dtype)
        if self._unpadded(r.name, r.shape):
            yield torch.zeros(self.cfg.padded_vocab_size - self.cfg.vocab_size, r.shape[1], dtype=dtype)

    def _file_blocks(self, r: TensorRef, step: int, row_bytes: int) -> Iterator[torch.Tensor]:
        if r.file not in self._layouts:
            self._layouts[r.file] = _safetensors_layout(r.file)
        data_start, entries = self._layouts[r.file]
        start = entries[r.key]["data_offsets"][0]
        rows = r.shape[0] if r.shape else 1
        try:
            with open(r.file, "rb") as f:
                f.seek(data_start + start)
                for i in range(0, rows, step):
                    n = min(step, rows - i)
                    buf = bytearray(n * row_bytes)
                    if f.readinto(buf) != len(buf):
                        raise OSError(f"tensor {r.key!r} is truncated")
                    if buf:
                        yield torch.frombuffer(buf, dtype=r.dtype).view(n, *r.shape[1:]) if r.shape else \
                            torch.frombuffer(buf, dtype=r.dtype).view(())
        except OSError as e:
            raise UserError(f"{r.file}: cannot read tensor {r.key!r} ({e})") from None

    def scan(self, dtype: Callable[[str], torch.dtype] | None = None) -> str:
        """One read of every weight file, in blocks: refuses NaN/Inf, and values that ``dtype(name)`` cannot hold,
        naming the tensor, and returns ``checkpoint_hash``'s digest computed from the same bytes (export reads the
        checkpoint twice, not four times: this scan, then the write; benchmarks/RESULTS.md). Later reads of a
        scanned tensor in a scanned dtype skip the checks."""
        h = hashlib.sha256()
        _hash_file(h, self.dir / CONFIG_FILE)
        by_file: dict[tuple[Path, str], TensorRef] = {(r.file, r.key): r for r in self.refs.values()}

        def check(r: TensorRef, lo: torch.Tensor, hi: torch.Tensor):
            targets = {r.dtype} | ({dtype(r.name)} if dtype is not None else set())
            for target in targets:
                _check_extremes(r, lo, hi, target)
            self._scanned |= {(r.name, target) for target in targets}

        for path in weight_files(self.dir):
            if self._bin is not None:  # torch's zip format: hashed as a file, tensors checked through its mapping
                _hash_file(h, path)
                for r in (r for r in self.refs.values() if r.file == path):
                    check(r, *_extremes(self._bin[r.key]))
                continue
            for key, lo, hi in _scan_safetensors(path, h):
                r = by_file.get((path, key))
                if r is not None:  # a tied checkpoint's stored lm_head is hashed, not used
                    check(r, lo, hi)
        return h.hexdigest()


CHUNK_BYTES = 16 << 20  # a streamed tensor is read this much at a time (scan, chunks)


def _extremes(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """min and max of ``t`` (NaN propagates): one reduction, no copy; (0, 0) for an empty tensor."""
    return torch.aminmax(t) if t.numel() else (torch.zeros((), dtype=t.dtype),) * 2


def _check_extremes(r: TensorRef, lo: torch.Tensor, hi: torch.Tensor, dtype: torch.dtype):
    """Refuses a tensor whose extremes are NaN/Inf, or convert to Inf in ``dtype`` (conversion is monotonic: the
    extremes decide for every value), naming it."""
    if not bool(torch.isfinite(lo) & torch.isfinite(hi)):
        raise UserError(f"{r.file}: tensor {r.key!r} holds NaN or Inf values")
    if not bool(torch.isfinite(torch.stack([lo, hi]).to(dtype)).all()):
        raise UserError(f"{r.file}: tensor {r.key!r} holds values outside the range of {dtype} "
                        f"(largest magnitude {max(-float(lo), float(hi)):.3g})")


def _hash_file(h, path: Path):
    h.update(path.name.encode())
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)


def _safetensors_layout(path: Path) -> tuple[int, dict]:
    """Where a safetensors file's tensors are: (start of the data area, {key: header entry}). safetensors' own reader
    maps the file, which would make hashing it a second read and make a reader hold the mapped tensor; its layout
    (8-byte little-endian header length, JSON header with ``data_offsets`` relative to the data area) is the
    format's specification, and the header was already checked by ``safe_open`` (``Weights``)."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: corrupt or truncated safetensors file ({e})") from None
    header.pop("__metadata__", None)
    return 8 + n, header


def _scan_safetensors(path: Path, h) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
    """(key, min, max) of every floating-point tensor of a safetensors file in file order, from one read of the file
    in blocks of CHUNK_BYTES; ``h`` is updated with the file's name and every byte."""
    data_start, header = _safetensors_layout(path)
    h.update(path.name.encode())
    buf = bytearray(CHUNK_BYTES)
    try:
        with open(path, "rb") as f:
            h.update(f.read(data_start))
            pos = 0
            for key, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
                start, end = info["data_offsets"]
                if start > pos:
                    h.update(f.read(start - pos))
                dtype = _SAFETENSORS_FLOATS.get(info["dtype"])
                size = end - start
                lo = hi = None
                for off in range(0, size, CHUNK_BYTES):  # whole elements: itemsizes divide CHUNK_BYTES
                    view = memoryview(buf)[:min(CHUNK_BYTES, size - off)]
                    if f.readinto(view) != len(view):
                        raise OSError(f"tensor {key!r} is truncated")
                    h.update(view)
                    if dtype is not None:
                        a, b = torch.aminmax(torch.frombuffer(view, dtype=dtype))
                        lo, hi = (a, b) if lo is None else (torch.minimum(lo, a), torch.maximum(hi, b))
                    del view
                pos = end
                if lo is not None:
                    yield key, lo, hi
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    except (OSError, KeyError, TypeError) as e:
        raise UserError(f"{path}: corrupt or truncated safetensors file ({e})") from None


def expected_shapes(cfg: Mamba2Config) -> dict[str, tuple[int, ...]]:
    """Every weight's name and shape for ``cfg`` (the tied head excluded), allocating nothing."""
    with torch.device("meta"):
        model = Mamba2LM(cfg)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if cfg.tie_embeddings:
        shapes.pop("lm_head.weight")
    return shapes


def param_dtype(name: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype a parameter has in a model cast to ``dtype`` (the op contracts' parameters stay float32)."""
    return torch.float32 if name.endswith(FP32_PARAMS) else dtype


def read_state_dict(ckpt_dir: Path, cfg: Mamba2Config | None = None) -> dict[str, torch.Tensor]:
    """Every tensor, read and checked (float32). For small models and tests; export streams through ``Weights``."""
    w = Weights(ckpt_dir)
    if cfg is not None and cfg != w.cfg:
        raise UserError(f"{ckpt_dir}: config.json differs from the config given")
    return {name: w.read(name, torch.float32) for name in w.names()}


def load_model(ckpt_dir: Path, dtype: torch.dtype = torch.float32) -> Mamba2LM:
    w = Weights(ckpt_dir)
    with torch.device("meta"):  # no random init of weights about to be replaced
        model = Mamba2LM(w.cfg)
    model.load_state_dict({k: w.read(k, param_dtype(k, dtype)) for k in w.names()}, strict=False, assign=True)
    if w.cfg.tie_embeddings:  # assign=True replaced the shared parameter on one side only
        model.lm_head.weight = model.backbone.embedding.weight
    return model.eval()


def checkpoint_hash(ckpt_dir: Path) -> str:
    """sha256 over config.json and the weight files (each: its name, then its bytes), for provenance in exported
    metadata; ``Weights.scan`` computes the same digest while checking the weights."""
    h = hashlib.sha256()
    for f in [Path(ckpt_dir) / CONFIG_FILE, *weight_files(ckpt_dir)]:
        _hash_file(h, f)
    return h.hexdigest()


# -- random checkpoints ---------------------------------------------------------------------------------------------
def random_tensors(cfg: Mamba2Config, seed: int = 0) -> Iterator[tuple[str, torch.Tensor]]:
    """Random float32 weights, one tensor at a time in parameter order, in the ranges mamba_ssm initialises to, but
    with non-trivial norms and D so that every parameter matters to the output (tests are only as sensitive as their
    weights)."""
    g = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        params = list(Mamba2LM(cfg).named_parameters())  # the tied head appears once, as the embedding
    for name, p in params:
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
            v = torch.randn(shape, generator=g).div_(math.sqrt(shape[-1] if p.dim() > 1 else 1))
        yield name, v


def random_model(cfg: Mamba2Config, seed: int = 0) -> Mamba2LM:
    with torch.device("meta"):
        model = Mamba2LM(cfg)
    model.load_state_dict(dict(random_tensors(cfg, seed)), strict=False, assign=True)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.backbone.embedding.weight
    return model.eval()


def parse_size(text: str) -> int:
    """'5GB' → 5·10⁹, '500MiB' → 500·2²⁰ (transformers' ``max_shard_size`` spelling), or plain bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise UserError(f"size {text!r}: expected a number with an optional unit (e.g. 5GB, 500MiB)")
    unit = (m.group(2) or "B").upper()
    scale = 1 if unit == "B" else (1024 if "I" in unit else 1000) ** ("KMGT".index(unit[0]) + 1)
    size = int(float(m.group(1)) * scale)
    if size < 1:
        raise UserError(f"size {text!r} must be positive")
    return size


def write_random_checkpoint(cfg: Mamba2Config, out_dir: Path, fmt: str = "hf", seed: int = 0, dtype: str = "fp32",
                            max_shard_bytes: int | None = None, force: bool = False) -> Path:
    """A random checkpoint (the weights of ``random_model(cfg, seed)``, stored in ``dtype``), generated tensor by
    tensor: in 'hf' format one shard is in memory at a time (sharded safetensors with an index past
    ``max_shard_bytes``, default 5 GB as transformers' save_pretrained wrote them); 'mamba_ssm' writes one
    ``pytorch_model.bin`` as the released checkpoints are, which holds the whole model."""
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if max_shard_bytes is None:
        max_shard_bytes = parse_size(DEFAULT_MAX_SHARD)
    tensors = ((k, v.to(DTYPES[dtype])) for k, v in random_tensors(cfg, seed))
    return _write(cfg, tensors, out_dir, fmt, max_shard_bytes, force)


def write_checkpoint(model: Mamba2LM, out_dir: Path, fmt: str, max_shard_bytes: int | None = None,
                     force: bool = False) -> Path:
    """Writes ``model`` as a checkpoint directory in format 'hf' (safetensors, sharded over ``max_shard_bytes``)
    or 'mamba_ssm' (pytorch_model.bin, as the released checkpoints). Written to a temporary sibling and renamed."""
    tensors = ((k, v.detach()) for k, v in model.named_parameters())
    return _write(model.cfg, tensors, out_dir, fmt, max_shard_bytes, force)


def _write(cfg: Mamba2Config, tensors: Iterator[tuple[str, torch.Tensor]], out_dir: Path, fmt: str,
           max_shard_bytes: int | None, force: bool = False) -> Path:
    if fmt not in FORMATS:
        raise UserError(f"unknown checkpoint format {fmt!r}; choose one of {', '.join(FORMATS)}")
    conf = cfg.to_hf() if fmt == "hf" else cfg.to_mamba_ssm()  # raises before anything is written
    with atomic_dir(out_dir, force, CONFIG_FILE) as tmp:
        (tmp / CONFIG_FILE).write_text(json.dumps(conf, indent=2) + "\n")
        if fmt == "mamba_ssm":
            sd = {k: v.contiguous() for k, v in tensors}
            if cfg.tie_embeddings:  # mamba_ssm's state dicts hold the tied head under both names
                sd["lm_head.weight"] = sd["backbone.embedding.weight"]
            torch.save(sd, tmp / BIN_FILE)
        else:
            _save_safetensors(cfg, ((_hf_key(k), v) for k, v in tensors), tmp, max_shard_bytes)
    return Path(out_dir)


def _save_safetensors(cfg: Mamba2Config, tensors: Iterator[tuple[str, torch.Tensor]], out: Path,
                      max_shard_bytes: int | None):
    """One ``model.safetensors``, or shards of at most ``max_shard_bytes`` (a larger tensor gets its own) named and
    indexed as transformers names them. Shard membership is planned from the config's shapes first (the names carry
    the count; sizes at the first tensor's itemsize), then each shard is written once its tensors have arrived: with
    tensors in parameter order, one shard is in memory at a time."""
    tensors = iter(tensors)
    first = next(tensors)
    itemsize = first[1].element_size()
    sizes = {_hf_key(k): math.prod(s) * itemsize for k, s in expected_shapes(cfg).items()}
    total = sum(sizes.values())
    if max_shard_bytes is None or total <= max_shard_bytes:
        save_file({k: v.contiguous() for k, v in _chain(first, tensors)}, out / SAFETENSORS_FILE,
                  metadata={"format": "pt"})
        return
    plan: list[list[str]] = [[]]
    size = 0
    for k, nbytes in sizes.items():  # parameter order
        if plan[-1] and size + nbytes > max_shard_bytes:
            plan.append([])
            size = 0
        plan[-1].append(k)
        size += nbytes
    names = [f"model-{i + 1:05d}-of-{len(plan):05d}.safetensors" for i in range(len(plan))]
    shard_of = {k: i for i, keys in enumerate(plan) for k in keys}
    pending: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in _chain(first, tensors):
        shard = pending.setdefault(shard_of[k], {})
        shard[k] = v.contiguous()
        if len(shard) == len(plan[shard_of[k]]):
            save_file(shard, out / names[shard_of[k]], metadata={"format": "pt"})
            del pending[shard_of[k]]
    weight_map = {k: names[shard_of[k]] for k in sizes}
    (out / SAFETENSORS_INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                                    indent=2) + "\n")


def _hf_key(key: str) -> str:
    return "backbone.embeddings." + key[len("backbone.embedding."):] if key.startswith("backbone.embedding.") else key


def _chain(first, rest):
    yield first
    yield from rest
