"""`ort` export: the ONNX Runtime contrib ops it relies on behave as ort.py says (checked here against the float64
recurrence, so an ONNX Runtime upgrade that changes them fails loudly), each op's lowering matches the contract,
and whole models match the PyTorch reference on the tiny configs, prefill and decode, fp32 and fp16, with either
prefill (LinearAttention, or the chunked scan with LinearAttention for one-token calls only)."""

import dataclasses
import math

import numpy as np
import onnx
import onnx_ir
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto
from onnx import helper as oh

from conftest import assert_parity_every_length, TINY, VARIANTS, rel_err
from ssd_deploy.errors import UserError
from ssd_deploy.onnx import ort as ort_flavor
from ssd_deploy.onnx.export import ExportOptions, export
from ssd_deploy.interface import DTYPES, LAYOUT_SSM, read_metadata
from ssd_deploy.onnx.tracing import sample_inputs, trace_op
from ssd_deploy.runtime.ort_runner import ort_runner, ort_session
from ssd_deploy.ssd import reference as R
from ssd_deploy.validate import validate

MS = "com.microsoft"
OP_TOL = {"fp32": 1e-5, "fp16": 1e-2, "bf16": 1e-2}
# the tiny variants have headdim == d_state; this one tells the [b,h,n,p] state layout from [b,h,p,n] by shape too
MODEL_VARIANTS = {**VARIANTS, "n8": dataclasses.replace(TINY, d_state=8)}


def run_node(node, feeds: dict, n_out: int):
    model = oh.make_model(
        oh.make_graph([node], "g", [oh.make_tensor_value_info(k, TensorProto.FLOAT, None) for k in feeds],
                      [oh.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in node.output[:n_out]]),
        opset_imports=[oh.make_opsetid("", 18), oh.make_opsetid(MS, 1)], ir_version=10)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {k: np.ascontiguousarray(v, np.float32) for k, v in feeds.items()})


# ---- the contrib ops' semantics ----------------------------------------------------------------------------------

@pytest.mark.parametrize("length", [1, 37])
def test_linear_attention_gated_is_the_ssd_recurrence(length):
    b, h, p, n, g = 2, 4, 8, 6, 2
    x, dt = torch.randn(b, length, h, p, dtype=torch.float64), torch.randn(b, length, h, dtype=torch.float64)
    A, dt_bias = -torch.rand(h, dtype=torch.float64) * 3 - 0.5, torch.randn(h, dtype=torch.float64) * 0.5
    B, C = torch.randn(b, length, g, n, dtype=torch.float64), torch.randn(b, length, g, n, dtype=torch.float64)
    s0 = torch.randn(b, h, p, n, dtype=torch.float64)
    zeros_D = torch.zeros(h, dtype=torch.float64)
    y_ref, s_ref = R.ssd_sequential(x, dt, A, B, C, zeros_D, dt_bias, s0)
    dtp = R.process_dt(dt, dt_bias, True, 0.0, math.inf)
    heads = lambda t: t.repeat_interleave(h // g, dim=2).reshape(b, length, h * n).numpy()  # noqa: E731
    feeds = {"q": heads(C), "k": heads(B), "v": (x * dtp[..., None]).reshape(b, length, h * p).numpy(),
             "s": s0.transpose(-1, -2).numpy(), "g": (dtp * A).numpy()}

    def run(**scale):
        node = oh.make_node("LinearAttention", ["q", "k", "v", "s", "g"], ["o", "so"], domain=MS,
                            update_rule="gated", q_num_heads=h, kv_num_heads=h, **scale)
        return run_node(node, feeds, 2)

    y, s = run(scale=1.0)
    assert rel_err(y.reshape(b, length, h, p), y_ref) < 1e-5
    assert rel_err(np.swapaxes(s, -1, -2), s_ref) < 1e-5  # its state is [b, h, n, p]
    y_default, _ = run()  # the default scale is 1/sqrt(d_k): why ort.py sets scale = 1
    assert rel_err(y_default.reshape(b, length, h, p) * math.sqrt(n), y_ref) < 1e-5


@pytest.mark.parametrize("length", [1, 2, 3, 7])
def test_causal_conv_with_state_channels_last(length):
    b, d, k = 2, 10, 4
    x, w, bias = torch.randn(b, length, d, dtype=torch.float64), torch.randn(d, k, dtype=torch.float64), \
        torch.randn(d, dtype=torch.float64)
    state = torch.randn(b, d, k - 1, dtype=torch.float64)
    y_ref, s_ref = R.causal_conv1d(x, w, bias, state, silu=True)
    node = oh.make_node("CausalConvWithState", ["x", "w", "bias", "s"], ["y", "so"], domain=MS, activation="silu",
                        channels_last=1)
    y, s = run_node(node, {"x": x.numpy(), "w": w[:, None].numpy(), "bias": bias.numpy(),
                           "s": state.transpose(1, 2).numpy()}, 2)
    assert rel_err(y, y_ref) < 1e-5
    assert rel_err(np.swapaxes(s, 1, 2), s_ref) < 1e-5  # channels_last carries the state as [b, k-1, d]


def test_gated_rmsnorm_contrib_op_normalises_before_gating():
    """Why the `ort` flavor keeps the portable gated norm: ONNX Runtime's GatedRMSNorm is another function."""
    y, z, w = torch.randn(2, 5, 24, dtype=torch.float64), torch.randn(2, 5, 24, dtype=torch.float64), \
        torch.randn(24, dtype=torch.float64)
    node = oh.make_node("GatedRMSNorm", ["y", "w", "z"], ["o"], domain=MS, activation="silu", epsilon=1e-5)
    out, = run_node(node, {"y": y.numpy(), "w": w.numpy(), "z": z.numpy()}, 1)
    norm_first = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + 1e-5) * w * F.silu(z)
    assert rel_err(out, norm_first) < 1e-5
    assert rel_err(out, R.gated_rmsnorm(y, z, w, 1e-5, 24)) > 0.1


