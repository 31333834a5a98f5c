"""The runtime layer's names, without importing torch (the CLI builds its choices from them at start-up):
the backends ``open_backend`` opens, the providers, and the PyTorch variants ``bench`` times."""

from __future__ import annotations

BACKENDS = ("torch", "ort", "trt")  # runtime/backends.py open_backend: torch on a checkpoint, the others on an export
RUN_BACKENDS = (*BACKENDS, "triton")  # run: also a Triton server's model (serving/client.py)
PROVIDERS = ("cpu", "cuda")
# bench names of the PyTorch model → (Triton kernels, CUDA graphs); both need CUDA
TORCH_VARIANTS = {"torch": (False, False), "torch-triton": (True, False), "torch-graphs": (False, True),
                  "torch-triton-graphs": (True, True)}
EXPORTED_HERE = ("portable", "ort")  # bench names that export the checkpoint for the run and time it on ONNX Runtime
