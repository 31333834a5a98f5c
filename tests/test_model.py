"""The PyTorch reference model: one code path for prefill and decode, and parity with Hugging Face."""

import pytest
import torch

from conftest import TINY, VARIANTS, rel_err
from ssd_deploy.checkpoint import random_model
from ssd_deploy.ssd import reference as R


@pytest.mark.parametrize("variant", list(VARIANTS))
@torch.no_grad()
def test_prefill_split_equals_whole_equals_decode_steps(variant):
    model = random_model(VARIANTS[variant], seed=5)
    q = model.cfg.chunk_size
    ids = torch.randint(0, model.cfg.vocab_size, (2, q + 7))
    whole, conv_w, ssm_w = model(ids, *model.init_states(2))
    l1 = 5  # a cut inside the first chunk: the second piece crosses a chunk boundary of the whole
    a, conv, ssm = model(ids[:, :l1], *model.init_states(2))
    b, conv, ssm = model(ids[:, l1:], conv, ssm)
    assert rel_err(torch.cat([a, b], 1), whole) < 1e-5
    assert all(rel_err(s, t) < 1e-5 for s, t in zip(ssm + conv, ssm_w + conv_w))
    for decode in (False, True):  # the scan at l = 1, and the step op
        conv, ssm = model.init_states(2)
        steps = []
        for t in range(ids.shape[1]):
            out, conv, ssm = model(ids[:, t:t + 1], conv, ssm, decode=decode)
            steps.append(out)
        assert rel_err(torch.cat(steps, 1), whole) < 1e-5
        assert all(rel_err(s, t) < 1e-5 for s, t in zip(ssm, ssm_w))


@torch.no_grad()
def test_mixer_matches_float64_sequential_recurrence():
    """The whole mixer in fp32 (chunked scan) against the same mixer in float64 with the sequential listing."""
    model = random_model(VARIANTS["g4"], seed=6)
    mixer = model.backbone.layers[0].mixer
    u = torch.randn(2, 37, model.cfg.d_model)
    conv, ssm = (s[0] for s in model.init_states(2))
    y32, _, s32 = mixer(u, conv, ssm)
    mixer64 = random_model(VARIANTS["g4"], seed=6).double().backbone.layers[0].mixer
    cfg = model.cfg
    zxbcdt = mixer64.in_proj(u.double())
    z, xBC, dt = torch.split(zxbcdt, [cfg.d_inner, cfg.conv_dim, cfg.nheads], dim=-1)
    xBC, _ = R.causal_conv1d(xBC, mixer64.conv1d.weight.squeeze(1), mixer64.conv1d.bias)
    gn = cfg.ngroups * cfg.d_state
    x, B, C = torch.split(xBC, [cfg.d_inner, gn, gn], dim=-1)
    b, l = u.shape[:2]
    y, s64 = R.ssd_sequential(x.reshape(b, l, cfg.nheads, cfg.headdim), dt, -torch.exp(mixer64.A_log),
                              B.reshape(b, l, cfg.ngroups, -1), C.reshape(b, l, cfg.ngroups, -1), mixer64.D,
                              mixer64.dt_bias)
    y = R.gated_rmsnorm(y.reshape(b, l, -1), z, mixer64.norm.weight, cfg.norm_eps, cfg.group_size)
    assert rel_err(y32, mixer64.out_proj(y)) < 1e-5
    assert rel_err(s32, s64) < 1e-5


@pytest.mark.parametrize("variant", ["g1", "g4"])
@torch.no_grad()
def test_parity_with_hugging_face(make_checkpoint, variant):
    transformers = pytest.importorskip("transformers", reason="HF parity needs transformers (test extra)")
    cfg = VARIANTS[variant]
    path = make_checkpoint(cfg, "hf", seed=7)
    hf = transformers.Mamba2ForCausalLM.from_pretrained(path, local_files_only=True).eval()
    ours = random_model(cfg, seed=7)
    ids = torch.randint(0, cfg.vocab_size, (2, 2 * cfg.chunk_size + 5))
    ref = hf(ids).logits
    got, _, _ = ours(ids, *ours.init_states(2))
    assert rel_err(got, ref) < 1e-4


