"""Triton model configurations (``config.pbtxt``) for an export, from its metadata alone (docs/serving.md).

Two shapes of the same interface (``input_ids`` in, ``logits`` out; names of docs/graph-interface.md):

* ``onnxruntime`` / ``tensorrt``: the graph itself, with Triton's *implicit state*: one ``state`` entry per
  ``conv_state.i``/``ssm_state.i`` input, fed from its ``*_out.i`` output, zero ``initial_state``, dims and data
  type from the metadata in the layout it declares. No ``control_input``: those backends refuse a control that is
  not a graph input, and the graph needs none (the sequence batcher itself loads ``initial_state`` at START and
  frees the sequence's state at END; the correlation id is the request's ``sequence_id``).
* ``python``: a python-backend model (``python_model/model.py``) that keeps the states itself, keyed by the
  CORRID control, started and released by the START and END controls.

The text is written here by a small emitter rather than through Triton's protobuf classes, so that serving does
not need ``tritonclient`` to write a repository; the tests parse every generated file with Triton's own
``ModelConfig`` schema (``tritonclient.grpc.model_config_pb2``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from ..interface import INPUT_IDS, LOGITS, ExportMetadata

NEXT_TOKEN = "next_token"  # python backend: the greedy next token (argmax over the real vocabulary)
START, END, CORRID = "START", "END", "CORRID"

TRITON_DTYPES = {"fp32": "TYPE_FP32", "fp16": "TYPE_FP16", "bf16": "TYPE_BF16"}
BACKENDS = ("onnxruntime", "tensorrt", "python")
STRATEGIES = ("oldest", "direct")
RUNTIMES = ("ort", "torch")  # what runs inside the python-backend model
DEFAULT_MAX_BATCH = 8  # without a recipe
DEFAULT_IDLE_TIMEOUT_S = 60.0  # Triton's own default (1 s) ends an interactive sequence between two user turns
DEFAULT_QUEUE_DELAY_US = 1000  # lets the decode steps of sequences answered together arrive in one batch


class Enum(str):
    """A protobuf enum value (written bare, unlike a string)."""


@dataclass(frozen=True)
class ServeOptions:
    name: str = "mamba2"
    backend: str = "python"
    instances: int = 1
    max_batch: int | None = None  # None: the recipe's largest batch, else DEFAULT_MAX_BATCH
    max_sequences: int | None = None  # oldest: live sequences per instance; None: 4 x max_batch
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    strategy: str = "oldest"
    queue_delay_us: int = DEFAULT_QUEUE_DELAY_US
    runtime: str = "ort"  # python backend: ONNX Runtime on the export, or the PyTorch model on a checkpoint
    provider: str = "cpu"  # cpu | cuda: the python backend's runtime, the onnxruntime backend's instances

    def check(self):
        if self.backend not in BACKENDS:
            raise UserError(f"--backend: choose one of {', '.join(BACKENDS)} (got {self.backend!r})")
        if self.strategy not in STRATEGIES:
            raise UserError(f"--strategy: choose one of {', '.join(STRATEGIES)} (got {self.strategy!r})")
        if self.runtime not in RUNTIMES:
            raise UserError(f"--runtime: choose one of {', '.join(RUNTIMES)} (got {self.runtime!r})")
        if self.provider not in ("cpu", "cuda"):
            raise UserError(f"--provider: cpu or cuda (got {self.provider!r})")
        if self.runtime == "torch" and self.backend != "python":
            raise UserError("--runtime torch runs inside the python backend only")
        if not self.name or not all(c.isalnum() or c in "-_." for c in self.name):
            raise UserError(f"--name {self.name!r}: letters, digits, '-', '_' and '.' only")
        for what, v in (("--instances", self.instances), ("--max-batch", self.max_batch),
                        ("--max-sequences", self.max_sequences)):
            if v is not None and v < 1:
                raise UserError(f"{what} must be at least 1 (got {v})")
        if self.idle_timeout_s <= 0:
            raise UserError(f"--idle-timeout must be positive (got {self.idle_timeout_s})")
        if self.queue_delay_us < 0:
            raise UserError(f"--queue-delay-us must be >= 0 (got {self.queue_delay_us})")
        if self.strategy == "direct" and self.max_sequences is not None:
            raise UserError("--max-sequences is for --strategy oldest; with direct, each instance serves "
                            "--max-batch sequences (one batch slot each)")

    @property
    def on_gpu(self) -> bool:
        return self.backend == "tensorrt" or self.provider == "cuda"

    def batch(self, meta: ExportMetadata) -> int:
        if self.max_batch is not None:
            return self.max_batch
        return int(meta.recipe["batch"][1]) if meta.recipe else DEFAULT_MAX_BATCH

    def sequences(self, meta: ExportMetadata) -> int:
        return self.max_sequences if self.max_sequences is not None else 4 * self.batch(meta)


def model_config(meta: ExportMetadata, opts: ServeOptions, parameters: dict[str, str] | None = None,
                 profiles: int = 0) -> dict:
    """The configuration as nested dicts/lists (``render`` writes it). ``profiles``: the TensorRT engine's number
    of optimization profiles (all are offered to every instance; Triton picks the one that fits each call)."""
    opts.check()
    if meta.dtype not in TRITON_DTYPES:
        raise UserError(f"export dtype {meta.dtype!r} has no Triton data type")
    cfg = meta.config
    batch = opts.batch(meta)
    logits_rows = 1 if meta.logits == "last" or opts.backend == "python" else -1
    logits_dtype = "fp32" if opts.backend == "python" else meta.dtype  # the python model hands back float32
    outputs = [{"name": LOGITS, "data_type": Enum(TRITON_DTYPES[logits_dtype]),
                "dims": [logits_rows, cfg.padded_vocab_size]}]
    seq: dict = {"max_sequence_idle_microseconds": int(round(opts.idle_timeout_s * 1e6))}
    if opts.strategy == "oldest":
        seq["oldest"] = {"max_candidate_sequences": opts.sequences(meta), "preferred_batch_size": [batch],
                         "max_queue_delay_microseconds": opts.queue_delay_us}
    else:
        seq["direct"] = {"max_queue_delay_microseconds": opts.queue_delay_us}
    if opts.backend == "python":
        outputs.append({"name": NEXT_TOKEN, "data_type": Enum("TYPE_INT64"), "dims": [1]})
        seq["control_input"] = [
            {"name": START, "control": [{"kind": Enum("CONTROL_SEQUENCE_START"), "int32_false_true": [0, 1]}]},
            {"name": END, "control": [{"kind": Enum("CONTROL_SEQUENCE_END"), "int32_false_true": [0, 1]}]},
            {"name": CORRID, "control": [{"kind": Enum("CONTROL_SEQUENCE_CORRID"),
                                          "data_type": Enum("TYPE_UINT64")}]},
        ]
    else:
        seq["state"] = [state_entry(s) for s in meta.states]
    out: dict = {"name": opts.name}
    if opts.backend == "onnxruntime":
        out["platform"] = "onnxruntime_onnx"
    elif opts.backend == "tensorrt":
        out["platform"] = "tensorrt_plan"
    else:
        out["backend"] = "python"
    out["max_batch_size"] = batch
    out["input"] = [{"name": INPUT_IDS, "data_type": Enum("TYPE_INT64"), "dims": [-1]}]
    out["output"] = outputs
    out["sequence_batching"] = seq
    group: dict = {"count": opts.instances, "kind": Enum("KIND_GPU" if opts.on_gpu else "KIND_CPU")}
    if profiles > 1:
        group["profile"] = [str(i) for i in range(profiles)]
    out["instance_group"] = [group]
    if parameters:
        out["parameters"] = [{"key": k, "value": {"string_value": v}} for k, v in parameters.items()]
    return out


def state_entry(spec) -> dict:
    """Implicit state of one graph state: its output feeds its input in the sequence's next request; zeros at
    START. ``dims`` leave out the batch axis (the config has max_batch_size > 0)."""
    dims = [int(d) for d in spec.shape[1:]]
    dtype = Enum(TRITON_DTYPES[spec.dtype])
    return {"input_name": spec.name, "output_name": spec.output, "data_type": dtype, "dims": dims,
            "initial_state": {"data_type": dtype, "dims": dims, "zero_data": True, "name": "zeros"}}


def render(msg: dict, indent: int = 0) -> str:
    """Protobuf text format of nested dicts (messages), lists (repeated fields) and scalars."""
    pad = "  " * indent
    lines = []
    for key, value in msg.items():
        if isinstance(value, dict):
            lines += [f"{pad}{key} {{", render(value, indent + 1), f"{pad}}}"]
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            items = [f"{pad}  {{\n{render(v, indent + 2)}\n{pad}  }}" for v in value]
            lines += [f"{pad}{key} [", ",\n".join(items), f"{pad}]"]
        elif isinstance(value, list):
            lines.append(f"{pad}{key}: [ {', '.join(_scalar(v) for v in value)} ]")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return "\n".join(lines)


def _scalar(v) -> str:
    if isinstance(v, Enum):
        return str(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def config_text(meta: ExportMetadata, opts: ServeOptions, parameters: dict[str, str] | None = None,
                profiles: int = 0, comment: str = "") -> str:
    head = "".join(f"# {line}\n" for line in comment.splitlines())
    return head + render(model_config(meta, opts, parameters, profiles)) + "\n"
