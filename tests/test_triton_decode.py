"""The in-place decode kernels (ssd_deploy/ssd/triton/decode.py: conv window and SSM step rewritten in place, A =
-exp(A_log) in the kernel; fused in one kernel, and in two) against the float64 listings, and the model's in-place
decode on them against its plain decode on the listings.

CPU (CI): the kernels run in Triton's interpreter, in one subprocess (this file run as a script; Triton reads
TRITON_INTERPRET when it is imported). GPU (``-m gpu``): the same cases at larger shapes, bf16 too (the
interpreter rounds bf16 wrongly, see ``cases``).

Outputs start poisoned with NaN; the states are checked in the very tensors handed in (they are rewritten). The
kernels are also compiled for sm_90 on the CPU (Triton's pipeline and ptxas, no GPU), which the interpreter skips.
"""

from __future__ import annotations

from functools import partial
import importlib.util
import json
import math
import os
from pathlib import Path

import pytest
import torch

from conftest import check_kernel_errors, rel_err, triton_interpreter_results
from ssd_deploy.ssd import reference

REPO = Path(__file__).resolve().parents[1]
HAVE_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")


def strided_rows(t: torch.Tensor, extra: int = 5) -> torch.Tensor:
    """The same values as a view whose rows are wider (a slice of a larger projection, as the model passes)."""
    wide = torch.full((*t.shape[:-1], t.shape[-1] + extra), math.nan, dtype=t.dtype, device=t.device)
    wide[..., :t.shape[-1]] = t
    return wide[..., :t.shape[-1]]


def conv_step_errors(b, d, k, dtype, bias, device, seed) -> dict:
    from ssd_deploy.ssd.triton.conv import causal_conv1d_step_

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, d, generator=g).to(dtype).to(device)
    w = torch.randn(d, k, generator=g).to(device)
    bb = torch.randn(d, generator=g).to(device) if bias else None
    state = torch.randn(b, d, k - 1, generator=g).to(device)
    old = state.clone()
    y = causal_conv1d_step_(strided_rows(x), w, bb, state, True,
                            y=torch.full((b, d), math.nan, dtype=dtype, device=device))
    y_ref, s_ref = reference.causal_conv1d(x[:, None].double(), w.double(), None if bb is None else bb.double(),
                                           old.double(), silu=True)
    return {"y": rel_err(y, y_ref[:, 0]), "state": rel_err(state, s_ref)}


def decode_step_errors(b, h, p, n, g, k, dtype, D_hdim, dt_limit, fused, device, seed) -> dict:
    """The conv window and the SSM step in place (A_log in), fused in one kernel or in two, against the conv
    listing then the float64 step; the fused kernel's counters must be back to zero."""
    from ssd_deploy.ssd.triton import decode

    gen = torch.Generator().manual_seed(seed)
    d, gn = h * p, g * n
    xBC = torch.randn(b, d + 2 * gn, generator=gen).to(dtype).to(device)
    dt = (0.5 * torch.randn(b, h, generator=gen)).to(dtype).to(device)
    w, wb = torch.randn(d + 2 * gn, k, generator=gen).to(device), torch.randn(d + 2 * gn, generator=gen).to(device)
    A_log = torch.randn(h, generator=gen).to(device)
    D = torch.randn(*((h, p) if D_hdim else (h,)), generator=gen).to(device)
    dt_bias = (0.3 * torch.randn(h, generator=gen)).to(device)
    conv = torch.randn(b, d + 2 * gn, k - 1, generator=gen).to(device)
    ssm = torch.randn(b, h, p, n, generator=gen).to(device)
    conv0, ssm0 = conv.clone(), ssm.clone()
    dt_min, dt_max = (0.05, 0.5) if dt_limit else (0.0, math.inf)
    y = decode.decode_step_(strided_rows(xBC), strided_rows(dt), conv, ssm, w, wb, A_log, D, dt_bias, headdim=p,
                            ngroups=g, dt_min=dt_min, dt_max=dt_max, fused=fused)
    xc, conv_ref = reference.causal_conv1d(xBC[:, None].double(), w.double(), wb.double(), conv0.double(), silu=True)
    xc = xc[:, 0].to(dtype).double()  # the conv's output is rounded to the activations' dtype, as the ops do
    x, B, C = torch.split(xc, [d, gn, gn], dim=-1)
    y_ref, ssm_ref = reference.ssd_step(ssm0.double(), x.reshape(b, h, p), dt.double(), -torch.exp(A_log.double()),
                                        B.reshape(b, g, n), C.reshape(b, g, n), D.double(), dt_bias.double(),
                                        dt_min=dt_min, dt_max=dt_max)
    errs = {"y": rel_err(y, y_ref), "conv_state": rel_err(conv, conv_ref), "ssm_state": rel_err(ssm, ssm_ref)}
    if fused:
        errs["counters_left"] = float(decode._counters_on(xBC.device).abs().sum())
    return errs


