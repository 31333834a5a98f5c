"""What an export can be asked for: ``ExportOptions`` and the value table of each option.

One vocabulary (tests/test_cli_vocabulary.py holds it): each field here is a recipe ``[export]`` key of the same name
(recipes.py), a flag of ``ssd-deploy export`` of the same name (``--external-data`` for ``external_data``), whose
choices are the table below, and, except ``external_data`` (a file layout), a field of the export's metadata.
Light on purpose (no torch): the CLI builds its choices from these tables at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from ..interface import DTYPES as DTYPE_VOCABULARY

FLAVORS = ("portable", "ort", "trt")  # onnx/export.py maps each to its lowering module
DTYPES = tuple(DTYPE_VOCABULARY)  # the graph interface's dtype vocabulary
MIN_OPSET = 18  # the standard ops the lowerings emit
EXTERNAL_DATA = ("auto", "always", "never")  # weights in a side file: past a size, always, never
LOGITS = ("all", "last")  # logits of every position, or of the last one only
GRAPHS = ("unified", "decode", "packed")  # prefill and decode in one graph; a single-token graph on ssd_step;
# sequences of several lengths end to end in one call (cu_seqlens)
PREFILLS = ("contrib", "chunked")  # ort flavor: calls of more than one token on LinearAttention, or the chunked scan
COMPANIONS = ("none", "decode")  # a second graph beside the unified one, on the same weights file: none, or a
# single-token graph (the --graph decode lowering) that runtimes use for decode steps (docs/graph-interface.md)
QUANTS = ("none", "int8", "int4")  # weight-only quantization of in_proj, out_proj, lm_head (quantize.py)
QUANT_BLOCKS = (32, 64, 128)  # weights per scale along K
QUANT_FORMATS = ("auto", "matmulnbits", "dq")  # ONNX Runtime's MatMulNBits | block-wise DequantizeLinear (TensorRT);
# auto: dq for the trt flavor, matmulnbits otherwise



def max_opset() -> int:
    """The newest standard opset the installed onnx knows (the exporter cannot target a newer one)."""
    import onnx

    return onnx.defs.onnx_opset_version()


# option → its choices (options not listed take any value of their type)
CHOICES = {"flavor": FLAVORS, "dtype": DTYPES, "external_data": EXTERNAL_DATA, "logits": LOGITS, "graph": GRAPHS,
           "prefill": PREFILLS, "companion": COMPANIONS, "quant": QUANTS, "quant_format": QUANT_FORMATS}


@dataclass(frozen=True)
class ExportOptions:
    flavor: str = "portable"
    dtype: str = "fp32"
    opset: int = MIN_OPSET
    external_data: str = "auto"
    logits: str = "all"
    graph: str = "unified"
    prefill: str = "contrib"
    companion: str = "none"
    quant: str = "none"
    quant_block: int = 128
    quant_format: str = "auto"

    def check(self):
        for name, allowed in CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise UserError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")
        if not isinstance(self.opset, int) or not MIN_OPSET <= self.opset <= max_opset():
            raise UserError(f"opset {self.opset} is not supported; choose one of {MIN_OPSET}..{max_opset()} (the "
                            f"newest the installed onnx knows)")
        if self.prefill != "contrib" and self.flavor != "ort":
            raise UserError(f"prefill {self.prefill!r} is an option of the ort flavor (the {self.flavor} flavor's "
                            f"scan is chunked already)")
        if self.companion != "none" and (self.graph != "unified" or self.flavor == "trt"):
            raise UserError(f"a {self.companion} companion graph goes beside a unified graph of the portable or ort "
                            f"flavor (this export: {self.graph} graph, {self.flavor} flavor); pass --companion none")
        if self.companion != "none" and self.external_data == "never":
            raise UserError("a companion graph shares the export's weights file: --external-data never cannot hold "
                            "it; use auto or always")
        if self.quant_block not in QUANT_BLOCKS:
            raise UserError(f"quant block {self.quant_block} not supported; choose one of "
                            f"{', '.join(map(str, QUANT_BLOCKS))}")
        if self.quant != "none" and self.dtype == "bf16":
            raise UserError("quantized exports take fp32 or fp16 activations (ONNX Runtime's MatMulNBits has no "
                            "bf16 kernel on the CPU)")

    @property
    def resolved_quant_format(self) -> str | None:
        """The quantization's format (None for float weights): auto is dq for the trt flavor (TensorRT has no
        MatMulNBits), matmulnbits otherwise."""
        if self.quant == "none":
            return None
        return self.quant_format if self.quant_format != "auto" else "dq" if self.flavor == "trt" else "matmulnbits"

    def flavor_options(self) -> dict:
        """The options the flavor's lowerings take besides the model's sizes."""
        return {"prefill": self.prefill} if self.flavor == "ort" else {}
