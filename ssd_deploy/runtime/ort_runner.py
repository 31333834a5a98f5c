"""ONNX Runtime sessions for exported models (CPU or CUDA provider), wrapped in Polygraphy's OnnxrtRunner."""

from __future__ import annotations

from pathlib import Path

from polygraphy.backend.onnxrt import OnnxrtRunner

from ..errors import UserError
from ..interface import model_path

PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}
# an fp32 export means fp32 math: the CUDA provider would otherwise round MatMul inputs to TF32 (docs/verification.md's 1e-4)
PROVIDER_OPTIONS = {"CUDAExecutionProvider": {"use_tf32": "0"}}


def ort_session(export_dir: Path, provider: str = "cpu", model_file: Path | None = None,
                custom_ops: Path | None = None):
    """``custom_ops``: a custom-op library to register (``SessionOptions.register_custom_ops_library``), such as
    plugins/ort_custom_ops, which runs a `trt` export's plugin nodes on the CUDA provider (docs/flavors.md)."""
    import onnxruntime as ort

    if provider not in PROVIDERS:
        raise UserError(f"unknown provider {provider!r}; choose one of {', '.join(PROVIDERS)}")
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
        return ort.InferenceSession(str(path), opts, providers=PROVIDERS[provider],
                                    provider_options=[PROVIDER_OPTIONS.get(p, {}) for p in PROVIDERS[provider]])
    except Exception as e:  # ORT's pybind errors share no public base type
        hint = " (bf16 graphs need TensorRT or the CUDA provider)" if "bfloat16" in str(e) or "MatMul" in str(e) else ""
        raise UserError(f"ONNX Runtime ({provider}) cannot load {path}: {e}{hint}") from None


def ort_runner(export_dir: Path, provider: str = "cpu", model_file: Path | None = None) -> OnnxrtRunner:
    return OnnxrtRunner(lambda: ort_session(export_dir, provider, model_file), name=f"onnxruntime-{provider}")
