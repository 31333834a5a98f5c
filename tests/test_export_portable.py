"""Portable export: standard ops only, the graph interface and metadata of docs/graph-interface.md, ONNX Runtime parity with the
PyTorch reference on several tiny configs, and the export's file guarantees."""

import dataclasses
import hashlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from conftest import assert_parity_every_length, TINY, VARIANTS, random_states, reference_outputs, rel_err
from ssd_deploy.checkpoint import checkpoint_hash, load_model
from ssd_deploy.config import load_config
from ssd_deploy.errors import UserError
from ssd_deploy.onnx import export as export_mod
from ssd_deploy.onnx.export import ExportOptions, export
from ssd_deploy.interface import read_metadata
from ssd_deploy.runtime.feeds import carried_states, feed
from ssd_deploy.runtime.ort_runner import ort_session

STANDARD_DOMAINS = {"", "ai.onnx"}


@pytest.fixture(scope="module")
def exports(make_export):
    return lambda variant, dtype="fp32": make_export(VARIANTS[variant], "portable", dtype)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_ort_parity_fp32_every_length(exports, variant):
    assert_parity_every_length(*exports(variant))


def test_ort_parity_fp16_prefill_then_decode(exports):
    ckpt, out = exports("g4", "fp16")
    meta = read_metadata(out)
    assert meta.dtype == "fp16"
    model = load_model(ckpt)  # fp32 reference
    sess = ort_session(out)
    rng = np.random.default_rng()
    names = [o.name for o in sess.get_outputs()]
    states = {k: np.zeros_like(v) for k, v in random_states(meta, 2, rng).items()}
    ref_states = dict(states)
    for length in (meta.config.chunk_size + 3, 1, 1):
        ids = rng.integers(0, meta.config.vocab_size, (2, length))
        got = dict(zip(names, sess.run(None, feed(ids, states))))
        assert got["logits"].dtype == np.float16 and got["ssm_state_out.0"].dtype == np.float32
        logits, ref_out = reference_outputs(model, ids, ref_states)
        assert rel_err(got["logits"].astype(np.float32), logits) < 1e-2
        states = carried_states(meta, got)
        ref_states = {s.name: ref_out[s.output].numpy() for s in meta.states}


def test_graph_uses_standard_ops_and_interface(tiny_export, tiny_ckpt):
    proto = onnx.load(str(tiny_export / "model.onnx"))
    assert {n.domain for n in proto.graph.node} <= STANDARD_DOMAINS
    assert "CumSum" not in {n.op_type for n in proto.graph.node}  # masked MatMul instead (docs/flavors.md)
    assert proto.ir_version == 10 and proto.opset_import[0].version >= 17
    names = [i.name for i in proto.graph.input]
    assert names[:3] == ["input_ids", "conv_state.0", "ssm_state.0"]
    assert [o.name for o in proto.graph.output][:3] == ["logits", "conv_state_out.0", "ssm_state_out.0"]
    ids = proto.graph.input[0].type.tensor_type
    assert ids.elem_type == onnx.TensorProto.INT64 and all(d.dim_param for d in ids.shape.dim)  # batch, seq dynamic
    onnx.checker.check_model(proto, full_check=True)
    meta = read_metadata(tiny_export)
    assert meta.config == load_config(tiny_ckpt)[0] and meta.flavor == "portable"
    assert meta.checkpoint_sha256 == checkpoint_hash(tiny_ckpt)
    assert [s.shape for s in meta.states[:2]] == [("batch", TINY.conv_dim, 3),
                                                  ("batch", TINY.nheads, TINY.headdim, TINY.d_state)]


def test_weights_are_stored_once(tiny_export, tiny_ckpt):
    proto = onnx.load(str(tiny_export / "model.onnx"))
    stored = sum(onnx.numpy_helper.to_array(t).nbytes for t in proto.graph.initializer)
    params = sum(p.numel() * p.element_size() for p in load_model(tiny_ckpt).parameters())  # tied head counted once
    assert stored < params * 1.05


