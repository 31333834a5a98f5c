"""bench: every backend measured on the same prompts, logits compared with the first backend."""

import json

import pytest
from click.testing import CliRunner

from ssd_deploy.cli import main


def test_bench_command_tiny(tiny_ckpt, tiny_export, tmp_path):
    args = ["bench", str(tiny_ckpt), "--backends", "torch", "--export", str(tiny_export), "--batch", "1,2",
            "--length", "8,40", "--steps", "2", "--repeats", "1", "--json"]
    r = CliRunner().invoke(main, args, catch_exceptions=False)
    assert r.exit_code == 0
    points = json.loads(r.output)
    assert {(p["backend"], p["batch"], p["length"]) for p in points} == {
        (b, n, length) for b in ("torch-cpu", "ort-portable-cpu") for n in (1, 2) for length in (8, 40)}
    for p in points:
        assert p["prefill_tok_s"] > 0 and p["decode_ms"] > 0
        if p["backend"] != "torch-cpu":
            assert p["rel_err_vs_first"] < 1e-4


def test_bench_plot(tiny_ckpt, tiny_export, tmp_path):
    pytest.importorskip("matplotlib", reason="--plot needs matplotlib (bench extra)")
    png = tmp_path / "bench.png"
    r = CliRunner().invoke(main, ["bench", str(tiny_ckpt), "--backends", "torch,portable", "--length", "8,16",
                                  "--steps", "1", "--repeats", "1", "--plot", str(png)], catch_exceptions=False)
    assert r.exit_code == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_bad_input(tiny_ckpt):
    r = CliRunner().invoke(main, ["bench", str(tiny_ckpt), "--length", "0"])
    assert r.exit_code == 2 and "positive integers" in r.output
    r = CliRunner().invoke(main, ["bench", str(tiny_ckpt), "--backends", "tensorflow"])
    assert r.exit_code == 2 and "choose among" in r.output
