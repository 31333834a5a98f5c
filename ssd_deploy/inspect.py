"""inspect: what an export holds (metadata, interface, op histogram), read without loading its weights."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import onnx

from .interface import load_graph, read_metadata, summary


def _shape(vi: onnx.ValueInfoProto) -> list:
    dims = vi.type.tensor_type.shape.dim
    return [d.dim_param or d.dim_value for d in dims]


def _dtype(vi: onnx.ValueInfoProto) -> str:
    return onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type).name


def describe(export_dir: Path) -> dict:
    proto = load_graph(export_dir)
    meta = read_metadata(export_dir)
    ops = Counter(f"{n.domain + '::' if n.domain else ''}{n.op_type}" for n in proto.graph.node)
    return {
        "metadata": summary(meta),
        "opsets": {o.domain or "ai.onnx": o.version for o in proto.opset_import},
        "ir_version": proto.ir_version,
        "inputs": [{"name": i.name, "dtype": _dtype(i), "shape": _shape(i)} for i in proto.graph.input],
        "outputs": [{"name": o.name, "dtype": _dtype(o), "shape": _shape(o)} for o in proto.graph.output],
        "initializers": len(proto.graph.initializer),
        "ops": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
    }


def format_description(info: dict) -> str:
    lines = ["metadata:"] + [f"  {k}: {v}" for k, v in info["metadata"].items()]
    lines.append(f"opsets: {info['opsets']}  (IR version {info['ir_version']})")
    io = info["inputs"] + info["outputs"]
    shown = io if len(io) <= 12 else io[:3] + [None] + info["outputs"][:3]
    lines.append(f"inputs ({len(info['inputs'])}) / outputs ({len(info['outputs'])}):")
    for t in shown:
        lines.append("  ..." if t is None else f"  {t['name']}: {t['dtype']} {t['shape']}")
    lines.append(f"nodes by op ({sum(info['ops'].values())} in all, {info['initializers']} initializers):")
    lines += [f"  {op:<28} {n}" for op, n in info["ops"].items()]
    return "\n".join(lines)
