"""GPU cases of the plugin harness: random inputs for each plugin's node contract (``plugins/<Plugin>/contract.toml``:
names, order, wire dtypes and attribute types come from it), the harness's case files, and the float64 reference
answer from ``ssd_deploy.ssd.reference``.

Inputs are drawn as the model sees them (A = -exp(U(log 1, log 16)), dt' around 0.001..0.1 after softplus, non-zero
states); activations are rounded to the case's dtype first, and the reference runs in float64 on those rounded
values, so the comparison measures the kernels, not the input rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ssd_deploy.plugin_contracts import contracts
from ssd_deploy.ssd import reference

CONTRACTS = contracts()  # plugins/<Plugin>/contract.toml: names, order, dtype roles and attribute types
WIRE_ATTR = {"int": "i32", "float": "f32"}

DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
# docs/verification.md: relative error against float64; the fp32 bound is the math one (the plugins add no arithmetic).
TOLERANCE = {"f32": 1e-5, "f16": 1e-2, "bf16": 1e-2}


@dataclass
class Tensor:
    name: str
    value: torch.Tensor  # inputs: what the plugin gets; outputs: the float64 reference
    dtype: str  # f32 / f16 / bf16 / i32 on the wire
    dynamic: dict[int, str] = field(default_factory=dict)  # axis -> symbol of a dynamic extent (b, l, bp1 = b+1)


@dataclass
class Case:
    name: str
    plugin: str
    dtype: str
    attrs: list[tuple[str, str, object]]  # (name, i32|f32, value)
    inputs: list[Tensor]
    outputs: list[Tensor]
    time_repeats: int = 0


def _case(name: str, plugin: str, dtype: str, attrs: dict, inputs: dict, outputs: dict, time_repeats: int) -> Case:
    """A case in the contract's terms: inputs and outputs (name -> (value, dynamic axes)) put in the contract's order
    with the wire dtype of their role (the case's dtype for activations, i32 for offsets, f32 otherwise); attributes
    typed by it. An
    input or output the contract lacks, or a required one missing, is a mistake in the case."""
    c = CONTRACTS[plugin]

    def tensors(specs, given):
        unknown = set(given) - {t.name for t in specs}
        missing = {t.name for t in specs if not t.optional} - set(given)
        if unknown or missing:
            raise ValueError(f"{name}: tensors {sorted(unknown)} are not in {plugin}'s contract, {sorted(missing)} "
                             f"are missing")
        wire = {"A": dtype, "F": "f32", "I": "i32"}
        return [Tensor(t.name, given[t.name][0], wire[t.role], given[t.name][1]) for t in specs if t.name in given]

    types = {a.name: WIRE_ATTR[a.type] for a in c.attributes}
    if set(attrs) - set(types):
        raise ValueError(f"{name}: attributes {sorted(set(attrs) - set(types))} are not in {plugin}'s contract")
    return Case(name, plugin, dtype, [(a, types[a], v) for a, v in attrs.items()], tensors(c.inputs, inputs),
                tensors(c.outputs, outputs), time_repeats)


def _act(t: torch.Tensor, dtype: str) -> torch.Tensor:
    return t.to(DTYPES[dtype])


def _f64(ts):
    return [t.double() for t in ts]


def _dt_bias(h: int, g: torch.Generator) -> torch.Tensor:
    """mamba_ssm's init: softplus(dt_bias) log-uniform in [0.001, 0.1]."""
    dt = torch.exp(torch.rand(h, generator=g) * (math.log(0.1) - math.log(0.001)) + math.log(0.001))
    return dt + torch.log(-torch.expm1(-dt))


def _decay(h: int, g: torch.Generator) -> torch.Tensor:
    return -torch.exp(torch.rand(h, generator=g) * math.log(16.0))


def scan_case(dtype, b, l, h, p, gr, n, chunk, *, d_hdim=False, softplus=1, dt_min=0.0, dt_max=math.inf, gen,
              time_repeats=0) -> Case:
    x = _act(torch.randn(b, l, h, p, generator=gen), dtype)
    if softplus:
        dt = _act(torch.randn(b, l, h, generator=gen) * 0.5, dtype)
    else:  # raw dt is used as is: keep it positive
        dt = _act(torch.rand(b, l, h, generator=gen) * 0.05 + 0.001, dtype)
    A = _decay(h, gen)
    B = _act(torch.randn(b, l, gr, n, generator=gen), dtype)
    C = _act(torch.randn(b, l, gr, n, generator=gen), dtype)
    D = torch.randn(h, p, generator=gen) if d_hdim else torch.randn(h, generator=gen)
    dt_bias = _dt_bias(h, gen) if softplus else torch.full((h,), 0.01)
    s0 = torch.randn(b, h, p, n, generator=gen) * 0.5
    y, s = reference.ssd_sequential(*_f64([x, dt, A, B, C, D, dt_bias, s0]), dt_softplus=bool(softplus),
                                    dt_min=dt_min, dt_max=dt_max)
    bl, b_ = {0: "b", 1: "l"}, {0: "b"}
    return _case(
        f"SsdChunkScan-{dtype}-b{b}l{l}h{h}p{p}g{gr}n{n}Q{chunk}" + ("-Dhp" if d_hdim else "") +
        ("-nosoftplus" if not softplus else "") + ("-clamp" if dt_min > 0 or dt_max < math.inf else ""),
        "SsdChunkScan", dtype, {"chunk_size": chunk, "dt_softplus": softplus, "dt_min": dt_min, "dt_max": dt_max},
        {"x": (x, bl), "dt": (dt, bl), "A": (A, {}), "B": (B, bl), "C": (C, bl), "D": (D, {}),
         "dt_bias": (dt_bias, {}), "initial_state": (s0, b_)},
        {"y": (y, bl), "final_state": (s, b_)}, time_repeats)


def _offsets(lengths: list[int]) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)


