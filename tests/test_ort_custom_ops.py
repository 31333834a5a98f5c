"""ONNX Runtime custom-op library (plugins/ort_custom_ops, docs/flavors.md): the `trt` flavor's plugin nodes on ONNX
Runtime's CUDA provider with our CUDA kernels.

Without a GPU: the op table is the generated one (contracts.h current); the library compiles against ONNX Runtime's
headers, exports only its entry points and links no libonnxruntime; the ops it hands ONNX Runtime (read through the
ABI-stable head of OrtCustomOp) match the contracts in name, provider, input/output counts, dtypes and optional
flags; the installed onnxruntime (CPU) registers it, resolves single-node graphs of every op and dtype and the tiny
model's `trt` export against its schemas (failing only for want of a CUDA kernel), and refuses a node with an input
missing or mixed dtypes; and the CPU check build (the same sources for the CPU provider, kernel calls left out) runs
every op and the whole `trt` export (unified, decode-only and packed graphs) with the contract's output shapes and
names bad shapes and attributes. On a GPU with onnxruntime-gpu: each op (packed ones included) against the float64
reference, the scan bit for bit against the same kernel called through kernels.py, attribute errors at session
creation, the `trt` export against the PyTorch model and the portable export, the packed `trt` export against each
prompt alone, half precision, and greedy generation token for token.

Headers: OnnxRuntime_INCLUDE_DIR (as for cmake), else third_party/onnxruntime/include (microsoft/onnxruntime's
include/onnxruntime/core/session/*.h, never committed). Without headers, cmake or nvcc the tests that need the
library skip, saying which is missing.
"""

from __future__ import annotations

import ctypes
import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from conftest import TINY, VARIANTS, ort_cuda_test, reference_outputs, random_states, rel_err
from ssd_deploy import plugin_contracts
from ssd_deploy.onnx import trt
from ssd_deploy.onnx.export import IR_VERSION  # the installed onnx may write a newer one than ORT loads

