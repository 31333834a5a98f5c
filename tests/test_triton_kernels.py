"""Triton SSD kernels (ssd_deploy/ssd/triton) against the reference listings.

CPU (CI): the kernels run in Triton's interpreter. Triton reads TRITON_INTERPRET when it is imported, so the cases
run in one subprocess (this file run as a script) and the rest of the suite keeps its own Triton, if any. Tiny
shapes, fp32 and fp16 (the interpreter's bf16 dot is broken: it returns garbage for plain bf16 matrices).

GPU (``-m gpu``): parity at moderate shapes against the float64 sequential recurrence, at the docs/performance.md shapes
against the fp32 chunked listing fed the same (rounded) inputs, the decode step, and dispatch through the ops.

Every kernel output starts poisoned with NaN, so an element the kernels never write fails the check.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# rel_err: NaN for any NaN (an unwritten poisoned element, say), which fails every tolerance
from conftest import rel_err, triton_interpreter_results
from ssd_deploy.ssd import reference

REPO = Path(__file__).resolve().parents[1]
HAVE_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")
TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}


def make_inputs(b, l, h, p, n, g, dtype, device="cpu", d_has_hdim=False, softplus=True, seed=0):
    """Mamba-2-like random inputs: dt' in about [1e-3, 1e-1], A in [-16, -1]; activations rounded to ``dtype``."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen)

    dt_target = torch.exp(torch.rand(h, generator=gen) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    if softplus:
        dt = 0.5 * rnd(b, l, h)
        dt_bias = dt_target + torch.log(-torch.expm1(-dt_target))  # inverse softplus, as mamba_ssm's init
    else:
        dt = dt_target * torch.rand(b, l, h, generator=gen) * 2
        dt_bias = torch.zeros(h)
    t = dict(x=rnd(b, l, h, p), dt=dt, A=-torch.exp(torch.rand(h, generator=gen) * math.log(16)),
             B=rnd(b, l, g, n), C=rnd(b, l, g, n), D=rnd(h, p) if d_has_hdim else rnd(h), dt_bias=dt_bias,
             initial_state=rnd(b, h, p, n))
    for k in ("x", "dt", "B", "C"):
        t[k] = t[k].to(dtype)
    return {k: v.to(device) for k, v in t.items()}


def as64(t):
    return {k: (v.double() if v is not None else None) for k, v in t.items()}


def run_scan(t, chunk_size, **attrs):
    """The Triton scan on poisoned outputs."""
    from ssd_deploy.ssd.triton.scan import ssd_scan

    b, l, h, p = t["x"].shape
    y = torch.full_like(t["x"], math.nan)
    final = torch.full((b, h, p, t["B"].shape[-1]), math.nan, device=t["x"].device)
    return ssd_scan(**t, chunk_size=chunk_size, **attrs, y=y, final_state=final)


def step_args(t, at: int):
    """Token ``at`` of the scan inputs, shaped for ssd_step, with a fresh random state."""
    b, _, h, p = t["x"].shape
    state = torch.randn(b, h, p, t["B"].shape[-1], generator=torch.Generator().manual_seed(at)).to(t["x"].device)
    return dict(state=state, x=t["x"][:, at], dt=t["dt"][:, at], A=t["A"], B=t["B"][:, at], C=t["C"][:, at],
                D=t["D"], dt_bias=t["dt_bias"])


def step_errors(t, attrs) -> dict:
    """The Triton step (out of place and in place, poisoned) against the float64 reference step."""
    from ssd_deploy.ssd.triton.step import ssd_step

    s = step_args(t, at=t["x"].shape[1] - 1)
    y_ref, s_ref = reference.ssd_step(**as64(s), **attrs)
    y = torch.full_like(s["x"], math.nan)
    y, new = ssd_step(**s, **attrs, y=y, state_out=torch.full_like(s["state"], math.nan))
    inplace = s["state"].clone()
    y2, new2 = ssd_step(**{**s, "state": inplace}, **attrs, state_out=inplace)
    return {"step_y": rel_err(y, y_ref), "step_state": rel_err(new, s_ref), "step_inplace_y": rel_err(y2, y_ref),
            "step_inplace_state": rel_err(new2, s_ref), "step_inplace_aliases": float(new2.data_ptr() != inplace.data_ptr())}


# name: (b, l, h, p, n, g, chunk_size, dtype, options). l = 37, 50, 300 are not multiples of the chunk; l = 1 is
# decode through the scan; dt = 25 in "g1" crosses the softplus threshold (20).
INTERPRETER_CASES = {
    "g1": (2, 37, 4, 8, 16, 1, 16, torch.float32, dict(big_dt=True)),
    "g2_hdimD_clamp": (1, 50, 4, 16, 32, 2, 32, torch.float32, dict(d_has_hdim=True, dt_min=0.01, dt_max=0.05)),
    "no_softplus_no_init": (1, 20, 2, 16, 16, 2, 16, torch.float32, dict(softplus=False, no_init=True)),
    "l1": (2, 1, 2, 16, 16, 2, 16, torch.float32, {}),
    "chunk256": (1, 300, 2, 16, 16, 1, 256, torch.float32, {}),
    "fp16": (1, 40, 4, 16, 16, 2, 16, torch.float16, {}),
}


def case_errors(b, l, h, p, n, g, chunk_size, dtype, opts, device="cpu") -> dict:
    """All relative errors of one case (scan, step, and the registered op against the direct call)."""
    t = make_inputs(b, l, h, p, n, g, dtype, device, d_has_hdim=opts.get("d_has_hdim", False),
                    softplus=opts.get("softplus", True))
    if opts.get("big_dt"):
        t["dt"][:, ::5] = 25.0
    if opts.get("no_init"):
        t["initial_state"] = None
    attrs = dict(dt_softplus=opts.get("softplus", True), dt_min=opts.get("dt_min", 0.0),
                 dt_max=opts.get("dt_max", math.inf))
    y, final = run_scan(t, chunk_size, **attrs)
    with torch.device(device):  # the reference listings create some tensors without a device
        y_ref, s_ref = reference.ssd_sequential(**as64(t), **attrs)
    errs = {"y": rel_err(y, y_ref), "final_state": rel_err(final, s_ref)}
    errs.update(step_errors(t, attrs))

    import ssd_deploy.ssd.triton as tri

    assert tri.register(device), "register() refused"

    def op():
        return torch.ops.ssd_deploy.ssd_scan(t["x"], t["dt"], t["A"], t["B"], t["C"], t["D"], t["dt_bias"],
                                             t["initial_state"], chunk_size, attrs["dt_softplus"], attrs["dt_min"],
                                             attrs["dt_max"])

    y_op, s_op = op()
    errs["op_equals_kernel"] = float(torch.equal(y_op, y) and torch.equal(s_op, final))
    with tri.disabled(device), torch.device(device):
        y_off, s_off = op()
        y_listing, s_listing = reference.ssd_chunked(**t, chunk_size=chunk_size, **attrs)
    errs["disabled_runs_listing"] = float(torch.equal(y_off, y_listing) and torch.equal(s_off, s_listing))
    errs["reenabled_runs_kernel"] = float(torch.equal(op()[0], y))
    return errs


# packed (docs/op-contracts.md, "Packed sequences"): lengths, h, p, n, g, chunk_size, dtype. Boundaries inside
# chunks, sequences shorter than a chunk, length 1 among long ones, equal lengths (== the unpacked kernel).
PACKED_CASES = {
    "packed_mixed": ([5, 1, 37, 16, 2, 20], 4, 16, 16, 2, 16, torch.float32),
    "packed_ones": ([1, 1, 1], 2, 16, 16, 1, 16, torch.float32),
    "packed_equal": ([19, 19], 4, 16, 16, 2, 16, torch.float32),
    "packed_fp16_hdimD": ([3, 40, 9], 4, 16, 32, 4, 32, torch.float16),
}


def packed_errors(lengths, h, p, n, g, chunk_size, dtype, device="cpu", seed=0) -> dict:
    """The Triton packed scan (poisoned outputs) against the float64 recurrence on each sequence alone, the
    registered op against the direct call, and equal lengths against the unpacked kernel (bit for bit)."""
    from ssd_deploy.ssd.triton.scan import ssd_scan, ssd_scan_packed

    total = sum(lengths)
    t = make_inputs(1, total, h, p, n, g, dtype, device, d_has_hdim=dtype == torch.float16, seed=seed)
    del t["initial_state"]
    init = torch.randn(len(lengths), h, p, n, generator=torch.Generator().manual_seed(seed + 1)).to(device)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], device=device)
    y, final = ssd_scan_packed(**t, initial_states=init, cu_seqlens=cu, chunk_size=chunk_size,
                               y=torch.full_like(t["x"], math.nan), final_states=torch.full_like(init, math.nan))
    with torch.device(device):
        y_ref, s_ref = reference.ssd_sequential_packed(**as64(t), cu_seqlens=cu, initial_states=init.double())
    errs = {"y": rel_err(y, y_ref), "final_state": rel_err(final, s_ref)}
    import ssd_deploy.ssd.triton as tri

    assert tri.register(device), "register() refused"
    y_op, s_op = torch.ops.ssd_deploy.ssd_scan_packed(t["x"], t["dt"], t["A"], t["B"], t["C"], t["D"], t["dt_bias"],
                                                      init, cu, chunk_size, True, 0.0, math.inf)
    errs["op_equals_kernel"] = float(torch.equal(y_op, y) and torch.equal(s_op, final))
    if len(set(lengths)) == 1:
        k, l = len(lengths), lengths[0]
        rows = {key: (v.reshape(k, l, *v.shape[2:]) if key in ("x", "dt", "B", "C") else v) for key, v in t.items()}
        yu, su = ssd_scan(**rows, initial_state=init, chunk_size=chunk_size)
        errs["equal_lengths_are_unpacked"] = float(torch.equal(yu.reshape(y.shape), y) and torch.equal(su, final))
    return errs


