"""Triton conv, gated RMSNorm and residual add + RMSNorm (ssd_deploy/ssd/triton/conv.py, norm.py) against float64
listings, and the whole model on the Triton kernels against the model on its PyTorch listings.

CPU (CI): the kernels run in Triton's interpreter, in one subprocess (this file run as a script; Triton reads
TRITON_INTERPRET when it is imported). GPU (``-m gpu``): the same cases at larger shapes, in bf16 too.

Every kernel output starts poisoned with NaN, so an element the kernels never write fails the check. Inputs are
strided views where the model hands the kernels views (x and z are slices of in_proj's output).
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


def strided(t: torch.Tensor, extra: int = 5) -> torch.Tensor:
    """The same values as a view whose rows are wider than the tensor (as a slice of a larger projection)."""
    wide = torch.full((*t.shape[:-1], t.shape[-1] + extra), math.nan, dtype=t.dtype, device=t.device)
    wide[..., extra:] = t
    return wide[..., extra:]


def conv_errors(b, l, d, k, dtype, bias, silu, device, seed) -> dict:
    from ssd_deploy.ssd.triton.conv import causal_conv1d

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, l, d, generator=g).to(dtype).to(device)
    w, bb = torch.randn(d, k, generator=g).to(device), torch.randn(d, generator=g).to(device) if bias else None
    state = torch.randn(b, d, k - 1, generator=g).to(device)
    y = torch.full((b, l, d), math.nan, dtype=dtype, device=device)
    new = torch.full_like(state, math.nan)
    y, new = causal_conv1d(strided(x), w, bb, state, silu, y=y, new_state=new)
    y_ref, s_ref = reference.causal_conv1d(x.double(), w.double(), None if bb is None else bb.double(),
                                           state.double(), silu=silu)
    return {"y": rel_err(y, y_ref), "state": rel_err(new, s_ref)}


def gated_norm_errors(b, l, d, group, dtype, device, seed) -> dict:
    from ssd_deploy.ssd.triton.norm import gated_rmsnorm

    g = torch.Generator().manual_seed(seed)
    y, z = (torch.randn(b, l, d, generator=g).to(dtype).to(device) for _ in range(2))
    w = (1 + 0.2 * torch.randn(d, generator=g)).to(device)
    out = torch.full_like(y, math.nan)
    out = gated_rmsnorm(y, strided(z), w, 1e-5, group, out=out)
    ref = reference.gated_rmsnorm(y.double(), z.double(), w.double(), 1e-5, group)
    return {"out": rel_err(out, ref)}


def add_norm_errors(rows, d, delta_dtype, weight_dtype, device, seed) -> dict:
    from ssd_deploy.ssd.triton.norm import add_rmsnorm

    g = torch.Generator().manual_seed(seed)
    res = torch.randn(rows, d, generator=g).to(device)
    delta = torch.randn(rows, d, generator=g).to(delta_dtype).to(device)
    w = (1 + 0.2 * torch.randn(d, generator=g)).to(weight_dtype).to(device)
    out, res_out = add_rmsnorm(res, delta, w, 1e-5)
    r = res.double() + delta.to(res.dtype).double()
    ref = r * torch.rsqrt(r.pow(2).mean(-1, keepdim=True) + 1e-5) * w.double()
    first, same = add_rmsnorm(res, None, w, 1e-5)  # the first layer: no delta yet
    ref0 = res.double() * torch.rsqrt(res.double().pow(2).mean(-1, keepdim=True) + 1e-5) * w.double()
    return {"out": rel_err(out, ref), "residual": rel_err(res_out, r), "first": rel_err(first, ref0),
            "first_keeps_residual": float(same is not res)}


def scan_strided_errors(b, l, h, p, n, g, dtype, device, seed) -> dict:
    """The scan reading x, B and C in place as slices of one [b, l, width] tensor (as the model passes them)."""
    from ssd_deploy.ssd.triton.scan import ssd_scan

    gen = torch.Generator().manual_seed(seed)
    d, gn = h * p, g * n
    xBC = torch.randn(b, l, d + 2 * gn + 3, generator=gen).to(dtype).to(device)
    x = xBC[..., :d].reshape(b, l, h, p)
    B, C = (xBC[..., d + i * gn:d + (i + 1) * gn].reshape(b, l, g, n) for i in range(2))
    dt = (0.5 * torch.randn(b, l, h, generator=gen)).to(device)
    A, D, dt_bias = -torch.rand(h, generator=gen).to(device) - 0.5, torch.randn(h).to(device), torch.zeros(h).to(device)
    init = torch.randn(b, h, p, n, generator=gen).to(device)
    y, final = ssd_scan(x, dt, A, B, C, D, dt_bias, init, 16, y=torch.full((b, l, h, p), math.nan, dtype=dtype,
                                                                         device=device))
    y_ref, s_ref = reference.ssd_sequential(x.double(), dt.double(), A.double(), B.double(), C.double(), D.double(),
                                            dt_bias.double(), init.double())
    return {"y": rel_err(y, y_ref), "final_state": rel_err(final, s_ref)}


def model_errors(device, dtype, seed=0) -> dict:
    """A tiny model (ngroups 2, D per head) on the kernels vs on its listings: prefill of 7 tokens, then 2 steps."""
    import ssd_deploy.ssd.triton as tri
    from ssd_deploy.checkpoint import random_model
    from ssd_deploy.config import Mamba2Config

    cfg = Mamba2Config(d_model=32, n_layer=2, vocab_size=50, d_state=16, headdim=16, ngroups=2, chunk_size=16)
    model = random_model(cfg, seed).cast(dtype).to(device)
    assert tri.register(device), "register() refused"
    ids = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(seed)).to(device)
    errs = {}

    def run():
        conv, ssm = model.init_states(2, device)
        outs = [model(ids, conv, ssm)]
        for t in range(2):
            outs.append(model(ids[:, t:t + 1], outs[-1][1], outs[-1][2], decode=True))
        return outs

    with torch.no_grad():
        fast = run()
        with tri.disabled(device), torch.device(device):
            slow = run()
    for i, (a, b) in enumerate(zip(fast, slow)):
        errs[f"logits_{i}"] = rel_err(a[0], b[0].double())
        errs[f"ssm_{i}"] = rel_err(torch.stack(a[2]), torch.stack(b[2]).double())
        errs[f"conv_{i}"] = rel_err(torch.stack(a[1]), torch.stack(b[1]).double())
    return errs


# name: (function, args, dtype for the tolerance). l = 1 is decode, l = 2 < k-1 reaches into the carried window.
def cases(device: str, large: bool) -> dict:
    d = 200 if large else 24
    out = {}
    for dt in ([torch.float32, torch.float16, torch.bfloat16] if large else [torch.float32, torch.float16]):
        for l in (1, 2, 7, 300 if large else 40):
            for k in (4, 3):
                out[f"conv_{dt}_l{l}_k{k}"] = (conv_errors, (2, l, d, k, dt, k == 4, l != 7, device, l), dt)
        out[f"gated_{dt}_g4"] = (gated_norm_errors, (2, 5, 4 * d, d, dt, device, 1), dt)
        out[f"gated_{dt}_g1"] = (gated_norm_errors, (1, 1, 48, 48, dt, device, 2), dt)
        out[f"addnorm_{dt}"] = (add_norm_errors, (9, d + 8, dt, torch.float32 if dt == torch.float32 else dt,
                                                  device, 3), dt)
        out[f"scan_strided_{dt}"] = (scan_strided_errors, (2, 300 if large else 37, 4, 16, 16, 2, dt, device, 4),
                                     dt)
    out["model_fp32"] = (model_errors, (device, torch.float32), torch.float32)
    return out


def run_cases(device: str, large: bool) -> dict:
    return {name: fn(*args) for name, (fn, args, _) in cases(device, large).items()}


check = partial(check_kernel_errors, exact={
    "first_keeps_residual": "add_rmsnorm without a delta must hand the residual back unchanged"})


@pytest.fixture(scope="module")
def interpreter_results():
    return triton_interpreter_results(__file__)


@needs_triton
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(cases("cpu", large=False)))
def test_interpreter_parity(interpreter_results, name):
    check(name, interpreter_results[name], cases("cpu", large=False)[name][2])


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
