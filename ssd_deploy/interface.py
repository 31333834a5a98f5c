"""The graph interface (docs/graph-interface.md), owned here and nowhere else: the names of the graph's inputs and
outputs, the state specs and layouts, the dtype vocabulary (``fp32 | fp16 | bf16`` and what each is in torch, numpy,
ONNX, TensorRT and the CUDA kernels' C ABI), the export's file names, and what an exported model says about itself.

The metadata is everything a runtime needs without the checkpoint, stored as ONNX ``metadata_props`` under the
``ssd_deploy.`` prefix; values are strings (JSON where structured).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .config import Mamba2Config
from .errors import UserError

PREFIX = "ssd_deploy."
MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
# the decode companion (ExportMetadata.companion == "decode"): a single-token graph beside model.onnx whose weights
# are references into the same DATA_FILE (same names, offsets and lengths); runtimes use it for one-token calls
DECODE_FILE = "decode.onnx"


@dataclass(frozen=True)
class DType:
    """One entry of the dtype vocabulary: a name of the metadata and the options, and what it is elsewhere."""
    name: str  # fp32 | fp16 | bf16
    torch_name: str
    numpy: type | None  # numpy has no bfloat16
    onnx: int  # ONNX TensorProto element type (IO binding takes these)
    trt: str  # TensorRT DataType member name
    kernel_code: int  # the dtype argument of the CUDA kernels' C ABI (plugins/kernels/ssd_kernels.h)

    @property
    def torch(self):
        import torch  # imported when asked: reading metadata needs no torch

        return getattr(torch, self.torch_name)


DTYPES = {d.name: d for d in (
    DType("fp32", "float32", np.float32, onnx.TensorProto.FLOAT, "FLOAT", 0),
    DType("fp16", "float16", np.float16, onnx.TensorProto.FLOAT16, "HALF", 1),
    DType("bf16", "bfloat16", None, onnx.TensorProto.BFLOAT16, "BF16", 2),
)}


def dtype_of(torch_dtype) -> DType:
    """The vocabulary's entry of a torch dtype (KeyError for dtypes outside the vocabulary)."""
    return {d.torch_name: d for d in DTYPES.values()}[str(torch_dtype).removeprefix("torch.")]


INPUT_IDS = "input_ids"
LOGITS = "logits"
CU_SEQLENS = "cu_seqlens"  # packed graphs (graph = "packed"): [n+1] int64 offsets of n sequences in input_ids [1, T]

# docs/graph-interface.md layouts; a flavor whose ops want another layout says so here and every runner honours it
LAYOUT_CONV = "b,d,k-1"
LAYOUT_SSM = "b,h,p,n"
LAYOUT_SSM_NP = "b,h,n,p"  # the ort flavor's (LinearAttention's native layout)

INLINE_WEIGHTS = "initializers"  # key of the weights record for weights stored inside model.onnx
HASH_LIMIT = 1 << 30  # weight files up to this size are hashed before every build/run; larger ones on request


def state_names(n_layer: int) -> list[tuple[str, str]]:
    """(input, output) names of every state, in graph order: conv_state.0, ssm_state.0, conv_state.1, ..."""
    names = []
    for i in range(n_layer):
        names += [(f"conv_state.{i}", f"conv_state_out.{i}"), (f"ssm_state.{i}", f"ssm_state_out.{i}")]
    return names


@dataclass(frozen=True)
class StateSpec:
    name: str
    output: str
    shape: tuple  # "batch" for the dynamic axis
    dtype: str
    layout: str