def model_errors(device, dtype, fused, seed=0) -> dict:
    """A tiny model (ngroups 2, D per head-dim) decoding in place on the kernels (the fused decode kernel, or the
    two-launch one: ``decode_fused`` disabled) against its plain decode on the listings: prefill of 7 tokens, then
    3 steps at batch 3."""
    from contextlib import nullcontext

    import ssd_deploy.ssd.triton as tri
    from ssd_deploy.checkpoint import random_model
    from ssd_deploy.config import Mamba2Config

    cfg = Mamba2Config(d_model=32, n_layer=2, vocab_size=50, d_state=16, headdim=16, ngroups=2, chunk_size=16,
                       D_has_hdim=True)
    model = random_model(cfg, seed).cast(dtype).to(device)
    assert tri.register(device), "register() refused"
    ids = torch.randint(0, 50, (3, 7), generator=torch.Generator().manual_seed(seed)).to(device)
    errs = {}
    with torch.no_grad():
        _, conv, ssm = model(ids, *model.init_states(3, device))
        mine = [t.clone() for t in conv], [t.clone() for t in ssm]
        for t in range(3):
            with tri.disabled(device):
                ref, conv, ssm = model(ids[:, t:t + 1], conv, ssm, decode=True)
            with nullcontext() if fused else tri.disabled(device, ("decode_fused",)):
                logits, *out = model(ids[:, t:t + 1], *mine, decode=True, in_place=True)
            errs[f"in_place_{t}"] = float(not all(a is b for a, b in zip(out[0] + out[1], mine[0] + mine[1])))
            errs[f"logits_{t}"] = rel_err(logits, ref.double())
            errs[f"conv_{t}"] = rel_err(torch.stack(mine[0]), torch.stack(conv).double())
            errs[f"ssm_{t}"] = rel_err(torch.stack(mine[1]), torch.stack(ssm).double())
    return errs


def cases(device: str, large: bool) -> dict:
    # bf16 on the GPU only: Triton 3.9's interpreter truncates casts to bf16 instead of rounding (half the
    # elements one ulp off, 0.4% each: measured), which alone takes the step past the 1e-2 tolerance
    dtypes = [torch.float32, torch.float16, torch.bfloat16] if large else [torch.float32, torch.float16]
    out = {}
    for dt in dtypes:
        for k in (4, 3, 2):
            out[f"conv_step_{dt}_k{k}"] = (conv_step_errors, (2, 300 if k == 4 else 24, k, dt, k != 3, device, k), dt)
        # h p n g: groups > 1; p and n not powers of two (masks)
        # several programs per group (row blocks of 4, p = 6 or 64): the fused kernel's last-program logic
        for fused in (True, False):
            f = "fused" if fused else "two"
            shape = (8, 64, 128, 2) if large else (4, 6, 12, 2)
            out[f"decode_{f}_{dt}_hdimD_limit"] = (decode_step_errors, (3, *shape, 4, dt, True, True, fused, device,
                                                                        1), dt)
            shape = (24, 64, 128, 1) if large else (2, 8, 16, 1)
            out[f"decode_{f}_{dt}_g1"] = (decode_step_errors, (1, *shape, 4, dt, False, False, fused, device, 2), dt)
    for fused in (True, False):
        out[f"model_{'fused' if fused else 'two'}_fp32"] = (model_errors, (device, torch.float32, fused),
                                                            torch.float32)
    return out


def run_cases(device: str, large: bool) -> dict:
    return {name: fn(*args) for name, (fn, args, _) in cases(device, large).items()}


check = partial(check_kernel_errors, exact={
    "in_place": "the in-place decode must return the states it was given",
    "counters_left": "the fused kernel must reset its counters"})


@pytest.fixture(scope="module")
def interpreter_results():
    return triton_interpreter_results(__file__)


