"""Weight-only int8/int4 block-wise quantization of an export's large linear layers (docs/quantization.md).

What is quantized: each layer's ``in_proj`` and ``out_proj`` and the ``lm_head``, found in the graph as the MatMuls
whose constant right-hand side has the layer's shape, transposed (``[d_model, d_in_proj]``, ``[d_inner, d_model]``,
``[d_model, padded_vocab]``); exactly ``2 * n_layer + 1`` of them or the export is refused. Everything else is left
byte for byte as exported: A_log, D, dt_bias, the conv, the norms, the chunked scan's triangular constants, and the
embedding. A tied head reads the embedding through a Transpose at run time; it gets its own quantized ``[K, N]``
copy while the Gather keeps the float table (a gather reads one row per token, so quantizing it saves memory but no
decode time; ONNX Runtime's quantizer quantizes a Gather to 4 bits only, in another encoding than MatMulNBits').

How: ONNX Runtime's own quantizer (``MatMulNBitsQuantizer``, its default round-to-nearest algorithm, symmetric,
blocks along K) makes ``com.microsoft`` ``MatMulNBits`` nodes, which ONNX Runtime's CPU and CUDA providers run
(format ``matmulnbits``: the portable and ort flavors on ONNX Runtime). TensorRT has no MatMulNBits; for it (format
``dq``, the default of the trt flavor) each weight becomes an opset-21 block-wise ``DequantizeLinear`` (int8/int4,
no zero point) feeding a plain MatMul: TensorRT's weight-only pattern. Those weights are rounded here, with
TensorRT's convention (positive scale = amax / 7 or / 127): the quantizer's symmetric scales are signed (a block's
extreme maps to -8 / -128), which TensorRT's parser refuses ("Scale coefficients must all be positive", TensorRT-RTX
1.7), and its own QDQ output exists for 4 bits only.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import numpy_helper

from .config import Mamba2Config
from .errors import UserError

BITS = {"int8": 8, "int4": 4}
DQ_OPSET = 21  # DequantizeLinear's block_size and int4 weights
# MatMulNBits' accuracy_level 4: activations quantized to int8 per block on the fly, integer dot products. On the CPU
# level 0 (float compute) left int8 decode 19x slower than fp32 and int4 only 4% faster, level 4 made them 0.65x and
# 0.51x, and held-out perplexity moved by 0.03% at most (benchmarks/RESULTS.md, "Weight-only quantization")
ACCURACY_LEVEL = 4


def _initializers(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in graph.initializer}


def linear_weights(model: onnx.ModelProto, cfg: Mamba2Config) -> dict[str, str]:
    """MatMul node name → role (in_proj | out_proj | lm_head) of the large linear layers in the main graph. A tied
    head (MatMul of Transpose(embedding)) is untied here: its MatMul gets its own [K, N] initializer."""
    g = model.graph
    inits = _initializers(g)
    producers = {o: n for n in g.node for o in n.output}
    shapes = {(cfg.d_model, cfg.d_in_proj): "in_proj", (cfg.d_inner, cfg.d_model): "out_proj",
              (cfg.d_model, cfg.padded_vocab_size): "lm_head"}
    found: dict[str, str] = {}
    for node in g.node:
        if node.op_type != "MatMul":
            continue
        b = node.input[1]
        tp = producers.get(b)
        if b not in inits and tp is not None and tp.op_type == "Transpose" and tp.input[0] in inits:
            src = inits[tp.input[0]]
            if tuple(src.dims)[::-1] == (cfg.d_model, cfg.padded_vocab_size):  # the tied head
                name = f"{src.name}.lm_head_T"
                g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(numpy_helper.to_array(src).T),
                                                             name))
                inits[name] = g.initializer[-1]
                node.input[1] = name
                b = name
        if b in inits and tuple(inits[b].dims) in shapes:
            found[node.name] = shapes[tuple(inits[b].dims)]
    want = {"in_proj": cfg.n_layer, "out_proj": cfg.n_layer, "lm_head": 1}
    got = {r: sum(v == r for v in found.values()) for r in want}
    if got != want or "" in found:
        raise UserError(f"quantization: expected {want} named linear MatMuls in the graph, found {got}")
    # a Transpose left without a consumer (the tied head's) goes with the untying
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    kept = [n for n in g.node if not (n.op_type == "Transpose" and n.output[0] not in used)]
    del g.node[:]
    g.node.extend(kept)
    return found


def _all_node_names(graph: onnx.GraphProto) -> set[str]:
    names = set()
    for n in graph.node:
        names.add(n.name)
        for a in n.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                names |= _all_node_names(sub)
    return names


def _quantizer_class():
    """ONNX Runtime's quantizer, imported without its import-time ``logging.basicConfig(level=INFO)`` on the root
    logger (which would print one line per graph node, and every other library's INFO lines after it)."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer, logger

    root.setLevel(level)
    for h in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(h)
    logger.setLevel(logging.WARNING)
    return MatMulNBitsQuantizer


def quantize(model: onnx.ModelProto, cfg: Mamba2Config, scheme: str, block: int,
             fmt: str) -> tuple[onnx.ModelProto, dict]:
    """The model with its large linear layers quantized (``scheme`` int8 | int4, ``fmt`` matmulnbits | dq); returns
    it and what the metadata records besides the options (layers, symmetric, accuracy level, tool)."""
    import onnxruntime

    targets = linear_weights(model, cfg)
    if fmt == "dq":
        to_dequantize_linear(model, targets, BITS[scheme], block)
        tool, level = "ssd-deploy RTN with TensorRT's symmetric convention", None
    else:
        others = _all_node_names(model.graph) - set(targets)  # includes "" (unnamed nodes): nothing else touched
        quantizer = _quantizer_class()(model, bits=BITS[scheme], block_size=block, is_symmetric=True,
                                       accuracy_level=ACCURACY_LEVEL, nodes_to_exclude=sorted(others),
                                       op_types_to_quantize=("MatMul",))
        quantizer.process()
        model = quantizer.model.model
        made = sum(n.op_type == "MatMulNBits" for n in model.graph.node)
        if made != len(targets):
            raise UserError(f"quantization: ONNX Runtime's quantizer made {made} MatMulNBits of {len(targets)} "
                            f"linear layers")
        tool, level = f"onnxruntime {onnxruntime.__version__} MatMulNBitsQuantizer (default RTN)", ACCURACY_LEVEL
    record = {"layers": sorted(set(targets.values())), "symmetric": True, "tool": tool}
    return model, record if level is None else {**record, "accuracy_level": level}


def rtn_symmetric(w: np.ndarray, bits: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Round to nearest, symmetric, restricted range (TensorRT's convention: scale = amax / (2^(bits-1) - 1) > 0):
    w [K, N] float → (values [K, N] int8 in [-qmax, qmax], scales [ceil(K/block), N] in w's dtype)."""
    k, n = w.shape
    qmax = (1 << (bits - 1)) - 1
    pad = (-k) % block
    w32 = np.pad(w.astype(np.float32), ((0, pad), (0, 0)))
    amax = np.abs(w32.reshape(-1, block, n)).max(axis=1)  # [blocks, N]
    scales = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
    values = np.clip(np.rint(w32.reshape(-1, block, n) / scales[:, None, :]), -qmax, qmax)
    return values.reshape(-1, n)[:k].astype(np.int8), scales.astype(w.dtype)


def to_dequantize_linear(model: onnx.ModelProto, targets: dict[str, str], bits: int, block: int):
    """Each target MatMul's constant B → DequantizeLinear(int8|int4 [K, N], scales [K/block, N], axis 0,
    block_size) feeding the MatMul, in place; the default-domain opset becomes 21."""
    g = model.graph
    inits = _initializers(g)
    nodes = []
    for node in g.node:
        if node.name not in targets:
            nodes.append(node)
            continue
        w = inits.pop(node.input[1])
        values, scales = rtn_symmetric(numpy_helper.to_array(w), bits, block)
        elem = onnx.TensorProto.INT4 if bits == 4 else onnx.TensorProto.INT8
        q_name, s_name = f"{w.name}.q{bits}", f"{w.name}.scales"
        inits[q_name] = onnx.helper.make_tensor(q_name, elem, list(values.shape),
                                                values.flatten().tolist() if bits == 4 else values.tobytes(),
                                                raw=bits != 4)
        inits[s_name] = numpy_helper.from_array(scales, s_name)
        nodes.append(onnx.helper.make_node("DequantizeLinear", [q_name, s_name], [f"{q_name}.float"],
                                           name=f"{node.name}.dq", axis=0, block_size=block))
        nodes.append(onnx.helper.make_node("MatMul", [node.input[0], f"{q_name}.float"], list(node.output),
                                           name=node.name))
    del g.node[:]
    g.node.extend(nodes)
    del g.initializer[:]
    g.initializer.extend(inits.values())
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            imp.version = max(imp.version, DQ_OPSET)
