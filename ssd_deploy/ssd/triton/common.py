"""What the SSD Triton kernels share: dt processing, dot precision, and the autotuning policy."""

from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl
try:  # Triton >= 3.4; without it no kernel launches as a programmatic dependent launch (HAVE_PDL)
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
    HAVE_PDL = True
except ImportError:
    gdc_launch_dependents = gdc_wait = None
    HAVE_PDL = False

from .. import reference

# Read once, at import: triton itself reads TRITON_INTERPRET when it is imported.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
# Tuning runs every config several times on the first call of each shape; tests and the interpreter (far too slow
# for it) take the first config of each list instead, so the first one is a sound default everywhere.
AUTOTUNE = not INTERPRET and os.environ.get("SSD_DEPLOY_TRITON_AUTOTUNE", "1") != "0"

# Kernels read only constexpr globals; the value is the contract's (softplus(v) = v above it, as mamba_ssm).
SOFTPLUS_THRESHOLD = tl.constexpr(reference.SOFTPLUS_THRESHOLD)


def tuned(configs: list[triton.Config], key: list[str], **options):
    """``triton.autotune`` over ``configs`` on a GPU, else the first config alone (one config is never timed, nor
    pruned). ``options``: more of ``triton.autotune``'s arguments (``prune_configs_by``).

    Only for kernels that write nothing they read: tuning runs a kernel several times on the same arguments."""
    return triton.autotune(configs=configs if AUTOTUNE else configs[:1], key=key, **options)


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 operands must not be rounded to tf32 (Triton's default), or fp32 results miss 1e-5 by far; the
    setting does nothing for 16-bit operands."""
    return "ieee" if dtype == torch.float32 else "tf32"


def on_device(t: torch.Tensor):
    """Launch on the tensor's GPU (Triton launches on the current one); CPU tensors are the interpreter's."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


@triton.jit
def process_dt(dt, dt_bias, dt_min, dt_max, DT_SOFTPLUS: tl.constexpr):
    """dt' = clamp(softplus(dt + dt_bias), dt_min, dt_max) in fp32; the inputs are fp32 already."""
    v = dt + dt_bias
    if DT_SOFTPLUS:
        v = tl.where(v <= SOFTPLUS_THRESHOLD, tl.log(1.0 + tl.exp(v)), v)
    return tl.minimum(tl.maximum(v, dt_min), dt_max)


@triton.jit
def dependent_launch(PDL: tl.constexpr):
    """First thing in a kernel launched with ``launch_pdl`` (programmatic dependent launch, Hopper and later): let
    the next kernel's programs start (they wait in their own call of this), then wait until the previous kernel has
    finished and its writes are visible. What the kernel does before this call may only read what no kernel writes
    (``gemv`` prefetches its weights). Since every program of every such kernel waits, each kernel still finishes
    after all earlier ones: only the launch latency overlaps (docs/performance.md, "Decode with CUDA graphs")."""
    if PDL:
        gdc_launch_dependents()
        gdc_wait()


@triton.jit
def prefetch_l2(ptrs):
    """Asks for the lines at ``ptrs`` to be brought into the L2 (``prefetch.global.L2``: a hint, nothing is loaded
    into registers, no fault on its own). Compiled code only: the interpreter has no inline assembly."""
    tl.inline_asm_elementwise("prefetch.global.L2 [$1];\n\tmov.u32 $0, 0;", "=r,l", [ptrs], dtype=tl.int32,
                              is_pure=False, pack=1)