# ---- each op's lowering against the contract ---------------------------------------------------------------------

STATE = {"ssd_scan": 7, "ssd_step": 0}  # the ssm state input, in ort.SSM_LAYOUT [b,h,n,p] in this flavor
OPS = {  # op → (non-tensor arguments, input names, output names)
    "ssd_scan": ({"chunk_size": 16, "dt_softplus": True, "dt_min": 0.0, "dt_max": math.inf},
                 ["x", "dt", "A", "B", "C", "D", "dt_bias", "initial_state"], ["y", "state"]),
    "ssd_step": ({"dt_softplus": True, "dt_min": 0.0, "dt_max": math.inf},
                 ["state", "x", "dt", "A", "B", "C", "D", "dt_bias"], ["y", "new_state"]),
    "causal_conv1d": ({"silu": True}, ["x", "weight", "bias", "conv_state"], ["y", "conv_state_out"]),
}


def reference(op_name, inputs, attrs):
    """The contract in float64 (the sequential recurrence for the scan)."""
    d = [t.double() for t in inputs]
    if op_name == "ssd_scan":
        kw = {k: v for k, v in attrs.items() if k != "chunk_size"}
        return R.ssd_sequential(*d[:7], d[7], **kw)
    if op_name == "ssd_step":
        return R.ssd_step(*d, **attrs)
    return R.causal_conv1d(*d, silu=attrs["silu"])