@dataclass(frozen=True)
class ExportMetadata:
    config: Mamba2Config
    flavor: str
    dtype: str  # activations and logits: fp32 | fp16 | bf16
    opset: int
    exporter: str
    checkpoint_sha256: str
    logits: str = "all"  # "all" positions or "last" position only
    graph: str = "unified"  # "unified" (prefill and decode) | "decode" | "packed" (cu_seqlens input)
    state_dtype: str = "fp32"
    ssm_layout: str = LAYOUT_SSM
    prefill: str | None = None  # ort flavor: the scan of calls longer than one token, "contrib" | "chunked"
    companion: str = "none"  # "decode": DECODE_FILE is beside this graph (its size and sha256 in ``weights``)
    recipe: dict = field(default_factory=dict)
    # {file name or INLINE_WEIGHTS: {"bytes": n, "sha256": hex}}, recorded after the weights were written
    weights: dict = field(default_factory=dict)
    quant: str = "none"  # weight-only quantization of the large linear layers: none | int8 | int4
    quant_block: int | None = None  # weights per scale along K (quantized exports)
    quant_format: str | None = None  # matmulnbits | dq (quantized exports)
    quantization: dict = field(default_factory=dict)  # what was quantized and by what (ssd_deploy/quantize.py)

    def check(self):
        """Every field within the vocabulary: metadata read from a file (tampered, foreign) is refused here, not
        deep in a runtime."""
        from .onnx import options  # the export options' value tables (imported here: options imports this module)

        for what, value, allowed in [("flavor", self.flavor, options.FLAVORS), ("dtype", self.dtype, tuple(DTYPES)),
                                     ("state dtype", self.state_dtype, tuple(DTYPES)),
                                     ("graph", self.graph, options.GRAPHS), ("logits", self.logits, options.LOGITS),
                                     ("ssm layout", self.ssm_layout, (LAYOUT_SSM, LAYOUT_SSM_NP)),
                                     ("prefill", self.prefill, (None, *options.PREFILLS)),
                                     ("companion", self.companion, options.COMPANIONS)]:
            if value not in allowed:
                raise UserError(f"metadata: {what} {value!r} is not one of {', '.join(map(str, allowed))}")
        if not isinstance(self.opset, int) or isinstance(self.opset, bool):
            raise UserError(f"metadata: opset must be an integer, got {self.opset!r}")
        if not isinstance(self.checkpoint_sha256, str) or not re.fullmatch(r"[0-9a-f]{64}", self.checkpoint_sha256):
            raise UserError(f"metadata: checkpoint_sha256 is not a sha256 digest: {self.checkpoint_sha256!r}")
        if not isinstance(self.recipe, dict):
            raise UserError("metadata: recipe must be a JSON object")
        if self.quant not in options.QUANTS:
            raise UserError(f"metadata: quant {self.quant!r} is not one of {', '.join(options.QUANTS)}")
        if self.quant != "none" and (self.quant_block not in options.QUANT_BLOCKS
                                     or self.quant_format not in options.QUANT_FORMATS[1:]
                                     or not isinstance(self.quantization, dict)):
            raise UserError(f"metadata: malformed quantization record (block {self.quant_block!r}, format "
                            f"{self.quant_format!r})")
        for name, rec in self.weights.items() if isinstance(self.weights, dict) else [(None, None)]:
            if not (isinstance(rec, dict) and isinstance(rec.get("bytes"), int) and isinstance(rec.get("sha256"), str)
                    and (name == INLINE_WEIGHTS or name == Path(str(name)).name)):
                raise UserError(f"metadata: malformed weights record {name!r}: {rec!r}")

    @property
    def states(self) -> list[StateSpec]:
        shapes = self.config.state_shapes()
        specs = []
        for i, (inp, out) in enumerate(state_names(self.config.n_layer)):
            kind = "conv" if i % 2 == 0 else "ssm"
            shape = shapes[kind]
            layout = LAYOUT_CONV if kind == "conv" else self.ssm_layout
            if kind == "ssm" and layout != LAYOUT_SSM:  # b,h,n,p
                shape = (shape[0], shape[1], shape[3], shape[2])
            specs.append(StateSpec(inp, out, shape, self.state_dtype, layout))
        return specs

    def to_props(self) -> dict[str, str]:
        props = {
            "config": json.dumps(self.config.to_dict(), sort_keys=True),
            "flavor": self.flavor, "dtype": self.dtype, "opset": str(self.opset), "exporter": self.exporter,
            "checkpoint_sha256": self.checkpoint_sha256, "logits": self.logits, "graph": self.graph,
            "chunk_size": str(self.config.chunk_size),
            "states": json.dumps([s.__dict__ for s in self.states]),
            "recipe": json.dumps(self.recipe, sort_keys=True),
        }
        if self.prefill is not None:
            props["prefill"] = self.prefill
        if self.companion != "none":
            props["companion"] = self.companion
        if self.weights:
            props["weights"] = json.dumps(self.weights, sort_keys=True)
        if self.quant != "none":
            props.update(quant=self.quant, quant_block=str(self.quant_block), quant_format=str(self.quant_format),
                         quantization=json.dumps(self.quantization, sort_keys=True))
        return {PREFIX + k: v for k, v in props.items()}

    @classmethod
    def from_props(cls, props: dict[str, str], where: str = "model") -> "ExportMetadata":
        p = {k[len(PREFIX):]: v for k, v in props.items() if k.startswith(PREFIX)}
        if "config" not in p:
            raise UserError(f"{where}: not exported by ssd-deploy (no {PREFIX}config metadata)")
        try:
            states = json.loads(p["states"])
            meta = cls(config=Mamba2Config.from_dict(json.loads(p["config"])), flavor=p["flavor"], dtype=p["dtype"],
                       opset=int(p["opset"]), exporter=p["exporter"], checkpoint_sha256=p["checkpoint_sha256"],
                       logits=p["logits"], graph=p["graph"], state_dtype=states[0]["dtype"] if states else "fp32",
                       ssm_layout=states[1]["layout"] if len(states) > 1 else LAYOUT_SSM, prefill=p.get("prefill"),
                       companion=p.get("companion", "none"),
                       recipe=json.loads(p.get("recipe", "{}")), weights=json.loads(p.get("weights", "{}")),
                       quant=p.get("quant", "none"),
                       quant_block=int(p["quant_block"]) if "quant_block" in p else None,
                       quant_format=p.get("quant_format"), quantization=json.loads(p.get("quantization", "{}")))
            meta.check()
        except UserError as e:
            raise UserError(f"{where}: {e}") from None
        except (KeyError, ValueError, IndexError, TypeError, AttributeError, RecursionError) as e:
            raise UserError(f"{where}: malformed ssd-deploy metadata ({type(e).__name__}: {e})") from None
        # what the metadata derives (state specs, chunk size) must be what it states
        stored = [{**s, "shape": tuple(s["shape"])} if isinstance(s, dict) and isinstance(s.get("shape"), list)
                  else s for s in states] if isinstance(states, list) else states
        if stored != [s.__dict__ for s in meta.states]:
            raise UserError(f"{where}: metadata states disagree with its config (names, shapes, dtypes or layouts)")
        if p.get("chunk_size") != str(meta.config.chunk_size):
            raise UserError(f"{where}: metadata chunk_size {p.get('chunk_size')!r} disagrees with its config "
                            f"({meta.config.chunk_size})")
        return meta