@pytest.fixture(scope="module")
def interpreter_results():
    return triton_interpreter_results(__file__)


@needs_triton
@pytest.mark.parametrize("name", sorted(INTERPRETER_CASES))
def test_interpreter_parity(interpreter_results, name):
    errs = interpreter_results[name]
    tol = TOL[INTERPRETER_CASES[name][7]]
    for key in ("y", "final_state", "step_y", "step_state", "step_inplace_y", "step_inplace_state"):
        assert errs[key] <= tol, f"{name} {key}: relative error {errs[key]} > {tol}"  # NaN fails too
    assert errs["step_inplace_aliases"] == 0.0, "the in-place step returned another tensor"
    assert errs["op_equals_kernel"] == 1.0, "torch.ops.ssd_deploy.ssd_scan did not run the Triton kernels"
    assert errs["disabled_runs_listing"] == 1.0, "inside triton.disabled() the op did not run its listing"
    assert errs["reenabled_runs_kernel"] == 1.0, "after triton.disabled() the op did not return to the kernels"


@needs_triton
@pytest.mark.parametrize("name", sorted(PACKED_CASES))
def test_interpreter_packed_parity(interpreter_results, name):
    errs = interpreter_results[name]
    tol = TOL[PACKED_CASES[name][6]]
    for key in ("y", "final_state"):
        assert errs[key] <= tol, f"{name} {key}: relative error {errs[key]} > {tol}"
    assert errs["op_equals_kernel"] == 1.0, "torch.ops.ssd_deploy.ssd_scan_packed did not run the Triton kernels"
    assert errs.get("equal_lengths_are_unpacked", 1.0) == 1.0, "equal lengths differ from the unpacked kernel"


