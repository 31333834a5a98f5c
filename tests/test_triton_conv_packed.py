"""The Triton packed conv (ssd_deploy/ssd/triton/conv_packed.py) against the float64 unpacked listing run on each
sequence alone: boundaries anywhere, sequences shorter than the conv width, length-1 sequences; a strided x as the
model hands it; outputs poisoned with NaN. CPU (CI): Triton's interpreter in a subprocess (this file run as a
script); GPU (``-m gpu``): larger shapes, bf16 too."""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path

import pytest
import torch

from conftest import rel_err, triton_interpreter_results
from ssd_deploy.ssd import reference

REPO = Path(__file__).resolve().parents[1]
HAVE_TRITON = importlib.util.find_spec("triton") is not None
TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}
# lengths, d, k, dtype, bias, silu
CASES = {
    "mixed": ([5, 1, 37, 2, 3, 20], 40, 4, torch.float32, True, True),
    "ones": ([1, 1, 1], 24, 4, torch.float32, False, True),
    "k2_fp16": ([9, 2, 17], 33, 2, torch.float16, True, False),
}


def errors(lengths, d, k, dtype, bias, silu, device="cpu", seed=0) -> dict:
    from ssd_deploy.ssd.triton.conv_packed import causal_conv1d_packed

    g = torch.Generator().manual_seed(seed)
    total, n = sum(lengths), len(lengths)
    x = torch.randn(1, total, d, generator=g).to(dtype).to(device)
    wide = torch.full((1, total, d + 3), math.nan, dtype=dtype, device=device)
    wide[..., 3:] = x
    w = torch.randn(d, k, generator=g).to(device)
    b = torch.randn(d, generator=g).to(device) if bias else None
    states = torch.randn(n, d, k - 1, generator=g).to(device)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], device=device)
    y, new = causal_conv1d_packed(wide[..., 3:], w, b, states, cu, silu, y=torch.full_like(x, math.nan),
                                  new_states=torch.full_like(states, math.nan))
    y_ref, s_ref = reference.causal_conv1d_sequential_packed(x.double(), w.double(), None if b is None else b.double(),
                                                             states.double(), cu, silu=silu)
    out = {"y": rel_err(y, y_ref), "state": rel_err(new, s_ref)}
    import ssd_deploy.ssd.triton as tri

    assert tri.register(device)
    y_op, s_op = torch.ops.ssd_deploy.causal_conv1d_packed(x, w, b, states, cu, silu)
    out["op_equals_kernel"] = float(torch.equal(y_op, y) and torch.equal(s_op, new))
    return out


@pytest.fixture(scope="module")
def interpreter_results():
    return triton_interpreter_results(__file__)


@pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")
@pytest.mark.parametrize("name", sorted(CASES))
def test_interpreter_packed_conv(interpreter_results, name):
    errs, tol = interpreter_results[name], TOL[CASES[name][3]]
    assert errs["y"] <= tol and errs["state"] <= tol, errs  # NaN fails
    assert errs["op_equals_kernel"] == 1.0, "torch.ops.ssd_deploy.causal_conv1d_packed did not run the kernel"


@pytest.mark.gpu
@pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gpu_packed_conv(dtype):
    lengths = torch.randint(1, 4097, (16,), generator=torch.Generator().manual_seed(0)).tolist() + [1, 2, 3]
    errs = errors(lengths, 1792, 4, dtype, True, True, device="cuda")
    assert errs["y"] <= TOL[dtype] and errs["state"] <= TOL[dtype], errs
    assert errs["op_equals_kernel"] == 1.0


if __name__ == "__main__":  # the interpreter run (TRITON_INTERPRET=1, set by interpreter_results)
    assert os.environ.get("TRITON_INTERPRET") == "1"
    print(json.dumps({name: errors(*case) for name, case in CASES.items()}))
