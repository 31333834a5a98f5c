"""Triton kernels for the SSD ops (``ssd_scan``, ``ssd_step``, ``ssd_scan_packed``), registered as their CUDA implementations.

Importing this package does not import Triton (``import ssd_deploy`` must work without it); ``register()`` does, and
says through its return value why it registered nothing when Triton is missing. The kernels live in ``scan``
(prefill, chunked; packed too) and ``step`` (decode); ``NOTES.md`` beside this file records their design and measurements.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import NamedTuple

OPS = ("ssd_scan", "ssd_step", "ssd_scan_packed")
_registered: set[str] = set()  # devices register() attached the kernels to


class Registration(NamedTuple):
    registered: bool
    reason: str

    def __bool__(self) -> bool:
        return self.registered


def register(device: str = "cuda") -> Registration:
    """Make ``torch.ops.ssd_deploy.ssd_scan`` / ``ssd_step`` / ``ssd_scan_packed`` run the Triton kernels on
    ``device`` tensors.

    Safe to call more than once (the last call wins) and without Triton (then nothing changes). ``device`` is "cuda"
    but for tests: with TRITON_INTERPRET=1 set before Triton is imported, "cpu" runs the kernels in the interpreter.
    """
    try:
        import triton  # noqa: F401  (the import is the check)
    except ImportError as e:
        return Registration(False, f"triton is not importable ({e}); the ops keep their reference implementation")
    import torch

    from .. import ops  # noqa: F401  (defines the ops before kernels are attached to them)
    from .scan import ssd_scan, ssd_scan_packed
    from .step import ssd_step

    # The launchers take the ops' arguments in the ops' order and names (plus keyword-only extras).
    torch.library.register_kernel(f"{ops.NAMESPACE}::ssd_scan", device, ssd_scan)
    torch.library.register_kernel(f"{ops.NAMESPACE}::ssd_step", device, ssd_step)
    torch.library.register_kernel(f"{ops.NAMESPACE}::ssd_scan_packed", device, ssd_scan_packed)
    _registered.add(device)
    return Registration(True, f"Triton kernels registered for {', '.join(OPS)} on {device}")


@contextmanager
def disabled(device: str = "cuda"):
    """The ops run their PyTorch listings on ``device`` inside this block, even after ``register()``: one process
    can then time PyTorch eager and the Triton kernels side by side."""
    with ExitStack() as stack:
        if device in _registered:  # set_kernel_enabled warns about a kernel that was never registered
            from .. import ops

            for name in OPS:
                stack.enter_context(getattr(ops, name).set_kernel_enabled(device, False))
        yield
