"""Shared fixtures: tiny random checkpoints in both on-disk formats, built once per session, the error metric of
docs/verification.md, and the Triton-interpreter run of a kernel test file."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ssd_deploy.checkpoint import random_model, write_checkpoint
from ssd_deploy.interface import state_names
from ssd_deploy.presets import preset

REPO = Path(__file__).resolve().parents[1]


def rel_err(out, ref) -> float:
    """‖out − ref‖ / ‖ref‖ in float64; NaN anywhere gives NaN (which fails every tolerance)."""
    out = torch.as_tensor(np.asarray(out) if not isinstance(out, torch.Tensor) else out).double()
    ref = torch.as_tensor(np.asarray(ref) if not isinstance(ref, torch.Tensor) else ref).double()
    assert out.shape == ref.shape, (out.shape, ref.shape)
    if not torch.isfinite(out).all():
        return float("nan")
    return float((out - ref).norm() / ref.norm())


KERNEL_TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}  # docs/verification.md


def check_kernel_errors(name: str, errs: dict, dtype, exact: dict[str, str]) -> None:
    """A Triton kernel test's errors: each relative error within ``KERNEL_TOL[dtype]`` (NaN fails too); a key that
    starts with a prefix of ``exact`` is a property that must hold exactly (0.0), its value saying why."""
    tol = KERNEL_TOL[dtype]
    for key, err in errs.items():
        why = next((m for prefix, m in exact.items() if key.startswith(prefix)), None)
        if why is not None:
            assert err == 0.0, f"{name} {key} = {err}: {why}"
        else:
            assert err <= tol, f"{name} {key}: relative error {err} > {tol}"


def triton_interpreter_results(script: str) -> dict:
    """Runs a kernel test file as a script under Triton's interpreter and returns the JSON its last line prints.
    Triton reads TRITON_INTERPRET when it is imported, so the cases run in a subprocess and the rest of the suite
    keeps its own Triton."""
    env = {**os.environ, "TRITON_INTERPRET": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, script], env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def random_states(meta, batch, rng):
    """Non-zero states of an export's interface (its own layouts), as numpy feeds."""
    return {s.name: (rng.standard_normal((batch, *s.shape[1:])) * (0.5 if "ssm" in s.name else 1.0))
            .astype(np.float32) for s in meta.states}


def reference_outputs(model, ids, states):
    """The PyTorch model's logits and state outputs (named as the graph's) for numpy ids and states in the
    contract's layouts."""
    names = state_names(model.cfg.n_layer)
    st = [torch.from_numpy(states[i]) for i, _ in names]
    with torch.no_grad():
        logits, conv, ssm = model(torch.from_numpy(ids), st[0::2], st[1::2])
    return logits, dict(zip([o for _, o in names], [t for pair in zip(conv, ssm) for t in pair]))


def assert_parity_every_length(ckpt, export_dir, model_file=None):
    """The exported graph (or ``model_file``, e.g. a trt validation copy) on ONNX Runtime CPU against the PyTorch
    model, fp32, from random states, at l = 1, 7, Q, Q+3 and 3Q: logits and every state within 1e-4. States are fed
    in the export's own layout (metadata) and swapped to the contract's for the reference."""
    from ssd_deploy.checkpoint import load_model
    from ssd_deploy.interface import LAYOUT_SSM, read_metadata
    from ssd_deploy.runtime.feeds import feed
    from ssd_deploy.runtime.ort_runner import ort_session

    meta = read_metadata(export_dir)
    swap = meta.ssm_layout != LAYOUT_SSM  # the only other layout is b,h,n,p

    def to_contract(states):
        return {k: np.swapaxes(np.asarray(v), -1, -2) if swap and k.startswith("ssm_state") else np.asarray(v)
                for k, v in states.items()}

    model = load_model(ckpt)
    sess = ort_session(export_dir, model_file=model_file)
    rng = np.random.default_rng()
    q = meta.config.chunk_size
    for length in (1, 7, q, q + 3, 3 * q):
        ids = rng.integers(0, meta.config.vocab_size, (2, length))
        states = random_states(meta, 2, rng)
        got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed(ids, states))))
        logits, ref_states = reference_outputs(model, ids, to_contract(states))
        assert rel_err(got["logits"], logits) < 1e-4, length
        for name, ref in to_contract({k: v.numpy() for k, v in ref_states.items()}).items():
            assert rel_err(got[name], ref) < 1e-4, (length, name)


