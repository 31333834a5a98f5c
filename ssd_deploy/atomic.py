"""Outputs appear whole or not at all (docs/architecture.md): a directory is written under a temporary sibling name and renamed
into place only when everything in it was written and checked."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import UserError


@contextmanager
def atomic_dir(out_dir: Path) -> Iterator[Path]:
    """Yields a temporary directory beside ``out_dir`` (same filesystem, so the rename is atomic); on success it
    becomes ``out_dir``, on any failure it is removed. ``out_dir`` must not exist or be an empty directory."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserError(f"{out_dir}: exists and is not an empty directory")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        yield tmp
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
