"""The graph interface (docs/graph-interface.md), owned here and nowhere else: the names of the graph's inputs and
outputs, the state specs and layouts, the dtype vocabulary (``fp32 | fp16 | bf16`` and what each is in torch, numpy,
ONNX, TensorRT and the CUDA kernels' C ABI), the export's file names, and what an exported model says about itself.

The metadata is everything a runtime needs without the checkpoint, stored as ONNX ``metadata_props`` under the
``ssd_deploy.`` prefix; values are strings (JSON where structured).
"""

from __future__ import annotations

import json
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
class DataFile:
    """A weights file beside the graph, as the export wrote it (size and sha256 computed while streaming)."""
    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class ExportMetadata:
    config: Mamba2Config
    flavor: str
    dtype: str  # activations and logits: fp32 | fp16 | bf16
    opset: int
    exporter: str
    checkpoint_sha256: str
    logits: str = "all"  # "all" positions or "last" position only
    graph: str = "unified"  # "unified" (prefill and decode) | "prefill" | "decode" | "packed" (cu_seqlens input)
    state_dtype: str = "fp32"
    ssm_layout: str = LAYOUT_SSM
    prefill: str | None = None  # ort flavor: the scan of calls longer than one token, "contrib" | "chunked"
    recipe: dict = field(default_factory=dict)
    data_files: tuple[DataFile, ...] = ()  # the external-data file(s); () for weights inside the graph

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
            "data_files": json.dumps([f.__dict__ for f in self.data_files]),
        }
        if self.prefill is not None:
            props["prefill"] = self.prefill
        return {PREFIX + k: v for k, v in props.items()}

    @classmethod
    def from_props(cls, props: dict[str, str], where: str = "model") -> "ExportMetadata":
        p = {k[len(PREFIX):]: v for k, v in props.items() if k.startswith(PREFIX)}
        if "config" not in p:
            raise UserError(f"{where}: not exported by ssd-deploy (no {PREFIX}config metadata)")
        try:
            states = json.loads(p["states"])
            return cls(config=Mamba2Config.from_dict(json.loads(p["config"])), flavor=p["flavor"], dtype=p["dtype"],
                       opset=int(p["opset"]), exporter=p["exporter"], checkpoint_sha256=p["checkpoint_sha256"],
                       logits=p["logits"], graph=p["graph"], state_dtype=states[0]["dtype"] if states else "fp32",
                       ssm_layout=states[1]["layout"] if len(states) > 1 else LAYOUT_SSM, prefill=p.get("prefill"),
                       recipe=json.loads(p.get("recipe", "{}")),
                       data_files=tuple(DataFile(**f) for f in json.loads(p.get("data_files", "[]"))))
        except (KeyError, ValueError, IndexError, TypeError) as e:
            raise UserError(f"{where}: malformed ssd-deploy metadata ({e})") from None


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


def read_metadata(export_dir: Path) -> ExportMetadata:
    proto = load_graph(export_dir)
    return ExportMetadata.from_props({p.key: p.value for p in proto.metadata_props}, str(model_path(export_dir)))


def summary(meta: ExportMetadata) -> dict[str, Any]:
    cfg = meta.config
    prefill = {} if meta.prefill is None else {"prefill": meta.prefill}
    return {"flavor": meta.flavor, "dtype": meta.dtype, "graph": meta.graph, "logits": meta.logits, **prefill,
            "opset": meta.opset, "exporter": meta.exporter, "checkpoint_sha256": meta.checkpoint_sha256,
            "layers": cfg.n_layer, "d_model": cfg.d_model, "heads": cfg.nheads, "headdim": cfg.headdim,
            "d_state": cfg.d_state, "ngroups": cfg.ngroups, "chunk_size": cfg.chunk_size,
            "vocab": cfg.padded_vocab_size}
