"""interface.py: the dtype vocabulary, the metadata checked against itself and against the graph (every tampering
refused in one place, read_metadata), and the weight records checked before build/run."""

from __future__ import annotations

import json
import shutil

import onnx
import pytest
import torch
from click.testing import CliRunner

from conftest import TINY
from ssd_deploy.cli import main
from ssd_deploy.errors import UserError
from ssd_deploy.interface import (DATA_FILE, DECODE_FILE, DTYPES, INLINE_WEIGHTS, MODEL_FILE, PREFIX, dtype_of,
                                  read_metadata, verify_weights)
from ssd_deploy.onnx.export import ExportOptions


def test_dtype_vocabulary():
    assert list(DTYPES) == ["fp32", "fp16", "bf16"]
    assert [d.torch for d in DTYPES.values()] == [torch.float32, torch.float16, torch.bfloat16]
    assert DTYPES["bf16"].numpy is None and DTYPES["fp16"].onnx == onnx.TensorProto.FLOAT16
    assert dtype_of(torch.bfloat16) is DTYPES["bf16"] and dtype_of("float32") is DTYPES["fp32"]
    assert len({d.kernel_code for d in DTYPES.values()}) == 3 and len({d.trt for d in DTYPES.values()}) == 3


def _tamper(src, dst, props=None, graph=None, file=MODEL_FILE):
    """A copy of export ``src`` with metadata props of ``file`` (the main graph, or the decode companion) replaced
    (key → value, None deletes) and/or ``graph(proto)`` applied; the weights file is copied as is."""
    shutil.copytree(src, dst)
    proto = onnx.load(str(dst / file), load_external_data=False)
    if props:
        kept = {p.key: p.value for p in proto.metadata_props}
        for k, v in props.items():
            if v is None:
                kept.pop(PREFIX + k)
            else:
                kept[PREFIX + k] = v(kept[PREFIX + k]) if callable(v) else v
        del proto.metadata_props[:]
        for k, v in kept.items():
            proto.metadata_props.add(key=k, value=v)
    if graph:
        graph(proto)
    onnx.save(proto, str(dst / file))
    return dst


def _json_edit(fn):
    def edit(text):
        d = json.loads(text)
        fn(d)
        return json.dumps(d)
    return edit


def _set_state_shape(states):
    states[1]["shape"][2] += 1


def _set_state_dtype(states):
    states[0]["dtype"] = "int4"


def _bigger_state(cfg):
    cfg["d_state"] = 32


def _more_layers(cfg):
    cfg["n_layer"] = 3


def _rename_input(proto):
    proto.graph.input[1].name = "conv_state.x"


def _retype_state(proto):
    proto.graph.input[2].type.tensor_type.elem_type = onnx.TensorProto.FLOAT16


def _retype_logits(proto):
    proto.graph.output[0].type.tensor_type.elem_type = onnx.TensorProto.DOUBLE


def _reshape_state(proto):
    proto.graph.output[1].type.tensor_type.shape.dim[1].dim_value = 7


def _wrong_opset(proto):
    proto.opset_import[0].version = 19


TAMPERINGS = {
    "dtype int4": ({"dtype": "int4"}, None, "dtype 'int4' is not one of"),
    "opset 99": ({"opset": "99"}, None, "says opset 99, the graph imports opset 18"),
    "opset text": ({"opset": "eighteen"}, None, "malformed ssd-deploy metadata"),
    "flavor": ({"flavor": "tensorflow"}, None, "flavor 'tensorflow' is not one of"),
    "graph": ({"graph": "bogus"}, None, "graph 'bogus' is not one of"),
    "logits": ({"logits": "some"}, None, "logits 'some' is not one of"),
    "prefill": ({"prefill": "magic"}, None, "prefill 'magic' is not one of"),
    "state shape": ({"states": _json_edit(_set_state_shape)}, None, "states disagree with its config"),
    "state dtype": ({"states": _json_edit(_set_state_dtype)}, None, "state dtype 'int4'"),
    "states missing": ({"states": None}, None, "malformed ssd-deploy metadata"),
    "states not a list": ({"states": "{}"}, None, "states disagree with its config"),
    "config d_state": ({"config": _json_edit(_bigger_state)}, None, "states disagree with its config"),
    "config layers": ({"config": _json_edit(_more_layers)}, None, "states disagree with its config"),
    "config malformed": ({"config": "{"}, None, "malformed ssd-deploy metadata"),
    "config bool": ({"config": _json_edit(lambda c: c.update(tie_embeddings="no"))}, None, "true or false"),
    "chunk size": ({"chunk_size": "64"}, None, "chunk_size '64' disagrees"),
    "checkpoint hash": ({"checkpoint_sha256": "xyz"}, None, "not a sha256 digest"),
    "recipe": ({"recipe": "[1]"}, None, "recipe must be a JSON object"),
    "weights record": ({"weights": '{"../x": 3}'}, None, "malformed weights record"),
    "input renamed": (None, _rename_input, "inputs/outputs are not the interface"),
    "state retyped": (None, _retype_state, "ssm_state.0 is FLOAT16, the metadata says fp32"),
    "logits retyped": (None, _retype_logits, "logits is DOUBLE, the metadata says fp32"),
    "state reshaped": (None, _reshape_state, "conv_state_out.0 has shape"),
    "graph opset": (None, _wrong_opset, "says opset 18, the graph imports opset 19"),
}


