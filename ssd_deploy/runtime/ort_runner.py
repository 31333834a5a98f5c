"""ONNX Runtime sessions for exported models (CPU or CUDA provider), wrapped in Polygraphy's OnnxrtRunner."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from polygraphy.backend.onnxrt import OnnxrtRunner

from ..errors import UserError
from ..interface import INPUT_IDS, companion_path, dtype_of, model_path, read_metadata

PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}
# an fp32 export means fp32 math: the CUDA provider would otherwise round MatMul inputs to TF32 (docs/verification.md's 1e-4)
PROVIDER_OPTIONS = {"CUDAExecutionProvider": {"use_tf32": "0"}}
# ONNX Runtime's CUDA graphs (docs/performance.md, "ONNX Runtime CUDA graphs"): the session captures a run's kernels
# and replays them; which captured graph a run replays is its run option GRAPH_ID (0 is the session's default
# graph, -1 a run without any)
CUDA_GRAPH_OPTIONS = {"CUDAExecutionProvider": {"enable_cuda_graph": "1"}}
GRAPH_ID = "gpu_graph_id"
NO_GRAPH = -1


def ort_session(export_dir: Path, provider: str = "cpu", model_file: Path | None = None,
                custom_ops: Path | None = None, cuda_graph: bool = False):
    """``custom_ops``: a custom-op library to register (``SessionOptions.register_custom_ops_library``), such as
    plugins/ort_custom_ops, which runs a `trt` export's plugin nodes on the CUDA provider (docs/flavors.md).
    ``cuda_graph``: a session that captures CUDA graphs (cuda provider only): ONNX Runtime refuses to create it
    where a node is not on the CUDA provider or the graph has control flow, and every run of it needs
    ``run_options``."""
    import onnxruntime as ort

    if provider not in PROVIDERS:
        raise UserError(f"unknown provider {provider!r}; choose one of {', '.join(PROVIDERS)}")
    if cuda_graph and provider != "cuda":
        raise UserError(f"CUDA graphs need the cuda provider (got {provider})")
    if PROVIDERS[provider][0] not in ort.get_available_providers():
        raise UserError(f"ONNX Runtime here has no {PROVIDERS[provider][0]} (install onnxruntime-gpu for cuda)")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # external weights are read from the export's own directory, also for a model file elsewhere (a trt validation
    # copy in a temporary directory, runtime/validation_copy.py)
    opts.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                  str(model_path(export_dir).parent.resolve()))
    path = model_file or model_path(export_dir)
    try:
        if custom_ops is not None:
            opts.register_custom_ops_library(str(custom_ops))
        options = [{**PROVIDER_OPTIONS.get(p, {}), **(CUDA_GRAPH_OPTIONS.get(p, {}) if cuda_graph else {})}
                   for p in PROVIDERS[provider]]
        return ort.InferenceSession(str(path), opts, providers=PROVIDERS[provider], provider_options=options)
    except Exception as e:  # ORT's pybind errors share no public base type
        hint = " (bf16 graphs need TensorRT or the CUDA provider)" if "bfloat16" in str(e) or "MatMul" in str(e) else ""
        if cuda_graph:
            hint += (" (CUDA graphs need every node on the CUDA provider and no control flow: a --graph decode "
                     "export)")
        raise UserError(f"ONNX Runtime ({provider}) cannot load {path}: {e}{hint}") from None


def run_options(graph_id: int):
    """Run options of a CUDA-graph session's run: replay (capture first if new) the graph ``graph_id`` (>= 1), or
    ``NO_GRAPH``: run the nodes one by one."""
    import onnxruntime as ort

    opts = ort.RunOptions()
    opts.add_run_config_entry(GRAPH_ID, str(graph_id))
    return opts


class CompanionRunner(OnnxrtRunner):
    """An export with a decode companion (docs/graph-interface.md): one-token calls on the companion's session, the
    others on the unified graph's, as OrtBackend runs them (so that validate proves both graphs)."""

    def __init__(self, sess, decode_sess, name=None):
        super().__init__(sess, name=name)
        self._decode_sess = decode_sess

    def activate_impl(self):
        self.unified, self.decode = self._sess(), self._decode_sess()
        self.sess = self.unified

    def infer_impl(self, feed_dict):
        self.sess = self.decode if np.shape(feed_dict[INPUT_IDS])[1] == 1 else self.unified
        return OnnxrtRunner.infer_impl.__wrapped__(self, feed_dict)  # (undecorated: called from here on purpose)

    def deactivate_impl(self):
        del self.sess, self.unified, self.decode


def ort_runner(export_dir: Path, provider: str = "cpu", model_file: Path | None = None) -> OnnxrtRunner:
    """The export's graph (or ``model_file``, e.g. a trt validation copy) on ONNX Runtime; with its decode companion
    for one-token calls where it has one."""
    meta = read_metadata(export_dir)
    name = f"onnxruntime-{provider}"
    if meta.companion == "decode" and model_file in (None, model_path(export_dir)):
        return CompanionRunner(lambda: ort_session(export_dir, provider), lambda: ort_session(
            export_dir, provider, companion_path(export_dir, meta)), name=f"{name}-companion")
    return OnnxrtRunner(lambda: ort_session(export_dir, provider, model_file), name=name)


def bind_tensor(bind_fn, name: str, t):
    """Binds a torch tensor's memory (activations, states, or int64 token ids) to a session input or output
    (``IOBinding.bind_input``/``bind_output``): IO binding takes ONNX element types, since numpy has no bfloat16."""
    import torch

    element = onnx.TensorProto.INT64 if t.dtype == torch.int64 else dtype_of(t.dtype).onnx
    bind_fn(name, t.device.type, t.device.index or 0, element, tuple(t.shape), t.data_ptr())
