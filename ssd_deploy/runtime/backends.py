"""Stateful backends for generation and benchmarking: one interface, states kept where the backend computes.

``Backend.forward(ids, states) -> (last-position logits as float32 numpy, new states)``: prefill is one call with
the whole prompt, each decode step a call with one token. States stay backend-native between calls (torch tensors
for PyTorch and TensorRT, numpy on ONNX Runtime CPU, CUDA buffers bound through IO binding on ONNX Runtime CUDA):
there is no host round trip of the states per token. Only the last position's logits come back to the host.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..config import Mamba2Config
from ..onnx.metadata import INPUT_IDS, LOGITS, read_metadata

BACKENDS = ("torch", "ort", "trt")


class Backend(ABC):
    name: str
    config: Mamba2Config
    recipe: dict  # the export recipe the model was made with ({} for none): its shape ranges bound the calls

    @abstractmethod
    def zero_states(self, batch: int): ...

    @abstractmethod
    def forward(self, ids: np.ndarray, states) -> tuple[np.ndarray, object]: ...

    @abstractmethod
    def concat_states(self, parts: list) -> object:
        """Stacks the states of separately prefilled sequences along the batch axis (prompts of different
        lengths are prefilled one by one, then decoded together: Mamba has no attention mask to pad with)."""

    def synchronize(self):
        """Waits for queued device work (for timing)."""


def _cat_dicts(parts: list[dict], cat) -> dict:
    return {k: cat([p[k] for p in parts]) for k in parts[0]}


class TorchBackend(Backend):
    def __init__(self, ckpt_dir: Path, device: str = "cpu", dtype: str = "fp32", triton: bool = True):
        """``triton``: on CUDA, run the ops through the Triton kernels (else their PyTorch reference listings)."""
        from ..checkpoint import load_model
        from ..onnx.export import DTYPES

        self.device = torch.device(device)
        kernels = "reference"
        if self.device.type == "cuda":
            if not torch.cuda.is_available():
                raise UserError("torch backend: no CUDA device here")
            if triton:
                from ..ssd.triton import register

                reg = register()  # the ops' CUDA implementations, where Triton is available
                if not reg:
                    raise UserError(reg.reason)
                kernels = "triton"
        self.model = load_model(ckpt_dir, DTYPES[dtype]).to(self.device)
        self.config, self.recipe = self.model.cfg, {}
        self.name = f"torch-{self.device.type}" + (f"-{kernels}" if self.device.type == "cuda" else "")

    def zero_states(self, batch: int):
        return self.model.init_states(batch, self.device)

    @torch.no_grad()
    def forward(self, ids, states):
        t = torch.as_tensor(np.asarray(ids, np.int64), device=self.device)
        logits, conv, ssm = self.model(t, *states, decode=t.shape[1] == 1, last_token_only=True)
        return logits[:, -1].float().cpu().numpy(), (conv, ssm)

    def concat_states(self, parts):
        return tuple([torch.cat(layer) for layer in zip(*[p[i] for p in parts])] for i in range(2))

    def synchronize(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()


class OrtBackend(Backend):
    def __init__(self, export_dir: Path, provider: str = "cpu"):
        from ..onnx.export import validation_model
        from .ort_runner import ort_session

        self.meta = read_metadata(export_dir)
        self.config, self.recipe = self.meta.config, self.meta.recipe
        with validation_model(export_dir) as path:  # trt exports run through their standard-op validation copy
            self.session = ort_session(export_dir, provider, path)
        self.provider = provider
        self.name = f"ort-{self.meta.flavor}-{provider}"
        self.outputs = [o.name for o in self.session.get_outputs()]

    def zero_states(self, batch: int):
        shapes = {s.name: (batch, *s.shape[1:]) for s in self.meta.states}
        if self.provider == "cuda":
            return {k: torch.zeros(v, device="cuda") for k, v in shapes.items()}
        return {k: np.zeros(v, np.float32) for k, v in shapes.items()}

    def forward(self, ids, states):
        ids = np.ascontiguousarray(ids, np.int64)
        if self.provider == "cpu":
            out = dict(zip(self.outputs, self.session.run(None, {INPUT_IDS: ids, **states})))
            new = {s.name: out[s.output] for s in self.meta.states}
            return np.asarray(out[LOGITS][:, -1], np.float32), new
        return self._forward_bound(ids, states)

    def _forward_bound(self, ids, states):
        """CUDA: inputs and state outputs bound to torch CUDA buffers, so states never leave the device."""
        binding = self.session.io_binding()
        binding.bind_cpu_input(INPUT_IDS, ids)
        for name, t in states.items():
            binding.bind_input(name, "cuda", 0, np.float32, tuple(t.shape), t.data_ptr())
        new = {}
        for s in self.meta.states:
            out = torch.empty_like(states[s.name])
            binding.bind_output(s.output, "cuda", 0, np.float32, tuple(out.shape), out.data_ptr())
            new[s.name] = out
        binding.bind_output(LOGITS, "cpu")
        torch.cuda.synchronize()  # torch's writes to the inputs must land before ORT's stream reads them
        self.session.run_with_iobinding(binding)
        logits = binding.copy_outputs_to_cpu()[0]
        return np.asarray(logits[:, -1], np.float32), new

    def concat_states(self, parts):
        return _cat_dicts(parts, torch.cat if self.provider == "cuda" else np.concatenate)


class TrtBackend(Backend):
    def __init__(self, export_dir: Path, engine: Path | None = None, plugins: Path | None = None):
        from ..tensorrt.runner import trt_runner

        self.runner = trt_runner(export_dir, engine, plugins)
        self.runner.activate()
        self.meta = self.runner.metadata
        self.config, self.recipe = self.meta.config, self.meta.recipe
        self.name = f"trt-{self.meta.flavor}"

    def zero_states(self, batch: int):
        return self.runner.zero_states(batch)

    def forward(self, ids, states):
        t = torch.as_tensor(np.asarray(ids, np.int64), device="cuda")
        out = self.runner.infer_torch({INPUT_IDS: t, **states})
        return out[LOGITS][:, -1].float().cpu().numpy(), self.runner.carried(out)

    def concat_states(self, parts):
        return _cat_dicts(parts, torch.cat)

    def synchronize(self):
        torch.cuda.synchronize()


def open_backend(model: Path, backend: str, provider: str = "cpu", plugins: Path | None = None,
                 engine: Path | None = None, dtype: str = "fp32") -> Backend:
    """MODEL is a checkpoint directory for the torch backend, an export directory otherwise."""
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    model = Path(model)
    if not model.is_dir():
        raise UserError(f"{model}: not a directory")
    if backend == "torch":
        if not (model / "config.json").is_file():
            raise UserError(f"{model}: the torch backend needs a checkpoint directory (with config.json)")
        return TorchBackend(model, provider, dtype)
    if backend == "ort":
        return OrtBackend(model, provider)
    return TrtBackend(model, engine, plugins)
