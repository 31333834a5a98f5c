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


# ---- packed sequences (docs/op-contracts.md, "Packed sequences") ----------------------------------------------

PACKED = [  # lengths, chunk, ngroups: boundaries inside chunks, sequences shorter than a chunk and than the conv
    ([5, 1, 13, 8, 2], 8, 1),  # width, length 1 mixed with long ones, a sequence of exactly one chunk
    ([1, 1, 1], 4, 2),
    ([3, 20, 1, 9, 16], 4, 4),
    ([37], 16, 2),  # one sequence: the unpacked call
]


def cu(lengths):
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])


def packed_inputs(lengths, h=4, p=8, g=2, n=5, hdim_D=False, seed=None):
    inp = ssd_inputs(1, sum(lengths), h, p, g, n, hdim_D=hdim_D, seed=seed)
    inp["initial_states"] = torch.randn(len(lengths), h, p, n, dtype=torch.float64)
    del inp["initial_state"]
    return inp


@pytest.mark.parametrize("lengths,q,g", PACKED)
@pytest.mark.parametrize("hdim_D", [False, True])
def test_packed_scan_equals_each_sequence_alone(lengths, q, g, hdim_D):
    inp = packed_inputs(lengths, g=g, hdim_D=hdim_D)
    offsets = cu(lengths)
    y0, s0 = R.ssd_sequential_packed(**inp, cu_seqlens=offsets)
    y64, s64 = R.ssd_chunked_packed(**inp, cu_seqlens=offsets, chunk_size=q)
    assert rel_err(y64, y0) < 1e-12 and rel_err(s64, s0) < 1e-12
    y32, s32 = R.ssd_chunked_packed(**{k: v.float() for k, v in inp.items()}, cu_seqlens=offsets, chunk_size=q)
    assert y32.dtype == s32.dtype == torch.float32
    assert rel_err(y32, y0) < 1e-5 and rel_err(s32, s0) < 1e-5


def test_packed_scan_nothing_crosses_a_boundary():
    inp = packed_inputs([6, 7], seed=1)
    offsets = cu([6, 7])
    y0, s0 = R.ssd_chunked_packed(**inp, cu_seqlens=offsets, chunk_size=4)
    changed = {k: v.clone() for k, v in inp.items()}
    for k in ("x", "dt", "B", "C"):
        changed[k][:, :6] = torch.randn_like(changed[k][:, :6])
    changed["initial_states"][0] += 1
    y1, s1 = R.ssd_chunked_packed(**changed, cu_seqlens=offsets, chunk_size=4)
    assert torch.equal(y1[:, 6:], y0[:, 6:]) and torch.equal(s1[1], s0[1])
    assert not torch.equal(y1[:, :6], y0[:, :6])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_packed_equal_lengths_are_the_unpacked_call_exactly(dtype):
    n, l = 3, 21
    inp = {k: v.to(dtype) for k, v in packed_inputs([l] * n).items()}
    y, s = R.ssd_chunked_packed(**inp, cu_seqlens=cu([l] * n), chunk_size=8)
    unpacked = {k: v.reshape(n, l, *v.shape[2:]) if k in ("x", "dt", "B", "C") else v for k, v in inp.items()}
    unpacked["initial_state"] = unpacked.pop("initial_states")
    yu, su = R.ssd_chunked(**unpacked, chunk_size=8)
    assert torch.equal(y, yu.reshape(1, n * l, *yu.shape[2:])) and torch.equal(s, su)


@pytest.mark.parametrize("lengths", [[5, 1, 13, 2, 3], [1, 1], [2, 30]])  # k-1 = 3: shorter and longer than it
def test_packed_conv_equals_each_sequence_alone(lengths):
    d, k = 10, 4
    x = torch.randn(1, sum(lengths), d, dtype=torch.float64)
    w, bias = torch.randn(d, k, dtype=torch.float64), torch.randn(d, dtype=torch.float64)
    states = torch.randn(len(lengths), d, k - 1, dtype=torch.float64)
    y0, s0 = R.causal_conv1d_sequential_packed(x, w, bias, states, cu(lengths))
    y1, s1 = R.causal_conv1d_packed(x, w, bias, states, cu(lengths))
    assert rel_err(y1, y0) < 1e-14 and torch.equal(s1, s0)
    y2, s2 = R.causal_conv1d_packed(x.float(), w.float(), None, states.float(), cu(lengths), silu=False)
    y3, s3 = R.causal_conv1d_sequential_packed(x, w, None, states, cu(lengths), silu=False)
    assert rel_err(y2, y3) < 1e-6 and torch.equal(s2, s3.float())


def test_packed_conv_equal_lengths_are_the_unpacked_call_exactly():
    n, l, d, k = 3, 6, 10, 4
    x, w, bias = torch.randn(n, l, d), torch.randn(d, k), torch.randn(d)
    states = torch.randn(n, d, k - 1)
    yu, su = R.causal_conv1d(x, w, bias, states)
    y, s = R.causal_conv1d_packed(x.reshape(1, n * l, d), w, bias, states, cu([l] * n))
    assert torch.equal(y, yu.reshape(1, n * l, d)) and torch.equal(s, su)
