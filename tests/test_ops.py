"""The ssd_deploy custom ops (ssd/ops.py): schemas, fake implementations and dispatch, checked by torch's opcheck;
the packed ops against their listings."""

import pytest
import torch

from conftest import rel_err
from ssd_deploy.ssd import ops, reference as R


def packed_args(lengths, h=4, p=8, g=2, n=5, d=12, k=4):
    t = sum(lengths)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    scan = (torch.randn(1, t, h, p), torch.randn(1, t, h) - 2, -torch.rand(h) * 4 - 1, torch.randn(1, t, g, n),
            torch.randn(1, t, g, n), torch.randn(h), torch.randn(h), torch.randn(len(lengths), h, p, n), cu, 4,
            True, 0.0, float("inf"))
    conv = (torch.randn(1, t, d), torch.randn(d, k), torch.randn(d), torch.randn(len(lengths), d, k - 1), cu, True)
    return scan, conv


@pytest.mark.parametrize("lengths", [[5, 1, 9], [1]])
def test_packed_ops_opcheck(lengths):
    scan, conv = packed_args(lengths)
    torch.library.opcheck(ops.ssd_scan_packed, scan, test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(ops.causal_conv1d_packed, conv, test_utils=("test_schema", "test_faketensor"))


def test_packed_ops_run_the_listings():
    scan, conv = packed_args([3, 1, 6])
    y, s = torch.ops.ssd_deploy.ssd_scan_packed(*scan)
    x, dt, A, B, C, D, dt_bias, init, cu = (t.double() if t.is_floating_point() else t for t in scan[:9])
    y0, s0 = R.ssd_sequential_packed(x, dt, A, B, C, D, dt_bias, cu, init)
    assert s.dtype == torch.float32 and rel_err(y, y0) < 1e-5 and rel_err(s, s0) < 1e-5
    y, st = torch.ops.ssd_deploy.causal_conv1d_packed(*conv)
    y0, st0 = R.causal_conv1d_sequential_packed(*conv[:5], silu=True)
    assert rel_err(y, y0) < 1e-6 and torch.equal(st, st0)
