"""The reference listings against the float64 sequential recurrence (docs/op-contracts.md, docs/verification.md)."""

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import rel_err
from ssd_deploy.ssd import reference as R


def ssd_inputs(b, l, h, p, g, n, dtype=torch.float64, hdim_D=False, dt_shift=-2.0, seed=None):
    gen = torch.Generator().manual_seed(seed if seed is not None else torch.seed() % 2**31)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    return dict(x=r(b, l, h, p), dt=r(b, l, h) + dt_shift, A=-(torch.rand(h, generator=gen, dtype=dtype) * 15 + 1),
                B=r(b, l, g, n), C=r(b, l, g, n), D=r(h, p) if hdim_D else r(h), dt_bias=0.5 * r(h),
                initial_state=r(b, h, p, n))


SHAPES = [  # b, l, h, p, g, n, chunk: lengths 1, 7, Q, Q+3, 3Q; ngroups 1 and > 1
    (2, 1, 4, 8, 1, 5, 16), (2, 7, 4, 8, 2, 5, 16), (1, 16, 6, 4, 3, 8, 16), (2, 19, 4, 8, 2, 5, 16),
    (1, 48, 8, 4, 8, 4, 16), (3, 35, 4, 8, 4, 16, 8),
]


@pytest.mark.parametrize("b,l,h,p,g,n,q", SHAPES)
@pytest.mark.parametrize("hdim_D", [False, True])
def test_chunked_equals_sequential(b, l, h, p, g, n, q, hdim_D):
    inp = ssd_inputs(b, l, h, p, g, n, hdim_D=hdim_D)
    y0, s0 = R.ssd_sequential(**inp)
    y64, s64 = R.ssd_chunked(**inp, chunk_size=q)
    assert rel_err(y64, y0) < 1e-12 and rel_err(s64, s0) < 1e-12
    y32, s32 = R.ssd_chunked(**{k: v.float() for k, v in inp.items()}, chunk_size=q)
    assert y32.dtype == torch.float32 and s32.dtype == torch.float32
    assert rel_err(y32, y0) < 1e-5 and rel_err(s32, s0) < 1e-5


def test_chunked_low_precision_inputs_accumulate_in_fp32():
    inp = ssd_inputs(2, 37, 4, 8, 2, 16, seed=3)
    y0, s0 = R.ssd_sequential(**inp)
    for dtype in (torch.float16, torch.bfloat16):
        low = {k: (v.to(dtype) if k != "initial_state" else v.float()) for k, v in inp.items()}
        y, s = R.ssd_chunked(**low, chunk_size=16)
        assert y.dtype == dtype and s.dtype == torch.float32
        assert rel_err(y, y0) < 1e-2 and rel_err(s, s0) < 1e-2


def test_no_initial_state_means_zeros():
    inp = ssd_inputs(2, 9, 4, 8, 2, 5)
    zeros = dict(inp, initial_state=torch.zeros_like(inp["initial_state"]))
    y0, s0 = R.ssd_sequential(**zeros)
    y1, s1 = R.ssd_chunked(**dict(inp, initial_state=None), chunk_size=4)
    assert rel_err(y1, y0) < 1e-12 and rel_err(s1, s0) < 1e-12


def test_dt_processing_softplus_threshold_and_clamp():
    dt = torch.tensor([-30.0, -1.0, 0.0, 19.9, 20.0, 20.5, 50.0], dtype=torch.float64)
    bias = torch.zeros(1, dtype=torch.float64)
    got = R.process_dt(dt, bias, True, 0.0, math.inf)
    expect = torch.where(dt <= 20, torch.log1p(torch.exp(dt)), dt)
    assert torch.equal(got, expect)
    assert torch.equal(R.process_dt(dt, bias, False, 0.0, math.inf), dt.clamp(min=0))
    clamped = R.process_dt(dt, bias, True, 0.5, 21.0)
    assert clamped.min() == 0.5 and clamped.max() == 21.0


@pytest.mark.parametrize("dt_min,dt_max", [(0.0, math.inf), (0.05, 0.2)])
def test_dt_limit_reaches_the_scan(dt_min, dt_max):
    inp = ssd_inputs(1, 21, 4, 8, 2, 5, dt_shift=0.0)
    y0, s0 = R.ssd_sequential(**inp, dt_min=dt_min, dt_max=dt_max)
    y1, s1 = R.ssd_chunked(**inp, chunk_size=8, dt_min=dt_min, dt_max=dt_max)
    assert rel_err(y1, y0) < 1e-12 and rel_err(s1, s0) < 1e-12
    if dt_max < math.inf:
        yu, _ = R.ssd_sequential(**inp)
        assert rel_err(yu, y0) > 1e-3  # the clamp changes the result on these inputs


def test_step_equals_scan_of_length_one():
    inp = ssd_inputs(3, 1, 8, 4, 2, 6)
    y0, s0 = R.ssd_sequential(**inp)
    y1, s1 = R.ssd_step(inp["initial_state"], inp["x"][:, 0], inp["dt"][:, 0], inp["A"], inp["B"][:, 0],
                        inp["C"][:, 0], inp["D"], inp["dt_bias"])
    assert rel_err(y1, y0[:, 0]) < 1e-12 and rel_err(s1, s0) < 1e-12


@pytest.mark.parametrize("l", [1, 2, 3, 11])  # l < k-1 included
def test_causal_conv_with_state_equals_whole_sequence(l):
    b, d, k = 2, 10, 4
    x = torch.randn(b, 3 + l, d, dtype=torch.float64)
    w, bias = torch.randn(d, k, dtype=torch.float64), torch.randn(d, dtype=torch.float64)
    full = F.silu(F.conv1d(x.transpose(1, 2), w[:, None], bias, padding=k - 1, groups=d)[..., :3 + l]).transpose(1, 2)
    y1, st = R.causal_conv1d(x[:, :3], w, bias, None)
    y2, st2 = R.causal_conv1d(x[:, 3:], w, bias, st)
    assert rel_err(torch.cat([y1, y2], 1), full) < 1e-12
    window = torch.cat([torch.zeros(b, k - 1, d, dtype=torch.float64), x], 1)
    assert torch.equal(st2, window[:, -(k - 1):].transpose(1, 2))


def test_gated_rmsnorm_is_per_group():
    y, z = torch.randn(2, 5, 12, dtype=torch.float64), torch.randn(2, 5, 12, dtype=torch.float64)
    w = torch.randn(12, dtype=torch.float64)
    out = R.gated_rmsnorm(y, z, w, 1e-5, 4)
    v = (y * F.silu(z)).reshape(2, 5, 3, 4)
    expect = (v / torch.sqrt(v.pow(2).mean(-1, keepdim=True) + 1e-5)).reshape(2, 5, 12) * w
    assert rel_err(out, expect) < 1e-14
    whole = R.gated_rmsnorm(y, z, w, 1e-5, 12)
    assert rel_err(whole, expect) > 1e-3  # normalising over all of d is a different function