def op_session(model: onnx_ir.Model, path):
    """An ONNX Runtime session of a one-op graph whose outputs are cast to float32 (numpy has no bfloat16)."""
    for i, out in enumerate(list(model.graph.outputs)):
        if out.dtype != onnx_ir.DataType.FLOAT:
            cast = onnx_ir.Node("", "Cast", [out], [onnx_ir.AttrInt64("to", TensorProto.FLOAT)], num_outputs=1)
            model.graph.append(cast)
            cast.outputs[0].name, out.name = out.name, out.name + "_native"
            model.graph.outputs[i] = cast.outputs[0]
    onnx_ir.save(model, path)
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def ort_value(t: torch.Tensor):
    if t.dtype == torch.bfloat16:
        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(t.view(torch.int16).numpy(), TensorProto.BFLOAT16)
    return ort.OrtValue.ortvalue_from_numpy(t.numpy())


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("op_name,prefill", [(op_name, "contrib") for op_name in OPS] + [("ssd_scan", "chunked")])
@pytest.mark.parametrize("variant", ["g4", "hdimD-limit", "n8"])
def test_op_lowering_matches_contract(op_name, prefill, dtype, variant, tmp_path):
    """The chunked prefill's scan at l = 1 (LinearAttention), inside one chunk, at and past its end (Q = 16)."""
    cfg = MODEL_VARIANTS[variant]
    attrs, names, outs = OPS[op_name]
    if op_name != "causal_conv1d":
        attrs = {**attrs, "dt_min": cfg.dt_min, "dt_max": cfg.dt_max}
    model = trace_op(op_name, attrs, cfg, DTYPES[dtype].torch, ort_flavor, names, outs, {"prefill": prefill})
    assert MS in {n.domain for n in onnx_ir.traversal.RecursiveGraphIterator(model.graph)}  # the contrib op is used
    assert model.graph.outputs[1].dtype == onnx_ir.DataType.FLOAT  # states stay float32 whatever the activations
    sess = op_session(model, tmp_path / "op.onnx")
    for length in (1, 7, 16, 19):
        inputs, _ = sample_inputs(op_name, cfg, DTYPES[dtype].torch, batch=2, seq=length)
        fed = list(inputs)
        if op_name in STATE:
            fed[STATE[op_name]] = fed[STATE[op_name]].transpose(-1, -2).contiguous()
        got = [g.numpy() for g in sess.run_with_ort_values(None, {k: ort_value(t) for k, t in zip(names, fed)})]
        if op_name in STATE:
            got[1] = np.swapaxes(got[1], -1, -2)
        for g, r in zip(got, reference(op_name, inputs, attrs)):
            assert rel_err(g.astype(np.float64), r) < OP_TOL[dtype], (op_name, length)


def test_bf16_graph_casts_around_fp32_contrib_ops():
    """bf16 exports run every contrib op in float32 between Casts (ONNX Runtime's CPU provider cannot run a bf16
    model end to end: it has no bf16 MatMul)."""
    model = trace_op("ssd_scan", {**OPS["ssd_scan"][0]}, VARIANTS["g4"], torch.bfloat16, ort_flavor,
                     *OPS["ssd_scan"][1:])
    la = next(n for n in model.graph if n.op_type == "LinearAttention")
    assert all(v.dtype.name == "FLOAT" for v in la.inputs if v is not None)
    assert model.graph.outputs[0].dtype.name == "BFLOAT16"


# ---- whole models ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def exports(make_export):
    return lambda variant, dtype="fp32", **opts: make_export(MODEL_VARIANTS[variant], "ort", dtype, **opts)


@pytest.mark.parametrize("variant", list(MODEL_VARIANTS))
def test_parity_fp32_every_length(exports, variant):
    """States fed in the export's [b,h,n,p] layout (ort.SSM_LAYOUT): a layout mix-up fails here."""
    assert_parity_every_length(*exports(variant))


@pytest.mark.parametrize("variant", list(MODEL_VARIANTS))
def test_validate_prefill_then_decode(exports, variant):
    ckpt, out = exports(variant)
    report = validate(out, ckpt, ort_runner(out), steps=4, batch=2)
    assert report.ok, report.to_dict()
    assert len(report.errors) == 15  # 5 calls x (logits, conv_state, ssm_state)


def test_validate_fp16(exports):
    ckpt, out = exports("g4", "fp16")
    report = validate(out, ckpt, ort_runner(out), steps=3, batch=2)
    assert report.ok, report.to_dict()
    assert report.dtype == "fp16" and max(e.rel for e in report.errors) > 1e-6  # really ran in half precision


def test_decode_graph(exports):
    ckpt, out = exports("g1", graph="decode", logits="last")
    assert read_metadata(out).graph == "decode"
    assert validate(out, ckpt, ort_runner(out), steps=3).ok


