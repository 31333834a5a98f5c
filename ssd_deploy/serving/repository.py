"""A Triton model repository for an export, an engine or a checkpoint (``ssd-deploy serve-repo``; docs/serving.md).

Layout (Triton's): ``REPO/README.md`` (how to start it), ``REPO/NAME/config.pbtxt`` and the version directory
``REPO/NAME/1/`` holding

* ``onnxruntime``: ``model.onnx`` (+ ``model.onnx.data``);
* ``tensorrt``: ``model.plan`` (the engine), and ``REPO/plugins/`` with the plugin library a ``trt``-flavor engine
  needs (Triton loads custom layers through ``LD_PRELOAD``). The engine's sidecar checks run first: an engine
  replaced without its sidecar, built from another ONNX, with another plugin library, or by TensorRT-RTX (which
  Triton's tensorrt backend cannot run) is refused before anything is written;
* ``python``: ``model.py`` (``python_model/model.py``) and ``export/`` (or ``checkpoint/`` for the torch runtime).

Model files are hard-linked where the filesystem allows (an export rewritten later gets new files: the links keep
the old ones), copied otherwise. The repository is written atomically.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..atomic import atomic_dir
from ..errors import UserError
from ..interface import DATA_FILE, DECODE_FILE, MODEL_FILE, ExportMetadata, file_sha256, read_metadata
from . import pbtxt
from .pbtxt import ServeOptions

PYTHON_MODEL = Path(__file__).resolve().parent / "python_model" / "model.py"
VERSION = "1"
TOKENIZER = "tokenizer.json"


def _link_or_copy(src: Path, dst: Path):
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _export_files(export_dir: Path) -> list[Path]:
    # the decode companion (docs/graph-interface.md) goes along: the python backend decodes through it, and the
    # main graph's metadata names it (Triton's onnxruntime backend loads model.onnx only)
    files = [export_dir / MODEL_FILE] + [export_dir / f for f in (DATA_FILE, DECODE_FILE, TOKENIZER)
                                         if (export_dir / f).is_file()]
    return files


def checked_engine(export_dir: Path, engine: Path, plugins: Path | None):
    """The engine's sidecar after the checks that hold wherever it will run: the engine is the one the sidecar
    describes, built from this export's ONNX, with this plugin library, by TensorRT (not TensorRT-RTX). Its
    TensorRT version and GPU are checked by Triton where it runs; the README names them."""
    from ..tensorrt import sidecar as sc

    if not engine.is_file():
        raise UserError(f"{engine}: no engine; build one with: ssd-deploy build {export_dir}")
    car = sc.load(engine)
    if car.tensorrt != "tensorrt":
        raise UserError(f"{engine}: built with {car.label}; Triton's tensorrt backend runs engines of TensorRT "
                        f"itself: build it with SSD_DEPLOY_TENSORRT=tensorrt on a machine of the target GPU")
    lib = Path(plugins) if plugins is not None else Path(car.plugins["path"]) if car.plugins else None
    if lib is not None and not lib.is_file():
        raise UserError(f"plugin library {lib}: no such file (pass another with --plugins)")
    env = sc.Environment(tensorrt=car.tensorrt, tensorrt_version=car.tensorrt_version, compute_capability=None,
                         engine_sha256=file_sha256(engine), plugins_sha256=_sha256_lib(lib),
                         plugins_path=str(lib) if lib else None,
                         onnx_sha256=sc.sha256_files(sc.onnx_files(export_dir)), onnx_dir=str(export_dir))
    sc.check(engine, car, env)
    return car, lib if car.plugins else None


def _sha256_lib(lib: Path | None) -> str | None:
    from ..tensorrt import sidecar as sc

    return sc.sha256_files([lib]) if lib is not None else None


def _torch_metadata(ckpt: Path, dtype: str) -> ExportMetadata:
    """What the configuration needs of a checkpoint served by the torch runtime (no export, no recipe)."""
    from ..config import load_config

    return ExportMetadata(config=load_config(ckpt)[0], flavor="torch", dtype=dtype, opset=0, exporter="torch",
                          checkpoint_sha256="", logits="last")


def write_repository(model: Path, out: Path, opts: ServeOptions, engine: Path | None = None,
                     plugins: Path | None = None, dtype: str = "fp32") -> Path:
    """Writes the repository for MODEL (an export directory; a checkpoint directory for the python backend's torch
    runtime) to ``out``; returns ``out``. ``dtype``: the torch runtime's."""
    opts.check()
    model = Path(model)
    if not model.is_dir():
        raise UserError(f"{model}: not a directory")
    if opts.backend != "tensorrt" and (engine is not None or plugins is not None):
        raise UserError("--engine and --plugins are for --backend tensorrt")
    profiles, lib, car = 0, None, None
    if opts.runtime == "torch":
        if not (model / "config.json").is_file():
            raise UserError(f"{model}: the torch runtime serves a checkpoint directory (with config.json)")
        meta = _torch_metadata(model, dtype)
    elif opts.backend == "tensorrt":
        from ..tensorrt.build import ENGINE_FILE

        car, lib = checked_engine(model, Path(engine) if engine else model / ENGINE_FILE, plugins)
        meta = car.metadata
        profiles = len(car.profiles)
        largest = max(p.batch.max for p in car.profiles)
        if opts.batch(meta) > largest:
            raise UserError(f"--max-batch {opts.batch(meta)} exceeds the engine's largest profile batch ({largest})")
    else:
        meta = read_metadata(model)
    if opts.backend == "onnxruntime" and meta.flavor == "trt":
        raise UserError(f"{model}: a trt-flavor export holds TensorRT plugin nodes, which ONNX Runtime cannot run; "
                        f"serve it with --backend tensorrt (an engine) or export another flavor")
    if opts.backend == "python" and opts.runtime == "ort" and meta.flavor == "trt":
        raise UserError(f"{model}: a trt-flavor export holds TensorRT plugin nodes; the python backend runs exports "
                        f"on ONNX Runtime: export the portable or ort flavor")
    params = None
    if opts.backend == "python":
        params = {"runtime": opts.runtime, "provider": opts.provider, "vocab_size": str(meta.config.vocab_size),
                  "model_dir": "checkpoint" if opts.runtime == "torch" else "export"}
        if opts.runtime == "torch":
            params["dtype"] = dtype
    text = pbtxt.config_text(meta, opts, params, profiles, comment=_comment(meta, opts))
    with atomic_dir(out) as tmp:
        version = tmp / opts.name / VERSION
        version.mkdir(parents=True)
        (tmp / opts.name / "config.pbtxt").write_text(text)
        if opts.backend == "onnxruntime":
            for f in _export_files(model):
                if f.name != TOKENIZER:
                    _link_or_copy(f, version / f.name)
        elif opts.backend == "tensorrt":
            _link_or_copy(Path(engine) if engine else model / "model.engine", version / "model.plan")
            if lib is not None:
                (tmp / "plugins").mkdir()
                _link_or_copy(lib, tmp / "plugins" / lib.name)
        else:
            shutil.copy2(PYTHON_MODEL, version / "model.py")
            sub = version / params["model_dir"]
            sub.mkdir()
            files = [p for p in model.iterdir() if p.is_file()] if opts.runtime == "torch" else _export_files(model)
            for f in files:
                _link_or_copy(f, sub / f.name)
        (tmp / "README.md").write_text(readme(meta, opts, lib, car))
    return Path(out)


