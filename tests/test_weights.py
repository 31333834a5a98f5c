"""Streaming export (onnx/weights.py): the graph traced with meta parameters, weights written one at a time from the
checkpoint into one aligned external-data file, the same graph and values as an export of the loaded model."""

import dataclasses
import hashlib
import weakref

import numpy as np
import onnx
import onnx_ir
import pytest
import torch

from conftest import TINY, VARIANTS, rel_err
from ssd_deploy.checkpoint import Weights, load_model, random_model, write_checkpoint, write_random_checkpoint
from ssd_deploy.onnx import export as export_mod
from ssd_deploy.onnx import weights as streamed
from ssd_deploy.onnx.export import DTYPES, ExportOptions, check_model, export, strip_trace_metadata, trace
from ssd_deploy.interface import DATA_FILE, MODEL_FILE, read_metadata
from ssd_deploy.runtime.feeds import feed
from ssd_deploy.runtime.ort_runner import ort_session


def in_memory_export(ckpt, out, opts):
    """The export as it was before streaming: the loaded model traced with its weights, saved by onnx_ir."""
    graph = trace(load_model(ckpt, DTYPES[opts.dtype].torch), opts)
    strip_trace_metadata(graph)
    graph.ir_version = export_mod.IR_VERSION
    out.mkdir()
    onnx_ir.save(graph, out / MODEL_FILE, external_data=DATA_FILE)
    return out


def initializers(path):
    model = onnx.load(str(path / MODEL_FILE))
    return {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}, model


@pytest.mark.slow
@pytest.mark.parametrize("flavor,dtype,cfg", [("portable", "fp16", "g4"), ("ort", "fp32", "hdimD-limit"),
                                              ("trt", "bf16", "g1")])
def test_streamed_export_is_the_in_memory_export(tmp_path, make_checkpoint, flavor, dtype, cfg):
    cfg = VARIANTS[cfg]
    ckpt = make_checkpoint(cfg, "mamba_ssm" if cfg.D_has_hdim else "hf", seed=21)
    opts = ExportOptions(flavor=flavor, dtype=dtype, external_data="always")
    ours = export(ckpt, tmp_path / "streamed", opts).parent
    theirs = in_memory_export(ckpt, tmp_path / "memory", opts)
    a, ma = initializers(ours)
    b, mb = initializers(theirs)
    assert a.keys() == b.keys()
    for name in a:  # every value, folded ones included, bit for bit
        assert a[name].dtype == b[name].dtype and np.array_equal(a[name].view(np.uint8), b[name].view(np.uint8)), name
    assert [(n.op_type, list(n.input), list(n.output)) for n in ma.graph.node] == \
        [(n.op_type, list(n.input), list(n.output)) for n in mb.graph.node]
    if flavor == "trt" or dtype == "bf16":
        return  # plugin nodes / bf16 MatMul do not run on ONNX Runtime's CPU provider: the values above decide
    rng = np.random.default_rng()
    ids = rng.integers(0, cfg.vocab_size, (2, 9))
    meta = read_metadata(ours)
    states = {s.name: rng.standard_normal((2, *s.shape[1:])).astype(np.float32) for s in meta.states}
    got = ort_session(ours).run(None, feed(ids, states))
    want = ort_session(theirs).run(None, feed(ids, states))
    for g, w in zip(got, want):
        assert np.array_equal(g, w)


