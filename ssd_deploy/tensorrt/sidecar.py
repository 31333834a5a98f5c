"""The JSON sidecar of an engine (``model.engine.json``): how, for what and from what it was built, and the checks
that refuse to run an engine somewhere it was not built for.

A serialized TensorRT engine only runs with the exact TensorRT version that built it, on the GPU architecture it was
built for (TensorRT-RTX: one of its ahead-of-time targets), with the same plugin library; and it is only the model
the user means if it came from that ONNX. TensorRT's own failures for these are late and cryptic (or silent, for a
rebuilt plugin library); the sidecar turns each into one sentence before the engine is deserialized.

The sidecar covers itself and is bound to its engine: ``sidecar_sha256`` is a digest over its whole canonical JSON,
which holds the engine's file name and sha256. An edit of any field (metadata, profiles, targets, hashes) without
the digest, or an engine whose bytes differ from the hash, is refused before anything runs. (It detects accidents
and naive edits; it is no signature: whoever can write both files can also recompute the digest.)
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__
from ..errors import UserError
from ..interface import DATA_FILE, MODEL_FILE, ExportMetadata
from . import api as trt_api
from .profiles import Profile

FORMAT = 2  # 2: sidecar_sha256 and engine_file
AHEAD_OF_TIME = "none (ahead-of-time)"
PLUGIN_LIBRARY = "plugins/build/libssd_trt_plugins.so"  # CMake target ssd_trt_plugins (plugins/cmake)


def sidecar_path(engine: Path) -> Path:
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")


def sha256_files(paths: list[Path]) -> str:
    """sha256 over each file's name and bytes, in order."""
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).name.encode())
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


def sha256_bytes(data) -> str:
    return hashlib.sha256(memoryview(data)).hexdigest()


def onnx_files(export_dir: Path) -> list[Path]:
    """The files an engine is built from: the graph and, when the weights are external, their data file."""
    d = Path(export_dir)
    return [d / MODEL_FILE] + ([d / DATA_FILE] if (d / DATA_FILE).is_file() else [])


def gpu_compute_capability() -> str | None:
    """The current CUDA device's compute capability ("9.0"), or None without a usable GPU."""
    import torch

    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability()
    return f"{major}.{minor}"


@dataclass(frozen=True)
class Sidecar:
    tensorrt: str  # the Python package that built it: tensorrt | tensorrt_rtx
    tensorrt_version: str
    compute_capability: str  # "8.9", or AHEAD_OF_TIME for a TensorRT-RTX build
    compute_targets: list[str]  # the capabilities an ahead-of-time engine runs on; [] otherwise
    profiles: list[Profile]
    export: dict  # the export's metadata properties (ExportMetadata.to_props), so the engine needs no ONNX to run
    onnx_sha256: str
    engine_sha256: str
    plugins: dict | None = None  # {"path", "sha256"} where the graph needs the plugin library
    onnx_dir: str = ""
    onnx_files: list[str] = field(default_factory=lambda: [MODEL_FILE])  # the files onnx_sha256 covers
    build_gpu: str | None = None  # the GPU present at build time, if any (informational for ahead-of-time builds)
    ssd_deploy: str = __version__
    built_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    build_seconds: float | None = None
    engine_file: str = ""  # the engine's file name: a sidecar describes one engine

    @property
    def metadata(self) -> ExportMetadata:
        return ExportMetadata.from_props(self.export, "engine sidecar")

    @property
    def label(self) -> str:
        return trt_api.label(self.tensorrt, self.tensorrt_version)

    def to_dict(self) -> dict:
        meta = self.metadata
        return {
            "format": FORMAT, "ssd_deploy": self.ssd_deploy, "built_at": self.built_at,
            "build_seconds": self.build_seconds,
            "tensorrt": {"package": self.tensorrt, "version": self.tensorrt_version},
            "gpu": {"compute_capability": self.compute_capability, "targets": self.compute_targets,
                    "build_gpu": self.build_gpu},
            "profiles": [p.to_dict() for p in self.profiles],
            "export": {"flavor": meta.flavor, "dtype": meta.dtype, "graph": meta.graph, "metadata": self.export},
            "plugins": self.plugins,
            "onnx": {"dir": self.onnx_dir, "files": self.onnx_files, "sha256": self.onnx_sha256},
            "engine_file": self.engine_file, "engine_sha256": self.engine_sha256,
        }

    def to_json(self) -> bytes:
        d = self.to_dict()
        return (json.dumps({**d, "sidecar_sha256": digest(d)}, indent=2) + "\n").encode()

    @classmethod
    def from_dict(cls, d: dict, where: str) -> "Sidecar":
        if d.get("format") != FORMAT:
            raise UserError(f"{where}: sidecar format {d.get('format')!r} is not {FORMAT} (written by another "
                            f"ssd-deploy); rebuild the engine")
        if d.get("sidecar_sha256") != digest({k: v for k, v in d.items() if k != "sidecar_sha256"}):
            raise UserError(f"{where}: the sidecar was edited after the build (its contents do not match its "
                            f"sidecar_sha256); rebuild the engine")
        try:
            return cls(tensorrt=d["tensorrt"]["package"], tensorrt_version=d["tensorrt"]["version"],
                       compute_capability=d["gpu"]["compute_capability"], compute_targets=list(d["gpu"]["targets"]),
                       build_gpu=d["gpu"].get("build_gpu"), profiles=[Profile.from_dict(p) for p in d["profiles"]],
                       export=dict(d["export"]["metadata"]), onnx_sha256=d["onnx"]["sha256"],
                       onnx_dir=d["onnx"].get("dir", ""), onnx_files=list(d["onnx"].get("files", [MODEL_FILE])),
                       engine_sha256=d["engine_sha256"], plugins=d.get("plugins"),
                       ssd_deploy=d.get("ssd_deploy", ""), built_at=d.get("built_at", ""),
                       build_seconds=d.get("build_seconds"), engine_file=d["engine_file"])
        except (KeyError, TypeError, ValueError, UserError) as e:
            raise UserError(f"{where}: malformed engine sidecar ({type(e).__name__}: {e})") from None


