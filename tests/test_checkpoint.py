"""Checkpoint directories: both formats and key schemes, shards, .bin, vocab padding, and every bad input."""

import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import TINY, VARIANTS
from ssd_deploy.checkpoint import (Weights, checkpoint_hash, expected_shapes, load_model, normalise_key, parse_size,
                                   random_model, read_state_dict, write_checkpoint, write_random_checkpoint)
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


# -- checkpoints as the field writes them ---------------------------------------------------------------------------
HF_CONFIGS = {  # transformers' own Mamba2Config spellings; finite time_step_limit (its JSON encoding of inf is
    # hardening's: tests/test_config.py)
    "g2": dict(hidden_size=64, num_heads=8, head_dim=16, n_groups=2, state_size=16, vocab_size=256,
               num_hidden_layers=2, chunk_size=32, time_step_limit=(0.0, 100.0)),
    "g1-untied": dict(hidden_size=32, num_heads=4, head_dim=16, n_groups=1, state_size=8, vocab_size=128,
                      num_hidden_layers=3, chunk_size=16, tie_word_embeddings=False, time_step_limit=(0.001, 50.0)),
}


@pytest.mark.parametrize("name", HF_CONFIGS)
@pytest.mark.parametrize("shard", [None, "20KB"])
def test_save_pretrained_checkpoints_load_tensor_for_tensor(tmp_path, name, shard):
    transformers = pytest.importorskip("transformers", reason="needs transformers (test extra)")
    torch.manual_seed(0)
    hf = transformers.Mamba2ForCausalLM(transformers.Mamba2Config(**HF_CONFIGS[name])).eval()
    with torch.no_grad():  # HF initialises norms to ones and D to ones: make every tensor distinct
        for p in hf.parameters():
            p.add_(torch.rand_like(p))
    hf.save_pretrained(tmp_path, **({"max_shard_size": shard} if shard else {}))
    assert (tmp_path / "model.safetensors.index.json").is_file() == bool(shard)
    model = load_model(tmp_path)
    ours = model.state_dict()
    for k, v in hf.state_dict().items():
        assert torch.equal(ours[normalise_key(k)], v), k


def test_weights_reads_headers_only_until_asked(hf_dir, monkeypatch):
    import ssd_deploy.checkpoint as ck

    monkeypatch.setattr(ck.Weights, "_raw", lambda *a: pytest.fail("a tensor was read"))
    w = Weights(hf_dir)  # names, shapes and dtypes checked from the header
    assert w.ref("lm_head.weight").name == "backbone.embedding.weight"  # tied
    assert w.nbytes == sum(v.numel() * 4 for v in random_model(TINY, 4).state_dict().values()) - 256 * 64 * 4


def test_read_converts_one_tensor(hf_dir):
    w = Weights(hf_dir)
    t = w.read("backbone.layers.0.mixer.in_proj.weight", torch.bfloat16)
    assert t.dtype == torch.bfloat16
    assert torch.equal(t, random_model(TINY, 4).backbone.layers[0].mixer.in_proj.weight.detach().bfloat16())


def test_bin_in_the_old_serialisation_loads(tmp_path):
    model = random_model(TINY, 5)
    (tmp_path / "config.json").write_text(json.dumps(TINY.to_mamba_ssm()))
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    assert same_weights(model, load_model(tmp_path))


@pytest.fixture
def sharded(tmp_path):
    path = write_checkpoint(random_model(TINY, 6), tmp_path / "c", "hf", max_shard_bytes=40_000)
    index = json.loads((path / "model.safetensors.index.json").read_text())
    return path, index


def shard_with(path, index, key):
    return path / index["weight_map"][key]


def test_tensor_in_a_shard_the_index_does_not_name_is_refused(sharded):
    path, index = sharded
    victim = "backbone.embeddings.weight"
    other = next(f for f in sorted(set(index["weight_map"].values())) if f != index["weight_map"][victim])
    sd = load_file(path / other)
    sd[victim] = torch.zeros(256, 64)  # the attack: a zeroed embedding that used to override the real one
    save_file(sd, path / other)
    with pytest.raises(UserError, match=f"{other}: holds tensor '{victim}', which .* places in"):
        load_model(path)