def packed_scan_case(dtype, lengths, h, p, gr, n, chunk, *, d_hdim=False, gen, time_repeats=0) -> Case:
    """s sequences of ``lengths`` end to end; the reference is the recurrence run on each alone."""
    total, s = sum(lengths), len(lengths)
    x = _act(torch.randn(1, total, h, p, generator=gen), dtype)
    dt = _act(torch.randn(1, total, h, generator=gen) * 0.5, dtype)
    A = _decay(h, gen)
    B = _act(torch.randn(1, total, gr, n, generator=gen), dtype)
    C = _act(torch.randn(1, total, gr, n, generator=gen), dtype)
    D = torch.randn(h, p, generator=gen) if d_hdim else torch.randn(h, generator=gen)
    dt_bias = _dt_bias(h, gen)
    s0 = torch.randn(s, h, p, n, generator=gen) * 0.5
    cu = _offsets(lengths)
    y, final = reference.ssd_sequential_packed(*_f64([x, dt, A, B, C, D, dt_bias]), cu_seqlens=cu,
                                               initial_states=s0.double())
    tl, sb = {1: "l"}, {0: "b"}
    return _case(
        f"SsdChunkScanPacked-{dtype}-s{s}T{total}h{h}p{p}g{gr}n{n}Q{chunk}" + ("-Dhp" if d_hdim else ""),
        "SsdChunkScanPacked", dtype, {"chunk_size": chunk, "dt_softplus": 1, "dt_min": 0.0, "dt_max": math.inf},
        {"x": (x, tl), "dt": (dt, tl), "A": (A, {}), "B": (B, tl), "C": (C, tl), "D": (D, {}),
         "dt_bias": (dt_bias, {}), "initial_states": (s0, sb), "cu_seqlens": (cu, {0: "bp1"})},
        {"y": (y, tl), "final_states": (final, sb)}, time_repeats)


def packed_conv_case(dtype, lengths, d, k, silu, *, gen, time_repeats=0) -> Case:
    total, s = sum(lengths), len(lengths)
    x = _act(torch.randn(1, total, d, generator=gen), dtype)
    w = torch.randn(d, k, generator=gen) * 0.5
    bias = torch.randn(d, generator=gen)
    states = torch.randn(s, d, k - 1, generator=gen)
    cu = _offsets(lengths)
    y, new = reference.causal_conv1d_sequential_packed(*_f64([x, w, bias, states]), cu, silu=bool(silu))
    tl, sb = {1: "l"}, {0: "b"}
    return _case(
        f"CausalConv1dPacked-{dtype}-s{s}T{total}d{d}k{k}-silu{silu}", "CausalConv1dPacked", dtype, {"silu": silu},
        {"x": (x, tl), "weight": (w, {}), "bias": (bias, {}), "conv_states": (states, sb),
         "cu_seqlens": (cu, {0: "bp1"})},
        {"y": (y, tl), "conv_states_out": (new, sb)}, time_repeats)


