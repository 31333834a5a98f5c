"""Decode graphs that own their states (ssd_deploy/runtime/cuda_graphs.py): the ownership rule on the CPU (the same
class, steps run eagerly on its buffers), and on a GPU the captured graphs against the eager decode, token for
token, over two batch sizes and back."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from conftest import VARIANTS, rel_err
from ssd_deploy.checkpoint import random_model
from ssd_deploy.runtime.cuda_graphs import DecodeGraphs


def flat(conv, ssm):
    return [*conv, *ssm]


@torch.no_grad()
def test_ownership_rule_on_cpu():
    """Given states are copied in once and never written; the returned states are the buffers, updated in place
    by the next call of that batch size; another batch size has its own buffers."""
    model = random_model(VARIANTS["g4"], seed=3)
    graphs = DecodeGraphs(partial(model, decode=True, last_token_only=True, in_place=True), capture=False)
    prompts = {b: torch.randint(0, model.cfg.vocab_size, (b, 6)) for b in (1, 3)}
    prefilled = {b: model(ids, *model.init_states(b))[1:] for b, ids in prompts.items()}
    held = {b: [t.clone() for t in flat(*s)] for b, s in prefilled.items()}
    plain = dict(prefilled)
    mine = dict(prefilled)
    for step in range(4):
        for b in (1, 3):
            token = prompts[b][:, step:step + 1]
            ref, *plain[b] = model(token, *plain[b], decode=True, last_token_only=True)
            logits, *out = graphs(token, *mine[b])
            if step:  # the steady state: the buffers it returned, updated in place
                assert all(x is y for x, y in zip(flat(*out), flat(*mine[b])))
            assert rel_err(logits, ref) <= 1e-6
            assert all(rel_err(x, y) <= 1e-6 for x, y in zip(flat(*out), flat(*plain[b])))
            mine[b] = out
    assert graphs.handovers == 2 and sorted(graphs.captured) == [1, 3]
    for b in (1, 3):  # the prefill's states were only read
        assert all(torch.equal(x, y) for x, y in zip(held[b], flat(*prefilled[b])))
    # handing a batch size new states overwrites its buffers: what the last call returned is gone
    before = [t.clone() for t in flat(*mine[1])]
    graphs(prompts[1][:, :1], *prefilled[1])
    assert graphs.handovers == 3 and not all(torch.equal(x, y) for x, y in zip(before, flat(*mine[1])))


def test_a_step_that_allocates_new_states_is_refused():
    model = random_model(VARIANTS["g1"], seed=3)
    graphs = DecodeGraphs(partial(model, decode=True, last_token_only=True), capture=False)
    with pytest.raises(ValueError, match="in place"), torch.no_grad():
        graphs(torch.zeros(1, 1, dtype=torch.long), *model.init_states(1))


# ---------------------------------------------------------------- GPU

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("kernels", ["triton", "triton-gemv", "triton-gemv-no-pdl", "triton-two-kernels",
                                     "listings"])
@torch.no_grad()
def test_graph_decode_matches_eager_decode(kernels, dtype):
    """On the Triton kernels (the default: norms and projections apart, the fused decode kernel; opt-in: norms
    folded into the projections, launched as programmatic dependent launches on Hopper, and not; the two-launch
    decode), and on the listings: 48 greedy steps from a prefill at batch 2, then
    5, then 2 again (new prompts: a hand-over into the existing
    graph): the captured in-place decode against the plain eager decode on the same kernels. fp32: the same tokens
    and logits within 1e-5; bf16: each side fed the eager side's tokens, logits within 1e-2."""
    from contextlib import nullcontext

    from ssd_deploy.ssd import triton as tri

    if kernels.startswith("triton"):
        pytest.importorskip("triton", reason="the Triton kernels need triton")
        assert tri.register("cuda")

    cfg = VARIANTS["hdimD-limit"]
    model = random_model(cfg, seed=11).cast(dtype).cuda().eval()
    graphs = DecodeGraphs(partial(model, decode=True, last_token_only=True, in_place=True))
    gen = torch.Generator().manual_seed(12)
    off = {"triton-gemv": (), "triton-gemv-no-pdl": ("decode_pdl",), "triton": (),
           "triton-two-kernels": ("decode_fused",), "listings": (*tri.OPS, "add_rmsnorm")}[kernels]
    on = ("decode_gemv",) if kernels.startswith("triton-gemv") else ()
    with tri.disabled("cuda", off) if off else nullcontext(), tri.enabled("cuda", on):
        for turn, batch in enumerate((2, 5, 2)):
            ids = torch.randint(0, cfg.vocab_size, (batch, 19), generator=gen).cuda()
            logits, conv, ssm = model(ids, *model.init_states(batch, "cuda"), last_token_only=True)
            eager, mine = (logits, conv, ssm), (logits, conv, ssm)
            held = [t.clone() for t in flat(conv, ssm)]
            for step in range(48):
                token = eager[0][:, -1, :cfg.vocab_size].argmax(-1, keepdim=True)
                if dtype == torch.float32:
                    assert torch.equal(token, mine[0][:, -1, :cfg.vocab_size].argmax(-1, keepdim=True)), step
                eager = model(token, *eager[1:], decode=True, last_token_only=True)
                mine = graphs(token, *mine[1:])
                tol = 1e-5 if dtype == torch.float32 else 1e-2
                assert rel_err(mine[0].float(), eager[0].float()) <= tol, (turn, step)
            assert all(rel_err(x, y) <= tol for x, y in zip(flat(*mine[1:]), flat(*eager[1:])))
            assert all(torch.equal(x, y) for x, y in zip(held, flat(conv, ssm)))  # handed over, never written
            assert graphs.handovers == turn + 1  # one per prefill, none per step
    assert sorted(graphs.captured) == [2, 5]


