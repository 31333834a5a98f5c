"""Stateful backends for generation and benchmarking: one interface, states kept where the backend computes.

``Backend.forward(ids, states) -> (last-position logits as float32 numpy, new states)``: prefill is one call with
the whole prompt, each decode step a call with one token. States stay backend-native between calls (torch tensors
for PyTorch and TensorRT, numpy on ONNX Runtime CPU, CUDA buffers bound through IO binding on ONNX Runtime CUDA):
there is no host round trip of the states per token. Only the last position's logits come back to the host.

States handed to ``forward`` are never written, and what it returns is the caller's, except on a backend with
``decode_reuses_states`` (the torch backend's CUDA-graph decode, runtime/cuda_graphs.py; ONNX Runtime's,
runtime/ort_graphs.py): there the states a one-token call returns stay valid only until the next one-token call
with the same batch size, which rewrites them whatever states it is given (no copy per step). A caller that keeps
such states past that call copies them first.
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
from ..interface import CU_SEQLENS, DTYPES, INPUT_IDS, LOGITS, companion_path, read_metadata, verify_weights
from .feeds import carried_states, state_specs, zero_states
from .kinds import BACKENDS



class Backend(ABC):
    name: str
    config: Mamba2Config
    recipe: dict  # the export recipe the model was made with ({} for none): its shape ranges bound the calls
    dtype: str  # of weights and activations (the dtype vocabulary's name)
    device: str = "cpu"  # where states live between calls
    one_token_per_call: bool = False  # a decode-only export (--graph decode): prompts are fed token by token
    packed: bool = False  # prefills prompts of different lengths in one call (forward_packed)
    decode_reuses_states: bool = False  # one-token calls return states that the next of that batch size rewrites

    @abstractmethod
    def zero_states(self, batch: int): ...

    @abstractmethod
    def forward(self, ids: np.ndarray, states) -> tuple[np.ndarray, object]: ...

    def forward_packed(self, prompts: list[list[int]], states) -> tuple[np.ndarray, object]:
        """The n prompts end to end in one call from their states [n, ...] (docs/op-contracts.md, "Packed
        sequences"): each prompt's last-token logits [n, V] and the new states [n, ...]. Only where ``packed``."""
        raise NotImplementedError(f"{self.name} has no packed prefill")

    @abstractmethod
    def concat_states(self, parts: list) -> object:
        """Stacks the states of separately prefilled sequences along the batch axis (prompts of different
        lengths are prefilled one by one, then decoded together: Mamba has no attention mask to pad with)."""

    def synchronize(self):
        """Waits for queued device work (for timing, and before another stream reads torch's writes)."""
        if self.device == "cuda":
            torch.cuda.synchronize()


def pack(prompts: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """The packed form of n prompts: input_ids [1, T] and cu_seqlens [n+1], both int64."""
    cu = np.zeros(len(prompts) + 1, np.int64)
    cu[1:] = np.cumsum([len(p) for p in prompts])
    return np.concatenate([np.asarray(p, np.int64) for p in prompts])[None], cu


def _cat_dicts(parts: list[dict], cat) -> dict:
    return {k: cat([p[k] for p in parts]) for k in parts[0]}


class TorchBackend(Backend):
    def __init__(self, ckpt_dir: Path, device: str = "cpu", dtype: str = "fp32", triton: bool = True,
                 cuda_graphs: bool = False):
        """On CUDA: ``triton`` runs the ops through our Triton kernels (else their PyTorch listings, as on the CPU);
        ``cuda_graphs`` replays each decode step from a CUDA graph captured per batch size (same kernels, one
        launch), the states updated in place in the graph's own buffers (``decode_reuses_states``)."""
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
        self.config, self.recipe, self.dtype = self.model.cfg, {}, dtype
        self.graphs = None
        if cuda_graphs and self.device == "cuda":
            from .cuda_graphs import DecodeGraphs

            self.graphs = DecodeGraphs(partial(self.model, decode=True, last_token_only=True, in_place=True))
            self.decode_reuses_states = True
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

    packed = True  # the model takes cu_seqlens

    @torch.no_grad()
    def forward_packed(self, prompts, states):
        from ..ssd import triton

        ids, cu = (torch.as_tensor(a, device=self.device) for a in pack(prompts))
        with nullcontext() if self.triton else triton.disabled(self.device):
            logits, conv, ssm = self.model(ids, *states, last_token_only=True, cu_seqlens=cu)
        return logits[:, -1].float().cpu().numpy(), (conv, ssm)

    def concat_states(self, parts):
        return tuple([torch.cat(layer) for layer in zip(*[p[i] for p in parts])] for i in range(2))


class OrtBackend(Backend):
    def __init__(self, export_dir: Path, provider: str = "cpu", io_binding: bool | None = None,
                 custom_ops: Path | None = None, cuda_graph: bool = False):
        """``io_binding`` (default: on for CUDA): states and logits live in torch tensors on the provider's device,
        bound to the session's inputs and outputs, instead of numpy arrays fed and fetched by ``run``.
        ``custom_ops``: for a `trt` export on the CUDA provider, the ONNX Runtime custom-op library of
        plugins/ort_custom_ops (``kernels.ort_custom_ops_path()``), which runs the shipped graph's plugin nodes with
        our CUDA kernels; without it a `trt` export runs through its standard-op validation copy.
        ``cuda_graph``: for a decode export (``--graph decode``) or one with a decode companion on the CUDA
        provider, each one-token call replayed from ONNX Runtime's CUDA graph of its batch size (on the companion
        where there is one), the states in buffers the graphs own (runtime/ort_graphs.py, ``decode_reuses_states``).

        An export with a decode companion (``meta.companion == "decode"``, docs/graph-interface.md) gets a second
        session on it: one-token calls (decode steps) run there, without the unified graph's conv ``If``; every
        other call runs on the unified graph. Both read the same weights file."""
        from .ort_runner import ort_session
        from .validation_copy import validation_model

        self.meta = read_metadata(export_dir)
        if custom_ops is not None and (self.meta.flavor != "trt" or provider != "cuda"):
            raise UserError(f"{export_dir}: the custom-op library runs `trt` exports on the cuda provider "
                            f"(this is a `{self.meta.flavor}` export, provider {provider})")
        companion = self.meta.companion == "decode"
        if cuda_graph and (provider != "cuda" or not (self.meta.graph == "decode" or companion)
                           or io_binding is False):
            raise UserError(f"{export_dir}: ONNX Runtime CUDA graphs replay a decode graph (--graph decode, or a "
                            f"unified one's --companion decode) on the cuda provider with IO binding (this is a "
                            f"`{self.meta.graph}` graph{' with a companion' if companion else ''}, provider "
                            f"{provider}{', IO binding off' if io_binding is False else ''})")
        verify_weights(export_dir, self.meta)  # sizes always, sha256 up to interface.HASH_LIMIT
        self.config, self.recipe, self.dtype = self.meta.config, self.meta.recipe, self.meta.dtype
        self.one_token_per_call = self.meta.graph == "decode"
        self.custom_ops = custom_ops
        graph_here = cuda_graph and not companion  # the session that runs one-token calls captures them
        if custom_ops is not None:  # the very graph TensorRT receives, its plugin nodes on our kernels
            self.session = ort_session(export_dir, provider, custom_ops=custom_ops, cuda_graph=graph_here)
        else:
            with validation_model(export_dir) as path:  # trt exports run through their standard-op validation copy
                self.session = ort_session(export_dir, provider, path, cuda_graph=graph_here)
        self.decode_session = None
        if companion and custom_ops is None:
            self.decode_session = ort_session(export_dir, provider, companion_path(export_dir, self.meta),
                                              cuda_graph=cuda_graph)
        self.provider = provider
        self.device = "cuda" if provider == "cuda" else "cpu"
        self.io_binding = provider == "cuda" if io_binding is None else io_binding
        chunked = "-chunked" if self.meta.prefill == "chunked" else ""  # the ort flavor's prefill choice
        # a packed graph (cu_seqlens input) serves every call: packed prefills, equal-length batches, decode steps
        self.packed = self.meta.graph == "packed"
        self.name = (f"ort-{self.meta.flavor}{chunked}{'-packed' if self.packed else ''}"
                     f"{'-customops' if custom_ops is not None else ''}-{provider}{'-graphs' if cuda_graph else ''}")
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.vocab = self.session.get_outputs()[self.outputs.index(LOGITS)].shape[-1]
        self.logits_dtype = DTYPES[self.meta.dtype].torch
        self.graphs = None
        if cuda_graph:
            from .ort_graphs import OrtDecodeGraphs

            self.graphs = OrtDecodeGraphs(self.decode_session or self.session, self.meta, self.vocab,
                                          self.logits_dtype)
            self.decode_reuses_states = True

    def zero_states(self, batch: int):
        if not self.io_binding:
            return zero_states(self.meta, batch)
        # made on the device: built on the host and copied, a 2.7b batch's states (168 MB a sequence) cost a
        # pageable host-to-device copy per new batch (benchmarks/RESULTS.md, "Whole models ... ONNX Runtime CUDA")
        return {name: torch.zeros(shape, dtype=dtype.torch, device=self.device)
                for name, (shape, dtype) in state_specs(self.meta, batch).items()}

    def forward(self, ids, states):
        ids = np.ascontiguousarray(ids, np.int64)
        if self.graphs is not None and ids.shape[1] == 1:
            logits, new = self.graphs(ids, states)  # the graphs' buffer: the caller's logits are a copy
            return logits[:, -1].to("cpu", torch.float32, copy=True).numpy(), new
        if self.packed:  # b sequences of l tokens each
            b, l = ids.shape
            return self._run(ids.reshape(1, b * l), states, np.arange(0, b * l + 1, l, dtype=np.int64))
        return self._run(ids, states)

    def forward_packed(self, prompts, states):
        if not self.packed:
            raise NotImplementedError(f"{self.name}: not a packed graph (export with --graph packed)")
        ids, cu = pack(prompts)
        return self._run(ids, states, cu)

    def session_for(self, ids: np.ndarray):
        """The session that runs a call of these input_ids: the decode companion's for one token per sequence (if
        the export has one), else the unified graph's."""
        return self.decode_session if self.decode_session is not None and ids.shape[1] == 1 else self.session

    def _run(self, ids, states, cu=None):
        inputs = {INPUT_IDS: ids} if cu is None else {INPUT_IDS: ids, CU_SEQLENS: cu}
        session = self.session_for(ids) if cu is None else self.session
        if not self.io_binding:
            out = dict(zip(self.outputs, session.run(None, {**inputs, **states})))
            return np.asarray(self._last(out[LOGITS], cu), np.float32), carried_states(self.meta, out)
        return self._run_bound(session, inputs, states, cu)

    def _last(self, logits, cu):
        """Each sequence's last-position logits [n, V] from the graph's logits output: [n, 1, V] for last-position
        exports, [b, l, V] or packed [1, T, V] for all-position ones."""
        if cu is None or self.meta.logits == "last":
            return logits[:, -1]
        return logits[0, cu[1:] - 1]

    def _run_bound(self, session, inputs, states, cu):
        """States and logits bound to torch buffers on the device: on CUDA the states never leave it, and bf16
        logits (which numpy cannot hold) come back through torch."""
        from .ort_runner import NO_GRAPH, bind_tensor, run_options

        binding = session.io_binding()
        for name, value in inputs.items():
            binding.bind_cpu_input(name, value)
        ids = inputs[INPUT_IDS]
        for name, t in states.items():
            bind_tensor(binding.bind_input, name, t)
        new = {s.name: torch.empty_like(states[s.name]) for s in self.meta.states}
        for s in self.meta.states:
            bind_tensor(binding.bind_output, s.output, new[s.name])
        if self.meta.logits == "last":
            shape = (ids.shape[0] if cu is None else len(cu) - 1, 1)
        else:
            shape = ids.shape
        logits = torch.empty((*shape, self.vocab), dtype=self.logits_dtype, device=self.device)
        bind_tensor(binding.bind_output, LOGITS, logits)
        self.synchronize()  # torch's writes to the inputs must land before ORT's stream reads them
        # returns once ORT's stream is done (ORT's default); a CUDA-graph session runs other calls without a graph
        session.run_with_iobinding(binding, run_options(NO_GRAPH) if self.graphs is not None else None)
        return self._last(logits, cu).float().cpu().numpy(), new

    def concat_states(self, parts):
        return _cat_dicts(parts, torch.cat if self.io_binding else np.concatenate)


class TrtBackend(Backend):
    device = "cuda"

    def __init__(self, export_dir: Path, engine: Path | None = None, plugins: Path | None = None):
        from ..tensorrt.runner import trt_runner

        self.runner = trt_runner(export_dir, engine, plugins)
        self.runner.activate()
        self.meta = self.runner.metadata
        self.config, self.recipe, self.dtype = self.meta.config, self.meta.recipe, self.meta.dtype
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
                 engine: Path | None = None, dtype: str = "fp32", cuda_graph: bool = False) -> Backend:
    """MODEL is a checkpoint directory for the torch backend, an export directory otherwise. ``cuda_graph``: ONNX
    Runtime's CUDA-graph decode (OrtBackend); the torch backend on CUDA replays its decode from CUDA graphs anyway."""
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if cuda_graph and backend != "ort":
        raise UserError(f"ONNX Runtime CUDA graphs are an option of the ort backend (got {backend}; the torch "
                        f"backend on cuda replays its decode steps from CUDA graphs already)")
    model = Path(model)
    if not model.is_dir():
        raise UserError(f"{model}: not a directory")
    if backend == "torch":
        if not (model / "config.json").is_file():
            raise UserError(f"{model}: the torch backend needs a checkpoint directory (with config.json)")
        return TorchBackend(model, provider, dtype, cuda_graphs=True)
    if backend == "ort":
        return OrtBackend(model, provider, cuda_graph=cuda_graph)
    return TrtBackend(model, engine, plugins)