REPO = Path(__file__).resolve().parents[1]
LIB = "libssd_ort_custom_ops.so"
CONTRACTS = plugin_contracts.contracts()
# ONNX element types (onnxruntime_c_api.h's ONNXTensorElementDataType = TensorProto's) of the activation dtypes
ACTIVATIONS = {"fp32": TensorProto.FLOAT, "fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TOL = {"fp32": 1e-5, "fp16": 1e-2, "bf16": 1e-2}  # vs float64 (docs/verification.md)
REQUIRED, OPTIONAL = 0, 1  # OrtCustomOpInputOutputCharacteristic
NOT_IMPLEMENTED = ("Could not find an implementation", "Failed to find kernel")  # ORT's words for "no CUDA kernel"


def _ort_include() -> Path | None:
    for c in (os.environ.get("OnnxRuntime_INCLUDE_DIR"), REPO / "third_party" / "onnxruntime" / "include"):
        if c and (Path(c) / "onnxruntime_c_api.h").exists():
            return Path(c)
    return None


def _gpu_arch() -> str:
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return f"{major}{minor}"
    return "90"  # any one architecture: nothing runs it here


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """The build directory holding the custom-op library and, for the bit-for-bit checks, libssd_kernels.so."""
    include = _ort_include()
    if include is None:
        pytest.skip("no ONNX Runtime headers (copy microsoft/onnxruntime's include/onnxruntime/core/session/*.h into "
                    "third_party/onnxruntime/include, or set OnnxRuntime_INCLUDE_DIR)")
    if shutil.which("cmake") is None:
        pytest.skip("cmake not found")
    if shutil.which("nvcc") is None and not os.environ.get("CUDACXX"):
        pytest.skip("nvcc not found (put it on PATH or set CUDACXX)")
    build = tmp_path_factory.mktemp("ort_custom_ops")
    configure = ["cmake", "-S", str(REPO / "plugins"), "-B", str(build), f"-DSSD_CUDA_ARCHS={_gpu_arch()}",
                 f"-DOnnxRuntime_INCLUDE_DIR={include}"]
    proc = subprocess.run(configure, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "ssd ONNX Runtime custom ops: ONNX Runtime API" in proc.stdout
    proc = subprocess.run(["cmake", "--build", str(build), "--target", "ssd_ort_custom_ops", "ssd_kernels",
                           "--parallel", "2"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    return build


@pytest.fixture(scope="module")
def lib(built) -> Path:
    return built / LIB


@pytest.fixture(scope="module")
def cpu_check(built) -> Path:
    """The CPU check build (ortOp.h): the same ops on ONNX Runtime's CPU provider, kernel calls left out (outputs
    zero-filled)."""
    proc = subprocess.run(["cmake", "--build", str(built), "--target", "ssd_ort_custom_ops_cpu_check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    return built / "libssd_ort_custom_ops_cpu_check.so"


# --- the op table is the contracts' -------------------------------------------------------------------------------

def test_the_op_table_is_generated_from_the_contracts():
    header = REPO / "plugins" / "ort_custom_ops" / "contracts.h"
    assert header.read_text() == plugin_contracts.render_ort_header(CONTRACTS), \
        "out of date: python -m ssd_deploy.plugin_contracts --write"
    for name, c in CONTRACTS.items():
        assert f"namespace in {{ enum : int {{ {', '.join(t.name for t in c.inputs)} }}; }}" in header.read_text()


def test_shapes_parse_into_symbols():
    t = plugin_contracts.TensorSpec("D", "[h] or [h, p]", "float32")
    assert plugin_contracts.shape_alternatives(t, "X") == [[("h", 0)], [("h", 0), ("p", 0)]]
    t = plugin_contracts.TensorSpec("s", "[b, d, k-1]", "float32")
    assert plugin_contracts.shape_alternatives(t, "X") == [[("b", 0), ("d", 0), ("k", -1)]]
    t = plugin_contracts.TensorSpec("cu", "[n + 1]", "float32")
    assert plugin_contracts.shape_alternatives(t, "X") == [[("n", 1)]]
    from ssd_deploy.errors import UserError
    with pytest.raises(UserError, match="X.s: extent 'k\\*2'"):
        plugin_contracts.shape_alternatives(plugin_contracts.TensorSpec("s", "[b, k*2]", "float32"), "X")


# --- the built library, without a GPU ----------------------------------------------------------------------------

class _OrtCustomOpHead(ctypes.Structure):
    """The head of onnxruntime_c_api.h's OrtCustomOp, which ORT keeps ABI-stable (fields are only appended)."""
    _fields_ = [
        ("version", ctypes.c_uint32),
        ("CreateKernel", ctypes.c_void_p),
        ("GetName", ctypes.CFUNCTYPE(ctypes.c_char_p, ctypes.c_void_p)),
        ("GetExecutionProviderType", ctypes.CFUNCTYPE(ctypes.c_char_p, ctypes.c_void_p)),
        ("GetInputType", ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t)),
        ("GetInputTypeCount", ctypes.CFUNCTYPE(ctypes.c_size_t, ctypes.c_void_p)),
        ("GetOutputType", ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t)),
        ("GetOutputTypeCount", ctypes.CFUNCTYPE(ctypes.c_size_t, ctypes.c_void_p)),
        ("KernelCompute", ctypes.c_void_p),
        ("KernelDestroy", ctypes.c_void_p),
        ("GetInputCharacteristic", ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t)),
        ("GetOutputCharacteristic", ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t)),
    ]


def _registered_ops(lib: Path) -> list[dict]:
    """What the library hands ONNX Runtime, op by op, read through OrtCustomOp's own callbacks."""
    so = ctypes.CDLL(str(lib))
    so.SsdOrtCustomOps.restype = ctypes.c_size_t
    so.SsdOrtCustomOps.argtypes = [ctypes.POINTER(ctypes.POINTER(ctypes.c_void_p))]
    table = ctypes.POINTER(ctypes.c_void_p)()
    ops = []
    for i in range(so.SsdOrtCustomOps(ctypes.byref(table))):
        ptr = table[i]
        op = ctypes.cast(ptr, ctypes.POINTER(_OrtCustomOpHead)).contents
        n_in, n_out = op.GetInputTypeCount(ptr), op.GetOutputTypeCount(ptr)
        ops.append({"name": op.GetName(ptr).decode(), "provider": op.GetExecutionProviderType(ptr).decode(),
                    "version": op.version, "destroy": bool(op.KernelDestroy),
                    "inputs": [(op.GetInputType(ptr, k), op.GetInputCharacteristic(ptr, k)) for k in range(n_in)],
                    "outputs": [(op.GetOutputType(ptr, k), op.GetOutputCharacteristic(ptr, k))
                                for k in range(n_out)]})
    return ops


def _element_type(t: plugin_contracts.TensorSpec, activation: int) -> int:
    return {"A": activation, "F": TensorProto.FLOAT, "I": TensorProto.INT32}[t.role]


def _wanted(tensors, activation: int) -> list[tuple[int, int]]:
    return [(_element_type(t, activation), OPTIONAL if t.optional else REQUIRED) for t in tensors]


@pytest.mark.slow
def test_library_exports_only_its_entry_points_and_needs_no_onnxruntime(lib):
    if shutil.which("readelf") is None or shutil.which("nm") is None:
        pytest.skip("binutils (readelf, nm) not found")
    dyn = subprocess.run(["readelf", "-d", str(lib)], capture_output=True, text=True, check=True).stdout
    needed = {line.split("[")[1].rstrip("]") for line in dyn.splitlines() if "(NEEDED)" in line}
    syms = subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True, text=True, check=True).stdout
    assert {line.split()[-1] for line in syms.splitlines() if line.strip()} == {"RegisterCustomOps", "SsdOrtCustomOps"}
    assert not [n for n in needed if "onnxruntime" in n or "cudart" in n], needed  # cudart is linked in statically


@pytest.mark.slow
def test_registered_ops_match_the_contracts(lib):
    """One op per contract and activation dtype, on the CUDA provider, with the contract's inputs and outputs."""
    ops = _registered_ops(lib)
    assert sorted((o["name"], o["inputs"][[t.role for t in CONTRACTS[o["name"]].inputs].index("A")][0])
                  for o in ops) == sorted((name, a) for name in CONTRACTS for a in ACTIVATIONS.values()), \
        "the library must implement every contract in fp32, fp16 and bf16"
    for o in ops:
        c = CONTRACTS[o["name"]]
        activation = o["inputs"][[t.role for t in c.inputs].index("A")][0]
        assert o["provider"] == "CUDAExecutionProvider" and o["destroy"]
        assert o["inputs"] == _wanted(c.inputs, activation), o["name"]
        assert o["outputs"] == _wanted(c.outputs, activation), o["name"]
        assert 16 <= o["version"] <= 30  # V2 kernels need >= 16; onnxruntime-gpu 1.30 accepts up to its own


def _node_model(c: plugin_contracts.Contract, activation: int, attrs: dict | None = None,
                drop: str = "", override: dict | None = None) -> bytes:
    """One node of contract ``c`` with its inputs as graph inputs (``drop`` one out, ``override`` dtypes)."""
    dtype = {t.name: _element_type(t, activation) for t in (*c.inputs, *c.outputs)}
    dtype.update(override or {})
    ins = [t.name for t in c.inputs if t.name != drop]
    outs = [f"{t.name}_out" for t in c.outputs]
    if attrs is None:  # the required ones, with values the op accepts
        attrs = {a.name: (1e-5 if a.type == "float" else 4) for a in c.attributes if a.required}
    node = helper.make_node(c.name, ins, outs, domain=c.domain, **attrs)
    graph = helper.make_graph(
        [node], c.name, [helper.make_tensor_value_info(n, dtype[n], None) for n in ins],
        [helper.make_tensor_value_info(f"{t.name}_out", dtype[t.name], None) for t in c.outputs])
    model = helper.make_model(graph, ir_version=IR_VERSION, opset_imports=[helper.make_opsetid("", 18),
                                                    helper.make_opsetid(c.domain, int(c.version))])
    return model.SerializeToString()


def _session_error(model, lib: Path, providers=("CPUExecutionProvider",)) -> str:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.register_custom_ops_library(str(lib))
    try:
        ort.InferenceSession(model, opts, providers=list(providers))
    except Exception as e:  # ORT's pybind errors share no public base type
        return str(e)
    return ""


@pytest.mark.slow
@pytest.mark.parametrize("dtype", list(ACTIVATIONS))
@pytest.mark.parametrize("plugin", list(CONTRACTS))
def test_onnxruntime_resolves_every_op_against_the_schemas(lib, plugin, dtype):
    """The installed onnxruntime (CPU) registers the library and type-checks each op's node against its schemas;
    only the kernel lookup fails, since the kernels are the CUDA provider's."""
    c = CONTRACTS[plugin]
    err = _session_error(_node_model(c, ACTIVATIONS[dtype]), lib)
    assert any(s in err for s in NOT_IMPLEMENTED) and plugin in err, err


@pytest.mark.slow
def test_onnxruntime_refuses_nodes_off_the_contract(lib):
    scan = CONTRACTS["SsdChunkScan"]
    err = _session_error(_node_model(scan, TensorProto.FLOAT16, drop="initial_state"), lib)
    assert "input size 7 not in range [min=8, max=8]" in err, err
    err = _session_error(_node_model(scan, TensorProto.FLOAT16, override={"B": TensorProto.FLOAT}), lib)
    assert "no kernel def matches node inputs" in err, err  # activations of one node share one dtype


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["g4", "hdimD-limit"])
def test_onnxruntime_resolves_the_trt_export(lib, make_export, variant):
    """The very graph TensorRT receives passes ONNX Runtime's graph checks with the library's schemas: the only
    failure on the CPU provider is a plugin node without a CPU kernel."""
    _, export_dir = make_export(VARIANTS[variant], "trt")
    proto = onnx.load(str(export_dir / "model.onnx"), load_external_data=False)
    assert {n.op_type for n in proto.graph.node if n.domain == trt.DOMAIN} >= {"SsdChunkScan", "CausalConv1d"}
    from ssd_deploy.interface import model_path
    from ssd_deploy.runtime.ort_runner import ort_session
    from ssd_deploy.errors import UserError

    with pytest.raises(UserError) as e:
        ort_session(export_dir, "cpu", model_path(export_dir), custom_ops=lib)
    assert any(s in str(e.value) for s in NOT_IMPLEMENTED), str(e.value)
    assert any(f"{p}(1)" in str(e.value) or f"{trt.DOMAIN}.{p}" in str(e.value) for p in CONTRACTS), str(e.value)


