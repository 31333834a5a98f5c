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
    ({"d_model": "768"}, "positive integer"),
])
def test_bad_mamba_ssm_configs(patch, message):
    with pytest.raises(UserError, match=message):
        parse_config({**MAMBA_SSM_130M, **patch})


def test_bad_hf_configs():
    with pytest.raises(UserError, match="differs from expand"):
        parse_config({**HF_CODESTRAL, "num_heads": 100})
    with pytest.raises(UserError, match="norm_before_gate"):
        parse_config({**HF_CODESTRAL, "norm_before_gate": True})
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
