"""The decode step's norms folded into its projections (ssd_deploy/ssd/triton/gemv.py: RMSNorm or gated RMSNorm +
GEMV + residual add) against float64 listings, and the model's in-place decode through them against its in-place
decode with the norms and projections apart (``decode_gemv`` disabled) and against its plain decode on the listings.

CPU (CI): the kernels run in Triton's interpreter, in one subprocess (this file run as a script; Triton reads
TRITON_INTERPRET when it is imported). GPU (``-m gpu``): the same cases at model-sized shapes, bf16 too (the
interpreter rounds bf16 wrongly, tests/test_triton_decode.py says how). The kernel is also compiled for sm_90 on the
CPU (Triton's pipeline and ptxas, no GPU), which the interpreter skips.
"""

from __future__ import annotations

from functools import partial
import dataclasses
import importlib.util
import json
import math
import os
from contextlib import nullcontext

import pytest
import torch

from conftest import check_kernel_errors, rel_err, triton_interpreter_results
from ssd_deploy.ssd import reference

HAVE_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")
EPS = 1e-5


def strided_rows(t: torch.Tensor, extra: int = 5) -> torch.Tensor:
    """The same values as a view whose rows are wider (a slice of in_proj's output, as the model passes z)."""
    wide = torch.full((t.shape[0], t.shape[1] + extra), math.nan, dtype=t.dtype, device=t.device)
    wide[:, extra:] = t
    return wide[:, extra:]


def gemv_errors(b, n, k, dtype, bias, gated, groups, residual_dtype, device, seed, config=None) -> dict:
    """``norm_gemv`` against the float64 listing: rmsnorm(x) · w (or the ``gated_rmsnorm`` op's listing over
    ``groups`` groups, z strided) @ W.T (+ bias) (+ residual, kept in ``residual_dtype``). ``config``: an index into
    ``gemv.CONFIGS`` to force (else the tuned or untuned choice)."""
    from ssd_deploy.ssd.triton.gemv import CONFIGS, norm_gemv

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, k, generator=g).to(dtype).to(device)
    z = torch.randn(b, k, generator=g).to(dtype).to(device)
    # the block's RMSNorm weight is in the model dtype, the mixer's gated-norm weight in fp32 (model.FP32_PARAMS)
    nw = (1 + 0.2 * torch.randn(k, generator=g)).to(torch.float32 if gated else dtype).to(device)
    w = (torch.randn(n, k, generator=g) / math.sqrt(k)).to(dtype).to(device)
    bb = torch.randn(n, generator=g).to(dtype).to(device) if bias else None
    res = torch.randn(b, n, generator=g).to(residual_dtype).to(device) if residual_dtype else None
    out = norm_gemv(x, nw, EPS, w, bb, gate=strided_rows(z) if gated else None,
                    group_size=k // groups if gated else None, residual=res, residual_dtype=residual_dtype,
                    config=None if config is None else CONFIGS[config])
    if gated:
        normed = reference.gated_rmsnorm(x.double(), z.double(), nw.double(), EPS, k // groups)
    else:
        v = x.double()
        normed = v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + EPS) * nw.double()
    ref = normed @ w.double().T + (0 if bb is None else bb.double())
    want_dtype = residual_dtype or dtype
    errs = {"out": rel_err(out, ref if res is None else res.double() + ref), "dtype": float(out.dtype != want_dtype)}
    if res is not None:  # the projection's own share, which the residual could swamp
        errs["projection"] = rel_err(out.double() - res.double(), ref)
    return errs