# sizes of the contracts' symbols for the CPU check runs, and what each op's outputs must then be (written out here,
# not derived from the contracts, so that a wrong output shape in the library or the contracts shows)
SIZES = {"b": 2, "l": 5, "h": 4, "p": 3, "g": 2, "n": 6, "d": 8, "k": 4, "T": 9, "s": 3}
OUTPUT_SHAPES = {"SsdChunkScan": [(2, 5, 4, 3), (2, 4, 3, 6)], "SsdStateUpdate": [(2, 4, 3), (2, 4, 3, 6)],
                 "CausalConv1d": [(2, 5, 8), (2, 8, 3)], "GatedRmsNorm": [(2, 5, 8)],
                 "SsdChunkScanPacked": [(1, 9, 4, 3), (3, 4, 3, 6)], "CausalConv1dPacked": [(1, 9, 8), (3, 8, 3)]}


def _contract_feeds(c, dtype: str, alternative: int = 0) -> dict:
    rng = np.random.default_rng()
    feeds = {}
    for t in c.inputs:
        alts = plugin_contracts.shape_alternatives(t, c.name)
        dims = alts[min(alternative, len(alts) - 1)]
        shape = tuple(SIZES[s] + o if s else o for s, o in dims)
        numpy_dtype = {"A": np.float16 if dtype == "fp16" else np.float32, "F": np.float32, "I": np.int32}[t.role]
        feeds[t.name] = rng.standard_normal(shape).astype(numpy_dtype)
    return feeds


def _cpu_session(model, lib: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    opts.register_custom_ops_library(str(lib))
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])  # numpy has no bfloat16 to feed
@pytest.mark.parametrize("plugin", list(CONTRACTS))
def test_cpu_check_build_gives_the_contract_output_shapes(cpu_check, plugin, dtype):
    """Everything but the kernel call, inside a real ONNX Runtime session: attributes read, inputs checked, outputs
    allocated in the contract's shapes and dtypes (both shapes of D where there are two)."""
    c = CONTRACTS[plugin]
    sess = _cpu_session(_node_model(c, ACTIVATIONS[dtype]), cpu_check)
    for alternative in (0, 1):
        outs = sess.run(None, _contract_feeds(c, dtype, alternative))
        assert [o.shape for o in outs] == OUTPUT_SHAPES[plugin]
        assert [o.dtype for o in outs] == [np.float16 if dtype == "fp16" and t.role == "A" else np.float32
                                           for t in c.outputs]


