"""Triton model configurations: every generated config.pbtxt parsed by Triton's own ModelConfig schema, for every
flavor, dtype and shipped recipe, and checked against the exported graph itself (state names, dims and data types,
logits) rather than against the metadata the generator read (ssd_deploy/serving/pbtxt.py)."""

import pytest

from conftest import TINY
from ssd_deploy.errors import UserError
from ssd_deploy.interface import INPUT_IDS, LOGITS, load_graph, read_metadata
from ssd_deploy.recipes import available
from ssd_deploy.serving.pbtxt import Enum, ServeOptions, config_text, render

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="needs tritonclient[grpc]")
from google.protobuf import text_format  # noqa: E402

ONNX_TO_TRITON = {1: "TYPE_FP32", 10: "TYPE_FP16", 16: "TYPE_BF16", 7: "TYPE_INT64"}


def parse(text: str):
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def graph_io(export_dir):
    """name → (Triton data type, dims without the batch axis, -1 where dynamic), from the ONNX graph."""
    g = load_graph(export_dir).graph

    def one(v):
        t = v.type.tensor_type
        return ONNX_TO_TRITON[t.elem_type], [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim][1:]

    return {v.name: one(v) for v in g.input}, {v.name: one(v) for v in g.output}


def backends_for(flavor):
    # ONNX Runtime cannot run TensorRT plugin nodes; the python backend runs exports on ONNX Runtime
    return ("tensorrt",) if flavor == "trt" else ("onnxruntime", "tensorrt", "python")


def check_config(export_dir, backend, opts=None):
    meta = read_metadata(export_dir)
    opts = opts or ServeOptions(backend=backend)
    cfg = parse(config_text(meta, opts, {"vocab_size": "1"} if backend == "python" else None,
                            profiles=2 if backend == "tensorrt" else 0, comment="a comment\nover two lines"))
    inputs, outputs = graph_io(export_dir)
    batch = meta.recipe["batch"][1] if meta.recipe else 8
    assert cfg.name == "mamba2" and cfg.max_batch_size == batch
    assert [(i.name, model_config_pb2.DataType.Name(i.data_type), list(i.dims)) for i in cfg.input] == \
           [(INPUT_IDS, "TYPE_INT64", [-1])]
    sb = cfg.sequence_batching
    assert sb.WhichOneof("strategy_choice") == "oldest"
    assert sb.oldest.max_candidate_sequences == 4 * batch and list(sb.oldest.preferred_batch_size) == [batch]
    assert sb.max_sequence_idle_microseconds == 60_000_000
    logits = next(o for o in cfg.output if o.name == LOGITS)
    if backend == "python":
        assert cfg.backend == "python" and not sb.state
        kinds = {c.name: model_config_pb2.ModelSequenceBatching.Control.Kind.Name(c.control[0].kind)
                 for c in sb.control_input}
        assert kinds == {"START": "CONTROL_SEQUENCE_START", "END": "CONTROL_SEQUENCE_END",
                         "CORRID": "CONTROL_SEQUENCE_CORRID"}
        assert model_config_pb2.DataType.Name(logits.data_type) == "TYPE_FP32"
        assert list(logits.dims) == [1, outputs[LOGITS][1][-1]]
        assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
        return cfg
    assert cfg.platform == {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}[backend]
    assert not sb.control_input  # those backends refuse controls that are not graph inputs; ours has none
    # one implicit state per graph state input, fed from the matching output, in the graph's dims and type
    state_inputs = {k: v for k, v in inputs.items() if k != INPUT_IDS}
    assert {s.input_name for s in sb.state} == set(state_inputs) and len(sb.state) == 4 * TINY.n_layer // 2
    for s in sb.state:
        dtype, dims = state_inputs[s.input_name]
        assert s.output_name == s.input_name.replace("_state.", "_state_out.") and s.output_name in outputs
        assert outputs[s.output_name] == (dtype, dims)
        assert model_config_pb2.DataType.Name(s.data_type) == dtype and list(s.dims) == dims
        init = s.initial_state[0]
        assert init.zero_data and list(init.dims) == dims and init.data_type == s.data_type
    assert (model_config_pb2.DataType.Name(logits.data_type), list(logits.dims)) == outputs[LOGITS]
    if backend == "tensorrt":
        assert list(cfg.instance_group[0].profile) == ["0", "1"]
        assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    return cfg


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
@pytest.mark.parametrize("flavor", ["portable", "ort", "trt"])
def test_every_flavor_and_dtype_gives_a_schema_valid_config(make_export, flavor, dtype):
    _, export_dir = make_export(TINY, flavor, dtype)
    for backend in backends_for(flavor):
        check_config(export_dir, backend)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", available())
def test_every_recipe_gives_a_schema_valid_config(make_checkpoint, tmp_path, recipe):
    from ssd_deploy.onnx.export import export, resolve_options

    opts, resolved = resolve_options(recipe)
    export_dir = export(make_checkpoint(TINY), tmp_path / recipe, opts, resolved).parent
    assert read_metadata(export_dir).recipe["name"] == recipe
    for backend in backends_for(opts.flavor):
        check_config(export_dir, backend)


def test_options_reach_the_config(make_export):
    _, export_dir = make_export(TINY, "ort")
    meta = read_metadata(export_dir)
    opts = ServeOptions(name="m-1", backend="python", instances=3, max_batch=5, max_sequences=7, idle_timeout_s=2.5,
                        queue_delay_us=250, provider="cuda")
    cfg = parse(config_text(meta, opts))
    assert (cfg.name, cfg.max_batch_size, cfg.instance_group[0].count) == ("m-1", 5, 3)
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert cfg.sequence_batching.max_sequence_idle_microseconds == 2_500_000
    assert cfg.sequence_batching.oldest.max_candidate_sequences == 7
    assert cfg.sequence_batching.oldest.max_queue_delay_microseconds == 250
    direct = parse(config_text(meta, ServeOptions(backend="onnxruntime", strategy="direct", max_batch=4)))
    assert direct.sequence_batching.WhichOneof("strategy_choice") == "direct"


@pytest.mark.parametrize("change, match", [
    (dict(backend="tensorflow"), "--backend"), (dict(strategy="fifo"), "--strategy"),
    (dict(instances=0), "--instances"), (dict(max_batch=0), "--max-batch"), (dict(idle_timeout_s=0), "--idle"),
    (dict(strategy="direct", max_sequences=4), "--max-sequences"), (dict(name="a b"), "--name"),
    (dict(runtime="torch", backend="onnxruntime"), "python backend only"), (dict(provider="tpu"), "--provider"),
])
def test_bad_options_are_user_errors(make_export, change, match):
    _, export_dir = make_export(TINY, "ort")
    with pytest.raises(UserError, match=match):
        config_text(read_metadata(export_dir), ServeOptions(**change))


def test_the_schema_check_can_fail():
    """The schema refuses what Triton would refuse: a misspelt field, a wrong enum, a string for a number."""
    assert parse(render({"name": "x", "max_batch_size": 4})).max_batch_size == 4
    for bad in ({"name": "x", "max_batch": 4}, {"name": "x", "max_batch_size": "4"},
                {"input": [{"name": "a", "data_type": Enum("TYPE_FLOAT32")}]}):
        with pytest.raises(text_format.ParseError):
            parse(render(bad))


def test_render_escapes_strings():
    cfg = parse(render({"name": 'a"b\\c'}))
    assert cfg.name == 'a"b\\c'