def test_graph_uses_contrib_ops_and_declares_its_state_layout(exports):
    ckpt, out = exports("n8")
    proto = onnx.load(str(out / "model.onnx"))
    ops = [(n.domain, n.op_type) for n in proto.graph.node]
    n_layer = TINY.n_layer
    assert ops.count((MS, "LinearAttention")) == n_layer
    assert not {"Conv", "Exp", "CumSum"} & {t for d, t in ops if d == ""}  # no standard-op scan or conv left
    # the conv: an If per layer, the contrib op for one token, the standard Conv for longer calls (ort.py)
    ifs = [n for n in proto.graph.node if n.op_type == "If"]
    branch_ops = lambda n, name: [(m.domain, m.op_type) for a in n.attribute if a.name == name  # noqa: E731
                                  for m in a.g.node]
    assert len(ifs) == n_layer
    assert all((MS, "CausalConvWithState") in branch_ops(n, "then_branch") for n in ifs)
    assert all(("", "Conv") in branch_ops(n, "else_branch") for n in ifs)
    la = next(n for n in proto.graph.node if n.op_type == "LinearAttention")
    attrs = {a.name: oh.get_attribute_value(a) for a in la.attribute}
    assert attrs["scale"] == 1.0 and attrs["update_rule"] == b"gated"
    assert la.input[3] == "ssm_state.0" and "ssm_state_out.0" in la.output  # no transposes around the op
    meta = read_metadata(out)
    cfg = MODEL_VARIANTS["n8"]
    assert meta.flavor == "ort" and meta.ssm_layout == ort_flavor.SSM_LAYOUT != LAYOUT_SSM
    assert meta.states[1].shape == ("batch", cfg.nheads, cfg.d_state, cfg.headdim)
    dims = lambda vi: [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]  # noqa: E731
    ssm_in = next(i for i in proto.graph.input if i.name == "ssm_state.0")
    ssm_out = next(o for o in proto.graph.output if o.name == "ssm_state_out.0")
    assert dims(ssm_in) == dims(ssm_out) == ["batch", cfg.nheads, cfg.d_state, cfg.headdim]
    onnx.checker.check_model(str(out / "model.onnx"), full_check=True)


