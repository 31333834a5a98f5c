"""The model file ONNX Runtime loads to validate an export: the export itself, or for a `trt` export a temporary
validation copy (the graph plus each plugin's standard-op body, see onnx/trt.py): the very graph TensorRT receives.

The copy is written to a temporary directory of its own (``$TMPDIR/.validation.ssd-deploy-PID-*``, swept when its
process is gone), never into the export (which may be read-only, and must not be left holding a stray file if the
process is killed). Its external weights stay references to the export's data
file: ``ort_runner.ort_session`` points ONNX Runtime's external-initializer folder at the export's directory, so the
copy shares the weights instead of duplicating gigabytes.
"""

from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import onnx
import onnx_ir

from ..atomic import sweep_stale, temp_prefix
from ..errors import UserError
from ..interface import DTYPES, load_graph, model_path, read_metadata

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
    tag = Path(tempfile.gettempdir()) / "validation"
    sweep_stale(tag)  # copies of killed runs
    try:
        work = Path(tempfile.mkdtemp(prefix=temp_prefix(tag), dir=tag.parent))
    except OSError as e:
        raise UserError(f"cannot create a temporary directory for the trt validation copy ({e})") from None
    try:
        copy = work / path.name
        try:
            onnx.save(proto, copy)
        except OSError as e:
            raise UserError(f"{work}: cannot write the trt validation copy there ({e})") from None
        yield copy
    finally:
        shutil.rmtree(work, ignore_errors=True)