def assert_graph_decode_matches(plain, graphs, reference, batches=(1, 3, 1), steps=8):
    """Decode steps of ``graphs`` (a backend replaying CUDA graphs) from zero states, one batch size after another
    in the same backend (new states each time), against ``plain`` (the same export without graphs: logits and
    states within 1e-5) and ``reference`` (the float32 PyTorch listings: logits within 1e-4)."""
    rng = np.random.default_rng()
    for batch in batches:
        tokens = rng.integers(0, reference.config.vocab_size, (batch, steps))
        s_ref, s_plain, s_graph = reference.zero_states(batch), plain.zero_states(batch), graphs.zero_states(batch)
        for t in range(steps):
            ids = tokens[:, t:t + 1]
            expected, s_ref = reference.forward(ids, s_ref)
            logits_plain, s_plain = plain.forward(ids, s_plain)
            logits, s_graph = graphs.forward(ids, s_graph)
            assert rel_err(logits, logits_plain) <= 1e-5, (batch, t)
            assert rel_err(logits, expected) <= 1e-4, (batch, t)
        for k, ref in s_plain.items():
            assert rel_err(s_graph[k], ref) <= 1e-5, k


def ort_cuda_available() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def ort_cuda_test(fn):
    """Marks a test of ONNX Runtime's CUDA provider: gpu, skipped without CUDA or without onnxruntime-gpu."""
    for mark in (pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
                 pytest.mark.skipif(not ort_cuda_available(), reason="needs onnxruntime-gpu (CUDAExecutionProvider)")):
        fn = mark(fn)
    return fn


TINY = preset("tiny")
# tiny variants covering every branch of the contract: one group, groups > 1, D per head-dim, dt clamp, untied head
VARIANTS = {
    "g1": dataclasses.replace(TINY, ngroups=1),
    "g4": dataclasses.replace(TINY, ngroups=4, chunk_size=16),
    "hdimD-limit": dataclasses.replace(TINY, D_has_hdim=True, dt_min=0.01, dt_max=0.05, tie_embeddings=False),
}


@pytest.fixture(scope="session")
def make_checkpoint(tmp_path_factory):
    """make_checkpoint(cfg, fmt='hf', seed=0) → path of a random checkpoint, cached per (cfg, fmt, seed)."""
    cache = {}

    def make(cfg=TINY, fmt="hf", seed=0):
        key = (cfg, fmt, seed)
        if key not in cache:
            out = tmp_path_factory.mktemp("ckpt") / f"{fmt}-{seed}"
            cache[key] = write_checkpoint(random_model(cfg, seed), out, fmt)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def make_export(make_checkpoint, tmp_path_factory):
    """make_export(cfg, flavor, dtype='fp32', **options) → (checkpoint, export dir), exported once per session. The
    checkpoint is in mamba_ssm's format where the HF format cannot hold the config (D per head-dim)."""
    from ssd_deploy.onnx.export import ExportOptions, export

    cache = {}

    def make(cfg, flavor="portable", dtype="fp32", **options):
        key = (cfg, flavor, dtype, tuple(sorted(options.items())))
        if key not in cache:
            ckpt = make_checkpoint(cfg, "mamba_ssm" if cfg.D_has_hdim else "hf", seed=11)
            out = tmp_path_factory.mktemp(flavor) / dtype
            cache[key] = ckpt, export(ckpt, out, ExportOptions(flavor=flavor, dtype=dtype, **options)).parent
        return cache[key]

    return make


@pytest.fixture(scope="session")
def tiny_ckpt(make_checkpoint):
    return make_checkpoint()


@pytest.fixture(scope="session")
def tiny_export(tiny_ckpt, tmp_path_factory):
    from ssd_deploy.onnx.export import export

    return export(tiny_ckpt, tmp_path_factory.mktemp("export") / "portable").parent


class RecordingReporter:
    """A progress reporter (ssd_deploy.progress.Reporter's interface) that records what long work says, in order."""

    def __init__(self):
        self.said: list[str] = []

    @contextlib.contextmanager
    def step(self, text):
        self.said.append(text)
        yield lambda more: self.said.append(f"{text}: {more}")

    @contextlib.contextmanager
    def bar(self, text, total):
        self.said.append(f"{text} (0/{total})")
        yield lambda description=None, by=1: self.said.append(description if description else "+1")


@pytest.fixture
def recorder():
    return RecordingReporter()
