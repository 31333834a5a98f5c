"""Fuzz-style: malformed configs (seeded random type/value mutations of valid config dicts, both formats) and
malformed safetensors headers, fed through the CLI in-process. Every case ends in exit status 2 with one message,
or, where the mutation left a valid checkpoint, in a normal run; never in a traceback."""

from __future__ import annotations

import json
import random
import struct

import pytest
from click.testing import CliRunner

from ssd_deploy.cli import main
from ssd_deploy.config import load_config

VALUES = [None, True, False, 0, -1, 1, 2, 3, 7, 16, 64, 10 ** 6, 2 ** 63, 2 ** 70, 1.5, -0.0, 1e308, float("nan"),
          float("inf"), "x", "64", "", [], [1, 2], [0.0, 1.0, 2.0], {}, {"layer": "Mamba2"}, {"__float__": "Infinity"},
          {"__float__": "NaN"}, {"__float__": "bogus"}, [0.0, {"__float__": "Infinity"}], [{"__float__": "-Infinity"}, 1]]
EXTRA_KEYS = ["model_type", "d_ssm", "attn_layer_idx", "time_step_limit", "dt_limit", "layer", "ssm_cfg", "hidden_size",
              "d_model"]


def _mutate(cfg: dict, rng: random.Random):
    target = cfg
    if "ssm_cfg" in cfg and isinstance(cfg["ssm_cfg"], dict) and rng.random() < 0.4:
        target = cfg["ssm_cfg"]
    keys = list(target) + EXTRA_KEYS
    key = rng.choice(keys)
    if rng.random() < 0.15 and key in target:
        del target[key]
    else:
        target[key] = rng.choice(VALUES)


def _config_cases(base: dict, n: int, seed: int):
    rng = random.Random(seed)
    for i in range(n):
        cfg = json.loads(json.dumps(base))
        for _ in range(rng.randint(1, 3)):
            _mutate(cfg, rng)
        text = json.dumps(cfg)
        if i % 17 == 0:
            text = rng.choice([text[: rng.randrange(len(text))], json.dumps([cfg]), "null", "\"config\"", "{" * 5000])
        yield text


def _run(ckpt):
    return CliRunner().invoke(main, ["run", str(ckpt), "--backend", "torch", "--input-ids", "1,2",
                                     "--max-new-tokens", "1"])


def _assert_clean(r, what):
    assert r.exit_code in (0, 2), (what, r.exit_code, r.output)
    assert r.exception is None or isinstance(r.exception, SystemExit), (what, repr(r.exception))
    assert "Traceback" not in r.output, what
    if r.exit_code == 2:
        assert r.output.startswith("error: ") and r.output.count("\n") == 1, (what, r.output)


@pytest.fixture(scope="module")
def weights(make_checkpoint):
    return make_checkpoint()


@pytest.mark.parametrize("fmt", ["hf", "mamba_ssm"])
def test_malformed_configs_never_trace_back(weights, tmp_path, fmt):
    cfg, _ = load_config(weights)
    base = cfg.to_hf() if fmt == "hf" else cfg.to_mamba_ssm()
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "model.safetensors").symlink_to(weights / "model.safetensors")
    outcomes = []
    for text in _config_cases(base, 60, seed=101 if fmt == "hf" else 202):
        (ckpt / "config.json").write_text(text)
        r = _run(ckpt)
        _assert_clean(r, text)
        outcomes.append(r.exit_code)
    assert outcomes.count(2) > len(outcomes) // 2  # most mutations are caught...
    (ckpt / "config.json").write_text(json.dumps(base))
    assert _run(ckpt).exit_code == 0  # ...and the unmutated config runs


def _split(data: bytes):
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def _join(header, body: bytes, raw_header: bytes | None = None) -> bytes:
    h = raw_header if raw_header is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + body


def _header_cases(data: bytes, seed: int):
    header, body = _split(data)
    names = sorted(k for k in header if k != "__metadata__")
    rng = random.Random(seed)
    yield _join(None, body, b"\xff\xfe not json")
    yield struct.pack("<Q", 2 ** 63) + data[8:]
    yield struct.pack("<Q", len(data)) + data[8:]
    yield struct.pack("<Q", 0) + data[8:]
    yield data[:5]
    yield data[: len(data) - 7]
    yield _join(None, body, b"[1, 2, 3]")
    yield _join(None, body, json.dumps({names[0]: header[names[0]], names[1]: header[names[0]]}).encode())
    for _ in range(30):
        h = json.loads(json.dumps(header))
        t = h[rng.choice(names)]
        field = rng.choice(["dtype", "shape", "data_offsets", "whole"])
        if field == "dtype":
            t["dtype"] = rng.choice(["F64", "F16", "BF16", "I8", "I64", "BOOL", "U8", "XX", 3, None])
        elif field == "shape":
            t["shape"] = rng.choice([[], [-1], [2 ** 40, 2 ** 40], [0], "4", [1.5], t["shape"][::-1] + [1]])
        elif field == "data_offsets":
            a, b = t["data_offsets"]
            t["data_offsets"] = rng.choice([[b, a], [a, b + 8], [a, len(body) + 100], [-8, b], [a], "0,4", [0, 0]])
        else:
            h[rng.choice(names)] = rng.choice([None, 7, "tensor", [], {}])
        yield _join(h, body)


def test_malformed_safetensors_headers_never_trace_back(weights, tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text((weights / "config.json").read_text())
    data = (weights / "model.safetensors").read_bytes()
    for i, blob in enumerate(_header_cases(data, seed=7)):
        (ckpt / "model.safetensors").write_bytes(blob)
        _assert_clean(_run(ckpt), f"header case {i}")
    (ckpt / "model.safetensors").write_bytes(data)
    assert _run(ckpt).exit_code == 0
