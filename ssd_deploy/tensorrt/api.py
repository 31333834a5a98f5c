"""The one place that knows how TensorRT 10, TensorRT 11 and TensorRT-RTX differ; everything else calls ``TrtApi``.

Which package: ``tensorrt`` when importable, else ``tensorrt_rtx``; ``SSD_DEPLOY_TENSORRT=tensorrt|tensorrt_rtx``
forces one. Differences handled here:
- strong typing: TensorRT 10 needs ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` (the graph's dtypes decide the
  precision, as our exports intend); TensorRT 11 and TensorRT-RTX networks are always strongly typed.
- plugins: TensorRT-RTX has no plugin support, and parsing a plugin node may abort the process, so a graph that needs
  plugins is refused before the parser sees it.
- timing cache: TensorRT-RTX's has no effect on the engine and makes the ahead-of-time build look for a GPU.
- compute capability: TensorRT builds for the GPU it runs on; TensorRT-RTX builds ahead of time (no GPU needed) for
  a set of targets.
- ``ICudaEngine.device_memory_size`` (TensorRT 10) became ``device_memory_size_v2`` (10.1+, the only one in 11).
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from ..errors import UserError

PACKAGES = ("tensorrt", "tensorrt_rtx")
ENV_VAR = "SSD_DEPLOY_TENSORRT"
# TensorRT-RTX builds for these by default; Turing (7.5) only when asked for explicitly (TensorRT-RTX docs,
# "CPU-Only AOT and TensorRT-RTX Engines"), and other capabilities (9.0, 10.0) are not supported at all.
RTX_NOT_DEFAULT = ("SM75",)
# TensorRT's plugin registry is one per process (builder's and runtime's alike), and loading a library whose creators
# are registered already fails: each library is loaded once, and its handle kept for the life of the process.
_LOADED_PLUGINS: dict[str, Any] = {}


def label(package: str, version: str) -> str:
    """How a TensorRT is named to users: "TensorRT 10.13.0.35", "TensorRT-RTX 1.7.1.116"."""
    return f"{'TensorRT-RTX' if package == 'tensorrt_rtx' else 'TensorRT'} {version}"


@dataclass(frozen=True)
class TrtApi:
    module: ModuleType
    package: str  # "tensorrt" | "tensorrt_rtx"

    @property
    def version(self) -> str:
        return self.module.__version__

    @property
    def is_rtx(self) -> bool:
        return self.package == "tensorrt_rtx"

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    @property
    def display_name(self) -> str:
        return label(self.package, self.version)

    @property
    def builds_ahead_of_time(self) -> bool:
        """True where engines are built without a GPU for a set of compute capabilities (TensorRT-RTX)."""
        return self.is_rtx

    @property
    def supports_plugins(self) -> bool:
        return not self.is_rtx

    @property
    def supports_timing_cache(self) -> bool:
        return not self.is_rtx

    # --- building ---------------------------------------------------------------------------------------------

    def logger(self, sink) -> Any:
        """A TensorRT logger passing (severity name, message) to ``sink``; the caller decides what to show."""
        base = self.module.ILogger

        class _Logger(base):
            def __init__(self):
                base.__init__(self)

            def log(self, severity, msg):
                sink(severity.name, msg)

        return _Logger()

    def network_flags(self) -> int:
        if self.is_rtx or self.major >= 11:
            return 0
        return 1 << int(self.module.NetworkDefinitionCreationFlag.STRONGLY_TYPED)

    def create_network(self, builder) -> Any:
        return builder.create_network(self.network_flags())

    def check_plugins(self, what: str):
        """Refuses, before any parsing, a graph that needs the plugin library where plugins cannot be loaded."""
        if not self.supports_plugins:
            raise UserError(
                f"{what} needs TensorRT plugins, which {self.display_name} does not support; install TensorRT "
                f"10 or 11 (pip install tensorrt) or export the portable flavor")

    def load_plugins(self, registry_owner, path):
        """Loads a plugin library into the (process-wide) registry, through a Builder or Runtime."""
        self.check_plugins(f"plugin library {path}")
        key = os.path.realpath(path)
        if key in _LOADED_PLUGINS:
            return
        handle = registry_owner.get_plugin_registry().load_library(key)
        if handle is None:
            raise UserError(f"{path}: {self.display_name} could not load this plugin library (built against another "
                            f"TensorRT major, or another library with the same plugins loaded already?)")
        _LOADED_PLUGINS[key] = handle

    def set_workspace(self, config, nbytes: int):
        config.set_memory_pool_limit(self.module.MemoryPoolType.WORKSPACE, nbytes)

    def progress_monitor_base(self) -> type | None:
        return getattr(self.module, "IProgressMonitor", None)

    def compute_targets(self, config) -> list[str]:
        """Compute capabilities an ahead-of-time build targets ("8.6", ...); empty for a build for this GPU."""
        if not self.builds_ahead_of_time:
            return []
        cc = self.module.ComputeCapability
        n = config.num_compute_capabilities
        chosen = [config.get_compute_capability(i) for i in range(n)] if n else \
            [v for k, v in cc.__members__.items() if k.startswith("SM") and k not in RTX_NOT_DEFAULT]
        return sorted((_cc_name(c) for c in chosen), key=lambda s: tuple(map(int, s.split("."))))

    # --- running ----------------------------------------------------------------------------------------------

    def device_memory_size(self, engine) -> int:
        return engine.device_memory_size_v2 if hasattr(engine, "device_memory_size_v2") else engine.device_memory_size

    def engine_invalidity(self, runtime, data) -> str | None:
        """Why this runtime cannot run a serialized engine, where TensorRT can say without loading it (RTX 1.1+)."""
        if not hasattr(runtime, "get_engine_validity"):
            return None
        validity, diagnostics = runtime.get_engine_validity(data)
        if validity.name == "VALID":
            return None
        flags = self.module.EngineInvalidityDiagnostics.__members__
        reasons = [k.lower().replace("_", " ") for k, v in flags.items() if int(diagnostics) & int(v)]
        return f"{validity.name.lower()}: {', '.join(reasons) or 'no reason given'}"


def _cc_name(cc) -> str:
    digits = cc.name[2:]  # SM86 -> 8.6, SM120 -> 12.0
    return f"{digits[:-1]}.{digits[-1]}"


def _import(package: str) -> ModuleType | None:
    try:
        return importlib.import_module(package)
    except ImportError:
        return None


def load(package: str | None = None) -> TrtApi:
    """The TensorRT API to use: ``package`` if given, else $SSD_DEPLOY_TENSORRT, else the first importable one."""
    wanted = package or os.environ.get(ENV_VAR) or None
    if wanted is not None and wanted not in PACKAGES:
        raise UserError(f"{ENV_VAR}={wanted!r}: choose one of {', '.join(PACKAGES)}")
    return _load(wanted)


@functools.lru_cache(maxsize=None)
def _load(wanted: str | None) -> TrtApi:
    for name in [wanted] if wanted else PACKAGES:
        module = _import(name)
        if module is not None:
            return TrtApi(module, name)
    which = wanted or " or ".join(PACKAGES)
    raise UserError(f"no TensorRT for Python: cannot import {which} (python {sys.version.split()[0]}); install "
                    f"TensorRT (pip install tensorrt) for a GPU here, or TensorRT-RTX (pip install tensorrt-rtx), "
                    f"which builds engines without a GPU")