def digest(d: dict) -> str:
    """sha256 of a sidecar's canonical JSON (sorted keys, no whitespace)."""
    return hashlib.sha256(json.dumps(d, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def load(engine: Path) -> Sidecar:
    path = sidecar_path(engine)
    if not path.is_file():
        raise UserError(f"{engine}: no sidecar {path.name} next to it; ssd-deploy runs only engines it built "
                        f"(ssd-deploy build), which records what each engine needs")
    try:
        d = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: unreadable sidecar ({e})") from None
    if not isinstance(d, dict):
        raise UserError(f"{path}: malformed engine sidecar (not a JSON object)")
    car = Sidecar.from_dict(d, str(path))
    if car.engine_file != Path(engine).name:
        raise UserError(f"{path}: the sidecar of engine {car.engine_file!r}, not of {Path(engine).name!r}; rebuild "
                        f"the engine")
    return car


@dataclass(frozen=True)
class Environment:
    """Where an engine is about to run. None: not known or not given, and that check is skipped (the runner
    refuses to start without a GPU on its own)."""
    tensorrt: str
    tensorrt_version: str
    compute_capability: str | None
    engine_sha256: str
    plugins_sha256: str | None = None
    plugins_path: str | None = None
    onnx_sha256: str | None = None
    onnx_dir: str | None = None


def problems(car: Sidecar, env: Environment) -> list[str]:
    """Every reason this engine must not run here (empty: it may)."""
    out = []
    here = trt_api.label(env.tensorrt, env.tensorrt_version)
    if (car.tensorrt, car.tensorrt_version) != (env.tensorrt, env.tensorrt_version):
        out.append(f"built with {car.label}, but this is {here}; engines run only with the TensorRT that built them")
    cc = env.compute_capability
    if cc is not None and car.compute_capability == AHEAD_OF_TIME:
        if cc not in car.compute_targets:
            out.append(f"built ahead of time for compute capabilities {', '.join(car.compute_targets)}; this GPU "
                       f"is {cc}" + (" (TensorRT-RTX cannot target it: build with TensorRT instead)"
                                     if car.tensorrt == "tensorrt_rtx" else ""))
    elif cc is not None and cc != car.compute_capability:
        out.append(f"built for compute capability {car.compute_capability}; this GPU is {cc}")
    if car.plugins:
        if env.plugins_sha256 is None:
            out.append(f"needs the plugin library it was built with ({car.plugins['path']}); none was given")
        elif env.plugins_sha256 != car.plugins["sha256"]:
            out.append(f"built with another plugin library: {car.plugins['path']} had sha256 "
                       f"{car.plugins['sha256'][:16]}…, {env.plugins_path} has {env.plugins_sha256[:16]}…")
    if env.onnx_sha256 is not None and env.onnx_sha256 != car.onnx_sha256:
        out.append(f"built from another ONNX ({car.onnx_dir or 'unknown'}, sha256 {car.onnx_sha256[:16]}…), not "
                   f"from {env.onnx_dir} (sha256 {env.onnx_sha256[:16]}…)")
    if env.engine_sha256 != car.engine_sha256:
        out.append("the sidecar describes another engine (sha256 differs): the engine was replaced without its "
                   "sidecar")
    return out


def check(engine: Path, car: Sidecar, env: Environment):
    """Refuses, with every reason in one message, to run ``engine`` where its sidecar says it cannot run."""
    found = problems(car, env)
    if found:
        rebuild = f"ssd-deploy build {car.onnx_dir}" if car.onnx_dir else "ssd-deploy build EXPORT"
        raise UserError(f"{engine}: refusing to run this engine: " + "; ".join(found) +
                        f". Rebuild it where it will run ({rebuild}).")
