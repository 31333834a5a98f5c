"""Exported ONNX → TensorRT engine with one optimization profile per shape regime, and its JSON sidecar.

The graph is parsed from its file, so weights in an external data file are found. A ``trt``-flavor graph needs the
plugin library loaded into the builder's registry before parsing; other graphs need nothing. Engine, sidecar and
timing cache are written to temporary names and renamed, so a failed build leaves the previous files untouched.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from .. import plan as memory_plan, recipes
from ..errors import UserError
from ..interface import model_path, read_metadata, verify_weights
from . import api as trt_api
from .profiles import Profile, plan, recipe_ranges
from .progress import build_progress
from .sidecar import (AHEAD_OF_TIME, PLUGIN_LIBRARY, Sidecar, gpu_compute_capability, onnx_files, sha256_bytes,
                      sha256_files, sidecar_path)

ENGINE_FILE = "model.engine"
SHOWN_ERRORS = 20  # TensorRT log lines quoted when a build fails


@dataclass(frozen=True)
class BuildOptions:
    profile: str | None = None  # decode | prefill | both (default: the recipe's, else both)
    batch_range: str | None = None  # "MIN,OPT,MAX" of every profile
    seq_range: str | None = None  # "MIN,OPT,MAX" of the prefill profile
    recipe: dict | None = None  # a resolved recipe replacing the one stored in the export
    plugins: Path | None = None
    timing_cache: Path | None = None
    workspace_mib: int | None = None  # the builder's workspace pool (the recipe's tensorrt.workspace_mib)
    output: Path | None = None  # the engine file; default: EXPORT/model.engine
    verbose: bool = False  # echo TensorRT's log (warnings and up; info with it) while building


@dataclass
class BuildResult:
    engine: Path
    sidecar: Path
    record: Sidecar
    notes: list[str] = field(default_factory=list)


def read_recipe(name_or_path: str) -> dict:
    """A recipe (shipped name or TOML path), resolved as the exporter stores it; its target must be TensorRT."""
    recipe = recipes.load(name_or_path)
    if recipe.target != "tensorrt":
        raise UserError(f"recipe {recipe.name} targets {recipe.target}, not tensorrt: it has no TensorRT profiles")
    return recipe.to_dict()


def parse_errors(parser, onnx_path: Path, label: str) -> str:
    """Every parser error in one message: node index, op type, node name, TensorRT's description."""
    lines = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        where = f"node {e.node()} ({e.node_operator()} {e.node_name()!r})" if e.node() >= 0 else "graph"
        lines.append(f"  {where}: {e.desc().strip()} [{e.code().name}]")
    return f"{onnx_path}: {label}'s ONNX parser rejected the graph ({len(lines)} error(s)):\n" + "\n".join(lines)


def write_files(files: dict[Path, bytes]):
    """Writes every file under a temporary name, then renames them in order: an interrupted write leaves the old
    files (an engine renamed without its new sidecar is caught by the sidecar's engine_sha256)."""
    temps: dict[Path, str] = {}
    try:
        for path, data in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
            temps[path] = tmp
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.chmod(tmp, 0o644)
        for path, tmp in temps.items():
            os.replace(tmp, path)
    finally:
        for tmp in temps.values():
            if os.path.exists(tmp):
                os.remove(tmp)


def _plugins(meta_flavor: str, plugins: Path | None, api: trt_api.TrtApi, onnx_path: Path) -> Path | None:
    if meta_flavor == "ort":
        raise UserError(f"{onnx_path}: an ort-flavor graph uses ONNX Runtime contrib ops, which TensorRT cannot "
                        f"parse; export the portable flavor (or trt, with the plugin library) for TensorRT")
    if meta_flavor != "trt":
        return None  # a plugin library given anyway is not needed, so not recorded as a run-time requirement
    api.check_plugins(f"{onnx_path} (trt flavor)")
    if plugins is None:
        raise UserError(f"{onnx_path} is a trt-flavor graph: pass the plugin library with --plugins "
                        f"{PLUGIN_LIBRARY} (cmake -S plugins -B plugins/build && cmake --build plugins/build)")
    if not Path(plugins).is_file():
        raise UserError(f"--plugins {plugins}: no such file")
    return Path(plugins).resolve()


def add_profiles(builder, config, network, profiles: list[Profile]) -> list:
    """One TensorRT optimization profile per ``profiles`` entry, in order; returns them."""
    inputs = {network.get_input(i).name: tuple(network.get_input(i).shape) for i in range(network.num_inputs)}
    made = []
    for p in profiles:
        prof = builder.create_optimization_profile()
        for name, (lo, opt, hi) in p.shapes(inputs).items():
            prof.set_shape(name, lo, opt, hi)
        if config.add_optimization_profile(prof) < 0:
            raise UserError(f"TensorRT refused the {p.name} profile (batch {p.batch}, seq {p.seq})")
        made.append(prof)
    return made


def _parse(api: trt_api.TrtApi, logger, onnx_path: Path, plugins: Path | None):
    """Builder and parsed network; the parser is returned too because it owns the weights until the build ends."""
    builder = api.module.Builder(logger)
    if plugins is not None:
        api.load_plugins(builder, plugins)  # before parsing: the parser maps plugin nodes to registered creators
    network = api.create_network(builder)
    parser = api.module.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # from the file, so external weights are found
        raise UserError(parse_errors(parser, onnx_path, api.display_name))
    return builder, network, parser


