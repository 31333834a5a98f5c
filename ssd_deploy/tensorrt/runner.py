"""A TensorRT engine built by ``ssd-deploy build`` as a Polygraphy runner over the graph interface (docs/graph-interface.md).

Named-tensor execution (``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``) on torch's current CUDA
stream, with torch CUDA tensors as the memory, so nothing beyond torch is needed (no pycuda, no cuda-python). The
engine's sidecar is checked before deserializing: a mismatched engine is refused with the reason. The optimization
profile follows the call: the decode profile for one token, else the first whose ranges hold (batch, seq).

Two ways in: ``infer(feed)`` (Polygraphy: numpy in, numpy out) for validation, and ``infer_torch`` (device tensors
in and out, no copies, no synchronisation) so that generation keeps the states on the GPU between decode steps:
``outputs = runner.infer_torch({"input_ids": ids, **states}); states = runner.carried(outputs)``.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from polygraphy.backend.base import BaseRunner

from ..errors import UserError
from ..interface import DTYPES, INPUT_IDS
from . import api as trt_api
from . import sidecar as sc
from .profiles import Profile, select_profile

NEEDS = "needs TensorRT and a CUDA GPU"  # also the skip reason of the GPU tests
# engine tensor types (TensorRT DataType names) → torch dtype names: the float vocabulary, and the integer types
TORCH_DTYPES = {**{d.trt: d.torch_name for d in DTYPES.values()}, "INT32": "int32", "INT64": "int64", "BOOL": "bool",
                "INT8": "int8", "UINT8": "uint8"}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple  # -1 where dynamic
    dtype: str  # torch dtype name
    is_input: bool

    def dims(self) -> tuple:
        """The shape with dynamic axes named, as Polygraphy's input metadata wants it."""
        names = ("batch", "seq")
        return tuple(d if d >= 0 else names[i] if i < 2 else f"dim{i}" for i, d in enumerate(self.shape))


def engine_specs(engine) -> list[TensorSpec]:
    specs = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        dtype = engine.get_tensor_dtype(name).name
        if dtype not in TORCH_DTYPES:
            raise UserError(f"engine tensor {name} has data type {dtype}, which ssd-deploy does not feed")
        specs.append(TensorSpec(name, tuple(engine.get_tensor_shape(name)), TORCH_DTYPES[dtype],
                                engine.get_tensor_mode(name).name == "INPUT"))
    return specs


def check_feed(inputs: list[TensorSpec], feed: dict[str, tuple[tuple, str]]) -> tuple[int, int]:
    """Checks a call's (shape, dtype name) per input against the engine's inputs: every input present, no unknown
    names, the right dtype, static axes equal, one batch size. Returns (batch, seq) for choosing the profile."""
    wanted = {s.name: s for s in inputs}
    problems = [f"missing input {n}" for n in wanted if n not in feed]
    problems += [f"unknown input {n} (the engine takes {', '.join(wanted)})" for n in feed if n not in wanted]
    batches = set()
    for name, (shape, dtype) in feed.items():
        spec = wanted.get(name)
        if spec is None:
            continue
        if dtype != spec.dtype:
            problems.append(f"{name}: dtype {dtype}, the engine wants {spec.dtype}")
        if len(shape) != len(spec.shape) or any(0 <= d != s for d, s in zip(spec.shape, shape)):
            problems.append(f"{name}: shape {tuple(shape)}, the engine wants {spec.dims()}")
        elif shape:
            batches.add(shape[0])
    if len(batches) > 1:
        problems.append(f"inputs disagree on the batch size ({sorted(batches)})")
    if problems:
        raise UserError("TensorRT runner: " + "; ".join(problems))
    ids = feed[INPUT_IDS][0]
    return ids[0], ids[1]