def test_external_data_layout(tmp_path, tiny_ckpt):
    out = export(tiny_ckpt, tmp_path / "o", ExportOptions(dtype="fp16", external_data="always")).parent
    assert sorted(p.name for p in out.iterdir()) == sorted([DATA_FILE, MODEL_FILE])  # one data file beside the graph
    model = onnx.load(str(out / MODEL_FILE), load_external_data=False)
    data = (out / DATA_FILE).read_bytes()
    external = [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert len(external) > 10
    ranges = []
    for t in external:  # per-tensor location, offset and length; offsets aligned; ranges disjoint and in the file
        info = {e.key: e.value for e in t.external_data}
        assert info["location"] == DATA_FILE
        offset, length = int(info["offset"]), int(info["length"])
        assert offset % streamed.ALIGNMENT == 0
        assert length == np.prod(t.dims) * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        ranges.append((offset, offset + length))
    ranges.sort()
    assert all(a[1] <= b[0] for a, b in zip(ranges, ranges[1:])) and ranges[-1][1] == len(data)
    inline = [t for t in model.graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL]
    assert all(len(t.raw_data) < streamed.INLINE_BYTES for t in inline)
    check_model(out / MODEL_FILE)


def test_write_external_reports_size_and_hash(tmp_path, tiny_ckpt):
    w = Weights(tiny_ckpt)
    with torch.device("meta"):
        model = export_mod.Mamba2LM(w.cfg).cast(torch.float16)
    graph = trace(model, ExportOptions(dtype="fp16"), bind=lambda m: (streamed.bind(m, w), streamed.fold_transposes(m)))
    info = streamed.write_external(graph, tmp_path / DATA_FILE)
    data = (tmp_path / DATA_FILE).read_bytes()
    assert info == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_export_records_its_data_file(tmp_path, tiny_ckpt):
    out = export(tiny_ckpt, tmp_path / "o", ExportOptions(external_data="always")).parent
    data = (out / DATA_FILE).read_bytes()
    assert read_metadata(out).weights[DATA_FILE] == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


@pytest.mark.slow
def test_export_holds_one_weight_at_a_time(tmp_path, monkeypatch):
    """Every tensor the export reads from the checkpoint or builds from it (stored blocks, converted blocks, whole
    reads, a transposed weight assembled for writing), tracked while alive: at most one weight at the target dtype
    plus two blocks at once, far below the model. Before blocks, a write held the stored tensor, its converted copy,
    a NaN mask and the transposed copy (benchmarks/RESULTS.md has the process's peak RSS on 2.7b and 7B)."""
    import ssd_deploy.checkpoint as checkpoint

    # untied: the head is a folded Transpose, assembled whole at fp16 (a tied one stays a graph Transpose of the
    # embedding, which is written in blocks)
    cfg = dataclasses.replace(TINY, d_model=256, n_layer=4, vocab_size=4096, headdim=32, d_state=32,
                              tie_embeddings=False)
    ckpt = write_random_checkpoint(cfg, tmp_path / "c", "hf", dtype="fp32", max_shard_bytes=2_000_000)
    block = 64 << 10
    monkeypatch.setattr(checkpoint, "CHUNK_BYTES", block)
    model_bytes = Weights(ckpt).nbytes
    head_fp16 = 4096 * 256 * 2  # the largest weight as written
    alive = {"now": 0, "peak": 0}

    def track(t):
        if not isinstance(t, torch.Tensor) or id(t) in tracked:
            return t
        n = t.numel() * t.element_size()
        tracked.add(id(t))
        alive["now"] += n
        alive["peak"] = max(alive["peak"], alive["now"])
        weakref.finalize(t, lambda: (alive.__setitem__("now", alive["now"] - n), tracked.discard(i)))
        i = id(t)
        return t

    tracked = set()

    def tracking(gen_fn):
        def run(*args, **kwargs):
            for t in gen_fn(*args, **kwargs):
                yield track(t)
        return run

    real_read, real_bytes = Weights.read, streamed._bytes
    monkeypatch.setattr(Weights, "read", lambda self, *a: track(real_read(self, *a)))
    monkeypatch.setattr(Weights, "chunks", tracking(Weights.chunks))
    monkeypatch.setattr(Weights, "_file_blocks", tracking(Weights._file_blocks))
    monkeypatch.setattr(streamed, "_bytes", lambda t: (track(getattr(t, "raw", t)), real_bytes(t))[1])
    export(ckpt, tmp_path / "o", ExportOptions(dtype="fp16", external_data="always"))
    assert head_fp16 <= alive["peak"] <= head_fp16 + 2 * block, (alive["peak"], head_fp16, model_bytes)
    assert model_bytes > 4 * head_fp16


def test_never_refuses_what_protobuf_cannot_hold(tmp_path, tiny_ckpt, monkeypatch):
    monkeypatch.setattr(export_mod, "PROTOBUF_LIMIT", 1000)
    monkeypatch.setattr(export_mod, "trace", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(export_mod.UserError, match="protobuf limit"):
        export(tiny_ckpt, tmp_path / "o", ExportOptions(external_data="never"))
    assert not (tmp_path / "o").exists()


def test_nan_weights_refused_before_any_work(tmp_path, monkeypatch):
    from safetensors.torch import load_file, save_file

    ckpt = write_checkpoint(random_model(TINY, 2), tmp_path / "c", "hf")
    sd = load_file(ckpt / "model.safetensors")
    sd["backbone.layers.0.mixer.A_log"][1] = float("nan")
    save_file(sd, ckpt / "model.safetensors")
    monkeypatch.setattr(export_mod, "trace", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(export_mod.UserError, match="'backbone.layers.0.mixer.A_log' holds NaN or Inf"):
        export(ckpt, tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_values_fp16_cannot_hold_refused_before_any_work(tmp_path, monkeypatch):
    from safetensors.torch import load_file, save_file

    ckpt = write_checkpoint(random_model(TINY, 2), tmp_path / "c", "hf")
    sd = load_file(ckpt / "model.safetensors")
    sd["backbone.layers.1.mixer.out_proj.weight"][0, 3] = 1e5
    save_file(sd, ckpt / "model.safetensors")
    export(ckpt, tmp_path / "bf16", ExportOptions(dtype="bf16"))  # bf16 holds 1e5
    monkeypatch.setattr(export_mod, "trace", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(export_mod.UserError, match="'backbone.layers.1.mixer.out_proj.weight' holds values outside "
                                                   "the range of torch.float16"):
        export(ckpt, tmp_path / "o", ExportOptions(dtype="fp16"))
    assert not (tmp_path / "o").exists()


def test_export_checks_each_weight_once_and_hashes_while_reading(tmp_path, tiny_ckpt, monkeypatch):
    """The NaN/Inf and range checks run once per weight (in the scan that also hashes the checkpoint), not again
    when the weights are written; the recorded hashes are those of the files as they are on disk."""
    import ssd_deploy.checkpoint as checkpoint
    from ssd_deploy.interface import file_sha256

    checked = []
    real = checkpoint._check_extremes
    monkeypatch.setattr(checkpoint, "_check_extremes",
                        lambda r, lo, hi, d: (checked.append(r.name), real(r, lo, hi, d)))
    monkeypatch.setattr(export_mod, "checkpoint_hash", lambda *a: pytest.fail("the checkpoint read again to hash it"),
                        raising=False)
    out = export(tiny_ckpt, tmp_path / "o", ExportOptions(dtype="fp16", external_data="always")).parent
    names = Weights(tiny_ckpt).names()
    # as stored (fp32), and as written where that differs (fp16; the op contracts' parameters stay fp32)
    converted = [n for n in names if checkpoint.param_dtype(n, torch.float16) != torch.float32]
    assert sorted(checked) == sorted(names + converted)
    meta = read_metadata(out)
    assert meta.checkpoint_sha256 == checkpoint.checkpoint_hash(tiny_ckpt)
    assert meta.weights[DATA_FILE]["sha256"] == file_sha256(out / DATA_FILE)


@pytest.mark.slow
def test_weights_past_protobufs_2gib(tmp_path):
    """A tiny model whose fp32 embedding alone is just over 2 GiB: streamed into the data file, checked by
    onnx.checker through the path, loaded and run by ONNX Runtime, equal to PyTorch."""
    vocab = 2_000_000  # x 288 x 4 bytes = 2.15 GiB (config.py bounds the vocabulary at 2M)
    cfg = dataclasses.replace(TINY, vocab_size=vocab, d_model=288, n_layer=1, pad_vocab_size_multiple=16)
    ckpt = write_random_checkpoint(cfg, tmp_path / "c", "hf", dtype="fp32")
    out = export(ckpt, tmp_path / "o", ExportOptions(dtype="fp32", logits="last")).parent
    assert (out / DATA_FILE).stat().st_size > 2**31
    assert (out / MODEL_FILE).stat().st_size < 1 << 20
    ids = np.array([[1, vocab - 1, 123456]])
    meta = read_metadata(out)
    states = {s.name: np.zeros((1, *s.shape[1:]), np.float32) for s in meta.states}
    logits = ort_session(out).run(["logits"], feed(ids, states))[0]
    del meta
    model = load_model(ckpt)
    with torch.no_grad():
        ref, _, _ = model(torch.from_numpy(ids), *model.init_states(1), last_token_only=True)
    assert rel_err(logits, ref) < 1e-4