def test_tensor_no_index_lists_is_refused(sharded):
    path, index = sharded
    shard = shard_with(path, index, "backbone.norm_f.weight")
    sd = load_file(shard)
    sd["extra.weight"] = torch.ones(3)
    save_file(sd, shard)
    with pytest.raises(UserError, match="holds tensor 'extra.weight', which .* does not list"):
        load_model(path)


def test_index_naming_a_tensor_its_shard_lacks(sharded):
    path, index = sharded
    own = index["weight_map"]["backbone.norm_f.weight"]
    index["weight_map"]["backbone.norm_f.weight"] = next(f for f in index["weight_map"].values() if f != own)
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(UserError, match="holds tensor 'backbone.norm_f.weight'"):
        load_model(path)


def test_both_key_schemes_for_one_tensor_is_a_duplicate(hf_dir):
    edit_weights(hf_dir, lambda sd: sd.__setitem__("backbone.embedding.weight",
                                                          sd["backbone.embeddings.weight"].clone()))
    with pytest.raises(UserError, match="backbone.embedding.weight is stored twice"):
        load_model(hf_dir)


@pytest.mark.parametrize("where", ["../outside/model.safetensors", "ABS", "sub/../../outside/model.safetensors",
                                   "SYMLINK"])
def test_index_paths_that_leave_the_checkpoint_are_refused(tmp_path, where):
    ckpt = write_checkpoint(random_model(TINY, 7), tmp_path / "c", "hf", max_shard_bytes=40_000)
    outside = write_checkpoint(random_model(TINY, 8), tmp_path / "outside", "hf")
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    if where == "ABS":
        where = str(outside / "model.safetensors")
    elif where == "SYMLINK":
        (ckpt / "link.safetensors").symlink_to(outside / "model.safetensors")
        where = "link.safetensors"
    index["weight_map"] = {k: where for k in index["weight_map"]}
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(UserError, match="leaves the checkpoint directory|resolves outside the checkpoint"):
        load_model(ckpt)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_refused_naming_the_tensor(hf_dir, bad):
    def poison(sd):
        sd["backbone.layers.1.mixer.out_proj.weight"][3, 5] = bad

    edit_weights(hf_dir, poison)
    with pytest.raises(UserError, match="tensor 'backbone.layers.1.mixer.out_proj.weight' holds NaN or Inf"):
        load_model(hf_dir)
    with pytest.raises(UserError, match="out_proj.weight' holds NaN or Inf"):
        Weights(hf_dir).scan()


def test_values_the_target_dtype_cannot_hold_are_refused(hf_dir):
    edit_weights(hf_dir, lambda sd: sd["backbone.layers.0.mixer.in_proj.weight"].__setitem__((0, 0), 1e6))
    with pytest.raises(UserError, match="in_proj.weight' holds values outside the range of torch.float16"):
        load_model(hf_dir, torch.float16)
    load_model(hf_dir, torch.bfloat16)  # bf16 holds 1e6
    with pytest.raises(UserError, match="in_proj.weight' holds values outside the range of torch.float16"):
        Weights(hf_dir).scan(lambda name: torch.float16)
    Weights(hf_dir).scan(lambda name: torch.bfloat16)


def test_the_largest_value_a_dtype_rounds_to_is_held(hf_dir):
    # 65519 rounds to fp16's largest finite value (65504), 65520 to inf: the conversion decides, not finfo.max
    edit_weights(hf_dir, lambda sd: sd["backbone.layers.0.mixer.in_proj.weight"].__setitem__((0, 0), -65519.0))
    Weights(hf_dir).scan(lambda name: torch.float16)
    load_model(hf_dir, torch.float16)
    edit_weights(hf_dir, lambda sd: sd["backbone.layers.0.mixer.in_proj.weight"].__setitem__((0, 0), -65520.0))
    with pytest.raises(UserError, match="outside the range of torch.float16 \\(largest magnitude 6.55e\\+04\\)"):
        Weights(hf_dir).scan(lambda name: torch.float16)


