"""bench: every backend measured on the same prompts, each checked against the float32 PyTorch listings."""

import json

import pytest
from click.testing import CliRunner

from ssd_deploy.cli import main


def test_bench_command_tiny(tiny_ckpt, tiny_export, tmp_path):
    args = ["bench", str(tiny_ckpt), "--backends", "torch", "--export", str(tiny_export), "--batches", "1,2",
            "--lengths", "8,40", "--steps", "2", "--repeats", "1", "--json"]
    r = CliRunner().invoke(main, args, catch_exceptions=False)
    assert r.exit_code == 0
    points = json.loads(r.output)
    assert {(p["backend"], p["batch"], p["length"]) for p in points} == {
        (b, n, length) for b in ("torch-cpu", "ort-portable-cpu") for n in (1, 2) for length in (8, 40)}
    for p in points:
        assert p["prefill_tok_s"] > 0 and p["decode_ms"] > 0
        assert p["prefill_err"] < 1e-4 and p["decode_err"] < 1e-4  # NaN fails
    torch_points = [p for p in points if p["backend"] == "torch-cpu"]
    assert all(p["prefill_err"] == 0 for p in torch_points), "the fp32 torch backend is the reference itself"


def test_bench_parity_catches_a_wrong_backend(tiny_ckpt):
    """The parity columns are live: a backend whose carried state is dropped fails the step check but not the
    prefill check."""
    from ssd_deploy import bench
    from ssd_deploy.runtime.backends import TorchBackend

    class Forgetful(TorchBackend):
        def forward(self, ids, states):
            return super().forward(ids, self.zero_states(ids.shape[0]) if ids.shape[1] == 1 else states)

    reference = TorchBackend(tiny_ckpt)
    [p] = bench.run([Forgetful(tiny_ckpt)], reference, [2], [24], steps=1, repeats=1)
    assert p.prefill_err == 0 and p.decode_err > 1e-2


def test_bench_plot(tiny_ckpt, tiny_export, tmp_path):
    pytest.importorskip("matplotlib", reason="--plot needs matplotlib (bench extra)")
    png = tmp_path / "bench.png"
    r = CliRunner().invoke(main, ["bench", str(tiny_ckpt), "--backends", "torch,portable", "--lengths", "8,16",
                                  "--steps", "1", "--repeats", "1", "--plot", str(png)], catch_exceptions=False)
    assert r.exit_code == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_bad_input(tiny_ckpt):
    r = CliRunner().invoke(main, ["bench", str(tiny_ckpt), "--lengths", "0"])
    assert r.exit_code == 2 and "positive integers" in r.output
    r = CliRunner().invoke(main, ["bench", str(tiny_ckpt), "--backends", "tensorflow"])
    assert r.exit_code == 2 and "choose among" in r.output
    r = CliRunner().invoke(main, ["bench", str(tiny_ckpt.parent), "--backends", "torch"])
    assert r.exit_code == 2 and "not a checkpoint directory" in r.output
    r = CliRunner().invoke(main, ["bench", str(tiny_ckpt), "--backends", "torch,torch-triton-graphs"])
    assert r.exit_code == 2 and "need --provider cuda" in r.output


def test_bench_dtype_parity_against_fp32(tiny_ckpt):
    """A bf16 torch backend is measured against the fp32 listings, not against itself."""
    r = CliRunner().invoke(main, ["bench", str(tiny_ckpt), "--backends", "torch", "--dtype", "bf16", "--lengths",
                                  "16", "--steps", "1", "--repeats", "1", "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    [p] = json.loads(r.output)
    assert 0 < p["prefill_err"] < 5e-2 and 0 < p["decode_err"] < 5e-2


@pytest.mark.slow
def test_bench_packed(tiny_ckpt):
    """--packed: one prompt of each length, one call each vs one packed call (torch; portable unified vs packed
    export), the packed logits checked against the one-by-one ones."""
    r = CliRunner().invoke(main, ["bench", str(tiny_ckpt), "--backends", "torch,portable", "--lengths", "5,40,17",
                                  "--steps", "1", "--repeats", "1", "--packed", "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    packed = json.loads(r.output)["packed"]
    assert [p["backend"] for p in packed] == ["torch-cpu", "ort-portable-cpu / ort-portable-packed-cpu"]
    for p in packed:
        assert p["lengths"] == [5, 40, 17] and p["one_by_one_ms"] > 0 and p["packed_ms"] > 0
        assert p["err"] < 1e-4  # NaN fails


def test_rows_have_distinct_labels_dtype_and_spread(tiny_ckpt, tiny_export, make_export, recorder):
    """An --export of the same flavor as a built-in row gets its folder in the label; each point carries its dtype
    and the min-max spread around the median; the display names each point before it runs."""
    from ssd_deploy import bench

    again = tiny_export.parent / "again"  # another export that would also read ort-portable-cpu
    import shutil

    shutil.copytree(tiny_export, again, dirs_exist_ok=True)
    points = bench.compare(tiny_ckpt, ["portable"], [tiny_export, again], batches=[1], lengths=[8], steps=3,
                           repeats=3, display=recorder).points
    labels = [p.backend for p in points]
    assert len(set(labels)) == 3 and labels[0] == "ort-portable-cpu"
    assert labels[1:] == [f"ort-portable-cpu ({tiny_export.name})", "ort-portable-cpu (again)"]
    for p in points:
        assert p.dtype == "fp32"
        assert p.prefill_ms_min <= p.prefill_ms <= p.prefill_ms_max and p.decode_ms_min <= p.decode_ms <= p.decode_ms_max
    said = [s for s in recorder.said if "batch 1, length 8" in s]
    assert said == ["reference logits, batch 1, length 8"] + [f"{lab}, batch 1, length 8" for lab in labels]
    table = bench.table(points)
    assert "dtype" in table.splitlines()[0] and "[min-max]" in table and all(lab in table for lab in labels)


def test_plot_without_matplotlib_fails_before_measuring(tiny_ckpt, tmp_path, monkeypatch):
    import builtins

    from ssd_deploy import bench

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    monkeypatch.setattr(bench, "compare", lambda *a, **k: pytest.fail("measured before checking matplotlib"))
    r = CliRunner().invoke(main, ["bench", str(tiny_ckpt), "--plot", str(tmp_path / "b.png")])
    assert r.exit_code == 2 and "--plot needs matplotlib" in r.output