def test_decode_takes_the_step_branch(tiny_export):
    """Each layer's scan is an If on l == 1 whose then-branch is the one-token step, without the chunk machinery
    (padding, chunk layouts, state passing): decode reads and writes each state once, not through a 1x1 chunk."""
    proto = onnx.load(str(tiny_export / "model.onnx"))
    ifs = [n for n in proto.graph.node if n.op_type == "If"]
    assert len(ifs) == TINY.n_layer
    chunk_machinery = {"Pad", "Transpose", "Concat", "Range"}
    for node in ifs:
        branches = {a.name: {n.op_type for n in a.g.node} for a in node.attribute}
        assert not branches["then_branch"] & chunk_machinery
        assert chunk_machinery <= branches["else_branch"]


def test_export_is_byte_identical(tiny_ckpt, tiny_export, tmp_path):
    again = export(tiny_ckpt, tmp_path / "again")
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert digest(again) == digest(tiny_export / "model.onnx")


def test_external_data_always(tiny_ckpt, tmp_path):
    path = export(tiny_ckpt, tmp_path / "ext", ExportOptions(external_data="always"))
    proto = onnx.load(str(path), load_external_data=False)
    large = [t for t in proto.graph.initializer if np.prod(t.dims) * 4 >= 4096]
    assert large and all(t.data_location == onnx.TensorProto.EXTERNAL for t in large)
    assert (path.parent / "model.onnx.data").stat().st_size > 5 * path.stat().st_size
    sess = ort.InferenceSession(str(path))
    assert sess.get_outputs()[0].name == "logits"


def test_decode_graph_and_last_logits(tiny_ckpt, tmp_path):
    from ssd_deploy.runtime.ort_runner import ort_runner
    from ssd_deploy.validate import validate

    out = export(tiny_ckpt, tmp_path / "dec", ExportOptions(graph="decode", logits="last")).parent
    meta = read_metadata(out)
    assert (meta.graph, meta.logits) == ("decode", "last")
    assert validate(out, tiny_ckpt, ort_runner(out), steps=3).ok


def test_failed_export_leaves_nothing(tiny_ckpt, tmp_path, monkeypatch):
    def broken(path):
        raise RuntimeError("checker says no")

    monkeypatch.setattr(export_mod, "check_model", broken)
    with pytest.raises(RuntimeError, match="checker says no"):
        export(tiny_ckpt, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("opts,message", [
    (ExportOptions(flavor="tflite"), "unknown flavor"),
    (ExportOptions(dtype="int4"), "unknown dtype"),
    (ExportOptions(opset=13), "opset 13 is not supported"),
])
def test_bad_options(tiny_ckpt, tmp_path, opts, message):
    with pytest.raises(UserError, match=message):
        export(tiny_ckpt, tmp_path / "x", opts)
    assert not (tmp_path / "x").exists()


def test_refuses_non_empty_output(tiny_ckpt, tiny_export):
    with pytest.raises(UserError, match="not an empty directory"):
        export(tiny_ckpt, tiny_export)


def test_codestral_shapes_export_without_weights_loaded(tmp_path):
    """Codestral-style shapes (ngroups 8, 128 heads) trace and lower; one layer, small vocab to keep CI fast."""
    from ssd_deploy.checkpoint import random_model, write_checkpoint
    from ssd_deploy.presets import preset

    cfg = dataclasses.replace(preset("codestral"), n_layer=1, vocab_size=64, d_model=1024)
    ckpt = write_checkpoint(random_model(cfg), tmp_path / "c", "hf")
    out = export(ckpt, tmp_path / "e").parent
    meta = read_metadata(out)
    assert (meta.config.ngroups, meta.config.nheads) == (8, 32)
    from ssd_deploy.runtime.ort_runner import ort_runner
    from ssd_deploy.validate import validate
    assert validate(out, ckpt, ort_runner(out), steps=1, batch=1, prompt_len=300).ok
