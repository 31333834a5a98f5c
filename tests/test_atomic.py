"""atomic.py: outputs appear whole or not at all, with every filesystem failure as one message, checked before any
work; --force replaces atomically; stale temporary directories of killed writers are swept; normal modes."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import tempfile

import pytest
from click.testing import CliRunner

from ssd_deploy import atomic
from ssd_deploy.atomic import atomic_dir, check_target, sweep_stale
from ssd_deploy.cli import main
from ssd_deploy.errors import UserError


def _write(out, name="model.onnx", text="new", **kw):
    with atomic_dir(out, **kw) as tmp:
        (tmp / name).write_text(text)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "f").write_text("x")


def _leftovers(parent):
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


def test_writes_whole_with_normal_modes(tmp_path):
    old = os.umask(0o027)
    try:
        _write(tmp_path / "out")
    finally:
        os.umask(old)
    out = tmp_path / "out"
    assert (out / "model.onnx").read_text() == "new" and _leftovers(tmp_path) == []
    assert stat.S_IMODE(out.stat().st_mode) == 0o750 and stat.S_IMODE((out / "sub").stat().st_mode) == 0o750
    assert stat.S_IMODE((out / "model.onnx").stat().st_mode) == 0o640


def test_existing_outputs_need_force_and_are_replaced_atomically(tmp_path):
    out = tmp_path / "out"
    _write(out, text="old")
    with pytest.raises(UserError, match="not an empty directory .pass --force"):
        _write(out)
    _write(out, force=True, marker="model.onnx")
    assert (out / "model.onnx").read_text() == "new" and _leftovers(tmp_path) == []
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="holds no model.onnx"):
        _write(tmp_path / "home", force=True, marker="model.onnx")
    assert (tmp_path / "home" / "notes.txt").read_text() == "mine"
    (tmp_path / "empty").mkdir()
    _write(tmp_path / "empty")  # an empty directory is fine without --force


def test_force_without_renameat2_moves_the_old_output_aside(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    out = tmp_path / "out"
    _write(out, text="old")
    _write(out, force=True, marker="model.onnx")
    assert (out / "model.onnx").read_text() == "new" and _leftovers(tmp_path) == []


def test_path_under_a_regular_file_or_a_file_in_the_way(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a regular file, not a directory"):
        check_target(tmp_path / "file" / "deeper" / "out")
    with pytest.raises(UserError, match="exists and is not a directory"):
        check_target(tmp_path / "file", force=True)


@pytest.mark.parametrize("code,message", [(errno.EROFS, "read-only file system"), (errno.EACCES, "permission denied"),
                                          (errno.ENOSPC, "no space left")])
def test_unwritable_locations_are_refused_before_any_work(tmp_path, monkeypatch, code, message):
    def refuse(*a, **k):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(atomic.tempfile, "mkdtemp", refuse)
    with pytest.raises(UserError, match=f"cannot write there .{message}"):
        check_target(tmp_path / "out")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_directory(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    with pytest.raises(UserError, match="cannot write there .permission denied"):
        check_target(ro / "out")


def test_disk_full_while_writing_leaves_nothing(tmp_path):
    with pytest.raises(UserError, match="writing failed .no space left on the device.; nothing was left behind"):
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "part").write_text("half")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_two_writers_of_one_directory(tmp_path):
    """The loser of a race gets one message; nothing of either run is left half-written."""
    out = tmp_path / "out"
    with pytest.raises(UserError, match="another process wrote it meanwhile"):
        with atomic_dir(out) as first:
            (first / "model.onnx").write_text("first")
            _write(out, text="second")
    assert (out / "model.onnx").read_text() == "second" and _leftovers(tmp_path) == []


def test_stale_temporary_directories_of_dead_writers_are_swept(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".out.{atomic.TAG}-{dead.pid}-abcd1234"
    (stale / "half").mkdir(parents=True)
    live = tmp_path / f".out.{atomic.TAG}-{os.getppid()}-abcd1234"
    live.mkdir()
    other = tmp_path / ".other.ssd-deploy-1-x"
    other.mkdir()
    assert sweep_stale(tmp_path / "out") == [stale]
    assert live.exists() and other.exists()
    stale.mkdir()
    _write(tmp_path / "out")  # every writer sweeps first
    assert not stale.exists()


def test_temporary_names_are_recognisable(tmp_path):
    with atomic_dir(tmp_path / "out") as tmp:
        assert tmp.name.startswith(f".out.{atomic.TAG}-{os.getpid()}-") and tmp.parent == tmp_path


def test_export_checks_its_output_before_loading(tmp_path):
    """A non-empty output directory is refused before the (missing) checkpoint is even looked at."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("x")
    r = CliRunner().invoke(main, ["export", str(tmp_path / "no-such-ckpt"), "-o", str(out)])
    assert r.exit_code == 2 and "not an empty directory (pass --force" in r.output and "Traceback" not in r.output
    (tmp_path / "file").write_text("x")
    r = CliRunner().invoke(main, ["export", str(tmp_path / "no-such-ckpt"), "-o", str(tmp_path / "file" / "o")])
    assert r.exit_code == 2 and "regular file" in r.output
    r = CliRunner().invoke(main, ["new", "-o", str(out)])
    assert r.exit_code == 2 and "not an empty directory (pass --force" in r.output


@pytest.mark.slow
def test_export_force_and_disk_full(tiny_ckpt, tmp_path, monkeypatch):
    import onnx_ir

    out = tmp_path / "export"
    r = CliRunner().invoke(main, ["export", str(tiny_ckpt), "-o", str(out)])
    assert r.exit_code == 0, r.output
    first = (out / "model.onnx").read_bytes()
    r = CliRunner().invoke(main, ["export", str(tiny_ckpt), "-o", str(out), "--force"])
    assert r.exit_code == 0 and (out / "model.onnx").read_bytes() == first and _leftovers(tmp_path) == []

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(onnx_ir, "save", full)
    r = CliRunner().invoke(main, ["export", str(tiny_ckpt), "-o", str(tmp_path / "again")])
    assert r.exit_code == 2 and "no space left on the device" in r.output and "Traceback" not in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
