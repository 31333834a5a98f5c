"""The exported graph's weights, streamed from the checkpoint into the ONNX external-data file, one tensor at a time.

Export traces a model whose parameters live on the meta device (no memory, no values). ``bind`` then gives each of
the graph's weight initializers a lazy value that reads its tensor from the checkpoint (``checkpoint.Weights``) and
converts it to the initializer's dtype when, and only when, something asks for its bytes. The graph's other
initializers (constants the exporter lifted, values the constant folder computed from small weights) are ordinary
in-memory tensors, small by construction.

Constant folding over weights: the folder always folds a ``Transpose`` of an initializer that has no other consumer
(nn.Linear's weight becomes ``MatMul(x, Transpose(W))``), whatever its size; on lazy values that would read and keep
every transposed weight in memory. ``fold_transposes`` runs first and folds them lazily instead: a new lazy
initializer that reads W and transposes it while it is written. The graph is the one a non-streamed export makes
(same nodes, same initializers, same values), only never held whole.

``write_external`` writes every initializer of at least ``INLINE_BYTES`` into one data file beside the graph, each
at an offset aligned to ``ALIGNMENT``, and replaces its value by a reference to that range (``onnx_ir.ExternalTensor``:
per-tensor ``location``/``offset``/``length`` in the saved graph); it returns the file's size and sha256, computed
from the bytes as they are written. A checkpoint weight is read in blocks of rows (``Weights.chunks``) and written
block by block; a transposed one is assembled once, converted, in its written layout. Memory holds at most one
weight at the target dtype plus one block, never the stored tensor beside its converted copy.
"""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx_ir
import torch
from onnx_ir.tensor_adapters import TorchTensor

from ..checkpoint import Weights

# What onnx_ir.save keeps inline by default (size_threshold_bytes); smaller tensors gain nothing from a side file
INLINE_BYTES = 256
# Every external tensor starts at a multiple of 64 KiB: the allocation granularity of memory mappings on Windows and
# a multiple of every page size, so a runtime can map each tensor directly (onnx_ir's aligned layout)
ALIGNMENT = 1 << 16
MODULE_PREFIX = "model."  # the traced module (export.GraphInterface) holds the Mamba2LM as .model


class CheckpointTensor(onnx_ir.LazyTensor):
    """A weight read from the checkpoint on demand (never cached), converted to ``dtype`` and optionally permuted."""

    def __init__(self, weights: Weights, key: str, dtype: torch.dtype, shape, name: str,
                 perm: tuple[int, ...] | None = None):
        self.weights, self.key, self.torch_dtype, self.perm = weights, key, dtype, perm
        super().__init__(self._read, TorchTensor(torch.empty(0, dtype=dtype)).dtype, onnx_ir.Shape(shape), name=name)

    def _read(self) -> TorchTensor:
        t = self.weights.read(self.key, self.torch_dtype)
        if self.perm is not None:
            t = t.permute(self.perm)
        return TorchTensor(t.contiguous(), name=self.name)

    def blocks(self) -> Iterator[memoryview]:
        """The tensor's bytes as written, from the checkpoint's blocks of rows: without a permutation each converted
        block goes out as it is read (a block in memory, never the tensor); a permuted one is assembled once,
        converted, in its final layout (the tensor at the target dtype, no further copy)."""
        blocks = self.weights.chunks(self.key, self.torch_dtype)
        if self.perm is None:
            for block in blocks:
                yield _bytes(block)
            return
        out = torch.empty([int(d) for d in self.shape], dtype=self.torch_dtype)
        stored = out.permute(tuple(sorted(range(len(self.perm)), key=self.perm.__getitem__)))  # view, stored order
        row = 0
        for block in blocks:
            stored[row:row + len(block)].copy_(block)
            row += len(block)
        yield _bytes(out)

    def transposed(self, perm: tuple[int, ...], name: str) -> "CheckpointTensor":
        base = self.perm or tuple(range(len(self.shape)))
        shape = [self.shape[i] for i in perm]
        return CheckpointTensor(self.weights, self.key, self.torch_dtype, shape, name, tuple(base[i] for i in perm))


def bind(model: onnx_ir.Model, weights: Weights):
    """Gives every initializer traced from a meta parameter its lazy checkpoint value."""
    for name, value in model.graph.initializers.items():
        raw = getattr(value.const_value, "raw", None)
        if isinstance(raw, torch.Tensor) and raw.is_meta:
            key = name[len(MODULE_PREFIX):] if name.startswith(MODULE_PREFIX) else name
            value.const_value = CheckpointTensor(weights, key, raw.dtype, tuple(raw.shape), name)
    unbound = [n for n, v in model.graph.initializers.items()
               if isinstance(getattr(v.const_value, "raw", None), torch.Tensor) and v.const_value.raw.is_meta]
    assert not unbound, f"initializers without checkpoint values: {unbound}"


def fold_transposes(model: onnx_ir.Model):
    """Folds each ``Transpose`` of a checkpoint weight that nothing else reads into a lazy transposed initializer
    (what the constant folder would store, computed only when written)."""
    graph = model.graph
    for node in list(graph):
        if node.op_type != "Transpose" or node.domain not in ("", "ai.onnx"):
            continue
        src = node.inputs[0]
        if src is None or not isinstance(src.const_value, CheckpointTensor) or len(src.uses()) != 1:
            continue
        perm_attr = node.attributes.get("perm")
        perm = tuple(perm_attr.as_ints()) if perm_attr is not None else tuple(reversed(range(len(src.shape))))
        out = node.outputs[0]
        name = out.name or f"{src.name}.T"
        folded = onnx_ir.Value(name=name, shape=onnx_ir.Shape([src.shape[i] for i in perm]), type=src.type,
                               const_value=src.const_value.transposed(perm, name))
        graph.remove(node, safe=False)
        out.replace_all_uses_with(folded)
        # a graph output fed by the Transpose keeps its name through the replacement value
        graph.initializers.pop(src.name)
        graph.register_initializer(folded)