def test_import_does_not_import_triton():
    code = "import sys, ssd_deploy, ssd_deploy.ssd.ops, ssd_deploy.ssd.triton; print('triton' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# ---------------------------------------------------------------- GPU

def gpu_test(fn):
    for mark in (pytest.mark.gpu, needs_triton,
                 pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")):
        fn = mark(fn)
    return fn


DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# b, l, h, p, n, g of docs/performance.md
REFERENCE_SHAPES = [(8, 2048, 24, 64, 128, 1), (4, 4096, 80, 64, 128, 1), (1, 8192, 128, 64, 128, 8),
                 (4, 16384, 128, 64, 128, 8)]


@gpu_test
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(2, 700, 8, 64, 128, 2, 256), (3, 300, 4, 64, 64, 4, 64)], ids=str)
def test_gpu_scan_vs_sequential(shape, dtype):
    b, l, h, p, n, g, chunk = shape
    errs = case_errors(b, l, h, p, n, g, chunk, dtype, dict(d_has_hdim=h == 8), device="cuda")
    for key in ("y", "final_state", "step_y", "step_state", "step_inplace_y", "step_inplace_state"):
        assert errs[key] <= TOL[dtype], f"{key}: relative error {errs[key]} > {TOL[dtype]}"
    assert errs["op_equals_kernel"] == 1.0