def test_cast_keeps_contract_parameters_in_fp32():
    model = random_model(TINY).cast(torch.float16)
    params = dict(model.named_parameters())
    assert params["backbone.layers.0.mixer.A_log"].dtype == torch.float32
    assert params["backbone.layers.0.mixer.conv1d.weight"].dtype == torch.float32
    assert params["backbone.layers.0.mixer.in_proj.weight"].dtype == torch.float16
    ids = torch.randint(0, TINY.vocab_size, (1, 9))
    logits, conv, ssm = model(ids, *model.init_states(1))
    assert logits.dtype == torch.float16 and ssm[0].dtype == torch.float32 and conv[0].dtype == torch.float32


@pytest.mark.parametrize("variant", ["g1", "g4"])
@torch.no_grad()
def test_packed_prefill_equals_each_prompt_alone(variant):
    """n prompts end to end in one call (cu_seqlens), from random per-sequence states: each sequence's logits and
    states equal its own call's; last_token_only gives each sequence's last logits."""
    model = random_model(VARIANTS[variant], seed=8)
    q = model.cfg.chunk_size
    lengths = [q + 3, 1, 2, q, 5]  # boundaries inside chunks, shorter than the conv width, exactly one chunk
    prompts = [torch.randint(0, model.cfg.vocab_size, (1, n)) for n in lengths]
    conv, ssm = model.init_states(len(lengths))
    conv, ssm = [torch.randn_like(t) for t in conv], [torch.randn_like(t) * 0.5 for t in ssm]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    ids = torch.cat(prompts, 1)
    logits, pconv, pssm = model(ids, conv, ssm, cu_seqlens=cu)
    last, lconv, _ = model(ids, conv, ssm, last_token_only=True, cu_seqlens=cu)
    assert last.shape == (len(lengths), 1, logits.shape[-1])
    for s, p in enumerate(prompts):
        one, c1, s1 = model(p, [t[s:s + 1] for t in conv], [t[s:s + 1] for t in ssm])
        assert rel_err(logits[:, cu[s]:cu[s + 1]], one) < 1e-5
        assert rel_err(last[s], one[:, -1]) < 1e-5
        assert all(rel_err(a[s:s + 1], b) < 1e-5 for a, b in zip(pconv + pssm + lconv, c1 + s1 + c1))


@pytest.mark.parametrize("variant", ["g4", "hdimD-limit"])
@torch.no_grad()
def test_in_place_decode_writes_the_given_states(variant):
    """``forward(in_place=True)`` (the CUDA-graph decode's step, here on the listings): the logits and states of the
    plain decode step, written into the given tensors, which come back; the plain path writes nothing it is given."""
    model = random_model(VARIANTS[variant], seed=8)
    ids = torch.randint(0, model.cfg.vocab_size, (3, 9))
    _, conv, ssm = model(ids, *model.init_states(3))
    mine = [t.clone() for t in conv], [t.clone() for t in ssm]
    for t in range(4):
        token = ids[:, t:t + 1]
        before = [s.clone() for s in conv + ssm]
        ref, conv_next, ssm_next = model(token, conv, ssm, decode=True, last_token_only=True)
        assert all(torch.equal(a, b) for a, b in zip(before, conv + ssm))
        conv, ssm = conv_next, ssm_next
        logits, conv_mine, ssm_mine = model(token, *mine, decode=True, last_token_only=True, in_place=True)
        assert all(a is b for a, b in zip(conv_mine + ssm_mine, mine[0] + mine[1]))
        assert rel_err(logits, ref) <= 1e-6
        assert all(rel_err(a, b) <= 1e-6 for a, b in zip(conv_mine + ssm_mine, conv + ssm))
    with pytest.raises(ValueError, match="in_place"):
        model(ids, *mine, in_place=True)