def step_case(dtype, b, h, p, gr, n, *, d_hdim=False, dt_min=0.0, dt_max=math.inf, gen, time_repeats=0) -> Case:
    state = torch.randn(b, h, p, n, generator=gen) * 0.5
    x = _act(torch.randn(b, h, p, generator=gen), dtype)
    dt = _act(torch.randn(b, h, generator=gen) * 0.5, dtype)
    A = _decay(h, gen)
    B = _act(torch.randn(b, gr, n, generator=gen), dtype)
    C = _act(torch.randn(b, gr, n, generator=gen), dtype)
    D = torch.randn(h, p, generator=gen) if d_hdim else torch.randn(h, generator=gen)
    dt_bias = _dt_bias(h, gen)
    y, new = reference.ssd_step(*_f64([state, x, dt, A, B, C, D, dt_bias]), dt_softplus=True, dt_min=dt_min,
                                dt_max=dt_max)
    bb = {0: "b"}
    return _case(
        f"SsdStateUpdate-{dtype}-b{b}h{h}p{p}g{gr}n{n}" + ("-Dhp" if d_hdim else "") +
        ("-clamp" if dt_min > 0 or dt_max < math.inf else ""),
        "SsdStateUpdate", dtype, {"dt_softplus": 1, "dt_min": dt_min, "dt_max": dt_max},
        {"state": (state, bb), "x": (x, bb), "dt": (dt, bb), "A": (A, {}), "B": (B, bb), "C": (C, bb),
         "D": (D, {}), "dt_bias": (dt_bias, {})},
        {"y": (y, bb), "new_state": (new, bb)}, time_repeats)


def conv_case(dtype, b, l, d, k, silu, *, gen, time_repeats=0) -> Case:
    x = _act(torch.randn(b, l, d, generator=gen), dtype)
    w = torch.randn(d, k, generator=gen) * 0.5
    bias = torch.randn(d, generator=gen)
    state = torch.randn(b, d, k - 1, generator=gen)
    y, new = reference.causal_conv1d(*_f64([x, w, bias, state]), silu=bool(silu))
    bl = {0: "b", 1: "l"}
    return _case(
        f"CausalConv1d-{dtype}-b{b}l{l}d{d}k{k}-silu{silu}", "CausalConv1d", dtype, {"silu": silu},
        {"x": (x, bl), "weight": (w, {}), "bias": (bias, {}), "conv_state": (state, {0: "b"})},
        {"y": (y, bl), "conv_state_out": (new, {0: "b"})}, time_repeats)


def norm_case(dtype, b, l, d, group, *, eps=1e-5, gen, time_repeats=0) -> Case:
    y = _act(torch.randn(b, l, d, generator=gen), dtype)
    z = _act(torch.randn(b, l, d, generator=gen), dtype)
    w = 1.0 + 0.1 * torch.randn(d, generator=gen)
    out = reference.gated_rmsnorm(*_f64([y, z, w]), eps, group)
    bl = {0: "b", 1: "l"}
    return _case(
        f"GatedRmsNorm-{dtype}-b{b}l{l}d{d}group{group}", "GatedRmsNorm", dtype, {"eps": eps, "group_size": group},
        {"y": (y, bl), "z": (z, bl), "weight": (w, {})}, {"out": (out, bl)}, time_repeats)


