"""inspect: what an artifact of ssd-deploy holds, read without loading weights or TensorRT.

- an export directory (or its model.onnx): metadata, the stored recipe, interface, op histogram, engines beside it;
- a TensorRT engine (``ENGINE`` + ``ENGINE.json``): its sidecar (TensorRT, GPU, profiles, export, plugins) and
  whether the engine and its export's ONNX are still the files the sidecar names;
- a Triton model repository (``serve-repo``: one directory per model with a ``config.pbtxt``): each model's
  backend, batching, state and versions.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import onnx

from .errors import UserError
from .interface import MODEL_FILE, file_sha256, load_graph, read_metadata, summary

CONFIG_PBTXT = "config.pbtxt"  # Triton's model configuration, one per model directory


def _shape(vi: onnx.ValueInfoProto) -> list:
    dims = vi.type.tensor_type.shape.dim
    return [d.dim_param or d.dim_value for d in dims]


def _dtype(vi: onnx.ValueInfoProto) -> str:
    return onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type).name


def describe(path: Path) -> dict:
    """The description of whatever ``path`` is (``kind``: export, engine or triton-repository)."""
    p = Path(path)
    if p.is_file() and p.name.endswith(".engine.json"):
        return describe_engine(p.with_name(p.name[:-len(".json")]))
    if p.is_file() and (p.suffix == ".engine" or _sidecar_of(p).is_file()):
        return describe_engine(p)
    if p.is_dir() and not (p / MODEL_FILE).is_file() and any(p.glob(f"*/{CONFIG_PBTXT}")):
        return describe_repository(p)
    return describe_export(p)  # its refusal names what is missing


def describe_export(export_dir: Path) -> dict:
    proto = load_graph(export_dir)
    meta = read_metadata(export_dir)
    ops = Counter(f"{n.domain + '::' if n.domain else ''}{n.op_type}" for n in proto.graph.node)
    folder = Path(export_dir) if Path(export_dir).is_dir() else Path(export_dir).parent
    return {
        "kind": "export",
        "metadata": summary(meta),
        "recipe": meta.recipe,
        "opsets": {o.domain or "ai.onnx": o.version for o in proto.opset_import},
        "ir_version": proto.ir_version,
        "inputs": [{"name": i.name, "dtype": _dtype(i), "shape": _shape(i)} for i in proto.graph.input],
        "outputs": [{"name": o.name, "dtype": _dtype(o), "shape": _shape(o)} for o in proto.graph.output],
        "initializers": len(proto.graph.initializer),
        "ops": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
        "engines": sorted(str(e) for e in folder.glob("*.engine") if _sidecar_of(e).is_file()),
    }


def _sidecar_of(engine: Path) -> Path:
    from .tensorrt.sidecar import sidecar_path

    return sidecar_path(engine)


def describe_engine(engine: Path) -> dict:
    """The sidecar's record, plus what the files say now: the engine's and the export's hashes against it."""
    from .tensorrt.sidecar import load, onnx_files, sha256_files

    if not engine.is_file():
        raise UserError(f"{engine}: no such engine (its sidecar {_sidecar_of(engine).name} is here)")
    car = load(engine)
    onnx_dir = Path(car.onnx_dir) if car.onnx_dir else None
    onnx_now = None
    if onnx_dir is not None and (onnx_dir / MODEL_FILE).is_file():
        onnx_now = sha256_files(onnx_files(onnx_dir)) == car.onnx_sha256
    return {
        "kind": "engine",
        "engine": str(engine),
        "size_mib": round(engine.stat().st_size / 2**20, 1),
        "engine_matches_sidecar": file_sha256(engine) == car.engine_sha256,
        "export_unchanged": onnx_now,  # None: the export is not where the sidecar says
        "sidecar": car.to_dict(),
    }


def describe_repository(repo: Path) -> dict:
    """Each model directory's config (parsed with Triton's own ModelConfig schema where tritonclient is installed)."""
    models = []
    for cfg_path in sorted(repo.glob(f"*/{CONFIG_PBTXT}")):
        model_dir = cfg_path.parent
        entry = {"directory": model_dir.name,
                 "versions": sorted(int(d.name) for d in model_dir.iterdir() if d.is_dir() and d.name.isdigit())}
        entry.update(_model_config(cfg_path))
        models.append(entry)
    return {"kind": "triton-repository", "repository": str(repo), "models": models}