def _timing_cache(api: trt_api.TrtApi, config, path: Path | None, notes: list[str]):
    if path is None:
        return None
    if not api.supports_timing_cache:
        notes.append(f"--timing-cache ignored: {api.display_name}'s timing cache does not change its engines, and "
                     f"using one would make the ahead-of-time build need a GPU")
        return None
    cache = config.create_timing_cache(path.read_bytes() if path.is_file() else b"")
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        raise UserError(f"--timing-cache {path}: not a timing cache of {api.display_name} on this GPU; delete it or "
                        f"give another path")
    return cache


def build(export_dir: Path, opts: BuildOptions = BuildOptions(), api: trt_api.TrtApi | None = None,
          console: Console | None = None) -> BuildResult:
    onnx_path = model_path(export_dir)
    export_dir = onnx_path.parent
    meta = read_metadata(export_dir)
    verify_weights(export_dir, meta)  # a corrupted weight file must not become an engine
    api = api or trt_api.load()
    console = console or Console(stderr=True)
    notes: list[str] = []

    plugins = _plugins(meta.flavor, opts.plugins, api, onnx_path)
    if opts.plugins is not None and plugins is None:
        notes.append(f"--plugins ignored: a {meta.flavor}-flavor graph needs no plugins")
    recipe = opts.recipe if opts.recipe is not None else meta.recipe
    memory_plan.require(meta.config, recipe, str(export_dir))  # a recipe for a Jetson device: the engine must fit
    ranges = recipe_ranges(recipe)
    if opts.recipe is not None:
        made_for = recipe.get("export", {})
        if (made_for.get("flavor"), made_for.get("dtype")) != (meta.flavor, meta.dtype):
            notes.append(f"recipe {recipe.get('name')} is for a {made_for.get('flavor')} {made_for.get('dtype')} "
                         f"export, this one is {meta.flavor} {meta.dtype}: only its TensorRT ranges are used")
    profiles = plan(opts.profile, opts.batch_range, opts.seq_range, ranges, meta.graph)
    workspace_mib = opts.workspace_mib or ranges.workspace_mib
    if workspace_mib is not None and workspace_mib < 1:
        raise UserError(f"--workspace-mib must be a positive number, got {workspace_mib}")
    engine_path = Path(opts.output) if opts.output else export_dir / ENGINE_FILE
    if engine_path.is_dir():
        raise UserError(f"-o {engine_path}: is a directory; give the engine's file name")
    gpu = gpu_compute_capability()
    if not api.builds_ahead_of_time and gpu is None:
        raise UserError(f"{api.display_name} builds engines for the GPU it runs on, and there is no CUDA GPU here; "
                        f"TensorRT-RTX (SSD_DEPLOY_TENSORRT=tensorrt_rtx) builds without one")

    log: list[tuple[str, str]] = []

    def sink(severity: str, msg: str):
        if severity == "VERBOSE" or (severity == "INFO" and not opts.verbose):
            return
        log.append((severity, msg))
        if opts.verbose:
            console.print(f"[TensorRT {severity.lower()}] {msg}", markup=False, highlight=False)

    sources = onnx_files(export_dir)
    onnx_sha256 = sha256_files(sources)  # of what is parsed next
    logger = api.logger(sink)
    builder, network, parser = _parse(api, logger, onnx_path, plugins)
    config = builder.create_builder_config()
    add_profiles(builder, config, network, profiles)
    if workspace_mib is not None:
        api.set_workspace(config, workspace_mib << 20)
    cache = _timing_cache(api, config, Path(opts.timing_cache) if opts.timing_cache else None, notes)

    console.print(f"building {engine_path.name} with {api.display_name} from {onnx_path} ({meta.flavor}, "
                  f"{meta.dtype}; profiles {'+'.join(p.name for p in profiles)})", highlight=False, soft_wrap=True)
    start = time.perf_counter()
    with build_progress(api, console) as monitor:
        if monitor is not None:
            config.progress_monitor = monitor
        data = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    del parser  # the weights it held are in the engine now
    if data is None:
        errors = [m for s, m in log if s in ("ERROR", "INTERNAL_ERROR")] or [m for _, m in log]
        raise UserError(f"{api.display_name} could not build an engine from {onnx_path}:\n  " +
                        "\n  ".join(errors[-SHOWN_ERRORS:]))

    record = Sidecar(
        tensorrt=api.package, tensorrt_version=api.version,
        compute_capability=AHEAD_OF_TIME if api.builds_ahead_of_time else gpu,
        compute_targets=api.compute_targets(config), build_gpu=gpu, profiles=profiles, export=meta.to_props(),
        onnx_sha256=onnx_sha256, onnx_dir=str(export_dir.resolve()), onnx_files=[f.name for f in sources],
        engine_file=engine_path.name, engine_sha256=sha256_bytes(data), build_seconds=round(seconds, 3),
        plugins={"path": str(plugins), "sha256": sha256_files([plugins])} if plugins else None)
    files = {engine_path: data, sidecar_path(engine_path): record.to_json()}
    if cache is not None:
        files[Path(opts.timing_cache)] = cache.serialize()
    write_files(files)
    return BuildResult(engine_path, sidecar_path(engine_path), record, notes)