@gpu_test
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", REFERENCE_SHAPES, ids=str)
def test_gpu_scan_reference_shapes(shape, dtype):
    t = make_inputs(*shape, dtype, "cuda")
    y, final = run_scan(t, 256)
    rounded = {k: (v.float() if v is not None else None) for k, v in t.items()}  # same values, fp32 math
    with torch.device("cuda"):
        y_ref, s_ref = reference.ssd_chunked(**rounded, chunk_size=256)
    tol = TOL[dtype]
    assert rel_err(y, y_ref) <= tol
    assert rel_err(final, s_ref) <= tol


@gpu_test
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("b", [1, 16, 64])
def test_gpu_step(b, dtype):
    t = make_inputs(b, 1, 128, 64, 128, 8, dtype, "cuda", d_has_hdim=b == 16)
    errs = step_errors(t, dict(dt_softplus=True, dt_min=0.0, dt_max=math.inf))
    for key, err in errs.items():
        if key != "step_inplace_aliases":
            assert err <= TOL[dtype], f"{key}: relative error {err} > {TOL[dtype]}"
    assert errs["step_inplace_aliases"] == 0.0


@gpu_test
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(8, 64, 128, 2, 256), (4, 64, 64, 4, 64)], ids=str)  # h, p, n, g, chunk
def test_gpu_packed_scan_vs_sequential(shape, dtype):
    h, p, n, g, chunk = shape
    lengths = [300, 1, 17, 256, 2, 513, 64]
    errs = packed_errors(lengths, h, p, n, g, chunk, dtype, "cuda")
    for key in ("y", "final_state"):
        assert errs[key] <= TOL[dtype], f"{key}: relative error {errs[key]} > {TOL[dtype]}"
    assert errs["op_equals_kernel"] == 1.0
    assert packed_errors([300] * 3, h, p, n, g, chunk, dtype, "cuda")["equal_lengths_are_unpacked"] == 1.0


@gpu_test
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gpu_packed_scan_realistic_mix(dtype):
    """16 prompts of lengths drawn from 16..4096 at 2.7b-like heads, against the fp32 packed listing."""
    from ssd_deploy.ssd.triton.scan import ssd_scan_packed

    lengths = torch.randint(16, 4097, (16,), generator=torch.Generator().manual_seed(0)).tolist()
    t = make_inputs(1, sum(lengths), 80, 64, 128, 1, dtype, "cuda")
    init = torch.randn(16, 80, 64, 128, device="cuda")
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], device="cuda")
    del t["initial_state"]
    y, final = ssd_scan_packed(**t, initial_states=init, cu_seqlens=cu, chunk_size=256)
    rounded = {k: v.float() for k, v in t.items()}
    y_ref, s_ref = reference.ssd_chunked_packed(**rounded, cu_seqlens=cu, initial_states=init, chunk_size=256)
    assert rel_err(y, y_ref) <= TOL[dtype] and rel_err(final, s_ref) <= TOL[dtype]


if __name__ == "__main__":  # the interpreter run (TRITON_INTERPRET=1, set by interpreter_results)
    assert os.environ.get("TRITON_INTERPRET") == "1"
    results = {name: case_errors(*case) for name, case in INTERPRETER_CASES.items()}
    results.update({name: packed_errors(*case) for name, case in PACKED_CASES.items()})
    print(json.dumps(results))