def _model_config(path: Path) -> dict:
    text = path.read_text()
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        return {"config": "not parsed (needs tritonclient[grpc])"}
    try:
        cfg = text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as e:
        raise UserError(f"{path}: not a Triton model configuration ({e})") from None
    seq = cfg.sequence_batching if cfg.HasField("sequence_batching") else None
    return {
        "name": cfg.name, "backend": cfg.backend or cfg.platform, "max_batch_size": cfg.max_batch_size,
        "inputs": [i.name for i in cfg.input], "outputs": [o.name for o in cfg.output],
        "instances": sum(g.count or 1 for g in cfg.instance_group) or 1,
        "sequence_batching": None if seq is None else {
            "strategy": seq.WhichOneof("strategy_choice"), "implicit_states": len(seq.state),
            "max_idle_us": seq.max_sequence_idle_microseconds},
    }


def format_description(info: dict) -> str:
    return {"export": _format_export, "engine": _format_engine,
            "triton-repository": _format_repository}[info["kind"]](info)


def _format_export(info: dict) -> str:
    lines = ["metadata:"] + [f"  {k}: {v}" for k, v in info["metadata"].items()]
    recipe = info["recipe"]
    if recipe:
        changed = f" (flags changed {', '.join(recipe['overrides'])})" if recipe.get("overrides") else ""
        lines.append(f"recipe: {recipe.get('name')} (target {recipe.get('target')}){changed}")
        lines += [f"  {line}" for line in json.dumps(recipe, indent=1, sort_keys=True).splitlines()[1:-1]]
    else:
        lines.append("recipe: none (exported without --recipe)")
    lines.append(f"opsets: {info['opsets']}  (IR version {info['ir_version']})")
    io = info["inputs"] + info["outputs"]
    shown = io if len(io) <= 12 else io[:3] + [None] + info["outputs"][:3]
    lines.append(f"inputs ({len(info['inputs'])}) / outputs ({len(info['outputs'])}):")
    for t in shown:
        lines.append("  ..." if t is None else f"  {t['name']}: {t['dtype']} {t['shape']}")
    lines.append(f"nodes by op ({sum(info['ops'].values())} in all, {info['initializers']} initializers):")
    lines += [f"  {op:<28} {n}" for op, n in info["ops"].items()]
    lines += [f"engine: {e} (ssd-deploy inspect {e})" for e in info["engines"]]
    return "\n".join(lines)


def _format_engine(info: dict) -> str:
    car = info["sidecar"]
    gpu = car["gpu"]
    lines = [f"engine: {info['engine']} ({info['size_mib']} MiB), built {car['built_at']} in "
             f"{car['build_seconds']} s by ssd-deploy {car['ssd_deploy']}",
             f"  TensorRT: {car['tensorrt']['package']} {car['tensorrt']['version']}",
             f"  compute capability: {gpu['compute_capability']}" +
             (f" (runs on {', '.join(gpu['targets'])})" if gpu["targets"] else ""),
             f"  export: {car['export']['flavor']} {car['export']['dtype']} {car['export']['graph']} graph from "
             f"{car['onnx']['dir']}"]
    lines += [f"  profile {p['name']:<8} batch {p['batch']}  seq {p['seq']}" for p in car["profiles"]]
    plugins = car["plugins"]
    lines.append(f"  plugins: {plugins['path']} (sha256 {plugins['sha256'][:16]}…)" if plugins else
                 "  plugins: none needed")
    lines.append(f"  engine file matches the sidecar: {'yes' if info['engine_matches_sidecar'] else 'NO'}")
    lines.append("  export ONNX unchanged since the build: " +
                 {True: "yes", False: "NO (rebuild)", None: "unknown (export not found)"}[info["export_unchanged"]])
    return "\n".join(lines)


def _format_repository(info: dict) -> str:
    lines = [f"Triton model repository {info['repository']}: {len(info['models'])} model(s)"]
    for m in info["models"]:
        head = f"  {m['directory']}: versions {m['versions']}"
        if "name" in m:
            seq = m["sequence_batching"]
            head += (f"; backend {m['backend']}, max batch {m['max_batch_size']}, {m['instances']} instance(s)" +
                     (f"; sequence batching {seq['strategy']}, {seq['implicit_states']} implicit state(s)"
                      if seq else ""))
        else:
            head += f"; {m['config']}"
        lines.append(head)
    return "\n".join(lines)