def model_path(export_dir: Path) -> Path:
    d = Path(export_dir)
    path = d / MODEL_FILE if d.is_dir() else d
    if not path.is_file():
        raise UserError(f"{export_dir}: no exported model ({MODEL_FILE}) found")
    return path


def load_graph(export_dir: Path) -> onnx.ModelProto:
    """The graph without its weights (fast, any size)."""
    path = model_path(export_dir)
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf decode errors have no common public type
        raise UserError(f"{path}: not a readable ONNX model ({e})") from None


def _elem_type(vi: onnx.ValueInfoProto) -> int:
    return vi.type.tensor_type.elem_type


def _dims(vi: onnx.ValueInfoProto) -> list:
    """Static dims as ints, dynamic ones as their names (or None)."""
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in vi.type.tensor_type.shape.dim]


def expected_inputs(meta: ExportMetadata) -> list[str]:
    return [INPUT_IDS] + ([CU_SEQLENS] if meta.graph == "packed" else []) + [s.name for s in meta.states]


def check_graph(meta: ExportMetadata, proto: onnx.ModelProto, where: str = "model"):
    """The metadata against the graph it describes: opset, input/output names, element types and static shapes
    (which the config determines). One place, used by every consumer through ``read_metadata``."""
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset != meta.opset:
        raise UserError(f"{where}: the metadata says opset {meta.opset}, the graph imports opset {opset}")
    inputs = {i.name: i for i in proto.graph.input}
    outputs = {o.name: o for o in proto.graph.output}
    names_in = [i.name for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer}]
    want_in = expected_inputs(meta)
    want_out = [LOGITS] + [s.output for s in meta.states]
    if names_in != want_in or [o.name for o in proto.graph.output] != want_out:
        raise UserError(f"{where}: the graph's inputs/outputs are not the interface its metadata describes "
                        f"({len(names_in)} inputs, {len(outputs)} outputs; expected {len(want_in)} and "
                        f"{len(want_out)}: {', '.join(want_in[:3])}, ...)")
    problems = []
    if _elem_type(inputs[INPUT_IDS]) != onnx.TensorProto.INT64:
        problems.append(f"{INPUT_IDS} is not int64")
    logits = outputs[LOGITS]
    if _elem_type(logits) != DTYPES[meta.dtype].onnx:
        problems.append(f"{LOGITS} is {onnx.TensorProto.DataType.Name(_elem_type(logits))}, the metadata says "
                        f"{meta.dtype}")
    vocab = _dims(logits)[-1:] or [None]
    if isinstance(vocab[0], int) and vocab[0] != meta.config.padded_vocab_size:
        problems.append(f"{LOGITS} has {vocab[0]} columns, the config a vocabulary of {meta.config.padded_vocab_size}")
    want_type = DTYPES[meta.state_dtype].onnx
    for s in meta.states:
        for name, vi in ((s.name, inputs[s.name]), (s.output, outputs[s.output])):
            dims = _dims(vi)
            if _elem_type(vi) != want_type:
                problems.append(f"{name} is {onnx.TensorProto.DataType.Name(_elem_type(vi))}, the metadata says "
                                f"{s.dtype}")
            elif len(dims) != len(s.shape) or tuple(dims[1:]) != tuple(s.shape[1:]):
                problems.append(f"{name} has shape {dims}, the metadata (config) says {list(s.shape)}")
    if problems:
        raise UserError(f"{where}: the graph disagrees with its metadata: {'; '.join(problems[:4])}"
                        + (f" (and {len(problems) - 4} more)" if len(problems) > 4 else ""))


