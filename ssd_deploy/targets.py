"""Jetson deployment targets: the facts a memory plan needs (docs/jetson.md gives the sources and the reasoning).

Every Jetson module shares one DRAM between CPU and GPU: the engine's weights, the runtime's activations and the
operating system all come out of the same memory, so a plan budgets them against the module's memory less what the
OS takes. ``os_share_gib`` and ``runtime_overhead_mib`` are estimates (headless L4T with the carve-outs the firmware
reserves; a CUDA context with TensorRT's runtime and lazily loaded modules); measure on the device with
``tegrastats`` / ``free -m`` and override them with ``plan --os-share`` / ``--runtime-overhead``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UserError


@dataclass(frozen=True)
class Target:
    name: str
    module: str
    memory_gib: int  # LPDDR5/5X, unified between CPU and GPU
    bandwidth_gbs: float  # DRAM bandwidth: decode reads every weight once per token
    sm: int  # CUDA compute capability as nvcc names it (sm_87, sm_110)
    jetpack: str
    cuda: str
    tensorrt: str  # TensorRT version of that JetPack (the plugin library compiles against its headers)
    os_share_gib: float  # memory the OS and firmware carve-outs take (estimate)
    runtime_overhead_mib: int = 600  # CUDA context + TensorRT runtime (estimate)
    dtypes: tuple[str, ...] = ("fp32", "fp16", "bf16")  # Ampere (sm_87) and Blackwell have bf16 tensor cores


_ORIN = dict(sm=87, jetpack="6.1/6.2", cuda="12.6", tensorrt="10.3")
_THOR = dict(sm=110, jetpack="7.0", cuda="13.0", tensorrt="10.13")

TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("orin-nano-8gb", "Jetson Orin Nano 8GB", 8, 68.0, os_share_gib=1.5, **_ORIN),
    Target("orin-nx-16gb", "Jetson Orin NX 16GB", 16, 102.4, os_share_gib=2.0, **_ORIN),
    Target("agx-orin-32gb", "Jetson AGX Orin 32GB", 32, 204.8, os_share_gib=2.5, **_ORIN),
    Target("agx-orin-64gb", "Jetson AGX Orin 64GB", 64, 204.8, os_share_gib=3.0, **_ORIN),
    Target("agx-thor-128gb", "Jetson AGX Thor (T5000) 128GB", 128, 273.0, os_share_gib=4.0, **_THOR),
)}


def target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise UserError(f"unknown target {name!r}; choose one of {', '.join(TARGETS)}") from None