@pytest.mark.slow
def test_cpu_check_build_names_bad_inputs_and_attributes(cpu_check):
    scan = CONTRACTS["SsdChunkScan"]
    sess = _cpu_session(_node_model(scan, TensorProto.FLOAT), cpu_check)
    feeds = _contract_feeds(scan, "fp32")
    feeds["C"] = np.zeros((2, 5, 2, 7), np.float32)
    with pytest.raises(Exception, match=r"SsdChunkScan node '': input C has shape \[2, 5, 2, 7\] "
                                        r"\(C is \[b, l, g, n\]\), but n = 6 from the inputs before it"):
        sess.run(None, feeds)
    feeds["C"] = np.zeros((2, 5, 2), np.float32)
    with pytest.raises(Exception, match=r"input C has shape \[2, 5, 2\]; the contract says \[b, l, g, n\]"):
        sess.run(None, feeds)
    feeds = _contract_feeds(CONTRACTS["CausalConv1d"], "fp32")
    feeds["conv_state"] = np.zeros((2, 8, 4), np.float32)
    with pytest.raises(Exception, match=r"input conv_state .* \(conv_state is \[b, d, k-1\]\), but k = 4"):
        _cpu_session(_node_model(CONTRACTS["CausalConv1d"], TensorProto.FLOAT), cpu_check).run(None, feeds)
    norm = CONTRACTS["GatedRmsNorm"]
    with pytest.raises(Exception, match="GatedRmsNorm node '': the required attribute eps is missing"):
        _cpu_session(_node_model(norm, TensorProto.FLOAT, {"group_size": 4}), cpu_check)
    with pytest.raises(Exception, match="group_size must be >= 1"):
        _cpu_session(_node_model(norm, TensorProto.FLOAT, {"eps": 1e-5, "group_size": 0}), cpu_check)
    for attrs, problem in (({"dt_softplus": 2}, "dt_softplus must be 0 or 1"),
                           ({"dt_min": 0.5, "dt_max": 0.1}, "need dt_min <= dt_max"),
                           ({"chunk_size": 0}, "chunk_size must be >= 1")):
        with pytest.raises(Exception, match=problem):
            _cpu_session(_node_model(scan, TensorProto.FLOAT, attrs), cpu_check)
    with pytest.raises(Exception, match="silu must be 0 or 1"):
        _cpu_session(_node_model(CONTRACTS["CausalConv1d"], TensorProto.FLOAT, {"silu": 3}), cpu_check)


@pytest.mark.slow
@pytest.mark.parametrize("variant,graph", [("g4", "unified"), ("hdimD-limit", "unified"), ("g4", "decode")])
def test_cpu_check_build_runs_the_trt_export(cpu_check, make_export, variant, graph):
    """The shipped `trt` graph (the unified one: SsdChunkScan at every length; the decode one: SsdStateUpdate) runs
    through the library's ops (kernel calls left out) with every output in the shape and dtype the portable export
    gives for the same feeds, at l = 1 and l > chunk: the plugin nodes' output shapes fit the graph around them."""
    from ssd_deploy.interface import model_path, read_metadata
    from ssd_deploy.runtime.feeds import feed
    from ssd_deploy.runtime.ort_runner import ort_session

    _, trt_dir = make_export(VARIANTS[variant], "trt", graph=graph)
    _, portable_dir = make_export(VARIANTS[variant], "portable", graph=graph)
    meta = read_metadata(trt_dir)
    proto = onnx.load(str(model_path(trt_dir)), load_external_data=False)
    assert ("SsdStateUpdate" in {n.op_type for n in proto.graph.node}) == (graph == "decode")
    sess = ort_session(trt_dir, "cpu", model_path(trt_dir), custom_ops=cpu_check)
    portable = ort_session(portable_dir, "cpu")
    rng = np.random.default_rng()
    for length in (1,) if graph == "decode" else (1, meta.config.chunk_size + 3):
        feeds = feed(rng.integers(0, meta.config.vocab_size, (2, length)), random_states(meta, 2, rng))
        got = sess.run(None, feeds)
        want = portable.run(None, feeds)
        assert [o.name for o in sess.get_outputs()] == [o.name for o in portable.get_outputs()]
        assert [(g.shape, g.dtype) for g in got] == [(w.shape, w.dtype) for w in want], length


PACKED_PROMPTS = ([19, 1, 2, 16, 5, 33], [1, 1, 1], [7, 7])  # chunk 16 (g4): boundaries inside chunks, decode, equal


def _packed_feeds(meta, lengths, rng) -> tuple[dict, list]:
    from ssd_deploy.interface import CU_SEQLENS, INPUT_IDS

    prompts = [rng.integers(0, meta.config.vocab_size, n) for n in lengths]
    states = random_states(meta, len(lengths), rng)
    cu = np.array([0, *np.cumsum(lengths)], np.int64)
    return {INPUT_IDS: np.concatenate(prompts)[None], CU_SEQLENS: cu, **states}, prompts