@needs_triton
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(cases("cpu", large=False)))
def test_interpreter_parity(interpreter_results, name):
    check(name, interpreter_results[name], cases("cpu", large=False)[name][2])


def sm90_ptx(kernel, types: dict, constexprs: dict, num_warps: int = 4, divisible: tuple[str, ...] = (),
             num_stages: int = 3) -> str:
    """The kernel compiled for sm_90 by Triton's own pipeline (down to a cubin with the ptxas Triton ships), no GPU
    needed: what the interpreter cannot check (types and shapes of compiled mode, the barriers and atomics).
    ``divisible``: arguments specialised as multiples of 16 (pointers: 16-byte aligned), as a launch does for such
    values: what vector loads depend on."""
    import inspect

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = list(inspect.signature(kernel.fn).parameters)
    signature = {n: "constexpr" if n in constexprs else types.get(n, "i32") for n in names}
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in divisible}
    compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs),
                              target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps, "num_stages": num_stages})
    assert compiled.asm.get("cubin"), "no cubin"
    return compiled.asm["ptx"]


@needs_triton
@pytest.mark.slow
def test_kernels_compile_for_sm90():
    """The fused decode kernel (bf16 activations, bias, D per head-dim), the in-place conv step and the SSM step
    with A_log compile for Hopper; the fused kernel counts programs in with one thread's atomic after a barrier, and
    as a programmatic dependent launch waits for the previous kernel first."""
    pytest.importorskip("triton.backends.nvidia", reason="Triton's NVIDIA backend is not installed")
    from ssd_deploy.ssd.triton.conv import _conv_step_kernel
    from ssd_deploy.ssd.triton.decode import _decode_kernel
    from ssd_deploy.ssd.triton.step import _step_kernel

    act, f32 = "*bf16", "*fp32"
    ptx = sm90_ptx(_decode_kernel, {
        "xBC_ptr": act, "dt_ptr": act, "y_ptr": act, "count_ptr": "*i32", "dt_min": "fp32", "dt_max": "fp32",
        "stride_xb": "i64", "stride_dtb": "i64", **{n: f32 for n in ("w_ptr", "bias_ptr", "conv_ptr", "state_ptr",
                                                                   "A_log_ptr", "D_ptr", "dt_bias_ptr")}},
        {"HAS_BIAS": True, "D_HAS_HDIM": True, "K": 4, "BLOCK_W": 4, "BLOCK_P": 8, "BLOCK_N": 128, "PDL": True})
    counting = ptx.index("atom.global.gpu.acq_rel.add")
    assert "bar.sync" in ptx[:counting] and "atom.global.gpu.acq_rel.exch" in ptx[counting:]
    # as a programmatic dependent launch: it waits for the previous kernel before it reads anything
    assert ptx.index("griddepcontrol.wait") < ptx.index("ld.global")
    sm90_ptx(_conv_step_kernel, {"x_ptr": act, "w_ptr": f32, "bias_ptr": f32, "state_ptr": f32, "y_ptr": act,
                                 "stride_xb": "i64"},
             {"HAS_BIAS": True, "SILU": True, "K": 4, "BLOCK_W": 4, "BLOCK_D": 256})
    sm90_ptx(_step_kernel, {"state_ptr": f32, "x_ptr": act, "dt_ptr": act, "A_ptr": f32, "B_ptr": act, "C_ptr": act,
                            "D_ptr": f32, "dt_bias_ptr": f32, "y_ptr": act, "out_state_ptr": f32, "dt_min": "fp32",
                            "dt_max": "fp32", "stride_xb": "i64", "stride_dtb": "i64", "stride_Bb": "i64",
                            "stride_Cb": "i64"},
             {"DT_SOFTPLUS": True, "D_HAS_HDIM": False, "A_LOG": True, "BLOCK_P": 8, "BLOCK_N": 128})


@pytest.mark.gpu
@needs_triton
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", sorted(cases("cuda", large=True)))
def test_gpu_parity(name):
    fn, args, dtype = cases("cuda", large=True)[name]
    check(name, fn(*args), dtype)


if __name__ == "__main__":  # the interpreter run (TRITON_INTERPRET=1, set by interpreter_results)
    assert os.environ.get("TRITON_INTERPRET") == "1"
    print(json.dumps(run_cases("cpu", large=False)))