def read_metadata(export_dir: Path) -> ExportMetadata:
    """The export's metadata, checked against its own values and against the graph (and its companion's)."""
    proto = load_graph(export_dir)
    where = str(model_path(export_dir))
    meta = ExportMetadata.from_props({p.key: p.value for p in proto.metadata_props}, where)
    check_graph(meta, proto, where)
    if meta.companion != "none":
        companion_metadata(export_dir, meta)
    return meta


def companion_path(export_dir: Path, meta: ExportMetadata) -> Path:
    """The decode companion's file (``meta.companion == "decode"``)."""
    return model_path(export_dir).parent / DECODE_FILE


def companion_metadata(export_dir: Path, meta: ExportMetadata) -> ExportMetadata:
    """The companion's own metadata, checked against its graph and against the main graph's: the same model
    (config, flavor, dtype, source checkpoint, state layout, logits), a single-token graph, the same weights file."""
    path = companion_path(export_dir, meta)
    if DECODE_FILE not in meta.weights:
        raise UserError(f"{model_path(export_dir)}: metadata: a {meta.companion} companion without a record of "
                        f"{DECODE_FILE} (size and sha256)")
    if not path.is_file():
        raise UserError(f"{path}: missing (the export's decode companion graph); export again")
    proto = load_graph(path)
    own = ExportMetadata.from_props({p.key: p.value for p in proto.metadata_props}, str(path))
    check_graph(own, proto, str(path))
    mismatch = [name for name in ("flavor", "dtype", "checkpoint_sha256", "ssm_layout", "logits", "state_dtype",
                                  "quant") if getattr(own, name) != getattr(meta, name)]
    if own.config.to_dict() != meta.config.to_dict():
        mismatch.append("config")
    if own.graph != "decode" or own.companion != "none":
        mismatch.append("graph")
    shared = {k: v for k, v in meta.weights.items() if k not in (DECODE_FILE, INLINE_WEIGHTS)}
    if {k: v for k, v in own.weights.items() if k != INLINE_WEIGHTS} != shared:
        mismatch.append("weights file")
    if mismatch:
        raise UserError(f"{path}: not the decode companion of {model_path(export_dir)} ({', '.join(mismatch)} "
                        f"differ); export again")
    return own


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _inline_digest(proto: onnx.ModelProto) -> dict:
    h, n = hashlib.sha256(), 0
    for t in proto.graph.initializer:
        if t.data_location != onnx.TensorProto.EXTERNAL:
            b = t.SerializeToString()
            h.update(b)
            n += len(b)
    return {"bytes": n, "sha256": h.hexdigest()}