@pytest.mark.slow
def test_cpu_check_build_runs_the_packed_trt_export(cpu_check, make_export):
    """The `trt` packed graph (SsdChunkScanPacked, CausalConv1dPacked) through the library's ops, kernel calls left
    out: every output in the shape and dtype of the portable packed export."""
    from ssd_deploy.interface import model_path, read_metadata
    from ssd_deploy.runtime.ort_runner import ort_session

    _, trt_dir = make_export(VARIANTS["g4"], "trt", graph="packed", logits="last")
    _, portable_dir = make_export(VARIANTS["g4"], "portable", graph="packed", logits="last")
    meta = read_metadata(trt_dir)
    sess = ort_session(trt_dir, "cpu", model_path(trt_dir), custom_ops=cpu_check)
    portable = ort_session(portable_dir, "cpu")
    rng = np.random.default_rng()
    for lengths in PACKED_PROMPTS:
        feeds, _ = _packed_feeds(meta, lengths, rng)
        got, want = sess.run(None, feeds), portable.run(None, feeds)
        assert [(g.shape, g.dtype) for g in got] == [(w.shape, w.dtype) for w in want], lengths


def test_custom_ops_serve_trt_exports_on_cuda_only(make_export, tmp_path):
    from ssd_deploy.errors import UserError
    from ssd_deploy.runtime.backends import OrtBackend

    _, portable = make_export(TINY, "portable")
    with pytest.raises(UserError, match="runs `trt` exports on the cuda provider"):
        OrtBackend(portable, "cuda", custom_ops=tmp_path / LIB)
    _, trt_export = make_export(TINY, "trt")
    with pytest.raises(UserError, match="provider cpu"):
        OrtBackend(trt_export, "cpu", custom_ops=tmp_path / LIB)


def test_library_path_names_the_missing_build(monkeypatch, tmp_path):
    from ssd_deploy import kernels
    from ssd_deploy.errors import UserError

    monkeypatch.setenv(kernels.ENV_ORT_OPS, str(tmp_path / "nowhere.so"))
    with pytest.raises(UserError, match="SSD_DEPLOY_ORT_CUSTOM_OPS=.*is not a file"):
        kernels.ort_custom_ops_path()
    monkeypatch.delenv(kernels.ENV_ORT_OPS)
    monkeypatch.setattr(kernels, "DEFAULT_BUILD_DIR", tmp_path)
    with pytest.raises(UserError, match="third_party/onnxruntime/include"):
        kernels.ort_custom_ops_path()


# --- on the GPU ---------------------------------------------------------------------------------------------------

gpu_test = ort_cuda_test


