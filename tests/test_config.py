"""Mamba2Config from both config.json formats, and the errors a user can make."""

import json
import math

import pytest

from ssd_deploy.config import Mamba2Config, load_config, parse_config
from ssd_deploy.errors import UserError
from ssd_deploy.presets import PRESETS, preset

MAMBA_SSM_130M = {  # as released (state-spaces/mamba2-130m config.json)
    "d_model": 768, "d_intermediate": 0, "n_layer": 24, "vocab_size": 50277,
    "ssm_cfg": {"layer": "Mamba2"}, "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True,
    "residual_in_fp32": True, "fused_add_norm": True, "pad_vocab_size_multiple": 16, "tie_embeddings": True,
}
HF_CODESTRAL = {  # Codestral-style shapes in the HF format
    "model_type": "mamba2", "hidden_size": 4096, "num_hidden_layers": 64, "vocab_size": 32768, "num_heads": 128,
    "head_dim": 64, "state_size": 128, "n_groups": 8, "expand": 2, "conv_kernel": 4, "chunk_size": 256,
    "use_conv_bias": True, "use_bias": False, "norm_before_gate": False, "layer_norm_epsilon": 1e-5,
    "time_step_limit": [0.0, math.inf], "residual_in_fp32": True, "tie_word_embeddings": False, "rms_norm": True,
}


def test_mamba_ssm_release_config():
    cfg, fmt = parse_config(MAMBA_SSM_130M)
    assert fmt == "mamba_ssm"
    assert (cfg.nheads, cfg.headdim, cfg.d_state, cfg.ngroups, cfg.d_conv) == (24, 64, 128, 1, 4)
    assert cfg.padded_vocab_size == 50288 and cfg.conv_dim == 1536 + 256 and cfg.d_in_proj == 2 * 1536 + 256 + 24
    assert cfg.tie_embeddings and math.isinf(cfg.dt_max)


def test_hf_codestral_config():
    cfg, fmt = parse_config(HF_CODESTRAL)
    assert fmt == "hf"
    assert (cfg.nheads, cfg.ngroups, cfg.group_size, cfg.padded_vocab_size) == (128, 8, 1024, 32768)
    assert not cfg.tie_embeddings


@pytest.mark.parametrize("name", list(PRESETS))
def test_round_trip_both_formats(name):
    cfg = preset(name)
    again, _ = parse_config(json.loads(json.dumps(cfg.to_mamba_ssm())))
    assert again == cfg
    hf, _ = parse_config(json.loads(json.dumps(cfg.to_hf())))
    assert hf.padded_vocab_size == cfg.padded_vocab_size and hf.nheads == cfg.nheads
    assert Mamba2Config.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize("patch,message", [
    ({"ssm_cfg": {"layer": "Mamba1"}}, "only Mamba2"),
    ({"d_intermediate": 128}, "d_intermediate"),
    ({"attn_layer_idx": [3]}, "attention"),
    ({"ssm_cfg": {"layer": "Mamba2", "headdim": 100}}, "not a multiple of headdim"),
    ({"ssm_cfg": {"layer": "Mamba2", "ngroups": 5}}, "not a multiple of ngroups"),
    ({"ssm_cfg": {"layer": "Mamba2", "dt_limit": [0.5, 0.1]}}, "dt_limit"),
    ({"d_model": -4}, "positive integer"),
    ({"d_model": "768"}, "d_model must be an integer"),
])
def test_bad_mamba_ssm_configs(patch, message):
    with pytest.raises(UserError, match=message):
        parse_config({**MAMBA_SSM_130M, **patch})


def test_bad_hf_configs():
    with pytest.raises(UserError, match="differs from expand"):
        parse_config({**HF_CODESTRAL, "num_heads": 100})
    with pytest.raises(UserError, match="lacks num_hidden_layers"):
        parse_config({k: v for k, v in HF_CODESTRAL.items() if k != "num_hidden_layers"})
    with pytest.raises(UserError, match="not a Mamba-2"):
        parse_config({"model_type": "llama"})


