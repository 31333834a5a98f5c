"""Feeds of the graph interface (docs/graph-interface.md): the one data format every runner takes and returns.

A feed is a dict of numpy arrays named as the graph's inputs (input_ids, conv_state.i, ssm_state.i); a runner
returns the outputs (logits, conv_state_out.i, ssm_state_out.i). States are carried by renaming outputs to inputs.
"""

from __future__ import annotations

import numpy as np

from ..interface import DTYPES, INPUT_IDS, ExportMetadata

def state_specs(meta: ExportMetadata, batch: int) -> dict:
    """Each state input's name -> (shape at this batch, its entry of interface.DTYPES)."""
    return {s.name: ((batch, *s.shape[1:]), DTYPES[s.dtype]) for s in meta.states}


def zero_states(meta: ExportMetadata, batch: int) -> dict[str, np.ndarray]:
    return {name: np.zeros(shape, dtype.numpy) for name, (shape, dtype) in state_specs(meta, batch).items()}


def feed(input_ids: np.ndarray, states: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {INPUT_IDS: np.ascontiguousarray(input_ids, dtype=np.int64), **states}


def carried_states(meta: ExportMetadata, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The states to feed the next call: each state output under its input name."""
    return {s.name: outputs[s.output] for s in meta.states}
