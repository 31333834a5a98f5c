"""ssd-deploy: Mamba-2 (SSD) checkpoints to proven ONNX Runtime and TensorRT inference.

The public Python API, the same steps as the ``ssd-deploy`` command line (which calls these functions)::

    import ssd_deploy

    out = ssd_deploy.export("ckpt/", "out/", recipe="cpu-fp32")          # -> Path of the export directory
    report = ssd_deploy.validate(out, "ckpt/")                            # report.ok, report.errors
    backend = ssd_deploy.open_backend(out, backend="ort")
    tokens = ssd_deploy.generate(backend, [[1, 2, 3]], max_new_tokens=16)  # new token ids per prompt
    ssd_deploy.inspect(out)                                                # metadata, inputs/outputs, ops

Every mistake a caller can make (a bad path, option or recipe; a missing runtime) raises ``UserError`` with one
message naming the problem. ``import ssd_deploy`` is cheap: PyTorch, ONNX and the runtimes are imported by the
functions that need them. How the pieces work: ``docs/`` in the repository (docs/architecture.md first).
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import UserError

__version__ = "0.1.0"

if TYPE_CHECKING:
    import numpy as np

    from .config import Mamba2Config
    from .generate import SamplingOptions
    from .bench import Comparison, Point
    from .onnx.options import ExportOptions
    from .progress import Reporter
    from .runtime.backends import Backend
    from .tensorrt.build import BuildResult
    from .validate import Report

__all__ = ["export", "validate", "open_backend", "generate", "benchmark", "build", "inspect", "load_config",
           "ExportOptions", "SamplingOptions", "Backend", "Report", "Point", "Comparison", "BuildResult", "Mamba2Config",
           "UserError", "__version__"]


def export(ckpt: str | Path, out_dir: str | Path, recipe: str | Path | None = None, *, force: bool = False,
           notify: Callable[[str], None] | None = None, progress: Reporter | None = None,
           **options: Any) -> Path:
    """Exports checkpoint directory ``ckpt`` to ONNX in ``out_dir``; returns the export directory.

    ``recipe``: a shipped recipe's name (``"cpu-fp32"``, ``"trt-datacenter-bf16"``, ...; ``export/README.md``) or a
    TOML file. ``options``: fields of ``ExportOptions`` (``flavor``, ``dtype``, ``opset``, ``external_data``,
    ``logits``, ``graph``, ``prefill``, ``quant``, ``quant_block``, ``quant_format``); they override the recipe's
    values (None = not given). Everything is checked
    before any work starts; the directory appears whole or not at all (``force`` replaces a previous export there,
    atomically). ``notify`` gets one line per recipe value an option changed; ``progress``
    (``ssd_deploy.progress.Reporter``) shows each step (load, trace, save) as it runs.
    """
    from .onnx.export import export as export_model, resolve_options
    from .progress import QUIET

    opts, resolved = resolve_options(recipe, notify, **options)
    return export_model(Path(ckpt), Path(out_dir), opts, resolved, force=force, progress=progress or QUIET).parent


def validate(export_dir: str | Path, ckpt: str | Path, *, backend: str = "ort", provider: str = "cpu",
             engine: str | Path | None = None, plugins: str | Path | None = None, steps: int = 4, batch: int = 2,
             prompt_len: int | None = None, seed: int | None = None, progress: Reporter | None = None) -> Report:
    """Proves an export against the PyTorch model of ``ckpt``: a random prompt (default 1.5 chunks + 3 tokens)
    prefilled, then ``steps`` decode steps, each side carrying its own states; every call's logits and states
    compared by relative error (docs/verification.md). ``report.ok`` says whether all are within tolerance.

    ``backend``: ``"ort"`` (ONNX Runtime on ``provider`` ``"cpu"`` or ``"cuda"``; a ``trt``-flavor export runs
    through its validation copy) or ``"trt"`` (the TensorRT ``engine``, default ``export_dir/model.engine``, with
    the ``plugins`` library for ``trt`` graphs). ``progress`` shows each runner's prefill and steps as they run.
    """
    import contextlib

    from .progress import QUIET
    from .runtime.validation_copy import validation_model
    from .validate import validate as validate_export

    if backend not in ("ort", "trt"):
        raise UserError(f"validate: unknown backend {backend!r}; choose ort or trt")
    with contextlib.ExitStack() as stack:
        if backend == "trt":
            from .tensorrt.runner import trt_runner

            runner = trt_runner(Path(export_dir), _path(engine), _path(plugins))
        else:
            from .runtime.ort_runner import ort_runner

            runner = ort_runner(Path(export_dir), provider, stack.enter_context(validation_model(Path(export_dir))))
        return validate_export(Path(export_dir), Path(ckpt), runner, steps=steps, batch=batch,
                               prompt_len=prompt_len, seed=seed, progress=progress or QUIET)


def open_backend(model: str | Path, backend: str = "ort", provider: str = "cpu", *, engine: str | Path | None = None,
                 plugins: str | Path | None = None, dtype: str = "fp32", cuda_graph: bool = False) -> Backend:
    """A stateful backend for ``generate``: ``"torch"`` (``model`` is a checkpoint directory; ``dtype`` its
    precision), ``"ort"`` (an export directory, ONNX Runtime on ``provider``) or ``"trt"`` (an export directory and
    its TensorRT ``engine``). States stay where the backend computes between calls. ``cuda_graph``: ``"ort"`` on
    a decode export (``--graph decode``) with the cuda provider replays each step from ONNX Runtime's CUDA
    graphs (docs/performance.md)."""
    from .runtime.backends import open_backend as open_runtime

    return open_runtime(Path(model), backend, provider, _path(plugins), _path(engine), dtype, cuda_graph)


def generate(backend: Backend, prompts: Sequence[Sequence[int]], options: SamplingOptions | None = None, *,
             on_tokens: Callable[[np.ndarray, np.ndarray], None] | None = None, **sampling: Any) -> list[list[int]]:
    """The new token ids of each prompt (token-id lists): each prompt prefilled in one call, then token by token.

    Sampling: ``options``, or its fields as keywords (``max_new_tokens`` (32), ``temperature`` (0: greedy),
    ``top_k``, ``top_p``, ``seed``, ``eos_id``). ``on_tokens(tokens [b], alive [b])`` receives each step's tokens as
    they come (streaming).
    """
    import dataclasses

    from .generate import SamplingOptions, generate as generate_tokens

    if options is not None and sampling:
        raise UserError("generate: give SamplingOptions or its fields as keywords, not both")
    if options is None:
        known = {f.name for f in dataclasses.fields(SamplingOptions)}
        unknown = set(sampling) - known
        if unknown:
            raise UserError(f"generate: unknown sampling options {sorted(unknown)}; choose among {sorted(known)}")
        options = SamplingOptions(**sampling)
    if isinstance(prompts, (str, bytes)) or not all(isinstance(p, Sequence) and not isinstance(p, (str, bytes))
                                                    for p in prompts):
        raise UserError("generate: prompts must be a list of token-id lists (tokenize text first)")
    return generate_tokens(backend, [[int(t) for t in p] for p in prompts], options, on_tokens)


def benchmark(ckpt: str | Path, backends: Sequence[str] = ("torch", "portable", "ort"), *,
              exports: Sequence[str | Path] = (), provider: str = "cpu", dtype: str = "fp32",
              batches: Sequence[int] = (1,), lengths: Sequence[int] = (128, 512), steps: int = 8, repeats: int = 3,
              packed: bool = False, progress: Callable[[Point], None] | None = None,
              display: Reporter | None = None) -> Comparison:
    """Prefill tokens/s and decode ms/token of each backend, side by side on the same random prompts (one point per
    backend, batch and length; median of ``repeats`` prefills and ``steps`` decode steps, after a warm-up), each
    point with its parity: relative errors of the logits after the prefill and after one decode step against the
    float32 PyTorch listings (docs/performance.md). Returns ``.points`` (and ``.packed``).

    ``backends``: ``torch`` (the PyTorch model on the ops' listings), ``torch-triton``, ``torch-graphs``,
    ``torch-triton-graphs`` (CUDA: Triton kernels, CUDA-graph decode), ``portable`` and ``ort`` (ONNX Runtime on
    exports of ``ckpt`` made for the run, in ``dtype``, last-token logits); ``exports``: further export directories
    run on ONNX Runtime. ``packed``: also prompts of each length one call each vs one packed call. ``progress(point)``
    is called as each point is measured; ``display`` (a ``Reporter``) shows each point before it runs. Rows are
    labelled by backend name, with the export's folder where two would read the same.
    """
    from .bench import compare
    from .progress import QUIET

    return compare(Path(ckpt), list(backends), [Path(e) for e in exports], provider, dtype, list(batches),
                   list(lengths), steps, repeats, packed, progress, display or QUIET)


def build(export_dir: str | Path, engine: str | Path | None = None, *, recipe: str | Path | None = None,
          plugins: str | Path | None = None, profile: str | None = None, batch_range: str | None = None,
          seq_range: str | None = None, timing_cache: str | Path | None = None, workspace_mib: int | None = None,
          verbose: bool = False) -> BuildResult:
    """Builds a TensorRT engine (default ``export_dir/model.engine``) and its JSON sidecar from an export; returns
    the paths, the sidecar record and notes. Needs TensorRT (``pip install tensorrt``, with a GPU) or TensorRT-RTX
    (builds without a GPU, no plugins); ``SSD_DEPLOY_TENSORRT=tensorrt|tensorrt_rtx`` chooses. Raises ``UserError``
    where neither is installed.

    Shape ranges come from the export's recipe unless given: ``profile`` ``"decode"``, ``"prefill"`` or ``"both"``,
    ``batch_range`` and ``seq_range`` as ``"MIN,OPT,MAX"`` (the CLI's ``--batch-range``/``--seq-range``);
    ``recipe`` replaces the stored one. ``plugins``: the plugin library
    a ``trt``-flavor graph needs.
    """
    from .tensorrt.build import BuildOptions, build as build_engine, read_recipe

    opts = BuildOptions(profile=profile, batch_range=batch_range, seq_range=seq_range,
                        recipe=read_recipe(str(recipe)) if recipe else None, plugins=_path(plugins),
                        timing_cache=_path(timing_cache), workspace_mib=workspace_mib, output=_path(engine),
                        verbose=verbose)
    return build_engine(Path(export_dir), opts)


def inspect(path: str | Path) -> dict:
    """What an artifact of ssd-deploy holds, read without loading weights or TensorRT (``kind``): an export
    (metadata, stored recipe, opsets, inputs and outputs, op histogram), a TensorRT engine with its sidecar, or a
    Triton model repository."""
    from .inspect import describe

    return describe(Path(path))


def load_config(path: str | Path) -> Mamba2Config:
    """The model configuration of a checkpoint directory (either on-disk format) or of an export directory (from
    its metadata)."""
    path = Path(path)
    if (path / "config.json").is_file() or not path.exists():
        from .config import load_config as load_checkpoint_config

        return load_checkpoint_config(path)[0]
    from .interface import read_metadata

    return read_metadata(path).config


def _path(p: str | Path | None) -> Path | None:
    return None if p is None else Path(p)


# Types, imported when first used (they live in modules that import PyTorch or ONNX).
_LAZY = {"ExportOptions": "onnx.options", "SamplingOptions": "generate", "Backend": "runtime.backends",
         "Report": "validate", "Point": "bench", "Comparison": "bench", "BuildResult": "tensorrt.build", "Mamba2Config": "config"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


class _Package(types.ModuleType):
    """Keeps ``validate``, ``generate`` and ``inspect`` the API functions above: importing the submodules of the
    same names (``from ssd_deploy.validate import ...``) would otherwise rebind these package attributes to the
    modules. The modules stay importable by their full names."""

    def __setattr__(self, name: str, value):
        if name in ("validate", "generate", "inspect") and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