class TrtRunner(BaseRunner):
    def __init__(self, engine: Path, export_dir: Path | None = None, plugins: Path | None = None,
                 name: str = "tensorrt"):
        """``export_dir``: refuse the engine unless it was built from this export's ONNX. ``plugins``: the plugin
        library (default: the one recorded at build time, for trt-flavor engines)."""
        super().__init__(name=name, prefix="trt-runner")
        self.engine_path = Path(engine)
        self.export_dir = Path(export_dir) if export_dir is not None else None
        self.plugins = Path(plugins) if plugins is not None else None
        self.record: sc.Sidecar | None = None

    # --- lifetime ---------------------------------------------------------------------------------------------

    def _environment(self, api: trt_api.TrtApi, data: bytes, car: sc.Sidecar) -> sc.Environment:
        plugins = self.plugins or (Path(car.plugins["path"]) if car.plugins else None)
        if plugins is not None and not plugins.is_file():
            raise UserError(f"plugin library {plugins}: no such file (pass another with --plugins)")
        return sc.Environment(
            tensorrt=api.package, tensorrt_version=api.version, compute_capability=sc.gpu_compute_capability(),
            engine_sha256=sc.sha256_bytes(data),
            plugins_sha256=sc.sha256_files([plugins]) if plugins else None,
            plugins_path=str(plugins) if plugins else None,
            onnx_sha256=sc.sha256_files(sc.onnx_files(self.export_dir)) if self.export_dir else None,
            onnx_dir=str(self.export_dir))

    def activate_impl(self):
        if not torch.cuda.is_available():
            raise UserError(f"{self.engine_path}: running a TensorRT engine {NEEDS}; torch {torch.__version__} "
                            f"sees no CUDA device")
        car = sc.load(self.engine_path)
        try:
            api = trt_api.load(car.tensorrt)
        except UserError as e:
            raise UserError(f"{self.engine_path}: built with {car.label}, which is not importable here ({e})") \
                from None
        data = self.engine_path.read_bytes()
        env = self._environment(api, data, car)
        sc.check(self.engine_path, car, env)

        self.log: list[str] = []  # TensorRT's errors, quoted when a call fails
        self.logger = api.logger(self._log)
        self.runtime = api.module.Runtime(self.logger)
        if car.plugins:
            api.load_plugins(self.runtime, env.plugins_path)
        why = api.engine_invalidity(self.runtime, data)
        if why is not None:
            raise UserError(f"{self.engine_path}: {api.display_name} cannot run this engine here ({why})")
        self.engine = self.runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise UserError(f"{self.engine_path}: {api.display_name} could not deserialize the engine: "
                            + " | ".join(self.log[-5:]))
        self._check_profiles(car.profiles)
        self.context = self.engine.create_execution_context()
        self.specs = engine_specs(self.engine)
        self.record = car
        self.profiles: list[Profile] = car.profiles
        self.active_profile: int | None = None
        self.device_memory = api.device_memory_size(self.engine)  # bytes of activations the context holds

    def _log(self, severity: str, msg: str):
        if severity in ("ERROR", "INTERNAL_ERROR"):
            self.log.append(msg)

    def _check_profiles(self, profiles: list[Profile]):
        """The sidecar's profiles are the engine's, in order (it was written from the same build)."""
        n = self.engine.num_optimization_profiles
        got = [tuple(tuple(s) for s in self.engine.get_tensor_profile_shape(INPUT_IDS, i)) for i in range(n)]
        want = [tuple((b, s) for b, s in zip(p.batch.to_list(), p.seq.to_list())) for p in profiles]
        if got != want:
            raise UserError(f"{self.engine_path}: the engine's profiles {got} are not its sidecar's {want}")

    def deactivate_impl(self):
        # TensorRT objects must go in this order: context, engine, runtime
        for attr in ("context", "engine", "runtime"):
            if hasattr(self, attr):
                delattr(self, attr)
        self.active_profile = None

    # --- metadata ---------------------------------------------------------------------------------------------

    def get_input_metadata_impl(self):
        from polygraphy.common import TensorMetadata

        meta = TensorMetadata()
        for s in self.specs:
            if s.is_input:
                meta.add(s.name, getattr(torch, s.dtype), s.dims())
        return meta

    @property
    def metadata(self):
        """The export's metadata (config, states), as recorded in the sidecar."""
        return self.record.metadata

    # --- inference --------------------------------------------------------------------------------------------

    def infer_torch(self, feeds: dict[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
        """Device tensors in, device tensors out, enqueued on torch's current stream (synchronise before reading
        on the host). Outputs are fresh tensors, so they can be fed straight back as the next call's states."""
        inputs = [s for s in self.specs if s.is_input]
        batch, seq = check_feed(inputs, {k: (tuple(v.shape), str(v.dtype).removeprefix("torch."))
                                         for k, v in feeds.items()})
        not_cuda = [k for k, v in feeds.items() if not v.is_cuda]
        if not_cuda:
            raise UserError(f"TensorRT runner: inputs not on the GPU: {', '.join(not_cuda)}")
        stream = torch.cuda.current_stream()
        index = select_profile(self.profiles, batch, seq)
        if index != self.active_profile:
            if not self.context.set_optimization_profile_async(index, stream.cuda_stream):
                raise RuntimeError(f"{self.engine_path}: cannot switch to profile {index}: " + " | ".join(self.log[-5:]))
            self.active_profile = index
        keep = []  # contiguous copies must live until the work is enqueued (the allocator orders reuse on stream)
        for s in inputs:
            t = feeds[s.name].contiguous()
            keep.append(t)
            if not self.context.set_input_shape(s.name, tuple(t.shape)):
                raise UserError(f"TensorRT runner: the engine refused shape {tuple(t.shape)} for {s.name}")
            self.context.set_tensor_address(s.name, t.data_ptr())
        outputs = OrderedDict()
        for s in self.specs:
            if s.is_input:
                continue
            shape = tuple(self.context.get_tensor_shape(s.name))
            out = torch.empty(shape, dtype=getattr(torch, s.dtype), device=keep[0].device)
            self.context.set_tensor_address(s.name, out.data_ptr())
            outputs[s.name] = out
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"{self.engine_path}: execute_async_v3 failed: " +
                               " | ".join(self.log[-5:]))
        return outputs

    def infer_impl(self, feed_dict):
        device = torch.device("cuda", torch.cuda.current_device())
        feeds = {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in feed_dict.items()}
        stream = torch.cuda.current_stream()
        stream.synchronize()  # the timing covers the engine, not the copies in
        start = time.perf_counter()
        outputs = self.infer_torch(feeds)
        stream.synchronize()
        self.inference_time = time.perf_counter() - start
        # numpy has no bfloat16; comparisons are in float64 anyway
        return OrderedDict((k, (v.float() if v.dtype == torch.bfloat16 else v).cpu().numpy())
                           for k, v in outputs.items())

    def zero_states(self, batch: int) -> dict[str, torch.Tensor]:
        """Initial states on the GPU, in the engine's dtypes."""
        specs = {s.name: s for s in self.specs}
        return {st.name: torch.zeros((batch, *specs[st.name].shape[1:]), dtype=getattr(torch, specs[st.name].dtype),
                                     device="cuda") for st in self.metadata.states}

    def carried(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The states to feed the next call (each state output under its input name), still on the GPU."""
        return {st.name: outputs[st.output] for st in self.metadata.states}


def trt_runner(export_dir: Path, engine: Path | None = None, plugins: Path | None = None) -> TrtRunner:
    """The runner for ``validate --backend trt``: EXPORT_DIR's engine (or ``engine``), which must come from
    EXPORT_DIR's ONNX."""
    from .build import ENGINE_FILE

    engine = Path(engine) if engine is not None else Path(export_dir) / ENGINE_FILE
    if not engine.is_file():
        raise UserError(f"{engine}: no engine; build one with: ssd-deploy build {export_dir}")
    return TrtRunner(engine, export_dir=export_dir, plugins=plugins)