def model_errors(device, dtype, batch, cfg_changes: dict, decode_kernel: bool = True, seed=0) -> dict:
    """A tiny model (ngroups 2, D per head-dim) decoding 2 tokens in place after a 5-token prefill: with the norms
    folded into the projections, against the same in-place decode with ``decode_gemv`` disabled (norms and
    projections apart: the previous step), and against the plain decode on the listings. ``decode_kernel`` off:
    the conv and SSM step of both in-place decodes on their listings (``ssd_step`` disabled; the interpreter spends
    most of a case in the decode kernel, which tests/test_triton_decode.py covers)."""
    import ssd_deploy.ssd.triton as tri
    from ssd_deploy.checkpoint import random_model
    from ssd_deploy.config import Mamba2Config

    cfg = dataclasses.replace(Mamba2Config(d_model=32, n_layer=2, vocab_size=50, d_state=16, headdim=16, ngroups=2,
                                           chunk_size=16, D_has_hdim=True), **cfg_changes)
    model = random_model(cfg, seed).cast(dtype).to(device)
    assert tri.register(device), "register() refused"
    assert not tri.norm_gemv_enabled(device, batch)  # opt-in
    with tri.enabled(device, ("decode_gemv",)):
        assert tri.norm_gemv_enabled(device, batch)
        with tri.disabled(device, ("decode_gemv",)):
            assert not tri.norm_gemv_enabled(device, batch)
    ids = torch.randint(0, 50, (batch, 7), generator=torch.Generator().manual_seed(seed)).to(device)
    errs = {}
    with torch.no_grad():
        with tri.disabled(device):  # the prefill is not what is tested here (and slow in the interpreter)
            _, conv, ssm = model(ids[:, :5], *model.init_states(batch, device))
        mine = [t.clone() for t in conv], [t.clone() for t in ssm]
        apart = [t.clone() for t in conv], [t.clone() for t in ssm]
        for t in range(5, 7):
            token = ids[:, t:t + 1]
            with tri.disabled(device):
                ref, conv, ssm = model(token, conv, ssm, decode=True)
            off = () if decode_kernel else ("ssd_step",)
            with tri.disabled(device, ("decode_gemv", *off)):
                old, *_ = model(token, *apart, decode=True, in_place=True)
            with tri.disabled(device, off) if off else nullcontext(), tri.enabled(device, ("decode_gemv",)):
                logits, *out = model(token, *mine, decode=True, in_place=True)
            errs[f"in_place_{t}"] = float(not all(a is b for a, b in zip(out[0] + out[1], mine[0] + mine[1])))
            errs[f"shape_{t}"] = float(logits.shape != old.shape or logits.dtype != old.dtype)
            errs[f"logits_vs_apart_{t}"] = rel_err(logits, old.double())
            errs[f"logits_vs_listing_{t}"] = rel_err(logits, ref.double())
            errs[f"ssm_vs_apart_{t}"] = rel_err(torch.stack(mine[1]), torch.stack(apart[1]).double())
            errs[f"conv_vs_listing_{t}"] = rel_err(torch.stack(mine[0]), torch.stack(conv).double())
            errs[f"ssm_vs_listing_{t}"] = rel_err(torch.stack(mine[1]), torch.stack(ssm).double())
    return errs


def cases(device: str, large: bool) -> dict:
    # bf16 on the GPU only: Triton 3.9's interpreter truncates casts to bf16 instead of rounding
    dtypes = [torch.float32, torch.float16, torch.bfloat16] if large else [torch.float32, torch.float16]
    # (N, K): outputs and channels not multiples of any block; K over the first config's BLOCK_K (several steps)
    n, k = (10576, 2560) if large else (70, 300)
    n_out, k_in = (2560, 5120) if large else (45, 300)
    n_configs = 0
    if HAVE_TRITON:
        from ssd_deploy.ssd.triton.gemv import CONFIGS

        n_configs = len(CONFIGS)
    out = {}
    for dt in dtypes:
        for b in (1, 3, 16):
            out[f"norm_gemv_{dt}_b{b}"] = (gemv_errors, (b, n, k, dt, b == 3, False, 1, None, device, b), dt)
            # the gated norm + out_proj + residual add: one group and several, of a size that is no multiple of
            # any BLOCK_K (blocks end inside groups: 100 channels in the interpreter, 640 at 2.7b's d_inner)
            groups = 8 if large else 3
            out[f"gated_{dt}_b{b}_g{groups}_res32"] = (gemv_errors, (b, n_out, k_in, dt, False, True, groups,
                                                                     torch.float32, device, 10 + b), dt)
            out[f"gated_{dt}_b{b}_g1_res16"] = (gemv_errors, (b, n_out, k_in, dt, b == 1, True, 1, dt, device,
                                                              20 + b), dt)
        # every config, once (the untuned choice takes blocks of 512 at these few outputs)
        for i in range(n_configs):
            out[f"gated_{dt}_b3_config{i}"] = (gemv_errors, (3, n_out, k_in, dt, True, True, 3 if not large else 8,
                                                             torch.float32, device, 30 + i, i), dt)
        for b in (1, 3):  # with the decode kernel: once in the interpreter (slow there), always on the GPU
            kernel = large or (b == 1 and dt == torch.float32)
            out[f"model_{dt}_b{b}{'' if kernel else '_step_listing'}"] = (model_errors, (device, dt, b, {}, kernel),
                                                                           dt)
    out["model_fp32_bias_residual_in_model_dtype"] = (
        model_errors, (device, torch.float32, 3, {"bias": True, "residual_in_fp32": False}, large), torch.float32)
    out["model_fp16_ngroups1_D_per_head"] = (
        model_errors, (device, torch.float16, 2, {"D_has_hdim": False, "ngroups": 1}, large), torch.float16)
    return out