@pytest.mark.parametrize("case", list(TAMPERINGS))
def test_tampered_exports_are_refused_everywhere(tiny_export, tmp_path, case):
    props, graph, message = TAMPERINGS[case]
    bad = _tamper(tiny_export, tmp_path / "bad", props, graph)
    with pytest.raises(UserError, match=message):
        read_metadata(bad)
    r = CliRunner().invoke(main, ["inspect", str(bad)])
    assert r.exit_code == 2 and message.split("'")[0] in r.output and "Traceback" not in r.output


def test_untampered_export_reads(tiny_export):
    meta = read_metadata(tiny_export)
    assert set(meta.weights) == {INLINE_WEIGHTS}
    verify_weights(tiny_export, meta, always_hash=True)


def test_weight_files_are_checked_before_running(make_export, tmp_path):
    _, out = make_export(TINY, external_data="always")
    meta = read_metadata(out)
    assert meta.weights[DATA_FILE]["bytes"] == (out / DATA_FILE).stat().st_size
    flipped = shutil.copytree(out, tmp_path / "flipped")
    data = bytearray((flipped / DATA_FILE).read_bytes())
    data[len(data) // 2] ^= 0x10
    (flipped / DATA_FILE).write_bytes(bytes(data))
    with pytest.raises(UserError, match="sha256 differs"):
        verify_weights(flipped)
    r = CliRunner().invoke(main, ["run", str(flipped), "--input-ids", "1,2", "--max-new-tokens", "2"])
    assert r.exit_code == 2 and "sha256 differs" in r.output
    r = CliRunner().invoke(main, ["build", str(flipped)])
    assert r.exit_code == 2 and "sha256 differs" in r.output
    truncated = shutil.copytree(out, tmp_path / "truncated")
    (truncated / DATA_FILE).write_bytes(bytes(data[:-4]))
    with pytest.raises(UserError, match="truncated or replaced"):
        verify_weights(truncated)
    (truncated / DATA_FILE).unlink()
    with pytest.raises(UserError, match="missing"):
        verify_weights(truncated)


def test_inline_weights_are_checked(tiny_export, tmp_path):
    def flip(proto):
        t = max(proto.graph.initializer, key=lambda t: len(t.raw_data))
        raw = bytearray(t.raw_data)
        raw[5] ^= 1
        t.raw_data = bytes(raw)

    bad = _tamper(tiny_export, tmp_path / "bad", graph=flip)
    with pytest.raises(UserError, match="differ from those written at export"):
        verify_weights(bad)


def _flip_inline_constant(proto):
    t = max(proto.graph.initializer, key=lambda t: len(t.raw_data))
    raw = bytearray(t.raw_data)
    raw[3] ^= 1
    t.raw_data = bytes(raw)


def _shift_a_weight(proto):
    """Points one external weight of the companion 4 bytes further into the data file (a valid graph, wrong
    weights)."""
    t = next(t for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL)
    offset = next(e for e in t.external_data if e.key == "offset")
    offset.value = str(int(offset.value) + 4)


COMPANION_TAMPERINGS = {  # (props, graph, file) → the message
    "constant flipped": ((None, _flip_inline_constant, DECODE_FILE), "not the decode companion graph written"),
    "weight moved": ((None, _shift_a_weight, DECODE_FILE), "not the decode companion graph written"),
    "other checkpoint": (({"checkpoint_sha256": "0" * 64}, None, DECODE_FILE), "not the decode companion of"),
    "unified graph as companion": (({"graph": "unified"}, None, DECODE_FILE), "not the decode companion of"),
    "record removed": (({"weights": lambda w: json.dumps({k: v for k, v in json.loads(w).items()
                                                          if k != DECODE_FILE})}, None, MODEL_FILE),
                       "without a record of decode.onnx"),
    "companion removed": (None, "decode.onnx: missing"),
}


@pytest.mark.parametrize("case", list(COMPANION_TAMPERINGS))
def test_tampered_decode_companion_is_refused(make_export, tmp_path, case):
    """The companion is checked as the main graph is: its metadata against its graph and against the main graph's,
    its bytes against the main graph's record (read_metadata, verify_weights); run and validate exit 2."""
    ckpt, out = make_export(TINY, "ort", logits="last", companion="decode")
    how, message = COMPANION_TAMPERINGS[case]
    if how is None:
        bad = shutil.copytree(out, tmp_path / "bad")
        (bad / DECODE_FILE).unlink()
    else:
        props, graph, file = how
        bad = _tamper(out, tmp_path / "bad", props, graph, file)
    with pytest.raises(UserError, match=message):
        verify_weights(bad, read_metadata(bad))
    for args in (["run", str(bad), "--backend", "ort", "--input-ids", "1,2", "--max-new-tokens", "2"],
                 ["validate", str(bad), "--against", str(ckpt), "--steps", "1"]):
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 2 and message.split("(")[0] in r.output and "Traceback" not in r.output, r.output


@pytest.mark.parametrize("opset", ["99", "17", "-1"])
def test_unsupported_opsets_are_refused_up_front(tmp_path, opset):
    r = CliRunner().invoke(main, ["export", str(tmp_path / "no-ckpt"), "-o", str(tmp_path / "o"), "--opset", opset])
    assert r.exit_code == 2 and (f"opset {opset} is not supported" in r.output or "'--opset'" in r.output), r.output
    assert not (tmp_path / "o").exists()


def test_metadata_round_trips(tiny_export):
    meta = read_metadata(tiny_export)
    from ssd_deploy.interface import ExportMetadata

    assert ExportMetadata.from_props(meta.to_props()) == meta
    assert ExportOptions().opset == meta.opset
