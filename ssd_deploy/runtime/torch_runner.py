"""The PyTorch reference model as a Polygraphy runner over the graph interface, so it is compared with every
other backend by the same machinery."""

from __future__ import annotations

import time
from collections import OrderedDict

import numpy as np
import torch
from polygraphy.backend.base import BaseRunner

from ..model import Mamba2LM
from ..interface import CU_SEQLENS, INPUT_IDS, LAYOUT_SSM, LOGITS, state_names


class TorchRunner(BaseRunner):
    def __init__(self, model: Mamba2LM, name: str = "torch", decode_step: bool = True, ssm_layout: str = LAYOUT_SSM,
                 packed: bool = False):
        """``decode_step``: single-token calls go through the ssd_step op instead of the scan (as a deployment
        would); both are the contract, and the tests prove them equal. ``ssm_layout``: the export's (metadata):
        ssm states are taken and returned in it, so they compare with the export's own. ``packed``: the packed
        interface (a ``cu_seqlens`` input, docs/graph-interface.md)."""
        super().__init__(name=name, prefix="torch-runner")
        self.model = model
        self.decode_step = decode_step
        self.names = state_names(model.cfg.n_layer)
        self.swap_ssm = ssm_layout != LAYOUT_SSM  # the only other layout: b,h,n,p
        self.packed = packed

    def activate_impl(self):
        """Polygraphy's runner lifecycle: the model is already loaded, nothing to acquire."""

    def deactivate_impl(self):
        """Nothing to release."""

    def get_input_metadata_impl(self):
        from polygraphy.common import TensorMetadata
        meta = TensorMetadata()
        meta.add(INPUT_IDS, np.int64, ("batch", "seq"))
        if self.packed:
            meta.add(CU_SEQLENS, np.int64, ("sequences+1",))
        for spec_name, shape in zip([i for i, _ in self.names], self._state_shapes()):
            meta.add(spec_name, np.float32, shape)
        return meta

    def _state_shapes(self):
        shapes = self.model.cfg.state_shapes()
        if self.swap_ssm:
            b, h, p, n = shapes["ssm"]
            shapes["ssm"] = (b, h, n, p)
        return [shapes["conv" if i % 2 == 0 else "ssm"] for i in range(len(self.names))]

    def _ssm(self, t: torch.Tensor) -> torch.Tensor:
        """The model's [b,h,p,n] ↔ the export's layout (a swap is its own inverse)."""
        return t.transpose(-1, -2).contiguous() if self.swap_ssm else t

    @torch.no_grad()
    def infer_impl(self, feed_dict):
        ids = torch.from_numpy(np.asarray(feed_dict[INPUT_IDS]))
        states = [torch.from_numpy(np.asarray(feed_dict[i], dtype=np.float32)) for i, _ in self.names]
        cu = torch.from_numpy(np.asarray(feed_dict[CU_SEQLENS])) if CU_SEQLENS in feed_dict else None  # packed
        start = time.perf_counter()
        logits, conv, ssm = self.model(ids, states[0::2], [self._ssm(t) for t in states[1::2]],
                                       decode=self.decode_step and ids.shape[1] == 1 and cu is None, cu_seqlens=cu)
        ssm = [self._ssm(t) for t in ssm]
        self.inference_time = time.perf_counter() - start
        out = OrderedDict([(LOGITS, logits.float().numpy())])
        for (_, o), t in zip(self.names, [t for pair in zip(conv, ssm) for t in pair]):
            out[o] = t.float().numpy()
        return out
