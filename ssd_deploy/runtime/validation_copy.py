"""The model file ONNX Runtime loads to validate an export: the export itself, or for a `trt` export a temporary
validation copy (the graph plus each plugin's standard-op body, see onnx/trt.py): the very graph TensorRT receives.

The copy is written to a temporary directory of its own, never into the export (which may be read-only, and must not
be left holding a stray file if the process is killed). Its external weights stay references to the export's data
file: ``ort_runner.ort_session`` points ONNX Runtime's external-initializer folder at the export's directory, so the
copy shares the weights instead of duplicating gigabytes.
"""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import onnx
import onnx_ir

from ..errors import UserError
from ..interface import DTYPES, load_graph, model_path, read_metadata

PREFIX = "ssd-deploy-validation-"


@contextmanager
def validation_model(export_dir: Path) -> Iterator[Path]:
    """Yields the path of the model to load with ``ort_session(export_dir, model_file=...)``; a copy is removed on
    exit."""
    from ..onnx import trt

    path = model_path(export_dir)
    meta = read_metadata(export_dir)
    if meta.flavor != "trt":
        yield path
        return
    proto = load_graph(export_dir)  # external weights stay references
    bodies = trt.bodies(onnx_ir.serde.deserialize_model(proto), meta.config, DTYPES[meta.dtype].torch)
    proto.functions.extend(onnx_ir.serde.serialize_function(f) for f in bodies)
    try:
        tmp = tempfile.TemporaryDirectory(prefix=PREFIX)
    except OSError as e:
        raise UserError(f"cannot create a temporary directory for the trt validation copy ({e})") from None
    with tmp as work:
        copy = Path(work) / path.name
        try:
            onnx.save(proto, copy)
        except OSError as e:
            raise UserError(f"{work}: cannot write the trt validation copy there ({e})") from None
        yield copy
