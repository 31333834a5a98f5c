"""Triton kernels for the ops (``ssd_scan``, ``ssd_scan_packed``, ``ssd_step``, ``causal_conv1d``,
``causal_conv1d_packed``, ``gated_rmsnorm``), registered as their CUDA implementations; the block's residual add +
RMSNorm, the in-place decode step and the decode step's norms folded into its projections, which the model calls
through ``add_rmsnorm``, ``decode_step_`` and ``norm_gemv``.

Importing this package does not import Triton (``import ssd_deploy`` must work without it); ``register()`` does, and
says through its return value why it registered nothing when Triton is missing. The kernels live in ``scan``
(prefill, chunked; packed too), ``step`` (decode), ``conv``, ``conv_packed``, ``norm``, ``decode`` (the in-place
decode of a layer's conv and SSM step) and ``gemv`` (norm + projection of a decode step); ``NOTES.md`` beside this
file records their design and measurements.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import NamedTuple

OPS = ("ssd_scan", "ssd_step", "ssd_scan_packed", "causal_conv1d", "causal_conv1d_packed", "gated_rmsnorm")
_registered: set[str] = set()  # devices register() attached the kernels to
_disabled: dict[str, set[str]] = {}  # device: the names inside a disabled() block (ops, "add_rmsnorm", "decode_...")
OPT_IN = ("decode_gemv",)  # off unless an enabled() block names them
_opted_in: dict[str, set[str]] = {}  # device: the names inside an enabled() block


class Registration(NamedTuple):
    registered: bool
    reason: str

    def __bool__(self) -> bool:
        return self.registered


def register(device: str = "cuda") -> Registration:
    """Make the ``torch.ops.ssd_deploy`` ops (``OPS``) run the Triton kernels on ``device`` tensors.

    Safe to call more than once (the last call wins) and without Triton (then nothing changes). ``device`` is "cuda"
    but for tests: with TRITON_INTERPRET=1 set before Triton is imported, "cpu" runs the kernels in the interpreter.
    """
    try:
        import triton  # noqa: F401  (the import is the check)
    except ImportError as e:
        return Registration(False, f"triton is not importable ({e}); the ops keep their reference implementation")
    import torch

    from .. import ops  # noqa: F401  (defines the ops before kernels are attached to them)
    from .conv import causal_conv1d
    from .conv_packed import causal_conv1d_packed
    from .norm import gated_rmsnorm
    from .scan import ssd_scan, ssd_scan_packed
    from .step import ssd_step

    # The launchers take the ops' arguments in the ops' order and names (plus keyword-only extras).
    for name, fn in (("ssd_scan", ssd_scan), ("ssd_step", ssd_step), ("ssd_scan_packed", ssd_scan_packed),
                     ("causal_conv1d", causal_conv1d), ("causal_conv1d_packed", causal_conv1d_packed),
                     ("gated_rmsnorm", gated_rmsnorm)):
        torch.library.register_kernel(f"{ops.NAMESPACE}::{name}", device, fn)
    _registered.add(device)
    return Registration(True, f"Triton kernels registered for {', '.join(OPS)} on {device}")


@contextmanager
def disabled(device: str = "cuda", names: tuple[str, ...] = (*OPS, "add_rmsnorm")):
    """The ops ``names`` (default: all, and the residual add + RMSNorm) run their PyTorch listings on ``device``
    inside this block, even after ``register()``: one process can then time PyTorch eager and the Triton kernels
    side by side, or one kernel's share of a model. The in-place decode (``decode_step_``) counts as
    ``causal_conv1d`` and ``ssd_step``: disabling either disables it; the name ``decode_fused`` keeps it but in
    two launches instead of one (``decode.py``). The decode step's norms folded into its projections
    (``norm_gemv_enabled``, opt-in: ``enabled()``) count as ``add_rmsnorm`` and ``gated_rmsnorm``; the name
    ``decode_gemv`` turns off only the folding (the step then runs the norms and cuBLAS's projections, five
    launches per layer); ``decode_pdl``
    launches those kernels plainly instead of as programmatic dependent launches (``_pdl``)."""
    with ExitStack() as stack:
        if device in _registered:  # set_kernel_enabled warns about a kernel that was never registered
            from .. import ops

            for name in OPS:
                if name in names:
                    stack.enter_context(getattr(ops, name).set_kernel_enabled(device, False))
        stack.enter_context(_named(_disabled, device, names))
        yield


def enabled(device: str = "cuda", names: tuple[str, ...] = OPT_IN):
    """The opt-in kernels ``names`` (``OPT_IN``) run inside this block on ``device`` (where ``register()`` attached
    the kernels and no ``disabled()`` block covers them)."""
    return _named(_opted_in, device, names)


@contextmanager
def _named(registry: dict[str, set[str]], device: str, names: tuple[str, ...]):
    """``names`` in ``registry[device]`` for the block; names an outer block already holds stay when it ends."""
    added = set(names) - registry.setdefault(device, set())
    registry[device] |= added
    try:
        yield
    finally:
        registry[device] -= added


def _enabled(device: str, *names: str) -> bool:
    return device in _registered and not _disabled.get(device, set()) & set(names)


def add_rmsnorm(residual, delta, weight, eps):
    """The Triton residual add + RMSNorm (``norm.add_rmsnorm``) where ``register()`` attached the kernels to the
    residual's device and no ``disabled()`` block is open; None otherwise (the caller runs its listing). Not an op:
    export traces the listing, and every runtime fuses the add and the norm on its own."""
    if not _enabled(residual.device.type, "add_rmsnorm"):
        return None
    from .norm import add_rmsnorm as kernel

    return kernel(residual, delta, weight, eps)


def norm_gemv_enabled(device: str, batch: int) -> bool:
    """Whether a CUDA-graph decode step of ``batch`` rows on ``device`` folds its norms into the projections
    (``gemv.norm_gemv``: three launches per layer instead of five, the model's ``forward(in_place=True)``): OPT-IN,
    inside an ``enabled()`` block naming ``decode_gemv`` (it measured slower than the norms and cuBLAS's
    projections apart on the H200, ``NOTES.md``), where ``register()`` attached the kernels, for batches up to
    ``gemv.MAX_BATCH``, and unless a ``disabled()`` block covers ``decode_gemv`` or either norm it replaces
    (``add_rmsnorm``, ``gated_rmsnorm``)."""
    if "decode_gemv" not in _opted_in.get(device, set()) \
            or not _enabled(device, "decode_gemv", "add_rmsnorm", "gated_rmsnorm"):
        return False
    from .gemv import MAX_BATCH

    return batch <= MAX_BATCH


def norm_gemv(x, norm_weight, eps, weight, bias=None, **kwargs):
    """The RMSNorm (or gated RMSNorm) + projection (+ residual add) of a decode step (``gemv.norm_gemv``, same
    arguments); callers check ``norm_gemv_enabled`` first. Not an op: export traces the model's listings."""
    from .gemv import norm_gemv as kernel

    return kernel(x, norm_weight, eps, weight, bias, pdl=_pdl(x), **kwargs)


def decode_step_(xBC, dt, conv_state, ssm_state, *args, **kwargs):
    """The in-place decode of a layer's conv and SSM step (``decode.decode_step_``, same arguments) where
    ``register()`` attached the kernels to the device and no ``disabled()`` block covers ``causal_conv1d`` or
    ``ssd_step``: y [b, h, p], the states rewritten. None otherwise (the caller runs the ops and copies)."""
    device = xBC.device.type
    if not _enabled(device, "causal_conv1d", "ssd_step"):
        return None
    from .decode import decode_step_ as kernels

    return kernels(xBC, dt, conv_state, ssm_state, *args, fused=_enabled(device, "decode_fused"), pdl=_pdl(xBC),
                   **kwargs)


def _pdl(t) -> bool:
    """Whether the decode step's kernels (``norm_gemv``, the fused ``decode_step_``) launch as programmatic
    dependent launches (``common.dependent_launch``): part of the opt-in folded step (``decode_gemv`` in an
    ``enabled()`` block; the default step launches plainly, as measured before), on CUDA devices of compute
    capability 9 (Hopper) and later, with a Triton that has it, unless a ``disabled()`` block covers
    ``decode_pdl``."""
    import torch

    from .common import HAVE_PDL

    return HAVE_PDL and t.is_cuda and "decode_gemv" in _opted_in.get(t.device.type, set()) \
        and _enabled(t.device.type, "decode_pdl") and torch.cuda.get_device_capability(t.device)[0] >= 9
