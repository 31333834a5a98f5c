"""Checkpoint directories: both formats and key schemes, shards, .bin, vocab padding, and every bad input."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import TINY, VARIANTS
from ssd_deploy.checkpoint import load_model, random_model, read_state_dict, write_checkpoint
from ssd_deploy.errors import UserError


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("fmt", ["hf", "mamba_ssm"])
@pytest.mark.parametrize("variant", ["g1", "hdimD-limit"])
def test_round_trip(tmp_path, fmt, variant):
    cfg = VARIANTS[variant]
    if fmt == "hf" and cfg.D_has_hdim:
        with pytest.raises(UserError, match="D per head-dim"):
            write_checkpoint(random_model(cfg, 1), tmp_path / "c", fmt)
        assert not (tmp_path / "c").exists()
        return
    model = random_model(cfg, 1)
    loaded = load_model(write_checkpoint(model, tmp_path / "c", fmt))
    assert same_weights(model, loaded)
    assert loaded.cfg.tie_embeddings == cfg.tie_embeddings


def test_hf_key_scheme_and_shards(tmp_path):
    model = random_model(TINY, 2)
    path = write_checkpoint(model, tmp_path / "c", "hf", max_shard_bytes=40_000)
    index = json.loads((path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    assert "backbone.embeddings.weight" in index["weight_map"]  # HF's plural
    assert same_weights(model, load_model(path))


def test_unpadded_vocab_rows_are_padded(tmp_path):
    cfg = TINY  # vocab 250 padded to 256
    model = random_model(cfg, 3)
    path = write_checkpoint(model, tmp_path / "c", "mamba_ssm")
    sd = torch.load(path / "pytorch_model.bin", weights_only=True)
    sd["backbone.embedding.weight"] = sd["backbone.embedding.weight"][:cfg.vocab_size].clone()
    sd.pop("lm_head.weight")
    torch.save(sd, path / "pytorch_model.bin")
    loaded = read_state_dict(path, cfg)
    emb = loaded["backbone.embedding.weight"]
    assert emb.shape[0] == cfg.padded_vocab_size and torch.all(emb[cfg.vocab_size:] == 0)


@pytest.fixture
def hf_dir(tmp_path):
    return write_checkpoint(random_model(TINY, 4), tmp_path / "c", "hf")


def edit_weights(path, fn):
    sd = load_file(path / "model.safetensors")
    fn(sd)
    save_file(sd, path / "model.safetensors")


def test_missing_unexpected_misshaped_are_all_listed(hf_dir):
    def mutate(sd):
        sd.pop("backbone.layers.0.mixer.A_log")
        sd["backbone.layers.9.mixer.D"] = torch.ones(3)
        sd["backbone.layers.1.mixer.dt_bias"] = torch.ones(5)

    edit_weights(hf_dir, mutate)
    with pytest.raises(UserError) as e:
        load_model(hf_dir)
    msg = str(e.value)
    assert "missing tensors: backbone.layers.0.mixer.A_log" in msg
    assert "unexpected tensors: backbone.layers.9.mixer.D" in msg
    assert "backbone.layers.1.mixer.dt_bias: (5,) (expected (8,))" in msg


def test_truncated_safetensors(hf_dir):
    f = hf_dir / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(UserError, match="corrupt or truncated"):
        load_model(hf_dir)


def test_garbage_bin(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY.to_mamba_ssm()))
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04not a pickle")
    with pytest.raises(UserError, match="cannot read weights"):
        load_model(tmp_path)


def test_bin_refuses_arbitrary_pickles(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY.to_mamba_ssm()))
    torch.save({"x": object()}, tmp_path / "pytorch_model.bin")  # weights_only=True must refuse this
    with pytest.raises(UserError, match="cannot read weights"):
        load_model(tmp_path)


def test_no_weights_and_not_a_directory(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY.to_hf()))
    with pytest.raises(UserError, match="no weights found"):
        load_model(tmp_path)
    with pytest.raises(UserError, match="not a directory"):
        load_model(tmp_path / "nope")


def test_index_naming_missing_shard(hf_dir):
    (hf_dir / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "gone.safetensors"}}))
    with pytest.raises(UserError, match="shard files missing: gone.safetensors"):
        load_model(hf_dir)


def test_writer_refuses_non_empty_target(hf_dir):
    with pytest.raises(UserError, match="not an empty directory"):
        write_checkpoint(random_model(TINY), hf_dir, "hf")
