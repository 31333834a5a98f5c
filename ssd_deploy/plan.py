"""Memory plans for Jetson targets (docs/jetson.md): will this model, at this precision and these profiles, fit?

The budget of a TensorRT deployment on a module whose CPU and GPU share one DRAM (targets.py), in bytes:

* weights: every parameter at the export's precision, except those the op contracts keep in float32 (A_log, D,
  dt_bias, conv weight and bias, gated-norm weight: model.FP32_PARAMS); a tied head counted once. With weight-only
  quantization (docs/quantization.md; the ``dq`` format, TensorRT's) each layer's in_proj and out_proj and the head
  ([N, K] in torch) are stored as K x N int8 or int4 values (int4 packed two to a byte) and ceil(K / block) x N
  scales at the export's precision; everything else as above. A tied head is untied by quantization: the embedding
  keeps its float table and the head gets its own quantized copy.
* states: 2 x batch x layers x (conv: conv_dim x (d_conv - 1) + ssm: heads x headdim x d_state) x 4 bytes: the
  float32 state inputs and outputs of one call are both alive.
* activations, the peak of a prefill of batch x prefill tokens, one layer live at a time: the in_proj output
  (d_in_proj), the conv output (conv_dim), the scan output (d_inner) and the block input and its norm (d_model) per
  token at the export's precision, the float32 residual (d_model) per token, the chunked scan's float32 decay
  matrices (heads x Q x Q) and chunk states (heads x headdim x d_state) per chunk of Q = min(chunk_size, prefill)
  tokens; plus the logits (vocab per sequence with last-position logits, per token with all).
* the TensorRT workspace (the recipe's builder memory pool, else 1 GiB) and the runtime overhead (CUDA context and
  TensorRT runtime, per target).

They are compared with the target's memory less the OS's share. Building the engine on the device holds the ONNX
weights and the engine's copy at once: 2 x weights + workspace + overhead must fit as well.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass

from .config import Mamba2Config
from .errors import UserError
from .targets import Target

GIB = 1 << 30
MIB = 1 << 20
ITEMSIZE = {"fp32": 4, "fp16": 2, "bf16": 2}
QUANT_BITS = {"none": None, "int8": 8, "int4": 4}  # the export's --quant (quantize.BITS)
DEFAULT_QUANT_BLOCK = 128  # the export's --quant-block default (onnx/options.py)
QUANTIZED = (".mixer.in_proj.weight", ".mixer.out_proj.weight")  # with the head: what quantize.py quantizes
DEFAULT_WORKSPACE_MIB = 1024
BATCHES = (1, 2, 4, 8, 16, 32, 64)
PREFILLS = tuple(128 << i for i in range(10))  # 128 ... 65536


@dataclass(frozen=True)
class Budget:
    weights: int
    states: int
    activations: int
    workspace: int
    overhead: int

    @property
    def total(self) -> int:
        return self.weights + self.states + self.activations + self.workspace + self.overhead

    @property
    def build(self) -> int:
        """Building on the device: the parser's ONNX weights and the engine's copy at once."""
        return 2 * self.weights + self.workspace + self.overhead


@functools.lru_cache(maxsize=64)  # a plan asks for many budgets of one model
def weights_bytes(cfg: Mamba2Config, dtype: str, quant: str = "none", block: int = DEFAULT_QUANT_BLOCK) -> int:
    from .checkpoint import expected_shapes, param_dtype  # torch, imported when a plan is made
    from .interface import DTYPES

    torch_dtype = DTYPES[dtype].torch
    shapes = expected_shapes(cfg)
    total = 0
    for name, shape in shapes.items():
        if QUANT_BITS[quant] and (name.endswith(QUANTIZED) or name == "lm_head.weight"):
            total += quantized_bytes(shape, QUANT_BITS[quant], block, ITEMSIZE[dtype])
        else:
            total += math.prod(shape) * (4 if param_dtype(name, torch_dtype) != torch_dtype else ITEMSIZE[dtype])
    if QUANT_BITS[quant] and cfg.tie_embeddings:  # untied by quantization: the head's own quantized copy
        total += quantized_bytes(shapes["backbone.embedding.weight"], QUANT_BITS[quant], block, ITEMSIZE[dtype])
    return total


def quantized_bytes(shape: tuple[int, int], bits: int, block: int, scale_itemsize: int) -> int:
    """A linear weight [N, K] (torch's layout) as the ``dq`` format stores it: K x N values of ``bits`` (int4 two to a
    byte), ceil(K / block) x N scales (quantize.rtn_symmetric)."""
    n, k = shape
    return -(-k * n * bits // 8) + -(-k // block) * n * scale_itemsize


def states_bytes(cfg: Mamba2Config, batch: int) -> int:
    per_layer = cfg.conv_dim * (cfg.d_conv - 1) + cfg.nheads * cfg.headdim * cfg.d_state
    return 2 * batch * cfg.n_layer * per_layer * 4


def activations_bytes(cfg: Mamba2Config, dtype: str, batch: int, prefill: int, logits: str = "last") -> int:
    a = ITEMSIZE[dtype]
    q = min(cfg.chunk_size, prefill)
    chunks = -(-prefill // q)
    per_token = (cfg.d_in_proj + cfg.conv_dim + cfg.d_inner + 2 * cfg.d_model) * a + cfg.d_model * 4
    per_chunk = cfg.nheads * (q * q + cfg.headdim * cfg.d_state) * 4
    logit_rows = prefill if logits == "all" else 1
    return batch * (prefill * per_token + chunks * per_chunk + logit_rows * cfg.padded_vocab_size * a)


def budget(cfg: Mamba2Config, tgt: Target, dtype: str, batch: int, prefill: int, logits: str = "last",
           workspace_mib: int = DEFAULT_WORKSPACE_MIB, quant: str = "none",
           quant_block: int = DEFAULT_QUANT_BLOCK) -> Budget:
    return Budget(weights_bytes(cfg, dtype, quant, quant_block), states_bytes(cfg, batch),
                  activations_bytes(cfg, dtype, batch, prefill, logits), workspace_mib * MIB,
                  tgt.runtime_overhead_mib * MIB)


def available_bytes(tgt: Target) -> int:
    return int(tgt.memory_gib * GIB - tgt.os_share_gib * GIB)


def fits(b: Budget, tgt: Target) -> bool:
    return b.total <= available_bytes(tgt) and b.build <= available_bytes(tgt)


@dataclass(frozen=True)
class Plan:
    target: Target
    dtype: str
    batch: int
    prefill: int
    logits: str
    budget: Budget
    available: int
    fits: bool
    precisions: tuple[str, ...]  # of the target's, those that fit this batch and prefill, highest first
    profiles: tuple[tuple[int, int], ...]  # (batch, largest prefill that fits) at this dtype
    decode_batch: int  # the largest decode batch (one token per call) that fits at this dtype, 0 if none
    quant: str = "none"  # weight-only quantization of in_proj, out_proj and the head (docs/quantization.md)
    quant_block: int | None = None  # weights per scale (quantized plans)
    quantizations: tuple[str, ...] = ()  # int8 / int4, those that fit this dtype, batch and prefill (fp32/fp16 only)

    def to_dict(self) -> dict:
        return {"target": asdict(self.target), "dtype": self.dtype, "quant": self.quant,
                "quant_block": self.quant_block, "batch": self.batch, "prefill": self.prefill,
                "logits": self.logits, "budget": {**asdict(self.budget), "total": self.budget.total,
                                                  "build": self.budget.build},
                "available": self.available, "fits": self.fits, "precisions_that_fit": list(self.precisions),
                "quantizations_that_fit": list(self.quantizations),
                "largest_profiles": [{"batch": b, "prefill": p} for b, p in self.profiles],
                "largest_decode_batch": self.decode_batch}


def make_plan(cfg: Mamba2Config, tgt: Target, dtype: str, batch: int, prefill: int, logits: str = "last",
              workspace_mib: int = DEFAULT_WORKSPACE_MIB, quant: str = "none",
              quant_block: int = DEFAULT_QUANT_BLOCK) -> Plan:
    from .onnx.options import QUANT_BLOCKS, QUANTS  # the export's own vocabulary

    if dtype not in tgt.dtypes:
        raise UserError(f"{tgt.name} runs {', '.join(tgt.dtypes)}, not {dtype}")
    if batch < 1 or prefill < 1:
        raise UserError(f"batch and prefill length must be positive (got {batch}, {prefill})")
    if quant not in QUANTS:
        raise UserError(f"unknown quantization {quant!r}; choose one of {', '.join(QUANTS)}")
    if quant != "none" and quant_block not in QUANT_BLOCKS:
        raise UserError(f"quant block {quant_block} not supported; choose one of {', '.join(map(str, QUANT_BLOCKS))}")
    if quant != "none" and dtype == "bf16":  # as the export refuses it (onnx/options.py)
        raise UserError("quantized exports take fp32 or fp16 activations, not bf16")
    plan_of = lambda d, b, p, q=quant: budget(cfg, tgt, d, b, p, logits, workspace_mib, q, quant_block)  # noqa: E731
    b = plan_of(dtype, batch, prefill)
    precisions = tuple(d for d in sorted(tgt.dtypes, key=lambda d: -ITEMSIZE[d])
                       if (quant == "none" or d != "bf16") and fits(plan_of(d, batch, prefill), tgt))
    quantizations = () if dtype == "bf16" else \
        tuple(q for q in ("int8", "int4") if fits(plan_of(dtype, batch, prefill, q), tgt))
    profiles = []
    for bb in BATCHES:
        best = max((p for p in PREFILLS if fits(plan_of(dtype, bb, p), tgt)), default=None)
        if best is not None:
            profiles.append((bb, best))
    decode = max((1 << i for i in range(13) if fits(plan_of(dtype, 1 << i, 1), tgt)), default=0)
    return Plan(tgt, dtype, batch, prefill, logits, b, available_bytes(tgt), fits(b, tgt), precisions,
                tuple(profiles), decode, quant, quant_block if quant != "none" else None, quantizations)


def _gib(n: int) -> str:
    return f"{n / GIB:6.2f} GiB"


def format_plan(p: Plan, model: str) -> str:
    t, b = p.target, p.budget
    lines = [
        f"plan: {model} on {t.module} (sm_{t.sm}; JetPack {t.jetpack}: CUDA {t.cuda}, TensorRT {t.tensorrt})",
        f"  {p.dtype}{_quant(p)}, batch {p.batch}, prefill {p.prefill} tokens, {p.logits}-position logits",
        f"  weights              {_gib(b.weights)}",
        f"  states               {_gib(b.states)}  (inputs and outputs, float32)",
        f"  activations          {_gib(b.activations)}  (peak of a {p.batch} x {p.prefill} prefill)",
        f"  TensorRT workspace   {_gib(b.workspace)}",
        f"  runtime overhead     {_gib(b.overhead)}",
        f"  total                {_gib(b.total)}  of {_gib(p.available).strip()} "
        f"({t.memory_gib} GiB less {t.os_share_gib:g} GiB for the OS)",
        f"  build on the device  {_gib(b.build)}  (ONNX weights + engine + workspace + overhead)",
        f"  {'fits' if p.fits else 'DOES NOT FIT'}",
        f"  precisions that fit batch {p.batch} x {p.prefill}: {', '.join(p.precisions) or 'none'}"
        + (f" (weights {p.quant})" if p.quant != "none" else ""),
    ]
    if p.dtype != "bf16":
        lines.append(f"  weight-only quantizations that fit at {p.dtype}: {', '.join(p.quantizations) or 'none'}")
    if p.profiles:
        lines.append(f"  largest prefill profiles at {p.dtype}: "
                     + ", ".join(f"batch {bb} x {pp}" for bb, pp in p.profiles))
    lines.append(f"  largest decode batch at {p.dtype}: {p.decode_batch or 'none'}")
    return "\n".join(lines)


def _quant(p: Plan) -> str:
    return "" if p.quant == "none" else f" with {p.quant} weights (block {p.quant_block})"


def refusal(p: Plan, model: str) -> str:
    need = max(p.budget.total, p.budget.build)
    what = "building the engine" if p.budget.build > p.budget.total else "running"
    hint = (f"precisions that fit: {', '.join(p.precisions)}" if p.precisions else
            f"weight-only quantizations that fit at {p.dtype}: {', '.join(p.quantizations)}" if p.quantizations else
            f"largest profiles at {p.dtype}: " + ", ".join(f"batch {b} x {q}" for b, q in p.profiles)
            if p.profiles else "no profile fits at any precision")
    return (f"{model} at {p.dtype}{_quant(p)}, batch {p.batch} x prefill {p.prefill} does not fit on {p.target.name}: "
            f"{what} needs {need / GIB:.2f} GiB of the {p.available / GIB:.2f} GiB left by the OS ({hint})")


def require(cfg: Mamba2Config, recipe: dict, model: str):
    """Refuses an export or build for a recipe whose ``device`` cannot hold the model at the largest shapes of each
    of its TensorRT profiles (else of its declared shapes); nothing to check for a recipe without a device."""
    from .targets import target

    device = recipe.get("device")
    if not device:
        return
    export = recipe.get("export", {})
    shapes = [(p["batch"][2], p["seq"][2]) for p in recipe.get("profiles", {}).values()] or \
        [(recipe["batch"][1], recipe["prefill"][1])]
    for batch, prefill in shapes:
        p = make_plan(cfg, target(device), export.get("dtype", "fp32"), batch, prefill, export.get("logits", "all"),
                      recipe.get("workspace_mib", DEFAULT_WORKSPACE_MIB), export.get("quant", "none"),
                      export.get("quant_block", DEFAULT_QUANT_BLOCK))
        if not p.fits:
            raise UserError(f"recipe {recipe.get('name', '?')}: " + refusal(p, model))