TRITON_PER_LAYER = {  # what enabled() turns on and disabled() off, and the Triton kernels a layer launches then
    # norms folded into the projections (ssd/triton/gemv.py, opt-in): RMSNorm + in_proj, decode, gated norm + out_proj
    "gemv": (("decode_gemv",), (), {"_norm_gemv_kernel": 2, "_decode_kernel": 1}),
    # the norms and cuBLAS's projections apart (the default), decode_fused on: one kernel for conv + SSM step; off: two
    "fused": ((), (), {"_add_rmsnorm_kernel": 1, "_decode_kernel": 1, "_gated_rmsnorm_kernel": 1}),
    "two-kernels": ((), ("decode_fused",),
                    {"_add_rmsnorm_kernel": 1, "_conv_step_kernel": 1, "_step_kernel": 1, "_gated_rmsnorm_kernel": 1}),
}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("variant", list(TRITON_PER_LAYER))
@torch.no_grad()
def test_launches_per_layer(variant):
    """Per layer, the in-place step launches its Triton kernels (with the norms folded in: three, and nothing else;
    apart: add + RMSNorm, the decode kernel (or conv window and SSM step), gated norm, and in_proj's and out_proj's
    GEMMs) and no PyTorch elementwise kernel (-exp(A_log)), no copy. Counted with the profiler on the eager in-place
    step (what the graph replays), as the difference between 4 and 2 layers."""
    from contextlib import nullcontext

    pytest.importorskip("triton", reason="the Triton kernels need triton")
    import dataclasses
    from collections import Counter

    from torch.profiler import ProfilerActivity, profile

    from ssd_deploy.ssd import triton as tri

    assert tri.register("cuda")
    on, off, triton_kernels = TRITON_PER_LAYER[variant]
    counts = {}
    for n_layer in (2, 4):
        model = random_model(dataclasses.replace(VARIANTS["g4"], n_layer=n_layer), seed=1)
        model = model.cast(torch.bfloat16).cuda().eval()
        conv, ssm = model.init_states(1, "cuda")
        token = torch.zeros(1, 1, dtype=torch.long, device="cuda")
        with tri.disabled("cuda", off) if off else nullcontext(), tri.enabled("cuda", on):
            model(token, conv, ssm, decode=True, last_token_only=True, in_place=True)  # compiles first
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                model(token, conv, ssm, decode=True, last_token_only=True, in_place=True)
                torch.cuda.synchronize()
        counts[n_layer] = Counter(e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
    per_layer = {name: (counts[4][name] - counts[2][name]) / 2 for name in counts[4] | counts[2]}
    per_layer = {name: n for name, n in per_layer.items() if n}
    assert {name: per_layer.get(name) for name in triton_kernels} == triton_kernels, per_layer
    others = {name: n for name, n in per_layer.items() if name not in triton_kernels}
    assert not [name for name in others if "at::native" in name or "Memcpy" in name or "Memset" in name], others
    # apart: the two GEMMs (cuBLAS may split one in two kernels); folded: nothing else at all
    assert sum(others.values()) <= (0 if variant == "gemv" else 4), others