def _bytes(tensor) -> memoryview:
    """The tensor's bytes without a copy where possible (torch tensors through an integer view: numpy has no bf16)."""
    if isinstance(tensor, (TorchTensor, torch.Tensor)):
        t = (tensor.raw if isinstance(tensor, TorchTensor) else tensor).contiguous()
        as_int = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
        return memoryview(t.view(as_int).numpy()).cast("B")
    return memoryview(np.ascontiguousarray(tensor.numpy())).cast("B")


def write_external(model: onnx_ir.Model, data_path: Path) -> dict:
    """Writes the initializers of at least INLINE_BYTES to ``data_path`` (aligned offsets; a checkpoint weight
    streamed in blocks, see ``CheckpointTensor.blocks``) and points the graph at them; returns the file's size and
    sha256, computed from the bytes as they are written, as the export's weights record holds them
    ({"bytes", "sha256"}; interface.record_weights)."""
    data_path = Path(data_path)
    values = [v for v in model.graph.initializers.values()
              if v.const_value is not None and v.const_value.nbytes >= INLINE_BYTES]
    h = hashlib.sha256()
    offset = 0
    with open(data_path, "wb") as f:
        for value in values:
            tensor = value.const_value
            start = -(-offset // ALIGNMENT) * ALIGNMENT
            pad = bytes(start - offset)
            f.write(pad)
            h.update(pad)
            length = 0
            for data in tensor.blocks() if isinstance(tensor, CheckpointTensor) else [_bytes(tensor)]:
                f.write(data)
                h.update(data)
                length += len(data)
                del data
            if length != tensor.nbytes:
                raise AssertionError(f"{value.name}: {length} bytes written for a {tensor.nbytes}-byte tensor")
            offset = start + length
            value.const_value = onnx_ir.ExternalTensor(data_path.name, start, length, tensor.dtype,
                                                       shape=tensor.shape, name=value.name,
                                                       base_dir=str(data_path.parent))
    return {"bytes": offset, "sha256": h.hexdigest()}


# ---- a second graph on the same data file (the decode companion, docs/graph-interface.md) ------------------------

# constants a second graph may keep inline (those only it folded: shapes, scalars); a weight there would be a copy
COMPANION_INLINE_LIMIT = 1 << 20

def source_key(tensor) -> tuple:
    """What identifies an initializer's bytes across two graphs traced from one checkpoint: a checkpoint weight by
    its key, dtype and permutation (never read for this); an in-memory tensor (a folded constant, a quantized
    weight) by dtype, shape and the sha256 of its bytes."""
    if isinstance(tensor, CheckpointTensor):
        return "checkpoint", tensor.key, str(tensor.torch_dtype), tensor.perm
    return "bytes", str(tensor.dtype), tuple(tensor.shape), hashlib.sha256(_bytes(tensor)).hexdigest()


def external_sources(model: onnx_ir.Model) -> dict[tuple, onnx_ir.Value]:
    """The initializers ``write_external`` will write, by ``source_key``: taken before writing, read after it (the
    values then hold their ranges of the data file)."""
    return {source_key(v.const_value): v for v in model.graph.initializers.values()
            if v.const_value is not None and v.const_value.nbytes >= INLINE_BYTES}


def _all_values(graph: onnx_ir.Graph):
    yield from graph.inputs
    yield from graph.initializers.values()
    for node in onnx_ir.traversal.RecursiveGraphIterator(graph):
        yield from node.outputs


def share_external(model: onnx_ir.Model, written: dict[tuple, onnx_ir.Value]) -> int:
    """Points each initializer of ``model`` whose bytes another graph wrote (``written``: that graph's
    ``external_sources``, after ``write_external``) at the same range of the same data file, under that graph's
    name, so that both graphs name and locate every shared weight alike (a runtime may then share the buffers).
    Initializers the other graph does not have (small constants only this graph folded) stay inline. Returns the
    number of bytes left inline."""
    graph = model.graph
    matches = []
    for value in list(graph.initializers.values()):
        tensor = value.const_value
        if tensor is not None and tensor.nbytes >= INLINE_BYTES and source_key(tensor) in written:
            matches.append((value, written[source_key(tensor)]))
    moving = {id(v) for v, _ in matches}
    wanted = {other.name for _, other in matches}
    taken = {v.name for v in _all_values(graph)} | wanted
    fresh = (name for name in (f"c{i}" for i in itertools.count()) if name not in taken)
    # values of this graph that hold one of the wanted names (the exporter numbers values per trace) step aside,
    # and the moving ones go through fresh names, so that no rename meets a name still in use
    for value in list(_all_values(graph)):
        if value.name in wanted and id(value) not in moving:
            value.name = next(fresh)
    for value, _ in matches:
        value.name = next(fresh)
    for value, other in matches:
        ext = other.const_value
        assert isinstance(ext, onnx_ir.ExternalTensor), f"{other.name}: not written to a data file yet"
        value.name = other.name
        value.const_value = onnx_ir.ExternalTensor(ext.location, ext.offset, ext.length, ext.dtype, shape=ext.shape,
                                                   name=other.name, base_dir=ext.base_dir)
    return sum(v.const_value.nbytes for v in graph.initializers.values()
               if v.const_value is not None and not isinstance(v.const_value, onnx_ir.ExternalTensor))