def _cuda_session(model: bytes, lib: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.register_custom_ops_library(str(lib))
    return ort.InferenceSession(model, opts, providers=["CUDAExecutionProvider"])


def run_node(lib: Path, plugin: str, dtype: str, inputs: dict, outputs: dict, attrs: dict) -> dict:
    """Runs one node on the CUDA provider with torch CUDA tensors bound in and out (numpy has no bfloat16)."""
    c = CONTRACTS[plugin]
    sess = _cuda_session(_node_model(c, ACTIVATIONS[dtype], attrs), lib)
    binding = sess.io_binding()
    onnx_type = {torch.float32: TensorProto.FLOAT, torch.float16: TensorProto.FLOAT16,
                 torch.bfloat16: TensorProto.BFLOAT16, torch.int32: TensorProto.INT32}
    for name, t in inputs.items():
        binding.bind_input(name, "cuda", 0, onnx_type[t.dtype], tuple(t.shape), t.data_ptr())
    out = {name: torch.full(shape, math.nan, dtype=dt, device="cuda") for name, (shape, dt) in outputs.items()}
    for name, t in out.items():
        binding.bind_output(f"{name}_out", "cuda", 0, onnx_type[t.dtype], tuple(t.shape), t.data_ptr())
    torch.cuda.synchronize()
    sess.run_with_iobinding(binding)
    return out


def _scan_inputs(gen, b, l, h, p, g, n, d_hdim, softplus):
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    dt = r(b, l, h) * 0.5 if softplus else torch.rand(b, l, h, generator=gen, dtype=torch.float64) * 0.1
    return {"x": r(b, l, h, p), "dt": dt, "A": -torch.exp(r(h) * 0.5), "B": r(b, l, g, n) / math.sqrt(n),
            "C": r(b, l, g, n) / math.sqrt(n), "D": r(h, p) if d_hdim else r(h),
            "dt_bias": torch.rand(h, generator=gen, dtype=torch.float64) * 0.5, "initial_state": r(b, h, p, n) * 0.5}


def _as_kernel_inputs(values: dict, c, dtype: str) -> dict:
    """The values in the node's dtypes, on the GPU, and back in float64 as the kernel sees them."""
    types = {"A": TORCH_DTYPES[dtype], "F": torch.float32, "I": torch.int32}
    dev = {t.name: values[t.name].to(types[t.role]).cuda().contiguous() for t in c.inputs}
    return dev, {k: (v.long() if v.dtype == torch.int32 else v.double()).cpu() for k, v in dev.items()}


def _generator() -> tuple[torch.Generator, int]:
    """Fresh random inputs every run; the seed goes into the failure message."""
    seed = int(np.random.default_rng().integers(2**31))
    return torch.Generator().manual_seed(seed), seed


SCAN_CASES = {  # (b, l, h, p, g, n, chunk_size, D per head-dim, dt_softplus, dt_min, dt_max)
    "l1": (2, 1, 4, 16, 1, 32, 256, False, 1, 0.0, math.inf),
    "groups2_ragged": (2, 77, 4, 16, 2, 32, 32, False, 1, 0.0, math.inf),
    "hdimD_clamp_rawdt": (1, 40, 8, 8, 4, 16, 16, True, 0, 0.01, 0.05),
}


@gpu_test
@pytest.mark.parametrize("dtype", list(ACTIVATIONS))
@pytest.mark.parametrize("case", list(SCAN_CASES))
def test_scan_node_matches_float64_and_the_kernel(lib, built, case, dtype, monkeypatch):
    from ssd_deploy import kernels
    from ssd_deploy.ssd import reference

    b, l, h, p, g, n, chunk, d_hdim, softplus, dt_min, dt_max = SCAN_CASES[case]
    gen, seed = _generator()
    c = CONTRACTS["SsdChunkScan"]
    dev, seen = _as_kernel_inputs(_scan_inputs(gen, b, l, h, p, g, n, d_hdim, softplus), c, dtype)
    attrs = {"chunk_size": chunk, "dt_softplus": softplus, "dt_min": dt_min, "dt_max": dt_max}
    out = run_node(lib, "SsdChunkScan", dtype, dev,
                   {"y": ((b, l, h, p), TORCH_DTYPES[dtype]), "final_state": ((b, h, p, n), torch.float32)}, attrs)
    y_ref, s_ref = reference.ssd_sequential(*(seen[t.name] for t in c.inputs), dt_softplus=bool(softplus),
                                            dt_min=dt_min, dt_max=dt_max)
    assert rel_err(out["y"].cpu(), y_ref) <= TOL[dtype], (case, seed)
    assert rel_err(out["final_state"].cpu(), s_ref) <= TOL[dtype], (case, seed)
    monkeypatch.setenv(kernels.ENV_LIB, str(built / kernels.LIB_NAME))
    y, s = kernels.ssd_scan(*(dev[t.name] for t in c.inputs), chunk_size=chunk, dt_softplus=bool(softplus),
                            dt_min=dt_min, dt_max=dt_max)
    torch.cuda.synchronize()
    assert torch.equal(y, out["y"]) and torch.equal(s, out["final_state"])  # the same kernel, the same arguments


PACKED_LENGTHS = {"one_and_inside_chunks": [1, 39, 5, 32], "equal": [20, 20], "single": [45]}


@gpu_test
@pytest.mark.parametrize("dtype", list(ACTIVATIONS))
@pytest.mark.parametrize("lengths", list(PACKED_LENGTHS))
def test_packed_scan_node_matches_float64(lib, lengths, dtype):
    """s sequences end to end (a length-1 one, boundaries inside chunks of 16), each against the recurrence run
    on it alone from its own state."""
    from ssd_deploy.ssd import reference

    lens = PACKED_LENGTHS[lengths]
    s, total, h, p, g, n = len(lens), sum(lens), 4, 16, 2, 32
    gen, seed = _generator()
    values = {k: v[:1] if k in ("x", "dt", "B", "C") else v
              for k, v in _scan_inputs(gen, 1, total, h, p, g, n, True, True).items()}
    values["initial_states"] = values.pop("initial_state")[:1].expand(s, -1, -1, -1) * torch.arange(1, s + 1)[
        :, None, None, None]
    values["cu_seqlens"] = torch.tensor([0, *np.cumsum(lens)], dtype=torch.int32)
    c = CONTRACTS["SsdChunkScanPacked"]
    dev, seen = _as_kernel_inputs(values, c, dtype)
    out = run_node(lib, "SsdChunkScanPacked", dtype, dev,
                   {"y": ((1, total, h, p), TORCH_DTYPES[dtype]), "final_states": ((s, h, p, n), torch.float32)},
                   {"chunk_size": 16, "dt_softplus": 1, "dt_min": 0.0, "dt_max": math.inf})
    y_ref, s_ref = reference.ssd_sequential_packed(
        *(seen[k] for k in ("x", "dt", "A", "B", "C", "D", "dt_bias", "cu_seqlens", "initial_states")))
    assert rel_err(out["y"].cpu(), y_ref) <= TOL[dtype], (lengths, seed)
    assert rel_err(out["final_states"].cpu(), s_ref) <= TOL[dtype], (lengths, seed)


@gpu_test
@pytest.mark.parametrize("dtype", list(ACTIVATIONS))
@pytest.mark.parametrize("lengths", list(PACKED_LENGTHS))
def test_packed_conv_node_matches_float64(lib, lengths, dtype):
    from ssd_deploy.ssd import reference

    lens = PACKED_LENGTHS[lengths]
    s, total, d, k = len(lens), sum(lens), 24, 4
    gen, seed = _generator()
    r = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)  # noqa: E731
    c = CONTRACTS["CausalConv1dPacked"]
    dev, seen = _as_kernel_inputs({"x": r(1, total, d), "weight": r(d, k) * 0.5, "bias": r(d) * 0.1,
                                   "conv_states": r(s, d, k - 1),
                                   "cu_seqlens": torch.tensor([0, *np.cumsum(lens)], dtype=torch.int32)}, c, dtype)
    out = run_node(lib, "CausalConv1dPacked", dtype, dev,
                   {"y": ((1, total, d), TORCH_DTYPES[dtype]), "conv_states_out": ((s, d, k - 1), torch.float32)},
                   {"silu": 1})
    y_ref, s_ref = reference.causal_conv1d_sequential_packed(*(seen[t.name] for t in c.inputs), silu=True)
    assert rel_err(out["y"].cpu(), y_ref) <= TOL[dtype], (lengths, seed)
    assert rel_err(out["conv_states_out"].cpu(), s_ref) <= TOL[dtype], (lengths, seed)