def _comment(meta: ExportMetadata, opts: ServeOptions) -> str:
    from .. import __version__

    return (f"Written by ssd-deploy {__version__} serve-repo --backend {opts.backend}"
            + (f" (runtime {opts.runtime}, {opts.provider})" if opts.backend == "python" else "")
            + f"\nfrom a {meta.flavor} {meta.dtype} model, checkpoint sha256 {meta.checkpoint_sha256 or 'n/a'}.")


def readme(meta: ExportMetadata, opts: ServeOptions, lib: Path | None, car) -> str:
    cfg = meta.config
    lines = [f"# Triton model repository: `{opts.name}`", "",
             f"Written by `ssd-deploy serve-repo --backend {opts.backend}`. Model: Mamba-2, {cfg.n_layer} layers, "
             f"d_model {cfg.d_model}, vocabulary {cfg.vocab_size} (logits padded to {cfg.padded_vocab_size}); "
             f"{meta.flavor} {meta.dtype}.", "",
             "## Interface", "",
             f"One sequence per request (batch 1); Triton's sequence batcher keeps each sequence on one model "
             f"instance and batches up to {opts.batch(meta)} sequences' steps per call "
             f"(strategy `{opts.strategy}`"
             + (f", up to {opts.sequences(meta)} live sequences per instance" if opts.strategy == "oldest" else "")
             + f"). A sequence idle for {opts.idle_timeout_s:g} s is released.", "",
             "- input `input_ids` INT64 [1, tokens]: the prompt with `sequence_start`, then the sequence's next "
             "token(s); set `sequence_id` on every request and `sequence_end` on the last;",
             f"- output `logits` [1, {1 if meta.logits == 'last' or opts.backend == 'python' else 'tokens'}, "
             f"{cfg.padded_vocab_size}] (columns past {cfg.vocab_size} are padding: never sample them)"
             + ("; `next_token` INT64 [1, 1], the greedy next token" if opts.backend == "python" else "") + ".", "",
             "Client: `ssd-deploy run --backend triton --url HOST:8001 --model " + opts.name
             + " --input-ids 1,2,3` (or `ssd_deploy.serving.client`).", "", "## Start it", ""]
    if opts.backend == "python":
        lines += [
            "Locally, with the Triton server bundled in the `nvidia-pytriton` wheel (no container; python backend "
            "only), from the Python environment that has ssd-deploy installed:", "",
            "```bash", "python -m ssd_deploy.serving.server REPO   # prints the gRPC and HTTP addresses", "```", "",
            "In an NVIDIA Triton container, the python-backend stub imports `ssd_deploy` from the container's "
            "Python: install it there first"
            + (" (with `onnxruntime-gpu` for the CUDA provider)" if opts.provider == "cuda" else "") + ":", "",
            "```bash",
            "docker run --rm --net=host " + ("--gpus all " if opts.on_gpu else "") +
            "-v $PWD/REPO:/models nvcr.io/nvidia/tritonserver:<yy.mm>-py3 \\",
            "  bash -c 'pip install ssd-deploy && tritonserver --model-repository=/models'", "```"]
    elif opts.backend == "onnxruntime":
        lines += [
            "In an NVIDIA Triton container (onnxruntime backend; implicit state: Triton holds each sequence's "
            "states and feeds them back):", "",
            "```bash", "docker run --rm --net=host " + ("--gpus all " if opts.on_gpu else "")
            + "-v $PWD/REPO:/models nvcr.io/nvidia/tritonserver:<yy.mm>-py3 \\",
            "  tritonserver --model-repository=/models", "```"]
        if meta.flavor == "ort":
            lines += ["", "This graph uses ONNX Runtime contrib ops (`com.microsoft`): the container's ONNX Runtime "
                      "must have them (any official build does)."]
    else:
        plugin = f"/models/plugins/{lib.name}" if lib is not None else None
        lines += [
            f"The engine runs only with {car.label} on compute capability {car.compute_capability}: take the "
            f"Triton release whose TensorRT is exactly {car.tensorrt_version} (NVIDIA's frameworks support "
            "matrix), on that GPU.", ""]
        if plugin:
            lines += [f"It contains ssd-deploy's TensorRT plugins: Triton loads custom layers with `LD_PRELOAD` "
                      f"(the library is in `plugins/`):", ""]
        lines += ["```bash", "docker run --rm --net=host --gpus all -v $PWD/REPO:/models "
                  + (f"-e LD_PRELOAD={plugin} " if plugin else "") + "nvcr.io/nvidia/tritonserver:<yy.mm>-py3 \\",
                  "  tritonserver --model-repository=/models", "```"]
    lines += ["", "Scale-out (several instances per GPU, several servers behind a balancer sticky on the sequence id): "
              "ssd-deploy's docs/serving.md.", ""]
    return "\n".join(lines)