def fresh_sha256(ckpt):
    """The checkpoint hash computed here from the files: sha256 over (name, bytes) of config.json, then of the
    weight files in sorted order."""
    h = hashlib.sha256()
    names = sorted(p.name for p in ckpt.iterdir() if p.suffix in (".safetensors", ".bin"))
    for name in ["config.json", *names]:
        h.update(name.encode())
        h.update((ckpt / name).read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("fmt,shard", [("hf", None), ("hf", 40_000), ("mamba_ssm", None)])
def test_scan_hashes_what_it_checks_in_one_read(tmp_path, fmt, shard):
    ckpt = write_checkpoint(random_model(TINY, 5), tmp_path / "c", fmt, max_shard_bytes=shard)
    assert len(list(ckpt.glob("model-*-of-*.safetensors"))) > (2 if shard else -1)
    assert Weights(ckpt).scan() == checkpoint_hash(ckpt) == fresh_sha256(ckpt)


def test_scanned_tensors_are_not_checked_again(hf_dir, monkeypatch):
    import ssd_deploy.checkpoint as checkpoint

    checked = []
    real = checkpoint._check_extremes
    monkeypatch.setattr(checkpoint, "_check_extremes",
                        lambda r, lo, hi, d: (checked.append((r.name, d)), real(r, lo, hi, d)))
    w = Weights(hf_dir)
    w.scan(lambda name: torch.float16)
    assert sorted(checked, key=str) == sorted({(n, d) for n in w.names() for d in (torch.float32, torch.float16)},
                                              key=str)
    checked.clear()
    for name in w.names():
        w.read(name, torch.float16)
    assert checked == []
    w.read("backbone.norm_f.weight", torch.bfloat16)  # a dtype the scan did not cover is checked on reading
    assert checked == [("backbone.norm_f.weight", torch.bfloat16)]


@pytest.mark.parametrize("fmt,shard,unpadded", [("hf", 40_000, False), ("mamba_ssm", None, False),
                                                ("mamba_ssm", None, True)])
def test_chunks_are_the_tensor_read_whole(tmp_path, monkeypatch, fmt, shard, unpadded):
    import ssd_deploy.checkpoint as checkpoint

    ckpt = write_checkpoint(random_model(TINY, 6), tmp_path / "c", fmt, max_shard_bytes=shard)
    if unpadded:  # vocab 250 rows stored, padded to 256 on reading
        sd = torch.load(ckpt / "pytorch_model.bin", weights_only=True)
        sd["backbone.embedding.weight"] = sd["backbone.embedding.weight"][:TINY.vocab_size].clone()
        sd.pop("lm_head.weight")
        torch.save(sd, ckpt / "pytorch_model.bin")
    monkeypatch.setattr(checkpoint, "CHUNK_BYTES", 5000)  # several blocks per matrix
    w = Weights(ckpt)
    blocks = 0
    for name in w.names():
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            got = list(w.chunks(name, dtype))
            # blocks of whole rows, at most CHUNK_BYTES as stored (fp32) unless one row is larger
            assert all(b.dtype == dtype and b.numel() * 4 <= max(5000, 4 * b[0].numel()) for b in got)
            assert torch.equal(torch.cat([b.reshape(-1) for b in got]), w.read(name, dtype).reshape(-1)), name
            blocks = max(blocks, len(got))
    assert blocks > 10


def test_chunks_refuse_what_read_refuses(hf_dir):
    edit_weights(hf_dir, lambda sd: sd["backbone.layers.0.mixer.in_proj.weight"].__setitem__((7, 0), float("nan")))
    with pytest.raises(UserError, match="in_proj.weight' holds NaN or Inf"):
        list(Weights(hf_dir).chunks("backbone.layers.0.mixer.in_proj.weight", torch.float16))


def test_scan_refuses_a_truncated_tensor_naming_the_file(hf_dir):
    path = hf_dir / "model.safetensors"
    w = Weights(hf_dir)  # headers checked while the file is whole
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(UserError, match="model.safetensors: corrupt or truncated safetensors file"):
        w.scan()


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.uint8])
def test_integer_and_bool_tensors_are_refused_naming_the_tensor(hf_dir, dtype):
    def to_int(sd):
        key = "backbone.layers.0.mixer.conv1d.weight"
        sd[key] = sd[key].to(dtype)

    edit_weights(hf_dir, to_int)
    with pytest.raises(UserError, match=r"not floating point .*backbone.layers.0.mixer.conv1d.weight \("):
        Weights(hf_dir)