@gpu_test
@pytest.mark.parametrize("dtype", list(ACTIVATIONS))
@pytest.mark.parametrize("d_hdim", [False, True])
def test_step_node_matches_float64(lib, dtype, d_hdim):
    from ssd_deploy.ssd import reference

    b, h, p, g, n = 3, 8, 16, 2, 32
    gen, seed = _generator()
    values = {k: v[:, 0] if v.dim() > 1 and k in ("x", "dt", "B", "C") else v
              for k, v in _scan_inputs(gen, b, 1, h, p, g, n, d_hdim, True).items()}
    values["state"] = values.pop("initial_state")
    c = CONTRACTS["SsdStateUpdate"]
    dev, seen = _as_kernel_inputs(values, c, dtype)
    out = run_node(lib, "SsdStateUpdate", dtype, dev,
                   {"y": ((b, h, p), TORCH_DTYPES[dtype]), "new_state": ((b, h, p, n), torch.float32)},
                   {"dt_softplus": 1, "dt_min": 0.0, "dt_max": math.inf})
    y_ref, s_ref = reference.ssd_step(*(seen[t.name] for t in c.inputs))
    assert rel_err(out["y"].cpu(), y_ref) <= TOL[dtype], seed
    assert rel_err(out["new_state"].cpu(), s_ref) <= 1e-5, seed  # fp32 math on the state whatever the I/O dtype


CONV_CASES = {"l1": (2, 1, 24, 4, 1), "l2_below_k": (2, 2, 24, 4, 1), "long_nosilu": (3, 37, 40, 4, 0)}


@gpu_test
@pytest.mark.parametrize("dtype", list(ACTIVATIONS))
@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv_node_matches_float64(lib, case, dtype):
    from ssd_deploy.ssd import reference

    b, l, d, k, silu = CONV_CASES[case]
    gen, seed = _generator()
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    c = CONTRACTS["CausalConv1d"]
    dev, seen = _as_kernel_inputs({"x": r(b, l, d), "weight": r(d, k) * 0.5, "bias": r(d) * 0.1,
                                   "conv_state": r(b, d, k - 1)}, c, dtype)
    out = run_node(lib, "CausalConv1d", dtype, dev,
                   {"y": ((b, l, d), TORCH_DTYPES[dtype]), "conv_state_out": ((b, d, k - 1), torch.float32)},
                   {"silu": silu})
    y_ref, s_ref = reference.causal_conv1d(*(seen[t.name] for t in c.inputs), silu=bool(silu))
    assert rel_err(out["y"].cpu(), y_ref) <= TOL[dtype], (case, seed)
    assert rel_err(out["conv_state_out"].cpu(), s_ref) <= TOL[dtype], (case, seed)


@gpu_test
@pytest.mark.parametrize("dtype", list(ACTIVATIONS))
@pytest.mark.parametrize("group_size", [64, 16])
def test_norm_node_matches_float64(lib, dtype, group_size):
    from ssd_deploy.ssd import reference

    b, l, d = 2, 5, 64
    gen, seed = _generator()
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    c = CONTRACTS["GatedRmsNorm"]
    dev, seen = _as_kernel_inputs({"y": r(b, l, d), "z": r(b, l, d), "weight": 1 + 0.1 * r(d)}, c, dtype)
    out = run_node(lib, "GatedRmsNorm", dtype, dev, {"out": ((b, l, d), TORCH_DTYPES[dtype])},
                   {"eps": 1e-5, "group_size": group_size})
    ref = reference.gated_rmsnorm(*(seen[t.name] for t in c.inputs), 1e-5, group_size)
    assert rel_err(out["out"].cpu(), ref) <= TOL[dtype], seed


@gpu_test
def test_bad_attributes_and_shapes_are_named(lib):
    norm = CONTRACTS["GatedRmsNorm"]
    err = _session_error(_node_model(norm, TensorProto.FLOAT, {"group_size": 4}), lib, ["CUDAExecutionProvider"])
    assert "GatedRmsNorm node" in err and "required attribute eps is missing" in err, err
    err = _session_error(_node_model(norm, TensorProto.FLOAT, {"eps": -1.0, "group_size": 4}), lib,
                         ["CUDAExecutionProvider"])
    assert "eps must be finite and > 0" in err, err
    dev = {"y": torch.ones(2, 3, 8, device="cuda"), "z": torch.ones(2, 3, 8, device="cuda"),
           "weight": torch.ones(6, device="cuda")}
    with pytest.raises(Exception, match=r"input weight has shape \[6\] \(weight is \[d\]\), but d = 8"):
        run_node(lib, "GatedRmsNorm", "fp32", dev, {"out": ((2, 3, 8), torch.float32)}, {"eps": 1e-5, "group_size": 4})


@gpu_test
@pytest.mark.parametrize("variant", ["g1", "g4", "hdimD-limit"])
def test_trt_export_on_cuda_matches_pytorch_and_the_portable_export(lib, make_export, variant):
    """The shipped `trt` graph with its plugin nodes on our kernels, fp32, from random states, at l = 1, 7, Q, Q+3
    and 3Q: logits and every state within 1e-4 of the PyTorch model, logits within 1e-4 of the portable export on
    the same provider."""
    from ssd_deploy.checkpoint import load_model
    from ssd_deploy.interface import LAYOUT_SSM, read_metadata
    from ssd_deploy.runtime.feeds import feed
    from ssd_deploy.runtime.ort_runner import ort_session

    ckpt, trt_dir = make_export(VARIANTS[variant], "trt")
    _, portable_dir = make_export(VARIANTS[variant], "portable")
    meta = read_metadata(trt_dir)
    assert meta.ssm_layout == LAYOUT_SSM  # states fed as the reference takes them
    model = load_model(ckpt)
    sess = ort_session(trt_dir, "cuda", custom_ops=lib)
    portable = ort_session(portable_dir, "cuda")
    rng = np.random.default_rng()
    q = meta.config.chunk_size
    for length in (1, 7, q, q + 3, 3 * q):
        ids = rng.integers(0, meta.config.vocab_size, (2, length))
        states = random_states(meta, 2, rng)
        got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed(ids, states))))
        logits, ref_states = reference_outputs(model, ids, states)
        assert rel_err(got["logits"], logits) < 1e-4, length
        for name, ref in ref_states.items():
            assert rel_err(got[name], ref) < 1e-4, (length, name)
        other = dict(zip([o.name for o in portable.get_outputs()], portable.run(None, feed(ids, states))))
        assert rel_err(got["logits"], other["logits"]) < 1e-4, length


