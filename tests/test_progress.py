"""Progress on long work: shown on a terminal, silent otherwise; export, validate and bench say each step before it
runs (tests/conftest.py RecordingReporter records what they say)."""

import io

import pytest
from click.testing import CliRunner
from rich.console import Console

from ssd_deploy.cli import main
from ssd_deploy.progress import QUIET, Reporter, for_command


def test_shown_on_a_terminal_only():
    tty = io.StringIO()
    r = Reporter(console=Console(file=tty, force_terminal=True, width=100))
    assert r.enabled
    with r.step("loading checkpoint"):
        pass
    with r.bar("validating", 3) as advance:
        advance("prefill", 0)
        advance()
    assert "loading checkpoint" in tty.getvalue() and "validating" in tty.getvalue()
    pipe = io.StringIO()
    quiet = Reporter(console=Console(file=pipe))  # a file, not a terminal
    assert not quiet.enabled
    with quiet.step("x") as say, quiet.bar("y", 2) as advance:
        say("more")
        advance()
    assert pipe.getvalue() == ""
    assert not QUIET.enabled and for_command(as_json=True) is QUIET


@pytest.mark.slow
def test_export_and_validate_say_each_step(tiny_ckpt, tmp_path, recorder):
    from ssd_deploy.onnx.export import export
    from ssd_deploy.runtime.ort_runner import ort_runner
    from ssd_deploy.validate import validate

    out = export(tiny_ckpt, tmp_path / "e", progress=recorder).parent
    assert [s.split(" ")[0] for s in recorder.said] == ["checking", "tracing", "streaming"]  # the streaming export's steps
    recorder.said.clear()
    report = validate(out, tiny_ckpt, ort_runner(out), steps=2, seed=0, progress=recorder)
    assert report.ok
    said = [s for s in recorder.said if s != "+1"]
    assert said[0].startswith(f"validating {out}") and said[0].endswith("(0/6)")
    names = [s.split(":")[0] for s in said[1:]]
    assert [s.split(": ")[1] for s in said[1:]] == ["prefill", "step 1", "step 2"] * 2
    assert names[0] != names[3]  # the reference, then the export's runner
    assert recorder.said.count("+1") == 6


def test_commands_are_quiet_when_not_on_a_terminal(tiny_ckpt, tmp_path):
    r = CliRunner().invoke(main, ["export", str(tiny_ckpt), "-o", str(tmp_path / "e")], catch_exceptions=False)
    assert r.exit_code == 0 and r.output.splitlines() == [f"exported {tiny_ckpt} (portable, fp32) to "
                                                          f"{tmp_path / 'e' / 'model.onnx'}"]