def test_integer_tensors_in_a_bin_are_refused(tmp_path):
    sd = random_model(TINY, 9).state_dict()
    sd["backbone.norm_f.weight"] = sd["backbone.norm_f.weight"].long()
    (tmp_path / "config.json").write_text(json.dumps(TINY.to_mamba_ssm()))
    torch.save(sd, tmp_path / "pytorch_model.bin")
    with pytest.raises(UserError, match=r"not floating point .*backbone.norm_f.weight \(torch.int64\)"):
        load_model(tmp_path)


# -- random checkpoints written tensor by tensor --------------------------------------------------------------------
def test_random_checkpoint_sharded_with_an_index_as_transformers_writes(tmp_path):
    transformers = pytest.importorskip("transformers", reason="needs transformers (test extra)")
    path = write_random_checkpoint(TINY, tmp_path / "c", "hf", seed=3, dtype="fp32", max_shard_bytes=30_000)
    index = json.loads((path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    stored = [load_file(path / s) for s in shards]
    sizes = [sum(t.numel() * t.element_size() for t in sd.values()) for sd in stored]
    assert sum(sizes) == index["metadata"]["total_size"]
    assert all(size <= 30_000 or len(sd) == 1 for size, sd in zip(sizes, stored))  # a larger tensor: alone
    assert same_weights(random_model(TINY, 3), load_model(path))  # the same weights as the in-memory model
    hf = transformers.Mamba2ForCausalLM.from_pretrained(path, local_files_only=True)  # the field's reader
    assert torch.equal(hf.backbone.embeddings.weight, random_model(TINY, 3).backbone.embedding.weight.detach())


@pytest.mark.parametrize("dtype,torch_dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_random_checkpoint_in_a_dtype(tmp_path, dtype, torch_dtype):
    path = write_random_checkpoint(TINY, tmp_path / "c", "hf", seed=3, dtype=dtype)
    stored = load_file(path / "model.safetensors")
    assert {t.dtype for t in stored.values()} == {torch_dtype}
    assert torch.equal(stored["backbone.layers.1.mixer.in_proj.weight"],
                       random_model(TINY, 3).backbone.layers[1].mixer.in_proj.weight.detach().to(torch_dtype))


def test_random_checkpoint_holds_one_shard_at_a_time(tmp_path, monkeypatch):
    import ssd_deploy.checkpoint as ck

    held = []
    real = ck.save_file
    monkeypatch.setattr(ck, "save_file", lambda sd, *a, **k: (held.append(len(sd)), real(sd, *a, **k)))
    write_random_checkpoint(TINY, tmp_path / "c", "hf", max_shard_bytes=20_000)
    total = len(expected_shapes(TINY))
    assert len(held) > 3 and sum(held) == total and max(held) < total / 2


@pytest.mark.parametrize("text,size", [("5GB", 5 * 10**9), ("500MiB", 500 << 20), ("1234", 1234), ("2kb", 2000)])
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "5 GiBs", "-1GB", "0"])
def test_parse_size_refuses(text):
    with pytest.raises(UserError):
        parse_size(text)


def test_cli_new_dtype_and_shards(tmp_path):
    from click.testing import CliRunner

    from ssd_deploy.cli import main

    r = CliRunner().invoke(main, ["new", "-o", str(tmp_path / "c"), "--dtype", "bf16", "--max-shard-size", "30KB"])
    assert r.exit_code == 0, r.output
    index = json.loads((tmp_path / "c" / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 2
    assert {t.dtype for s in shards for t in load_file(tmp_path / "c" / s).values()} == {torch.bfloat16}
    r = CliRunner().invoke(main, ["new", "-o", str(tmp_path / "d"), "--max-shard-size", "lots"])
    assert r.exit_code == 2 and "size 'lots'" in r.output and not (tmp_path / "d").exists()