def all_cases(seed: int, *, timed: bool) -> list[Case]:
    """Every plugin, every I/O dtype; shapes cover l = 1, l not a multiple of Q, l < k-1, groups > 1, D [h,p], the
    dt clamp, dt_softplus off, and Mamba-2 130m-sized layers (which take the chunked tensor-core path); packed:
    boundaries inside chunks, sequences shorter than a chunk and than the conv width, length 1 among long ones."""
    gen = torch.Generator().manual_seed(seed)
    reps = 50 if timed else 0
    cases = []
    for dt in DTYPES:
        big = dt == "bf16"  # one timed, model-sized case per plugin
        cases += [
            scan_case(dt, 2, 1, 4, 16, 1, 16, 64, gen=gen),
            scan_case(dt, 2, 37, 8, 16, 2, 32, 16, d_hdim=True, dt_min=0.001, dt_max=0.1, gen=gen),
            scan_case(dt, 2, 300, 8, 64, 2, 128, 128, gen=gen),
            scan_case(dt, 1, 1000, 8, 64, 1, 128, 256, softplus=0, gen=gen),
            scan_case(dt, 2, 512, 24, 64, 1, 128, 256, gen=gen, time_repeats=reps if big else 0),
            step_case(dt, 3, 8, 16, 2, 32, d_hdim=True, dt_min=0.001, dt_max=0.1, gen=gen),
            step_case(dt, 16, 24, 64, 1, 128, gen=gen, time_repeats=reps if big else 0),
            conv_case(dt, 2, 1, 64, 4, 1, gen=gen),
            conv_case(dt, 2, 2, 64, 4, 0, gen=gen),
            conv_case(dt, 2, 50, 1792, 4, 1, gen=gen, time_repeats=reps if big else 0),
            norm_case(dt, 2, 5, 128, 32, gen=gen),
            norm_case(dt, 2, 64, 1536, 1536, gen=gen, time_repeats=reps if big else 0),
            # a mean length >= 64 at p 64, n 128 takes the chunked path (f16/bf16), the second one the recurrence
            packed_scan_case(dt, [300, 1, 130, 5, 128, 257, 2], 8, 64, 2, 128, 256, gen=gen,
                             time_repeats=reps if big else 0),
            packed_scan_case(dt, [37, 1, 16, 2], 8, 16, 2, 32, 64, d_hdim=True, gen=gen),
            packed_conv_case(dt, [50, 1, 2, 37, 3], 1792, 4, 1, gen=gen, time_repeats=reps if big else 0),
            packed_conv_case(dt, [1, 1, 1], 64, 4, 0, gen=gen),
        ]
    return cases


def _wire(t: torch.Tensor, dtype: str) -> np.ndarray:
    if dtype == "i32":
        return t.to(torch.int32).contiguous().numpy()
    t = t.to(DTYPES[dtype]).contiguous()
    return (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy()


def _dims(t: Tensor) -> str:
    return " ".join(f"{t.dynamic[i]}={e}" if i in t.dynamic else str(e) for i, e in enumerate(t.value.shape))


def write_case(case: Case, root: Path) -> Path:
    """The case directory for ``ssd_plugin_harness run``: case.txt and one raw file per input."""
    d = root / case.name
    d.mkdir(parents=True, exist_ok=True)
    lines = [f"plugin {case.plugin}"]
    lines += [f"attr {n} {ty} {v}" for n, ty, v in case.attrs]
    for t in case.inputs:
        _wire(t.value, t.dtype).tofile(d / f"{t.name}.bin")
        lines.append(f"input {t.name} {t.dtype} {_dims(t)} {t.name}.bin")
    lines += [f"output {t.name} {t.dtype} {_dims(t)} {t.name}.out.bin" for t in case.outputs]
    if case.time_repeats:
        lines.append(f"time {case.time_repeats}")
    (d / "case.txt").write_text("\n".join(lines) + "\n")
    return d


def read_output(case_dir: Path, t: Tensor) -> torch.Tensor:
    raw = np.fromfile(case_dir / f"{t.name}.out.bin", dtype=np.int16 if t.dtype == "bf16" else
                      {"f32": np.float32, "f16": np.float16}[t.dtype])
    out = torch.from_numpy(raw)
    if t.dtype == "bf16":
        out = out.view(torch.bfloat16)
    return out.reshape(t.value.shape)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ in float64; NaN (a poisoned element left unwritten, or a NaN result) gives NaN."""
    out, ref = out.double(), ref.double()
    if not torch.isfinite(out).all():
        return float("nan")
    return float((out - ref).norm() / ref.norm())
