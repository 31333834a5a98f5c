"""Export: checkpoint → one traced graph → ONNX of the chosen flavor, with metadata, written atomically.

The model is traced once by ``torch.onnx`` (dynamo); the ``ssd_deploy::`` custom ops stay single nodes in that
trace and the flavor's translation table decides what each becomes (docs/flavors.md): standard ops (portable.py), ONNX
Runtime contrib ops (ort.py) or TensorRT plugin nodes (trt.py). Options may come from a recipe (recipes.py,
``resolve_options``).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Callable

import onnx
import onnx_ir
import torch
from torch import nn

from .. import __version__
from ..atomic import atomic_dir, check_target
from ..checkpoint import Weights, expected_shapes, param_dtype
from .. import plan, quantize, recipes
from ..errors import UserError
from ..interface import (CU_SEQLENS, DATA_FILE, DECODE_FILE, DTYPES, INPUT_IDS, LAYOUT_SSM, LOGITS, MODEL_FILE,
                         ExportMetadata, file_sha256, read_metadata, record_weights, state_names)
from ..model import Mamba2LM
from ..progress import QUIET, Reporter
from . import ort, portable, static_shapes, trt
from .options import ExportOptions
from . import weights as streamed
from .tracing import batch_dim, seq_dim, to_onnx

# flavor name → module with lowerings(dims, **ExportOptions.flavor_options()); optionally finalize(model, cfg) for
# rewrites tracing cannot express, and SSM_LAYOUT where its graph keeps the ssm state in another layout than
# docs/graph-interface.md's
FLAVORS = {"portable": portable, "ort": ort, "trt": trt}
IR_VERSION = 10  # ONNX 1.23 writes 14 by default; current ONNX Runtime releases load 10
EXTERNAL_AUTO_BYTES = 128 << 20  # past this, weights go to a side file, streamed; an inline graph is built in memory
PROTOBUF_LIMIT = 2 << 30


class GraphInterface(nn.Module):
    """The model with the flat ONNX interface of docs/graph-interface.md: input_ids, then (conv_state.i, ssm_state.i) per layer."""

    def __init__(self, model: Mamba2LM, opts: ExportOptions):
        super().__init__()
        self.model = model
        self.decode = opts.graph == "decode"
        self.last = opts.logits == "last"

    def forward(self, input_ids, *states, cu_seqlens=None):
        logits, conv, ssm = self.model(input_ids, list(states[0::2]), list(states[1::2]), decode=self.decode,
                                       last_token_only=self.last, cu_seqlens=cu_seqlens)
        return (logits, *[t for pair in zip(conv, ssm) for t in pair])


class PackedGraphInterface(GraphInterface):
    """The packed interface (docs/graph-interface.md): input_ids [1, T], cu_seqlens [n+1], then the states of the
    n sequences."""

    def forward(self, input_ids, cu_seqlens, *states):
        return super().forward(input_ids, *states, cu_seqlens=cu_seqlens)


def trace(model: Mamba2LM, opts: ExportOptions, bind: Callable[[onnx_ir.Model], None] | None = None) -> onnx_ir.Model:
    """The graph of ``model`` (real or meta parameters; ``bind`` gives meta ones their values, see weights.py)."""
    cfg = model.cfg
    batch = batch_dim()
    seq = 1 if opts.graph == "decode" else seq_dim()
    # example inputs on the parameters' device: torch 2.11's fake-tensor propagation refuses meta weights with CPU
    # inputs (later releases accept the mix)
    device = next(model.parameters()).device
    ids = torch.zeros(2, 1 if opts.graph == "decode" else 5, dtype=torch.long, device=device)
    conv, ssm = model.init_states(2, device)
    states = [t for pair in zip(conv, ssm) for t in pair]
    names = state_names(cfg.n_layer)
    if opts.graph == "packed":  # two sequences of 2 and 3 tokens; T and n dynamic
        cu = torch.tensor([0, 2, 5], device=device)
        return to_onnx(PackedGraphInterface(model, opts), (ids[:1], cu, *states),
                       [INPUT_IDS, CU_SEQLENS] + [i for i, _ in names], [LOGITS] + [o for _, o in names],
                       {"input_ids": {1: seq}, "cu_seqlens": {0: batch + 1},
                        "states": tuple({0: batch} for _ in states)},
                       FLAVORS[opts.flavor], cfg, opts.opset, opts.flavor_options(), bind)
    graph = to_onnx(GraphInterface(model, opts), (ids, *states), [INPUT_IDS] + [i for i, _ in names],
                    [LOGITS] + [o for _, o in names],
                    {"input_ids": {0: batch, 1: seq}, "states": tuple({0: batch} for _ in states)},
                    FLAVORS[opts.flavor], cfg, opts.opset, opts.flavor_options(), bind)
    if opts.graph == "decode":  # no shape arithmetic: capturable in ONNX Runtime's CUDA graphs (static_shapes.py)
        static_shapes.fold_reshape_targets(graph)
    return graph


def strip_trace_metadata(model: onnx_ir.Model):
    """Drops the exporter's per-node provenance (stack traces with absolute paths, FX node text): it bloats the
    graph and would make the bytes depend on where ssd-deploy is installed."""
    for node in onnx_ir.traversal.RecursiveGraphIterator(model.graph):
        node.metadata_props.clear()
        for value in node.outputs:
            value.metadata_props.clear()
    for value in model.graph.inputs:
        value.metadata_props.clear()


def _use_external(weights: Weights, dtype: torch.dtype, mode: str) -> bool:
    """Decided from the checkpoint's shapes before any work; an inline graph cannot pass protobuf's 2 GiB."""
    size = sum(math.prod(shape) * torch.empty((), dtype=param_dtype(name, dtype)).element_size()
               for name, shape in expected_shapes(weights.cfg).items())
    if mode == "never" and size >= PROTOBUF_LIMIT:
        raise UserError(f"--external-data never: {size / 2**30:.2f} GiB of weights cannot be stored inside the "
                        f"graph (ONNX's protobuf limit is 2 GiB); use auto or always")
    if mode != "auto":
        return mode == "always"
    return size > EXTERNAL_AUTO_BYTES


def save_atomically(model: onnx_ir.Model, out_dir: Path, external: bool, check: Callable[[Path], None],
                    force: bool = False, companion: onnx_ir.Model | None = None) -> Path:
    """Writes and checks the model in a temporary sibling directory, then renames it: a failure leaves nothing.
    External weights are streamed one at a time (onnx/weights.py); inline ones are serialised with the graph.
    ``companion`` (a decode companion graph, ``external`` required): saved as DECODE_FILE with every weight it
    shares with ``model`` pointing into the same data file (weights.share_external); the main graph's metadata
    records its size and sha256."""
    with atomic_dir(out_dir, force, MODEL_FILE) as tmp:
        sources = streamed.external_sources(model) if companion is not None else {}
        written = {DATA_FILE: streamed.write_external(model, tmp / DATA_FILE)} if external else {}
        onnx_ir.save(model, tmp / MODEL_FILE)  # external tensors stay references
        graphs = {}
        if companion is not None:
            inline = streamed.share_external(companion, sources)
            assert inline < streamed.COMPANION_INLINE_LIMIT, f"the companion keeps {inline} bytes of its own constants"
            onnx_ir.save(companion, tmp / DECODE_FILE)
            record_weights(tmp / DECODE_FILE, written)
            check(tmp / DECODE_FILE)
            graphs[DECODE_FILE] = {"bytes": (tmp / DECODE_FILE).stat().st_size, "sha256": file_sha256(tmp / DECODE_FILE)}
        # sizes and sha256 of the weights as written (hashed while writing), checked before build/run
        record_weights(tmp / MODEL_FILE, written, graphs)
        check(tmp / MODEL_FILE)
        read_metadata(tmp)  # the metadata describes the graph written (opset, interface, dtypes, shapes)
    return Path(out_dir) / MODEL_FILE


def check_model(path: Path):
    """ONNX checker and strict shape inference over the saved file (path-based: works past 2 GiB)."""
    onnx.checker.check_model(str(path), full_check=True)


def export(ckpt_dir: Path, out_dir: Path, opts: ExportOptions = ExportOptions(), recipe: dict | None = None,
           force: bool = False, progress: Reporter = QUIET) -> Path:
    """Streams the checkpoint into the export: the model is traced with meta parameters, then each weight is read,
    converted and written into the data file on its own (onnx/weights.py); memory holds one weight at a time, never
    the model (benchmarks/RESULTS.md, "Streaming export"). A quantized export reads every weight into ONNX Runtime's
    quantizer, which works on a whole ModelProto. ``force`` replaces a previous export in ``out_dir``
    (atomically); otherwise it must be absent or empty."""
    opts.check()
    check_target(out_dir, force, MODEL_FILE)  # before the minutes of reading and tracing
    weights = Weights(ckpt_dir)  # names, shapes, dtypes against the config: headers only
    cfg = weights.cfg
    plan.require(cfg, recipe or {}, str(ckpt_dir))  # a recipe for a Jetson device: the model must fit it
    dtype = DTYPES[opts.dtype].torch
    # a companion graph shares the weights file (docs/graph-interface.md, "Decode companion")
    external = _use_external(weights, dtype, opts.external_data) or opts.companion != "none"
    with progress.step(f"checking {ckpt_dir}'s weights for NaN/Inf and hashing them"):
        # refused before any work, naming the tensor; one read of the files serves the check and the hash
        sha256 = weights.scan(lambda name: param_dtype(name, dtype))
    with torch.device("meta"):
        model = Mamba2LM(cfg).cast(dtype).eval()
    flavor = FLAVORS[opts.flavor]
    bind = lambda m: (streamed.bind(m, weights), streamed.fold_transposes(m))  # noqa: E731
    with progress.step(f"tracing and lowering to the {opts.flavor} flavor ({opts.dtype})"):
        graph = trace(model, opts, bind=bind)
    companion = None
    if opts.companion == "decode":
        with progress.step("tracing the decode companion graph (single token)"):
            companion = trace(model, dataclasses.replace(opts, graph="decode"), bind=bind)
    record, opset = {}, opts.opset
    for g in (graph, companion) if companion is not None else (graph,):
        strip_trace_metadata(g)
        g.ir_version = IR_VERSION
    if opts.quant != "none":  # ONNX Runtime's quantizer works on a ModelProto
        with progress.step(f"quantizing ({opts.quant})"):
            graph, record = _quantize(graph, cfg, opts)
            if companion is not None:  # the same weights quantize to the same bytes: shared by content
                companion, _ = _quantize(companion, cfg, opts)
        opset = graph.opset_imports[""]  # the dq format needs opset 21
    meta = ExportMetadata(
        config=cfg, flavor=opts.flavor, dtype=opts.dtype, opset=opset,
        exporter=f"ssd-deploy {__version__}; torch {torch.__version__}; onnx {onnx.__version__}",
        checkpoint_sha256=sha256, logits=opts.logits,
        graph=opts.graph, prefill=opts.flavor_options().get("prefill"), companion=opts.companion,
        recipe=recipe or {}, ssm_layout=getattr(flavor, "SSM_LAYOUT", LAYOUT_SSM), quant=opts.quant,
        quant_block=opts.quant_block if record else None, quant_format=opts.resolved_quant_format,
        quantization=record)
    graph.metadata_props.update(meta.to_props())
    if companion is not None:
        companion.metadata_props.update(dataclasses.replace(meta, graph="decode", companion="none").to_props())
    with progress.step(f"streaming the weights, saving and checking {Path(out_dir) / MODEL_FILE}"):
        return save_atomically(graph, out_dir, external, check_model, force, companion)


def _quantize(graph: onnx_ir.Model, cfg, opts: ExportOptions) -> tuple[onnx_ir.Model, dict]:
    proto, record = quantize.quantize(onnx_ir.serde.serialize_model(graph), cfg, opts.quant, opts.quant_block,
                                      opts.resolved_quant_format)
    return onnx_ir.serde.deserialize_model(proto), record


def resolve_options(recipe: str | Path | None = None, notify: Callable[[str], None] | None = None,
                    **flags) -> tuple[ExportOptions, dict]:
    """Export options from a recipe (name or TOML path) with command-line ``flags`` on top (None = not given),
    checked before any work starts; returns them with the resolved recipe to store in the metadata ({} without).
    ``notify`` gets one line per recipe value a flag changed ("recipe cpu-fp32: dtype fp32 -> fp16 (--dtype)")."""
    given = {k: v for k, v in flags.items() if v is not None}
    unknown = set(given) - {f.name for f in dataclasses.fields(ExportOptions)}
    if unknown:
        raise UserError(f"unknown export options {sorted(unknown)}")
    resolved = {}
    if recipe is not None:
        base = recipes.load(recipe)
        r = base.with_overrides(**given)
        for line in recipes.override_notes(base, r) if notify else ():
            notify(line)
        given, resolved = r.export, r.to_dict()
    opts = ExportOptions(**given)
    opts.check()
    return opts, resolved

