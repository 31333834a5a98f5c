"""Stateful backends for generation and benchmarking: one interface, states kept where the backend computes.

``Backend.forward(ids, states) -> (last-position logits as float32 numpy, new states)``: prefill is one call with
the whole prompt, each decode step a call with one token. States stay backend-native between calls (torch tensors
for PyTorch and TensorRT, numpy on ONNX Runtime CPU, CUDA buffers bound through IO binding on ONNX Runtime CUDA):
there is no host round trip of the states per token. Only the last position's logits come back to the host.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..config import Mamba2Config
from ..interface import DTYPES, INPUT_IDS, LOGITS, dtype_of, read_metadata
from .feeds import carried_states, zero_states

BACKENDS = ("torch", "ort", "trt")


class Backend(ABC):
    name: str
    config: Mamba2Config
    recipe: dict  # the export recipe the model was made with ({} for none): its shape ranges bound the calls
    device: str = "cpu"  # where states live between calls
    one_token_per_call: bool = False  # a decode-only export (--graph decode): prompts are fed token by token

    @abstractmethod
    def zero_states(self, batch: int): ...

    @abstractmethod
    def forward(self, ids: np.ndarray, states) -> tuple[np.ndarray, object]: ...

    @abstractmethod
    def concat_states(self, parts: list) -> object:
        """Stacks the states of separately prefilled sequences along the batch axis (prompts of different
        lengths are prefilled one by one, then decoded together: Mamba has no attention mask to pad with)."""

    def synchronize(self):
        """Waits for queued device work (for timing, and before another stream reads torch's writes)."""
        if self.device == "cuda":
            torch.cuda.synchronize()


def _cat_dicts(parts: list[dict], cat) -> dict:
    return {k: cat([p[k] for p in parts]) for k in parts[0]}


class TorchBackend(Backend):
    def __init__(self, ckpt_dir: Path, device: str = "cpu", dtype: str = "fp32", triton: bool = True,
                 cuda_graphs: bool = False):
        """On CUDA: ``triton`` runs the ops through our Triton kernels (else their PyTorch listings, as on the CPU);
        ``cuda_graphs`` replays each decode step from a CUDA graph captured per batch size (same kernels, one
        launch)."""
        from ..checkpoint import load_model

        self.device = torch.device(device).type
        self.triton = triton and self.device == "cuda"
        if self.device == "cuda" and not torch.cuda.is_available():
            raise UserError("torch backend: no CUDA device here")
        if self.triton:
            from ..ssd.triton import register

            reg = register()  # the ops' CUDA implementations, where Triton is available
            if not reg:
                raise UserError(reg.reason)
        self.model = load_model(ckpt_dir, DTYPES[dtype].torch).to(self.device)
        self.config, self.recipe = self.model.cfg, {}
        self.graphs = None
        if cuda_graphs and self.device == "cuda":
            from .cuda_graphs import DecodeGraphs

            self.graphs = DecodeGraphs(partial(self.model, decode=True, last_token_only=True))
        # the reference listings on CUDA keep the plain name: they are PyTorch eager, the anchor
        self.name = f"torch-{self.device}" + ("-triton" if self.triton else "") + ("-graphs" if self.graphs else "")

    def zero_states(self, batch: int):
        return self.model.init_states(batch, self.device)

    @torch.no_grad()
    def forward(self, ids, states):
        from ..ssd import triton

        t = torch.as_tensor(np.asarray(ids, np.int64), device=self.device)
        decode = t.shape[1] == 1
        with nullcontext() if self.triton else triton.disabled(self.device):
            step = self.graphs if decode and self.graphs else partial(self.model, decode=decode, last_token_only=True)
            logits, conv, ssm = step(t, *states)
        return logits[:, -1].float().cpu().numpy(), (conv, ssm)

    def concat_states(self, parts):
        return tuple([torch.cat(layer) for layer in zip(*[p[i] for p in parts])] for i in range(2))


class OrtBackend(Backend):
    def __init__(self, export_dir: Path, provider: str = "cpu", io_binding: bool | None = None):
        """``io_binding`` (default: on for CUDA): states and logits live in torch tensors on the provider's device,
        bound to the session's inputs and outputs, instead of numpy arrays fed and fetched by ``run``."""
        from .ort_runner import ort_session
        from .validation_copy import validation_model

        self.meta = read_metadata(export_dir)
        self.config, self.recipe = self.meta.config, self.meta.recipe
        self.one_token_per_call = self.meta.graph == "decode"
        with validation_model(export_dir) as path:  # trt exports run through their standard-op validation copy
            self.session = ort_session(export_dir, provider, path)
        self.provider = provider
        self.device = "cuda" if provider == "cuda" else "cpu"
        self.io_binding = provider == "cuda" if io_binding is None else io_binding
        chunked = "-chunked" if self.meta.prefill == "chunked" else ""  # the ort flavor's prefill choice
        self.name = f"ort-{self.meta.flavor}{chunked}-{provider}"
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.vocab = self.session.get_outputs()[self.outputs.index(LOGITS)].shape[-1]
        self.logits_dtype = DTYPES[self.meta.dtype].torch

    def zero_states(self, batch: int):
        host = zero_states(self.meta, batch)
        return {k: torch.from_numpy(v).to(self.device) for k, v in host.items()} if self.io_binding else host

    def forward(self, ids, states):
        ids = np.ascontiguousarray(ids, np.int64)
        if not self.io_binding:
            out = dict(zip(self.outputs, self.session.run(None, {INPUT_IDS: ids, **states})))
            return np.asarray(out[LOGITS][:, -1], np.float32), carried_states(self.meta, out)
        return self._forward_bound(ids, states)

    def _forward_bound(self, ids, states):
        """States and logits bound to torch buffers on the device: on CUDA the states never leave it, and bf16
        logits (which numpy cannot hold) come back through torch."""
        binding = self.session.io_binding()
        binding.bind_cpu_input(INPUT_IDS, ids)

        def bind(bind_fn, name, t):  # IO binding takes ONNX element types: numpy has no bfloat16
            bind_fn(name, self.device, 0, dtype_of(t.dtype).onnx, tuple(t.shape), t.data_ptr())

        for name, t in states.items():
            bind(binding.bind_input, name, t)
        new = {s.name: torch.empty_like(states[s.name]) for s in self.meta.states}
        for s in self.meta.states:
            bind(binding.bind_output, s.output, new[s.name])
        positions = 1 if self.meta.logits == "last" else ids.shape[1]
        logits = torch.empty((ids.shape[0], positions, self.vocab), dtype=self.logits_dtype, device=self.device)
        bind(binding.bind_output, LOGITS, logits)
        self.synchronize()  # torch's writes to the inputs must land before ORT's stream reads them
        self.session.run_with_iobinding(binding)  # returns once ORT's stream is done (ORT's default)
        return logits[:, -1].float().cpu().numpy(), new

    def concat_states(self, parts):
        return _cat_dicts(parts, torch.cat if self.io_binding else np.concatenate)


class TrtBackend(Backend):
    device = "cuda"

    def __init__(self, export_dir: Path, engine: Path | None = None, plugins: Path | None = None):
        from ..tensorrt.runner import trt_runner

        self.runner = trt_runner(export_dir, engine, plugins)
        self.runner.activate()
        self.meta = self.runner.metadata
        self.config, self.recipe = self.meta.config, self.meta.recipe
        self.one_token_per_call = self.meta.graph == "decode"
        self.name = f"trt-{self.meta.flavor}"

    def zero_states(self, batch: int):
        return self.runner.zero_states(batch)

    def forward(self, ids, states):
        t = torch.as_tensor(np.asarray(ids, np.int64), device=self.device)
        out = self.runner.infer_torch({INPUT_IDS: t, **states})
        return out[LOGITS][:, -1].float().cpu().numpy(), self.runner.carried(out)

    def concat_states(self, parts):
        return _cat_dicts(parts, torch.cat)


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
        return TorchBackend(model, provider, dtype, cuda_graphs=True)
    if backend == "ort":
        return OrtBackend(model, provider)
    return TrtBackend(model, engine, plugins)