def run_cases(device: str, large: bool) -> dict:
    return {name: fn(*args) for name, (fn, args, _) in cases(device, large).items()}


check = partial(check_kernel_errors, exact={
    "in_place": "the in-place decode must return the states it was given",
    "shape": "differs from the listing's", "dtype": "differs from the listing's"})


@pytest.fixture(scope="module")
def interpreter_results():
    return triton_interpreter_results(__file__)


@needs_triton
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(cases("cpu", large=False)))
def test_interpreter_parity(interpreter_results, name):
    check(name, interpreter_results[name], cases("cpu", large=False)[name][2])


def test_falls_back_without_registration():
    """A device the kernels were never registered for takes the previous path: no folding."""
    import ssd_deploy.ssd.triton as tri

    assert not tri.norm_gemv_enabled("meta", 1)


@needs_triton
@pytest.mark.slow
@pytest.mark.parametrize("gated,act", [(False, "*bf16"), (True, "*fp16"), (True, "*fp32")])
def test_kernel_compiles_for_sm90(gated, act):
    """The kernel compiles for Hopper in compiled mode, plain and gated with the residual add, every config in bf16
    (what the interpreter cannot check): the products on the tensor cores and the weight blocks streamed into shared
    memory ahead of use (cp.async), which is what the design rests on (model-sized dimensions are multiples of 16,
    and a launch specialises on that); launched as a programmatic dependent launch, nothing is read before the wait
    for the previous kernel but L2 prefetches of weights."""
    pytest.importorskip("triton.backends.nvidia", reason="Triton's NVIDIA backend is not installed")
    from test_triton_decode import sm90_ptx

    from ssd_deploy.ssd.triton.common import dot_precision
    from ssd_deploy.ssd.triton.gemv import CONFIGS, MAX_BATCH, _norm_gemv_kernel

    types = {"x_ptr": act, "z_ptr": act, "nw_ptr": "*fp32" if gated else act, "w_ptr": act, "bias_ptr": act,
             "res_ptr": "*fp32", "out_ptr": "*fp32" if gated else act, "eps": "fp32", "stride_xb": "i64",
             "stride_zb": "i64"}
    divisible = ("x_ptr", "z_ptr", "nw_ptr", "w_ptr", "bias_ptr", "res_ptr", "out_ptr", "N", "K", "group_size",
                 "stride_xb", "stride_zb")
    precision = dot_precision(torch.float32 if act == "*fp32" else torch.bfloat16)
    for config in CONFIGS if act == "*bf16" else CONFIGS[:1]:
        ptx = sm90_ptx(_norm_gemv_kernel.fn, types,
                       {"GATED": gated, "HAS_BIAS": not gated, "ADD_RESIDUAL": gated, "BB": MAX_BATCH,
                        "PRECISION": precision, "PDL": True, **config.kwargs},
                       num_warps=config.num_warps, num_stages=config.num_stages, divisible=divisible)
        assert "cp.async" in ptx, config.kwargs
        # as a programmatic dependent launch: it waits for the previous kernel before it reads or writes anything,
        # and only asks for its first weight blocks in the L2 before that
        wait = ptx.index("griddepcontrol.wait")
        assert wait < min(ptx.index(op) for op in ("ld.global", "cp.async", "st.global") if op in ptx)
        assert ptx.index("prefetch.global.L2") < wait
        if act != "*fp32":
            assert "mma.sync" in ptx or "wgmma" in ptx, config.kwargs


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