def test_config_file_errors(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        load_config(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="malformed JSON"):
        load_config(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="JSON object"):
        load_config(tmp_path)


# config.json texts as released versions wrote them (stored, not generated): transformers 4.44's save_pretrained
# (Codestral's release: bare Infinity, norm_before_gate true, which transformers' Mamba2 never reads), and
# transformers 4.5x's (bare Infinity, no norm_before_gate)
HF_4_44_CODESTRAL_TEXT = """{
  "_name_or_path": "/raid/pablo/codestral-hf-good/", "architectures": ["Mamba2ForCausalLM"], "bos_token_id": 0,
  "chunk_size": 256, "conv_kernel": 4, "eos_token_id": 0, "expand": 2, "head_dim": 64, "hidden_act": "silu",
  "hidden_size": 4096, "initializer_range": 0.1, "intermediate_size": 8192, "layer_norm_epsilon": 1e-05,
  "model_type": "mamba2", "n_groups": 8, "norm_before_gate": true, "num_heads": 128, "num_hidden_layers": 64,
  "pad_token_id": 0, "rescale_prenorm_residual": false, "residual_in_fp32": true, "rms_norm": true,
  "state_size": 128, "tie_word_embeddings": false, "time_step_floor": 0.0001, "time_step_init_scheme": "random",
  "time_step_limit": [0.0, Infinity], "time_step_max": 0.1, "time_step_min": 0.001, "time_step_rank": 256,
  "time_step_scale": 1.0, "torch_dtype": "bfloat16", "transformers_version": "4.44.0.dev0", "use_bias": false,
  "use_cache": true, "use_conv_bias": true, "vocab_size": 32768
}"""
HF_4_57_TEXT = """{
  "architectures": ["Mamba2ForCausalLM"], "bos_token_id": 0, "chunk_size": 128, "conv_kernel": 4,
  "eos_token_id": 2, "expand": 2, "head_dim": 16, "hidden_act": "silu", "hidden_size": 64,
  "initializer_range": 0.1, "layer_norm_epsilon": 1e-05, "model_type": "mamba2", "n_groups": 2, "num_heads": 8,
  "num_hidden_layers": 2, "pad_token_id": 1, "rescale_prenorm_residual": false, "residual_in_fp32": true,
  "rms_norm": true, "state_size": 16, "tie_word_embeddings": true, "time_step_floor": 0.0001,
  "time_step_limit": [0.001, Infinity], "time_step_max": 0.1, "time_step_min": 0.001, "time_step_rank": 4,
  "torch_dtype": "float32", "transformers_version": "4.57.1", "use_bias": false, "use_cache": true,
  "use_conv_bias": true, "vocab_size": 512
}"""
MAMBA_SSM_TEXT = """{"d_model": 768, "d_intermediate": 0, "n_layer": 24, "vocab_size": 50277,
  "ssm_cfg": {"layer": "Mamba2", "dt_limit": [0.0, Infinity]}, "attn_layer_idx": [], "attn_cfg": {},
  "rms_norm": true, "residual_in_fp32": true, "fused_add_norm": true, "pad_vocab_size_multiple": 16,
  "tie_embeddings": true}"""


@pytest.mark.parametrize("kwargs", [
    {},  # the installed release's defaults
    dict(hidden_size=64, num_hidden_layers=2, vocab_size=100, num_heads=8, head_dim=16, n_groups=2, state_size=16),
    dict(hidden_size=96, num_hidden_layers=3, vocab_size=1000, num_heads=6, head_dim=32, n_groups=3,
         state_size=32, chunk_size=64, time_step_limit=(0.01, 0.2), tie_word_embeddings=True, use_conv_bias=False),
    dict(hidden_size=32, num_hidden_layers=1, vocab_size=17, num_heads=4, head_dim=16, n_groups=1, state_size=8,
         expand=2, conv_kernel=3, layer_norm_epsilon=1e-6, use_bias=True, residual_in_fp32=False),
])
def test_installed_transformers_save_pretrained_loads(tmp_path, kwargs):
    """config.json exactly as the installed transformers writes it (5.x: {"__float__": "Infinity"})."""
    from transformers import Mamba2Config as HFConfig

    hf = HFConfig(**kwargs)
    hf.save_pretrained(tmp_path)
    cfg, fmt = load_config(tmp_path)
    assert fmt == "hf"
    assert (cfg.d_model, cfg.n_layer, cfg.vocab_size, cfg.nheads, cfg.headdim, cfg.ngroups, cfg.d_state,
            cfg.d_conv, cfg.chunk_size) == (hf.hidden_size, hf.num_hidden_layers, hf.vocab_size, hf.num_heads,
                                            hf.head_dim, hf.n_groups, hf.state_size, hf.conv_kernel, hf.chunk_size)
    assert (cfg.dt_min, cfg.dt_max) == tuple(hf.time_step_limit)
    assert (cfg.tie_embeddings, cfg.conv_bias, cfg.bias, cfg.residual_in_fp32, cfg.norm_eps) == \
        (hf.tie_word_embeddings, hf.use_conv_bias, hf.use_bias, hf.residual_in_fp32, hf.layer_norm_epsilon)


def test_transformers_5_float_encoding_is_read_everywhere():
    d = {**HF_CODESTRAL, "time_step_limit": [0.0, {"__float__": "Infinity"}]}
    assert math.isinf(parse_config(d)[0].dt_max)
    d = {**MAMBA_SSM_130M, "ssm_cfg": {"layer": "Mamba2", "dt_limit": [0.0, {"__float__": "Infinity"}]}}
    assert math.isinf(parse_config(d)[0].dt_max)
    for bad in ("NaN", "-Infinity"):
        with pytest.raises(UserError, match="time_step_limit|dt_limit"):
            parse_config({**HF_CODESTRAL, "time_step_limit": [{"__float__": bad}, 0.1]})
    with pytest.raises(UserError, match="must be a number"):
        parse_config({**HF_CODESTRAL, "layer_norm_epsilon": {"__float__": "NaN"}})


@pytest.mark.parametrize("text,expect", [
    (HF_4_44_CODESTRAL_TEXT, ("hf", 4096, 64, 128, 8, math.inf, False)),
    (HF_4_57_TEXT, ("hf", 64, 2, 8, 2, math.inf, True)),
    (MAMBA_SSM_TEXT, ("mamba_ssm", 768, 24, 24, 1, math.inf, True)),
])
def test_older_release_texts(tmp_path, text, expect):
    (tmp_path / "config.json").write_text(text)
    cfg, fmt = load_config(tmp_path)
    assert (fmt, cfg.d_model, cfg.n_layer, cfg.nheads, cfg.ngroups, cfg.dt_max, cfg.tie_embeddings) == expect


def test_null_limits_mean_no_clamp():
    assert parse_config({**HF_CODESTRAL, "time_step_limit": None})[0].dt_max == math.inf
    assert parse_config({**HF_CODESTRAL, "time_step_limit": [0.0, None]})[0].dt_max == math.inf


@pytest.mark.parametrize("patch,message", [
    ({"tie_word_embeddings": "no"}, "tie_word_embeddings must be true or false"),
    ({"tie_word_embeddings": 0}, "tie_word_embeddings must be true or false"),
    ({"use_conv_bias": None}, "use_conv_bias must be true or false"),
    ({"num_hidden_layers": 1e7}, "num_hidden_layers must be an integer"),
    ({"num_hidden_layers": 64.0}, "num_hidden_layers must be an integer"),
    ({"num_hidden_layers": True}, "num_hidden_layers must be an integer"),
    ({"num_hidden_layers": 10_000_000}, "n_layer = 10000000 is outside 1..512"),
    ({"hidden_size": "4096"}, "hidden_size must be an integer"),
    ({"head_dim": 0}, "head_dim must be a positive integer"),
    ({"head_dim": -64, "num_heads": -128}, "head_dim must be a positive integer"),
    ({"chunk_size": 8192}, "chunk_size = 8192 is outside 1..1024"),
    ({"chunk_size": 40000}, "chunk_size = 40000 is outside"),
    ({"chunk_size": 0}, "chunk_size must be a positive integer"),
    ({"vocab_size": 1 << 40}, "vocab_size = .* is outside"),
    ({"state_size": 1024}, "d_state = 1024 is outside 1..512"),
    ({"conv_kernel": 64}, "d_conv = 64 is outside 2..8"),
    ({"conv_kernel": 1}, "d_conv = 1 is outside 2..8"),
    ({"hidden_size": 65536, "num_heads": 2048}, "d_model = 65536 is outside"),
    ({"expand": 32, "num_heads": 2048}, "expand = 32 is outside"),
    ({"layer_norm_epsilon": "1e-5"}, "layer_norm_epsilon must be a number"),
    ({"layer_norm_epsilon": 0}, "norm epsilon"),
    ({"time_step_limit": "0,1"}, "pair"),
    ({"time_step_limit": [0.0, "inf"]}, "must hold numbers"),
    ({"time_step_limit": [0.0, 1.0, 2.0]}, "pair"),
    ({"rms_norm": "true"}, "rms_norm must be true or false"),
    ({"norm_before_gate": "yes"}, "norm_before_gate must be true or false"),
])
def test_hf_fields_are_strictly_typed_and_bounded(patch, message):
    with pytest.raises(UserError, match=message):
        parse_config({**HF_CODESTRAL, **patch})


@pytest.mark.parametrize("patch,message", [
    ({"ssm_cfg": ["layer", "Mamba2"]}, "ssm_cfg must be a JSON object"),
    ({"ssm_cfg": "Mamba2"}, "ssm_cfg must be a JSON object"),
    ({"ssm_cfg": {"layer": "Mamba2", "headdim": 0}}, "headdim must be a positive integer"),
    ({"ssm_cfg": {"layer": "Mamba2", "d_state": 16.5}}, "ssm_cfg.d_state must be an integer"),
    ({"ssm_cfg": {"layer": "Mamba2", "D_has_hdim": "false"}}, "ssm_cfg.D_has_hdim must be true or false"),
    ({"ssm_cfg": {"layer": "Mamba2", "chunk_size": 2048}}, "chunk_size = 2048 is outside"),
    ({"tie_embeddings": "no"}, "tie_embeddings must be true or false"),
    ({"n_layer": 513}, "n_layer = 513 is outside"),
    ({"d_intermediate": "0"}, "d_intermediate must be an integer"),
])
def test_mamba_ssm_fields_are_strictly_typed_and_bounded(patch, message):
    with pytest.raises(UserError, match=message):
        parse_config({**MAMBA_SSM_130M, **patch})


def test_from_dict_is_as_strict_as_the_parsers():
    good = preset("tiny").to_dict()
    for key, value in [("tie_embeddings", "no"), ("n_layer", 2.0), ("chunk_size", 4096), ("dt_max", "inf")]:
        with pytest.raises(UserError):
            Mamba2Config.from_dict({**good, key: value})
    with pytest.raises(UserError, match="lacks n_layer"):
        Mamba2Config.from_dict({k: v for k, v in good.items() if k != "n_layer"})
    with pytest.raises(UserError, match="JSON object"):
        Mamba2Config.from_dict([1])