def weights_record(model_file: Path, written: dict | None = None) -> dict:
    """Size and sha256 of the weights of a just-written model: its external data file(s), or the initializers
    held inside model.onnx. ``written``: {file name: {"bytes", "sha256"}} of data files whose writer hashed the
    bytes as it wrote them (onnx/weights.py ``write_external``); those are not read again, only their size checked."""
    proto = onnx.load(str(model_file), load_external_data=False)
    record = {}
    files = sorted({e.value for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
                    for e in t.external_data if e.key == "location"})
    for name in files:
        path = Path(model_file).parent / name
        size = path.stat().st_size
        known = (written or {}).get(name)
        if known is not None and known["bytes"] != size:
            raise AssertionError(f"{path}: {size} bytes on disk, its writer reported {known['bytes']}")
        record[name] = {"bytes": size, "sha256": known["sha256"] if known else file_sha256(path)}
    inline = _inline_digest(proto)
    if inline["bytes"]:
        record[INLINE_WEIGHTS] = inline
    return record


def record_weights(model_file: Path, written: dict | None = None, graphs: dict | None = None):
    """Stores ``weights_record`` in the model's metadata (``ssd_deploy.weights``); the file is rewritten without
    touching external data, which is why this runs after the weights were written (onnx/export.py
    ``save_atomically``: any writer of an export, a streaming one included, calls it once every weight file is
    complete, before the export is checked and renamed into place). ``graphs``: records of other graph files of
    the export ({DECODE_FILE: {"bytes", "sha256"}}), kept in the same record."""
    proto = onnx.load(str(model_file), load_external_data=False)
    record = {**weights_record(model_file, written), **(graphs or {})}
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key != PREFIX + "weights"]
    del proto.metadata_props[:]
    for k, v in kept + [(PREFIX + "weights", json.dumps(record, sort_keys=True))]:
        proto.metadata_props.add(key=k, value=v)
    onnx.save(proto, str(model_file))


def verify_weights(export_dir: Path, meta: ExportMetadata | None = None, always_hash: bool = False):
    """Before building or running: every recorded weight file has its recorded size, and its sha256 where it is at
    most HASH_LIMIT bytes (all of them with ``always_hash``). Exports made before the record check nothing."""
    meta = meta or read_metadata(export_dir)
    directory = model_path(export_dir).parent
    for name, rec in meta.weights.items():
        if name == DECODE_FILE:  # a graph file, small: always hashed, its inline constants with it
            path = directory / name
            if not path.is_file() or path.stat().st_size != rec["bytes"] or file_sha256(path) != rec["sha256"]:
                raise UserError(f"{path}: missing, or not the decode companion graph written at export (size or "
                                f"sha256 differ): modified or corrupted; export again")
            continue
        if name == INLINE_WEIGHTS:
            got = _inline_digest(load_graph(export_dir))
            if got != rec:
                raise UserError(f"{model_path(export_dir)}: its weights differ from those written at export "
                                f"(sha256 {got['sha256'][:12]}..., recorded {rec['sha256'][:12]}...): the file was "
                                f"modified or corrupted; export again")
            continue
        path = directory / name
        if not path.is_file():
            raise UserError(f"{path}: missing (the export's weights); export again")
        size = path.stat().st_size
        if size != rec["bytes"]:
            raise UserError(f"{path}: {size} bytes, the export wrote {rec['bytes']}: truncated or replaced; export "
                            f"again")
        if (size <= HASH_LIMIT or always_hash) and file_sha256(path) != rec["sha256"]:
            raise UserError(f"{path}: its sha256 differs from the one recorded at export: the weights were modified "
                            f"or corrupted; export again")


def summary(meta: ExportMetadata) -> dict[str, Any]:
    cfg = meta.config
    prefill = {} if meta.prefill is None else {"prefill": meta.prefill}
    if meta.companion != "none":
        prefill["companion"] = meta.companion
    quant = {} if meta.quant == "none" else {"quant": meta.quant, "quant_block": meta.quant_block,
                                              "quant_format": meta.quant_format, "quantization": meta.quantization}
    return {"flavor": meta.flavor, "dtype": meta.dtype, "graph": meta.graph, "logits": meta.logits, **prefill, **quant,
            "opset": meta.opset, "exporter": meta.exporter, "checkpoint_sha256": meta.checkpoint_sha256,
            "layers": cfg.n_layer, "d_model": cfg.d_model, "heads": cfg.nheads, "headdim": cfg.headdim,
            "d_state": cfg.d_state, "ngroups": cfg.ngroups, "chunk_size": cfg.chunk_size,
            "vocab": cfg.padded_vocab_size}
