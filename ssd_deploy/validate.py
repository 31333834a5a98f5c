"""validate: an exported model against the PyTorch reference, prefill then K decode steps with carried states.

Both runners are Polygraphy runners over the same feeds; each carries its own states from call to call (so drift
shows), and Polygraphy's Comparator compares every call's outputs with our norm-relative error (docs/verification.md).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from polygraphy.comparator import Comparator, IterationResult, RunResults
from polygraphy.logger import G_LOGGER

from .checkpoint import checkpoint_hash, load_model
from .errors import UserError
from .interface import CU_SEQLENS, LOGITS, ExportMetadata, read_metadata, verify_weights
from .progress import QUIET, Reporter
from .runtime.feeds import carried_states, feed, zero_states
from .runtime.torch_runner import TorchRunner

TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 1e-2}  # end to end, docs/verification.md
# weight-only quantized exports (docs/quantization.md): about twice the worst that validate measured on the trained
# tiny model (ssd_deploy/data/tiny-stdlib), blocks 32 and 128, MatMulNBits accuracy level 4: int8 3.3e-2, int4
# 1.9e-1, both on the ssm states (benchmarks/RESULTS.md, "Weight-only quantization")
QUANT_TOLERANCE = {"int8": 6e-2, "int4": 4e-1}


def tolerance(meta: ExportMetadata) -> float:
    """The relative error an export must stay within: its dtype's, or its quantization's when that is looser."""
    if meta.quant == "none":
        return TOLERANCE[meta.dtype]
    return max(TOLERANCE[meta.dtype], QUANT_TOLERANCE[meta.quant])


@dataclass
class OutputError:
    call: str
    output: str
    rel: float
    max_abs: float
    finite: bool
    tol: float

    @property
    def ok(self) -> bool:
        return self.finite and self.rel <= self.tol

    def __bool__(self):
        return self.ok


@dataclass
class Report:
    backend: str
    dtype: str
    flavor: str
    batch: int
    prompt_len: int
    steps: int
    errors: list[OutputError] = field(default_factory=list)
    quantization: str = "none"  # none | int8 | int4 (weight-only; docs/quantization.md)

    @property
    def ok(self) -> bool:
        return bool(self.errors) and all(e.ok for e in self.errors)

    def to_dict(self) -> dict:
        return {**{k: v for k, v in asdict(self).items() if k != "errors"}, "ok": self.ok,
                "errors": [{**asdict(e), "ok": e.ok} for e in self.errors]}


def relative_error(out: np.ndarray, ref: np.ndarray) -> tuple[float, float, bool]:
    out64, ref64 = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    finite = bool(np.isfinite(out64).all())
    if out64.shape != ref64.shape:
        raise UserError(f"output shape {out64.shape} differs from the reference's {ref64.shape}")
    diff = out64 - ref64
    denom = np.linalg.norm(ref64)
    rel = float(np.linalg.norm(diff) / denom) if denom > 0 else float(np.linalg.norm(diff))
    return (rel if finite else float("nan")), float(np.abs(diff).max(initial=0.0)), finite


def _group(name: str) -> str:
    """logits / conv_state / ssm_state: states are reported as the worst layer."""
    return name.split("_out.")[0] if "_out." in name else name


def compare_outputs(tol: float, call_names: list[str], sink: list[OutputError]):
    """A Polygraphy compare_func: one OutputError per output group, worst layer for states."""
    calls = iter(call_names)

    def compare(ref: IterationResult, out: IterationResult):
        call = next(calls)
        worst: dict[str, OutputError] = OrderedDict()
        for name, ref_arr in ref.items():
            rel, max_abs, finite = relative_error(out[name], ref_arr)
            err = OutputError(call, _group(name), rel, max_abs, finite, tol)
            cur = worst.get(err.output)
            if cur is None or not err.finite or (cur.finite and err.rel > cur.rel):
                worst[err.output] = err
        sink.extend(worst.values())
        return OrderedDict((k, bool(v)) for k, v in worst.items())

    return compare


def _calls(meta: ExportMetadata, prompt: np.ndarray, steps: np.ndarray, lengths: list[int] | None):
    """Each call's (input_ids, cu_seqlens or None): the prompt, then each step. A packed graph takes the prompts of
    ``lengths`` end to end and each step's tokens as [1, b] with cu_seqlens 0..b."""
    if meta.graph != "packed":
        return [(prompt, None)] + [(steps[:, i:i + 1], None) for i in range(steps.shape[1])]
    cu = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    one_each = np.arange(len(lengths) + 1, dtype=np.int64)
    packed = np.concatenate([row[:n] for row, n in zip(prompt, lengths)])[None]
    return [(packed, cu)] + [(steps[:, i][None], one_each) for i in range(steps.shape[1])]