def test_norms_take_the_forms_onnx_runtime_fuses(exports, tmp_path):
    """A residual sum and the RMSNorm after it are one SkipSimplifiedLayerNormalization in the file (every block
    but the first, and the final norm of an all-logits graph); the first block's RMSNorm and the one-group gated
    norms are in the form ONNX Runtime's session fuses into SimplifiedLayerNormalization (ort.py): no elementwise
    norm left once the session has optimized the graph."""
    ckpt, out = exports("g1")
    proto = onnx.load(str(out / "model.onnx"))
    assert [n.op_type for n in proto.graph.node].count("SkipSimplifiedLayerNormalization") == TINY.n_layer
    onnx.checker.check_model(str(out / "model.onnx"), full_check=True)
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(out / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    optimized = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert optimized.count("SimplifiedLayerNormalization") == 1 + TINY.n_layer
    assert not {"Pow", "ReduceMean", "Sqrt", "Reciprocal", "Div"} & set(optimized)


# ---- whole models with the chunked prefill (prefill="chunked": LinearAttention for one token only) -----------------

@pytest.mark.parametrize("variant", list(MODEL_VARIANTS))
def test_chunked_prefill_parity_fp32_every_length(exports, variant):
    """l = 1 takes LinearAttention, every other length the chunked scan; both from and to the [b,h,n,p] states."""
    assert_parity_every_length(*exports(variant, prefill="chunked"))


def test_chunked_prefill_validate_fp16(exports):
    ckpt, out = exports("g4", "fp16", prefill="chunked")
    report = validate(out, ckpt, ort_runner(out), steps=3, batch=2)
    assert report.ok, report.to_dict()
    assert report.dtype == "fp16" and max(e.rel for e in report.errors) > 1e-6


def test_chunked_prefill_graph(exports):
    """Each layer's scan is an If on l == 1: LinearAttention alone in the one-token branch, the chunked machinery
    (and the state's two transposes to and from the contract layout) in the other; the interface keeps
    LinearAttention's [b,h,n,p] states, and the metadata says which prefill the graph has."""
    _, out = exports("n8", prefill="chunked")
    proto = onnx.load(str(out / "model.onnx"))
    cfg = MODEL_VARIANTS["n8"]
    assert "LinearAttention" not in {n.op_type for n in proto.graph.node}
    ifs = [n for n in proto.graph.node if n.op_type == "If"  # the scan's (each conv has its own If too)
           and any(m.op_type == "LinearAttention" for a in n.attribute if a.name == "then_branch" for m in a.g.node)]
    assert len(ifs) == cfg.n_layer
    chunk_machinery = {"Pad", "Range", "Concat"}
    for i, node in enumerate(ifs):
        branches = {a.name: a.g.node for a in node.attribute}
        then_ops = [(n.domain, n.op_type) for n in branches["then_branch"]]
        else_ops = [(n.domain, n.op_type) for n in branches["else_branch"]]
        assert then_ops.count((MS, "LinearAttention")) == 1 and not chunk_machinery & {t for _, t in then_ops}
        assert not {d for d, _ in else_ops} - {""} and chunk_machinery <= {t for _, t in else_ops}
        la = next(n for n in branches["then_branch"] if n.op_type == "LinearAttention")
        assert la.input[3] == f"ssm_state.{i}" and node.output[1] == f"ssm_state_out.{i}"
        reads_state = [n for n in branches["else_branch"] if f"ssm_state.{i}" in n.input]
        assert [(n.op_type, list(n.attribute[0].ints)) for n in reads_state] == [("Transpose", [0, 1, 3, 2])]
    dims = lambda vi: [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]  # noqa: E731
    states = [v for v in [*proto.graph.input, *proto.graph.output] if v.name.startswith("ssm_state")]
    assert len(states) == 2 * cfg.n_layer
    assert all(dims(v) == ["batch", cfg.nheads, cfg.d_state, cfg.headdim] for v in states)
    meta = read_metadata(out)
    assert meta.prefill == "chunked" and meta.ssm_layout == ort_flavor.SSM_LAYOUT
    assert read_metadata(exports("n8")[1]).prefill == "contrib"
    onnx.checker.check_model(str(out / "model.onnx"), full_check=True)


def test_chunked_prefill_export_is_byte_identical(exports, tmp_path):
    ckpt, out = exports("g4", prefill="chunked")
    again = export(ckpt, tmp_path / "again", ExportOptions(flavor="ort", prefill="chunked"))
    assert again.read_bytes() == (out / "model.onnx").read_bytes()


@pytest.mark.parametrize("opts,message", [
    (ExportOptions(flavor="ort", prefill="fast"), "unknown prefill 'fast'; choose one of contrib, chunked"),
    (ExportOptions(flavor="portable", prefill="chunked"), "option of the ort flavor"),
    (ExportOptions(flavor="trt", prefill="chunked"), "option of the ort flavor"),
])
def test_bad_prefill_is_refused_before_any_work(tiny_ckpt, tmp_path, opts, message):
    with pytest.raises(UserError, match=message):
        export(tiny_ckpt, tmp_path / "x", opts)
    assert not (tmp_path / "x").exists()


def test_bf16_export_is_refused_by_ort_cpu_with_a_clear_message(exports):
    _, out = exports("g1", "bf16")
    with pytest.raises(UserError, match="bf16"):
        ort_session(out)


# ---- the decode companion (docs/graph-interface.md, "Decode companion") ------------------------------------------

def _initializers(path):
    proto = onnx.load(str(path), load_external_data=False)
    ext = {t.name: {e.key: e.value for e in t.external_data} for t in proto.graph.initializer
           if t.data_location == TensorProto.EXTERNAL}
    return proto, ext


def test_decode_companion_shares_the_weights_file(exports):
    """decode.onnx: the single-token graph without any If, every weight a reference to the same range of the same
    model.onnx.data under the same name as in model.onnx (one copy on disk); recorded in the metadata."""
    _, out = exports("g4", logits="last", companion="decode")
    main_proto, main_ext = _initializers(out / "model.onnx")
    dec_proto, dec_ext = _initializers(out / "decode.onnx")
    assert sorted(p.name for p in out.iterdir()) == ["decode.onnx", "model.onnx", "model.onnx.data"]
    assert "If" in {n.op_type for n in main_proto.graph.node}
    assert not {"If", "Conv"} & {n.op_type for n in dec_proto.graph.node}
    assert ("com.microsoft", "CausalConvWithState") in {(n.domain, n.op_type) for n in dec_proto.graph.node}
    assert dec_ext and all(main_ext.get(name) == where for name, where in dec_ext.items())
    big = [t.name for t in dec_proto.graph.initializer if t.data_location != TensorProto.EXTERNAL and
           len(t.raw_data) > 1 << 12]
    assert not big  # no weight kept inline
    meta = read_metadata(out)
    assert meta.companion == "decode" and meta.weights["decode.onnx"]["bytes"] == (out / "decode.onnx").stat().st_size
    own = {p.key: p.value for p in dec_proto.metadata_props}
    assert own["ssd_deploy.graph"] == "decode" and "ssd_deploy.companion" not in own
    onnx.checker.check_model(str(out / "decode.onnx"), full_check=True)


@pytest.mark.parametrize("variant", ["g4", pytest.param("hdimD-limit", marks=pytest.mark.slow)])
def test_decode_companion_steps_match_the_unified_graph_and_pytorch(exports, variant):
    """OrtBackend decodes through the companion: several steps at batch 3 from a prefilled prompt, each step's
    logits and states against the unified graph's session fed the same states, and the carried run against the
    PyTorch reference."""
    from ssd_deploy.checkpoint import load_model
    from ssd_deploy.runtime.backends import OrtBackend
    from ssd_deploy.runtime.feeds import carried_states, feed

    ckpt, out = exports(variant, logits="last", companion="decode")
    backend = OrtBackend(out)
    assert backend.decode_session is not None
    model = load_model(ckpt)
    rng = np.random.default_rng()
    cfg = backend.config
    prompt = rng.integers(0, cfg.vocab_size, (3, cfg.chunk_size + 5))
    logits, states = backend.forward(prompt, backend.zero_states(3))
    with torch.no_grad():
        conv, ssm = model.init_states(3)
        ref, conv, ssm = model(torch.from_numpy(prompt), conv, ssm, last_token_only=True)
    assert rel_err(logits, ref[:, -1]) < 1e-4
    for step in range(5):
        token = rng.integers(0, cfg.vocab_size, (3, 1))
        assert backend.session_for(token) is backend.decode_session
        unified = dict(zip(backend.outputs, backend.session.run(None, feed(token, states))))
        logits, new = backend.forward(token, states)
        assert rel_err(logits, unified["logits"][:, -1]) < 1e-5, step
        for name, value in carried_states(backend.meta, unified).items():
            assert rel_err(new[name], value) < 1e-5, (step, name)
        with torch.no_grad():
            ref, conv, ssm = model(torch.from_numpy(token), conv, ssm, decode=True, last_token_only=True)
        assert rel_err(logits, ref[:, -1]) < 1e-4, step
        for i in range(cfg.n_layer):  # the export's ssm layout is [b,h,n,p]
            assert rel_err(new[f"conv_state.{i}"], conv[i]) < 1e-4
            assert rel_err(np.swapaxes(new[f"ssm_state.{i}"], -1, -2), ssm[i]) < 1e-4
        states = new


def test_validate_runs_the_decode_steps_on_the_companion(exports):
    ckpt, out = exports("g4", logits="last", companion="decode")
    runner = ort_runner(out)
    report = validate(out, ckpt, runner, steps=3, batch=2)
    assert report.ok and report.backend == "onnxruntime-cpu-companion", report.to_dict()


@pytest.mark.parametrize("opts,message", [
    (ExportOptions(flavor="ort", graph="decode", companion="decode"), "beside a unified graph"),
    (ExportOptions(flavor="trt", companion="decode"), "beside a unified graph"),
    (ExportOptions(flavor="ort", external_data="never", companion="decode"), "external-data never"),
    (ExportOptions(flavor="ort", companion="both"), "unknown companion 'both'"),
])
def test_bad_companion_is_refused_before_any_work(tiny_ckpt, tmp_path, opts, message):
    with pytest.raises(UserError, match=message):
        export(tiny_ckpt, tmp_path / "x", opts)
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_quantized_export_shares_its_quantized_weights_with_the_companion(exports):
    """Both graphs are quantized by ONNX Runtime's quantizer; the companion's quantized weights are the main
    graph's bytes (shared by content: same ranges of the one data file), and it validates within int8's bound."""
    ckpt, out = exports("g4", logits="last", companion="decode", quant="int8", quant_block=32)
    main_proto, main_ext = _initializers(out / "model.onnx")
    dec_proto, dec_ext = _initializers(out / "decode.onnx")
    assert "MatMulNBits" in {n.op_type for n in dec_proto.graph.node}
    assert dec_ext and all(main_ext.get(name) == where for name, where in dec_ext.items())
    assert not [t.name for t in dec_proto.graph.initializer if t.data_location != TensorProto.EXTERNAL
                and len(t.raw_data) > 1 << 12]
    assert validate(out, ckpt, ort_runner(out), steps=2, batch=2).ok
