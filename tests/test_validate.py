"""validate: passes a faithful export, fails a corrupted one, never passes NaN."""

import numpy as np
import onnx
import pytest

from ssd_deploy.errors import UserError
from ssd_deploy.runtime.ort_runner import ort_runner
from ssd_deploy.validate import OutputError, format_report, relative_error, validate


def test_faithful_export_passes(tiny_export, tiny_ckpt):
    report = validate(tiny_export, tiny_ckpt, ort_runner(tiny_export), steps=3, batch=2)
    assert report.ok
    assert [e.call for e in report.errors[::3]] == ["prefill", "step 1", "step 2", "step 3"]
    assert {e.output for e in report.errors} == {"logits", "conv_state", "ssm_state"}
    assert report.prompt_len == 32 + 16 + 3  # past one chunk, not a multiple of it
    assert "PASS" in format_report(report)


def test_corrupted_export_fails(tiny_export, tiny_ckpt, tmp_path):
    proto = onnx.load(str(tiny_export / "model.onnx"))
    target = next(t for t in proto.graph.initializer if "dt_bias" in t.name)
    arr = onnx.numpy_helper.to_array(target).copy()
    arr[0] += 0.5  # one head's dt bias: only the SSD path notices
    target.CopyFrom(onnx.numpy_helper.from_array(arr, target.name))
    (tmp_path / "bad").mkdir()
    onnx.save(proto, str(tmp_path / "bad" / "model.onnx"))
    with pytest.raises(UserError, match="differ from those written at export"):  # the weight record notices first
        validate(tmp_path / "bad", tiny_ckpt, ort_runner(tmp_path / "bad"), steps=2)
    # without the record (as an export made before it), the comparison itself catches the corruption
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key != "ssd_deploy.weights"]
    del proto.metadata_props[:]
    for k, v in kept:
        proto.metadata_props.add(key=k, value=v)
    onnx.save(proto, str(tmp_path / "bad" / "model.onnx"))
    report = validate(tmp_path / "bad", tiny_ckpt, ort_runner(tmp_path / "bad"), steps=2)
    assert not report.ok
    assert any(e.output == "ssm_state" and not e.ok for e in report.errors)
    assert "FAIL" in format_report(report)


def test_nan_never_passes():
    out = np.ones(4, np.float32)
    out[2] = np.nan
    rel, _, finite = relative_error(out, np.ones(4, np.float32))
    err = OutputError("prefill", "logits", rel, 0.0, finite, tol=1e9)
    assert not finite and not err.ok


def test_mismatched_checkpoint_is_refused(tiny_export, make_checkpoint):
    from conftest import VARIANTS

    other = make_checkpoint(VARIANTS["g1"])
    with pytest.raises(UserError, match="config differs"):
        validate(tiny_export, other, ort_runner(tiny_export))


def test_not_an_export(tmp_path, tiny_ckpt):
    with pytest.raises(UserError, match="no exported model"):
        validate(tmp_path, tiny_ckpt, None)


@pytest.mark.parametrize("logits", ["all", "last"])
def test_packed_export_validates(make_export, logits):
    """A packed graph: prompts of different lengths in one call, then batched steps through the same graph, against
    the PyTorch model fed the same cu_seqlens."""
    from conftest import TINY

    ckpt, export_dir = make_export(TINY, "portable", graph="packed", logits=logits)
    report = validate(export_dir, ckpt, ort_runner(export_dir), steps=2, batch=3)
    assert report.ok, format_report(report)
    assert [e.call for e in report.errors[::3]] == ["prefill", "step 1", "step 2"]


def test_another_checkpoint_is_named_up_front(tiny_export, make_checkpoint):
    """Same config, other weights: one message saying so, before any comparison runs (exit 2 from the CLI)."""
    from click.testing import CliRunner

    from ssd_deploy.cli import main

    other = make_checkpoint(seed=5)
    with pytest.raises(UserError, match="is not the checkpoint .* was exported from"):
        validate(tiny_export, other, ort_runner(tiny_export))
    r = CliRunner().invoke(main, ["validate", str(tiny_export), "--against", str(other)])
    assert r.exit_code == 2 and "is not the checkpoint" in r.output and "FAIL" not in r.output


def test_one_voice(tiny_export, tiny_ckpt):
    """The report alone: none of Polygraphy's own log lines ([I], [W] 'colored' module, [E] Accuracy Summary)."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "ssd_deploy.cli", "validate", str(tiny_export), "--against",
                        str(tiny_ckpt), "--steps", "1"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = (r.stdout + r.stderr).splitlines()
    assert lines[-1] == "PASS" and not [ln for ln in lines if ln.lstrip().startswith(("[I]", "[W]", "[E]", "[V]"))]