def _run(runner, meta: ExportMetadata, calls, advance) -> list[IterationResult]:
    results = []
    states = zero_states(meta, len(calls[0][1]) - 1 if calls[0][1] is not None else calls[0][0].shape[0])
    with runner:
        for i, (ids, cu) in enumerate(calls):
            advance(f"{runner.name}: {'prefill' if i == 0 else f'step {i}'}", 0)  # said before the call runs
            out = runner.infer({**feed(ids, states), **({} if cu is None else {CU_SEQLENS: cu})})
            advance()
            results.append(IterationResult({k: np.asarray(v) for k, v in out.items()}, runner_name=runner.name))
            states = {k: np.asarray(v, dtype=np.float32) for k, v in carried_states(meta, out).items()}
    return results


def validate(export_dir: Path, ckpt_dir: Path, backend_runner, steps: int = 4, batch: int = 2,
             prompt_len: int | None = None, seed: int | None = None, progress: Reporter = QUIET) -> Report:
    """``backend_runner``: a Polygraphy runner for the exported model (ONNX Runtime, TensorRT, ...); ``progress``
    shows each runner's prefill and steps as they run."""
    quiet_polygraphy()
    if steps < 0 or batch < 1 or (prompt_len is not None and prompt_len < 1):
        raise UserError("steps must be >= 0, batch >= 1 and the prompt length >= 1")
    meta = read_metadata(export_dir)
    verify_weights(export_dir, meta)
    reference = load_model(ckpt_dir)
    if reference.cfg.to_dict() != meta.config.to_dict():
        raise UserError(f"{ckpt_dir}: its config differs from the one {export_dir} was exported from")
    # a checkpoint other than the source (same config, other weights) would "fail" with errors of order 1: say what
    # it is instead (the hash covers config.json and the weight files, as at export)
    ckpt_sha = checkpoint_hash(ckpt_dir)
    if ckpt_sha != meta.checkpoint_sha256:
        raise UserError(f"{ckpt_dir} is not the checkpoint {export_dir} was exported from (sha256 {ckpt_sha[:12]}..., "
                        f"the export's source {meta.checkpoint_sha256[:12]}...): validate an export against its own "
                        f"checkpoint")
    cfg = meta.config
    if meta.graph == "decode":
        prompt_len = 1
    # default: past one chunk and not a multiple of it, so chunking, padding and state passing are all exercised
    prompt_len = prompt_len or cfg.chunk_size + cfg.chunk_size // 2 + 3
    rng = np.random.default_rng(seed)
    prompt = rng.integers(0, cfg.vocab_size, (batch, prompt_len))
    step_ids = rng.integers(0, cfg.vocab_size, (batch, steps))
    # a packed graph: prompts of different lengths (the longest prompt_len) in one call
    lengths = [max(1, prompt_len * (batch - i) // batch) for i in range(batch)] if meta.graph == "packed" else None
    calls = _calls(meta, prompt, step_ids, lengths)
    ref_runner = TorchRunner(reference, ssm_layout=meta.ssm_layout, packed=meta.graph == "packed")
    with progress.bar(f"validating {export_dir}", total=2 * len(calls)) as advance:
        ref_results = _run(ref_runner, meta, calls, advance)
        out_results = _run(backend_runner, meta, calls, advance)
    if meta.logits == "last":  # each sequence's last position
        for r, (_, cu) in zip(ref_results, calls):
            r[LOGITS] = r[LOGITS][:, -1:] if cu is None else r[LOGITS][0, cu[1:] - 1][:, None]
    report = Report(backend=backend_runner.name, dtype=meta.dtype, flavor=meta.flavor, batch=batch,
                    prompt_len=prompt_len, steps=steps, quantization=meta.quant)
    call_names = ["prefill"] + [f"step {i + 1}" for i in range(steps)]
    run_results = RunResults([(ref_runner.name, ref_results), (backend_runner.name, out_results)])
    Comparator.compare_accuracy(run_results, compare_func=compare_outputs(tolerance(meta), call_names,
                                                                           report.errors))
    return report


def quiet_polygraphy():
    """Our report is the one voice: no Polygraphy log lines (its per-iteration log, its '[E] Accuracy Summary', and
    the '[W] colored module' notice its colour check prints)."""
    G_LOGGER.colors = False
    G_LOGGER.module_severity = G_LOGGER.CRITICAL


def format_report(report: Report) -> str:
    weights = "" if report.quantization == "none" else f", {report.quantization} weights"
    lines = [f"validate: {report.backend} ({report.flavor}, {report.dtype}{weights}) vs PyTorch reference; batch "
             f"{report.batch}, prompt {report.prompt_len} tokens, {report.steps} decode steps",
             f"{'call':<10} {'output':<11} {'rel err':>10} {'max abs':>10} {'tol':>8}  result"]
    for e in report.errors:
        lines.append(f"{e.call:<10} {e.output:<11} {e.rel:>10.3e} {e.max_abs:>10.3e} {e.tol:>8.0e}  "
                     f"{'ok' if e.ok else ('NaN/Inf' if not e.finite else 'FAIL')}")
    lines.append("PASS" if report.ok else "FAIL")
    return "\n".join(lines)