@gpu_test
def test_packed_trt_export_on_cuda_equals_each_prompt_alone(lib, make_export):
    """The `trt` packed graph on our packed kernels, fp32: each prompt's last logits and states within 1e-4 of the
    PyTorch model run on that prompt alone from its own states."""
    from test_export_packed import per_sequence_reference

    from ssd_deploy.checkpoint import load_model
    from ssd_deploy.interface import LAYOUT_SSM, read_metadata
    from ssd_deploy.runtime.ort_runner import ort_session

    ckpt, trt_dir = make_export(VARIANTS["g4"], "trt", graph="packed", logits="last")
    meta = read_metadata(trt_dir)
    model = load_model(ckpt)
    sess = ort_session(trt_dir, "cuda", custom_ops=lib)
    outputs = [o.name for o in sess.get_outputs()]
    rng = np.random.default_rng()
    for lengths in PACKED_PROMPTS:
        feeds, prompts = _packed_feeds(meta, lengths, rng)
        got = dict(zip(outputs, sess.run(None, feeds)))
        states = {st.name: feeds[st.name] for st in meta.states}
        ref_logits, ref_states = per_sequence_reference(model, prompts, states, meta.ssm_layout != LAYOUT_SSM)
        assert rel_err(got["logits"][:, 0], np.stack([r[-1] for r in ref_logits])) < 1e-4, lengths
        for name, ref in ref_states.items():
            assert rel_err(got[name], ref) < 1e-4, (lengths, name)


@gpu_test
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_half_precision_trt_export_on_cuda(lib, make_checkpoint, dtype, tmp_path):
    """fp16/bf16 `trt` exports on our kernels against the fp32 PyTorch listings (docs/verification.md: ≤ 1e-2)."""
    from ssd_deploy import bench
    from ssd_deploy.onnx.export import ExportOptions, export
    from ssd_deploy.runtime.backends import OrtBackend, TorchBackend

    ckpt = make_checkpoint(VARIANTS["g4"], "hf", seed=3)
    path = export(ckpt, tmp_path / dtype, ExportOptions(flavor="trt", dtype=dtype, logits="last")).parent
    ids = np.random.default_rng(3).integers(0, TINY.vocab_size, (2, 77))
    expected = bench.reference_logits(TorchBackend(ckpt, "cuda", triton=False), ids)
    backend = OrtBackend(path, "cuda", custom_ops=lib)
    assert backend.name == "ort-trt-customops-cuda"
    errs = bench.parity(backend, ids, expected)
    assert max(errs) <= 1e-2, errs  # NaN fails


@gpu_test
def test_greedy_generation_token_for_token(lib, make_checkpoint, tmp_path):
    """The `trt` export on ONNX Runtime CUDA with our kernels (states bound on the device) picks the same 64 tokens
    as PyTorch on the CPU, through the unified graph and through a decode-only one."""
    import dataclasses

    from ssd_deploy.generate import SamplingOptions, generate
    from ssd_deploy.onnx.export import ExportOptions, export
    from ssd_deploy.runtime.backends import OrtBackend, open_backend

    ckpt = make_checkpoint(dataclasses.replace(TINY, tie_embeddings=False), "hf", seed=21)
    path = export(ckpt, tmp_path / "trt", ExportOptions(flavor="trt")).parent
    prompts, opts = [[5, 6, 7, 8, 9, 10, 11], [3] * 40], SamplingOptions(max_new_tokens=64)
    expected = generate(open_backend(ckpt, "torch"), prompts, opts)
    backend = OrtBackend(path, "cuda", custom_ops=lib)
    assert backend.io_binding and generate(backend, prompts, opts) == expected
    # a decode-only export (SsdStateUpdate), prompts fed token by token
    path = export(ckpt, tmp_path / "trt-decode", ExportOptions(flavor="trt", graph="decode")).parent
    backend = OrtBackend(path, "cuda", custom_ops=lib)
    assert backend.one_token_per_call and generate(backend, prompts, opts) == expected


@gpu_test
def test_decode_graph_replayed_from_cuda_graphs(lib, make_checkpoint, tmp_path):
    """The `trt` decode export with our kernels as custom ops, its steps replayed from ONNX Runtime's CUDA graphs
    (the kernels launch on the stream ONNX Runtime hands them, the one it captures), batch 1 then 3 in one backend:
    the plain custom-op steps' logits and states, the float32 PyTorch listings' logits."""
    from conftest import assert_graph_decode_matches
    from ssd_deploy.onnx.export import ExportOptions, export
    from ssd_deploy.runtime.backends import OrtBackend, TorchBackend

    ckpt = make_checkpoint(VARIANTS["g4"], "hf", seed=3)
    path = export(ckpt, tmp_path / "trt-decode", ExportOptions(flavor="trt", graph="decode", logits="last")).parent
    graphs = OrtBackend(path, "cuda", custom_ops=lib, cuda_graph=True)
    assert graphs.name == "ort-trt-customops-cuda-graphs"
    assert_graph_decode_matches(OrtBackend(path, "cuda", custom_ops=lib), graphs, TorchBackend(ckpt, "cpu"))
    assert sorted(graphs.graphs.batches) == [1, 3]
