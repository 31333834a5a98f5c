"""Outputs appear whole or not at all (docs/architecture.md): a directory is written under a temporary sibling name
and renamed into place only when everything in it was written and checked.

- ``check_target`` runs before any work: the output must be creatable there (not under a regular file, not on a
  read-only or full volume: a probe directory is made and removed) and empty, unless ``force`` replaces a previous
  output of the same kind (one holding ``marker``).
- Temporary directories are named ``.NAME.ssd-deploy-PID-xxxx`` beside the output; those of processes that no longer
  run (a killed export) are swept by the next writer of the same output.
- Failures while writing (disk full, permissions) become one message; the temporary directory is removed.
- ``--force`` swaps the new directory with the old one in one rename (Linux ``renameat2(RENAME_EXCHANGE)``), so a
  reader sees the old or the new output at every instant; elsewhere the old one is moved aside first.
- The output gets the modes a plain write would (0777/0666 less the umask), not mkdtemp's 0700.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import UserError

TAG = "ssd-deploy"


def temp_prefix(out_dir: Path) -> str:
    """Temporary directories for ``out_dir`` are named ``.NAME.ssd-deploy-PID-`` + random, beside it."""
    return f".{out_dir.name}.{TAG}-{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def sweep_stale(out_dir: Path) -> list[Path]:
    """Removes the temporary directories beside ``out_dir`` left by writers that no longer run; returns them."""
    out_dir = Path(out_dir)
    pattern = re.compile(rf"\.{re.escape(out_dir.name)}\.{TAG}-(\d+)-")
    swept = []
    try:
        siblings = list(out_dir.parent.iterdir())
    except OSError:
        return swept
    for p in siblings:
        m = pattern.match(p.name)
        if m and p.is_dir() and not p.is_symlink() and int(m.group(1)) != os.getpid() \
                and not _pid_alive(int(m.group(1))):
            shutil.rmtree(p, ignore_errors=True)
            swept.append(p)
    return swept


def _describe(e: OSError) -> str:
    if e.errno == errno.ENOSPC:
        return "no space left on the device"
    if e.errno == errno.EROFS:
        return "read-only file system"
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if e.errno == errno.ENOTDIR:
        return "a component of the path is a regular file, not a directory"
    return e.strerror or str(e)


def check_target(out_dir: Path, force: bool = False, marker: str | None = None):
    """Before any work: ``out_dir`` can be written (probed) and is empty or absent, or with ``force`` holds a
    previous output (``marker`` in it) to replace."""
    out_dir = Path(out_dir)
    for parent in reversed(out_dir.parents):
        if parent.exists() and not parent.is_dir():
            raise UserError(f"{out_dir}: cannot be created: {parent} is a regular file, not a directory")
    if out_dir.exists() or out_dir.is_symlink():
        if not out_dir.is_dir():
            raise UserError(f"{out_dir}: exists and is not a directory")
        try:
            contents = list(out_dir.iterdir())
        except OSError as e:
            raise UserError(f"{out_dir}: cannot be read ({_describe(e)})") from None
        if contents:
            if not force:
                raise UserError(f"{out_dir}: exists and is not an empty directory (pass --force to replace it)")
            if marker is not None and not (out_dir / marker).exists():
                raise UserError(f"{out_dir}: refusing to replace it: it holds no {marker}, so it is not an output "
                                f"of this kind")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        Path(tempfile.mkdtemp(prefix=temp_prefix(out_dir), dir=out_dir.parent)).rmdir()
    except OSError as e:
        raise UserError(f"{out_dir}: cannot write there ({_describe(e)})") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _normal_modes(root: Path):
    """The modes a plain mkdir/open would give, instead of mkdtemp's 0700 (and mkstemp's 0600)."""
    mask = _umask()
    for dirpath, _, files in os.walk(root):
        os.chmod(dirpath, 0o777 & ~mask)
        for f in files:
            os.chmod(os.path.join(dirpath, f), 0o666 & ~mask)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swaps two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange) == 0


def _install(tmp: Path, out_dir: Path, force: bool):
    """Renames the finished ``tmp`` to ``out_dir``; an old output is replaced only with ``force``."""
    if out_dir.is_dir() and not any(out_dir.iterdir()):
        out_dir.rmdir()
    elif out_dir.exists():
        if not force:
            raise UserError(f"{out_dir}: another process wrote it meanwhile; this run's output was discarded "
                            f"(pass --force to replace it)")
        if not _exchange(tmp, out_dir):  # the old output is moved aside, then the new one renamed in
            aside = Path(tempfile.mkdtemp(prefix=temp_prefix(out_dir), dir=out_dir.parent))
            os.replace(out_dir, aside / "old")
            os.replace(tmp, out_dir)
            tmp = aside
        shutil.rmtree(tmp, ignore_errors=True)  # the old output
        return
    try:
        os.replace(tmp, out_dir)
    except OSError as e:
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise UserError(f"{out_dir}: another process wrote it meanwhile; this run's output was discarded (pass "
                            f"--force to replace it)") from None
        raise


@contextmanager
def atomic_dir(out_dir: Path, force: bool = False, marker: str | None = None) -> Iterator[Path]:
    """Yields a temporary directory beside ``out_dir`` (same filesystem, so the rename is atomic); on success it
    becomes ``out_dir``, on any failure it is removed. ``out_dir`` must not exist or be an empty directory, unless
    ``force`` (see ``check_target``)."""
    out_dir = Path(out_dir)
    check_target(out_dir, force, marker)
    sweep_stale(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(out_dir), dir=out_dir.parent))
    try:
        try:
            yield tmp
            _normal_modes(tmp)
            _install(tmp, out_dir, force)
        except OSError as e:
            raise UserError(f"{out_dir}: writing failed ({_describe(e)}); nothing was left behind") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
