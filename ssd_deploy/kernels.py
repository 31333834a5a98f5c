"""The ssd_kernels CUDA library (``plugins/kernels``) from Python, through ctypes.

``ssd_scan``, ``ssd_step``, ``causal_conv1d``, ``gated_rmsnorm`` and the packed ``ssd_scan_packed`` and
``causal_conv1d_packed`` take torch CUDA tensors in the layouts and
dtypes of the op contract (docs/op-contracts.md) and have the signatures of the reference listings (``ssd/reference.py``),
plus a keyword-only ``out`` for preallocated outputs (CUDA graphs; ``ssd_step(..., out=(y, state))`` updates the
state in place). Every argument is checked before the library is loaded or CUDA is touched: a mistake raises
``ValueError`` naming the tensor. The library is found through ``SSD_DEPLOY_KERNELS_LIB``, else where ``build()``
puts it: ``plugins/build/`` in a source tree, else a user cache directory (``~/.cache/ssd-deploy/kernels-VERSION``).
The CMake sources ship inside the package (``ssd_deploy/plugins_src``, a symlink to ``plugins/`` in the source tree,
copied by ``pip install``), so an installed package builds its kernels too.
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import shutil
import re
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from .errors import UserError
from .plugin_contracts import PLUGINS_DIR  # the CMake project (plugins/), in a source tree or installed
from .interface import DTYPES

ENV_LIB = "SSD_DEPLOY_KERNELS_LIB"
SOURCE_TREE = PLUGINS_DIR == Path(__file__).resolve().parent.parent / "plugins"
LIB_NAME = "libssd_kernels.so"
TRT_PLUGINS_GLOB = "libssd_trt_plugins*.so"
TRT_HEADERS_HINT = ("put NVIDIA/TensorRT's include/ in third_party/TensorRT/include of a source tree, or point "
                    "TensorRT_INCLUDE_DIR (or TensorRT_ROOT) at it")
# the ONNX Runtime custom-op library (plugins/ort_custom_ops): the trt flavor's plugin nodes on ORT's CUDA provider
ENV_ORT_OPS = "SSD_DEPLOY_ORT_CUSTOM_OPS"
ORT_OPS_LIB_NAME = "libssd_ort_custom_ops.so"
ORT_HEADERS_HINT = ("copy microsoft/onnxruntime's include/onnxruntime/core/session/*.h into "
                    "third_party/onnxruntime/include of a source tree, or point OnnxRuntime_INCLUDE_DIR at them")


def _cache_dir() -> Path:
    from . import __version__

    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "ssd-deploy" / f"kernels-{__version__}"


# where build() puts the library by default: beside the sources in a source tree, else a user cache (an installed
# package's directory is often not writable, and is replaced by every upgrade)
DEFAULT_BUILD_DIR = PLUGINS_DIR / "build" if SOURCE_TREE else _cache_dir()
MAX_STATE_SIZE = 512  # n beyond this is refused by the library (kRecurrentMaxN)
MAX_CONV_WIDTH = 8  # kMaxK of causal_conv1d.cu (Mamba-2 uses 4)

_DTYPE_CODES = {d.torch: d.kernel_code for d in DTYPES.values()}  # the C ABI's dtype argument
SYMBOLS = ("ssd_scan_workspace_size", "ssd_scan", "ssd_scan_packed_workspace_size", "ssd_scan_packed", "ssd_step",
           "ssd_causal_conv1d", "ssd_causal_conv1d_packed_workspace_size", "ssd_causal_conv1d_packed",
           "ssd_gated_rmsnorm", "ssd_error_string")


class _DtParams(ctypes.Structure):
    _fields_ = [("dt_softplus", ctypes.c_int), ("dt_min", ctypes.c_float), ("dt_max", ctypes.c_float)]


# --------------------------------------------------------------------------------------------------- the library

def _built(env_var: str, name: str, what: str, how: str) -> Path:
    """A library ``build_all`` makes: ``$env_var`` when set, else ``DEFAULT_BUILD_DIR/name``; refused when absent."""
    env = os.environ.get(env_var)
    if env:
        path = Path(env)
        if not path.is_file():
            raise UserError(f"{env_var}={env} is not a file")
        return path
    path = DEFAULT_BUILD_DIR / name
    if not path.is_file():
        raise UserError(f"{what} not built: no {path} (and {env_var} is unset); run {how}")
    return path


def library_path() -> Path:
    """The shared library to load: ``$SSD_DEPLOY_KERNELS_LIB``, else ``DEFAULT_BUILD_DIR/libssd_kernels.so``."""
    return _built(ENV_LIB, LIB_NAME, "the CUDA kernels are", "`ssd-deploy plugins build`")


def ort_custom_ops_path() -> Path:
    """The ONNX Runtime custom-op library: ``$SSD_DEPLOY_ORT_CUSTOM_OPS``, else where ``build_all`` puts it."""
    return _built(ENV_ORT_OPS, ORT_OPS_LIB_NAME, "the ONNX Runtime custom-op library is",
                  f"`ssd-deploy plugins build` with ONNX Runtime headers ({ORT_HEADERS_HINT})")


@functools.lru_cache(maxsize=None)
def _load(path: str) -> ctypes.CDLL:
    lib = ctypes.CDLL(path)
    vp, i, f, sz = ctypes.c_void_p, ctypes.c_int, ctypes.c_float, ctypes.c_size_t
    protos = {
        "ssd_scan_workspace_size": (sz, [i] * 7 + [i]),
        "ssd_scan": (i, [vp] * 6 + [i] + [vp] * 4 + [i] * 7 + [_DtParams, i, vp, sz, vp]),
        "ssd_scan_packed_workspace_size": (sz, [i] * 7 + [i]),
        "ssd_scan_packed": (i, [vp] * 6 + [i] + [vp] * 5 + [i] * 7 + [_DtParams, i, vp, sz, vp]),
        "ssd_step": (i, [vp] * 7 + [i] + [vp] * 3 + [i] * 5 + [_DtParams, i, vp]),
        "ssd_causal_conv1d": (i, [vp] * 6 + [i] * 6 + [vp]),
        "ssd_causal_conv1d_packed_workspace_size": (sz, [i]),
        "ssd_causal_conv1d_packed": (i, [vp] * 7 + [i] * 6 + [vp, sz, vp]),
        "ssd_gated_rmsnorm": (i, [vp] * 4 + [i] * 3 + [f, i, vp]),
        "ssd_error_string": (ctypes.c_char_p, [i]),
    }
    for name, (restype, argtypes) in protos.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


def _lib() -> ctypes.CDLL:
    return _load(str(library_path()))


def _call(name: str, device: torch.device, *args) -> None:
    lib = _lib()
    with torch.cuda.device(device):
        stream = torch.cuda.current_stream(device).cuda_stream
        rc = getattr(lib, name)(*args, stream)
    if rc != 0:
        raise RuntimeError(f"{name} failed ({rc}): {lib.ssd_error_string(rc).decode()}")


def _ptr(t: Optional[Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


# --------------------------------------------------------------------------------------------------- the checks

def _need(name: str, t, shape: tuple, dtype: Optional[torch.dtype] = None) -> None:
    if not isinstance(t, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(shape)}")
    if dtype is not None and t.dtype != dtype:
        raise ValueError(f"{name} has dtype {t.dtype}, expected {dtype}")


def _need_rank(name: str, t, rank: int, layout: str) -> None:
    if not isinstance(t, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != rank:
        raise ValueError(f"{name} must be {layout}, got shape {tuple(t.shape)}")


def _io_dtype(name: str, t: Tensor) -> torch.dtype:
    if t.dtype not in _DTYPE_CODES:
        raise ValueError(f"{name} has dtype {t.dtype}; the kernels take float32, float16 or bfloat16")
    return t.dtype


def _placement(**tensors: Optional[Tensor]) -> torch.device:
    """Contiguous, all on one CUDA device (checked last, so that shape and dtype mistakes are named first)."""
    present = {k: t for k, t in tensors.items() if t is not None}
    for name, t in present.items():
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous (dense row-major)")
    for name, t in present.items():
        if t.device.type != "cuda":
            raise ValueError(f"{name} is on {t.device}; the CUDA kernels take CUDA tensors")
    devices = {t.device for t in present.values()}
    if len(devices) > 1:
        raise ValueError(f"tensors on different devices: {sorted(str(d) for d in devices)}")
    return devices.pop()


def _dt_params(dt_softplus: bool, dt_min: float, dt_max: float) -> _DtParams:
    if math.isnan(dt_min) or math.isnan(dt_max):
        raise ValueError("dt_min and dt_max must be numbers")
    return _DtParams(int(bool(dt_softplus)), float(dt_min), float(dt_max))


def _ssd_params(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, dt_bias: Tensor,
                tokens: tuple) -> tuple[int, int, int, int, int]:
    """Checks the tensors shared by scan and step (``tokens`` = (b, l) or (b,)); returns (h, p, g, n, D_has_hdim)."""
    h, p = x.shape[-2:]
    g, n = B.shape[-2:]
    dtype = _io_dtype("x", x)
    _need("dt", dt, (*tokens, h), dtype)
    _need("B", B, (*tokens, g, n), dtype)
    _need("C", C, (*tokens, g, n), dtype)
    _need("A", A, (h,), torch.float32)
    _need("dt_bias", dt_bias, (h,), torch.float32)
    if not isinstance(D, Tensor) or D.dim() not in (1, 2):
        raise ValueError(f"D must be [h] or [h, p], got {getattr(D, 'shape', type(D).__name__)}")
    _need("D", D, (h,) if D.dim() == 1 else (h, p), torch.float32)
    if g < 1 or h % g:
        raise ValueError(f"heads ({h}) must be a multiple of groups ({g})")
    if not 1 <= n <= MAX_STATE_SIZE:
        raise ValueError(f"state size n = {n} is outside what the kernels support (1..{MAX_STATE_SIZE})")
    if min(h, p) < 1 or 0 in tokens:
        raise ValueError(f"empty tensors: x has shape {tuple(x.shape)}")
    return h, p, g, n, int(D.dim() == 2)


def _check_out(out, shapes: tuple, dtypes: tuple, names: tuple) -> dict:
    """Preallocated outputs, by name (empty when ``out`` is None), checked like the inputs."""
    if out is None:
        return {}
    if not isinstance(out, (tuple, list)) or len(out) != len(shapes):
        raise ValueError(f"out must be a tuple ({', '.join(names)})")
    for name, t, s, d in zip(names, out, shapes, dtypes):
        _need(name, t, s, d)
    return dict(zip(names, out))


def _alloc(out, shapes: tuple, dtypes: tuple, device: torch.device) -> tuple:
    if out is not None:
        return tuple(out)
    return tuple(torch.empty(s, dtype=d, device=device) for s, d in zip(shapes, dtypes))


# --------------------------------------------------------------------------------------------------- the ops

def _sequences(cu_seqlens, total: int) -> int:
    """The number of sequences n of cu_seqlens [n+1], int32 (what the kernels read) or int64 (converted on its
    device, without a host sync). The values are the caller's promise (0 = cu[0] < ... < cu[n] = total): reading
    them would stop the stream; the kernels clamp them into the token axis rather than follow them out of it."""
    _need_rank("cu_seqlens", cu_seqlens, 1, "[n + 1]")
    if cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"cu_seqlens has dtype {cu_seqlens.dtype}, expected int32 or int64")
    if cu_seqlens.shape[0] < 2 or total < 1:
        raise ValueError(f"empty packed batch: cu_seqlens {tuple(cu_seqlens.shape)}, {total} tokens")
    return cu_seqlens.shape[0] - 1


def _scan(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, dt_bias: Tensor,
          initial_state: Optional[Tensor], cu_seqlens: Optional[Tensor], chunk_size: int, dt_softplus: bool,
          dt_min: float, dt_max: float, out: Optional[tuple]) -> tuple[Tensor, Tensor]:
    """ssd_scan (cu_seqlens None: b rows of l tokens) or ssd_scan_packed (x [1, T, ...], states [n, ...])."""
    _need_rank("x", x, 4, "[b, l, h, p]" if cu_seqlens is None else "[1, T, h, p]")
    _need_rank("B", B, 4, "[b, l, g, n]" if cu_seqlens is None else "[1, T, g, n]")
    b, l, h, p = x.shape
    h, p, g, n, d_hdim = _ssd_params(x, dt, A, B, C, D, dt_bias, (b, l))
    state_name = "initial_state"
    rows = b  # states: one per batch row, or per packed sequence
    if cu_seqlens is not None:
        if b != 1:
            raise ValueError(f"packed x must be [1, T, h, p], got {tuple(x.shape)}")
        state_name = "initial_states"
        rows = _sequences(cu_seqlens, l)
    if initial_state is not None:
        _need(state_name, initial_state, (rows, h, p, n), torch.float32)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    dtp = _dt_params(dt_softplus, dt_min, dt_max)
    shapes, dtypes = ((b, l, h, p), (rows, h, p, n)), (x.dtype, torch.float32)
    outs = _check_out(out, shapes, dtypes, ("y", "final_state" if cu_seqlens is None else "final_states"))
    device = _placement(x=x, dt=dt, A=A, B=B, C=C, D=D, dt_bias=dt_bias, cu_seqlens=cu_seqlens,
                        **{state_name: initial_state}, **outs)
    y, final = _alloc(out, shapes, dtypes, device)

    code = _DTYPE_CODES[x.dtype]
    common = (_ptr(x), _ptr(dt), _ptr(A), _ptr(B), _ptr(C), _ptr(D), d_hdim, _ptr(dt_bias), _ptr(initial_state))
    if cu_seqlens is None:
        ws_bytes = _lib().ssd_scan_workspace_size(b, l, h, p, g, n, chunk_size, code)
        ws = torch.empty(ws_bytes, dtype=torch.uint8, device=device) if ws_bytes else None
        _call("ssd_scan", device, *common, _ptr(y), _ptr(final), b, l, h, p, g, n, chunk_size, dtp, code, _ptr(ws),
              ws_bytes)
    else:
        cu = cu_seqlens.to(torch.int32)
        ws_bytes = _lib().ssd_scan_packed_workspace_size(rows, l, h, p, g, n, chunk_size, code)
        ws = torch.empty(ws_bytes, dtype=torch.uint8, device=device) if ws_bytes else None
        _call("ssd_scan_packed", device, *common, _ptr(cu), _ptr(y), _ptr(final), rows, l, h, p, g, n, chunk_size,
              dtp, code, _ptr(ws), ws_bytes)
    return y, final


def ssd_scan(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, dt_bias: Tensor,
             initial_state: Optional[Tensor] = None, *, chunk_size: int = 256, dt_softplus: bool = True,
             dt_min: float = 0.0, dt_max: float = math.inf, out: Optional[tuple] = None) -> tuple[Tensor, Tensor]:
    """Prefill: (y [b,l,h,p] in x's dtype, final_state [b,h,p,n] float32). ``out`` = (y, final_state)."""
    return _scan(x, dt, A, B, C, D, dt_bias, initial_state, None, chunk_size, dt_softplus, dt_min, dt_max, out)


def ssd_scan_packed(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, dt_bias: Tensor,
                    initial_states: Optional[Tensor], cu_seqlens: Tensor, *, chunk_size: int = 256,
                    dt_softplus: bool = True, dt_min: float = 0.0, dt_max: float = math.inf,
                    out: Optional[tuple] = None) -> tuple[Tensor, Tensor]:
    """Packed prefill (docs/op-contracts.md, "Packed sequences"): x [1,T,h,p] holds n sequences cut by
    cu_seqlens [n+1] (on x's device); returns (y [1,T,h,p], final_states [n,h,p,n] float32).
    ``initial_states`` None means zeros; ``out`` = (y, final_states)."""
    return _scan(x, dt, A, B, C, D, dt_bias, initial_states, cu_seqlens, chunk_size, dt_softplus, dt_min, dt_max,
                 out)


def ssd_step(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, dt_bias: Tensor, *,
             dt_softplus: bool = True, dt_min: float = 0.0, dt_max: float = math.inf,
             out: Optional[tuple] = None) -> tuple[Tensor, Tensor]:
    """Decode: (y [b,h,p], new state [b,h,p,n] float32). ``out=(y, state)`` updates ``state`` in place."""
    _need_rank("x", x, 3, "[b, h, p]")
    _need_rank("B", B, 3, "[b, g, n]")
    b, h, p = x.shape
    h, p, g, n, d_hdim = _ssd_params(x, dt, A, B, C, D, dt_bias, (b,))
    _need("state", state, (b, h, p, n), torch.float32)
    dtp = _dt_params(dt_softplus, dt_min, dt_max)
    shapes, dtypes = ((b, h, p), (b, h, p, n)), (x.dtype, torch.float32)
    outs = _check_out(out, shapes, dtypes, ("y", "new_state"))
    device = _placement(state=state, x=x, dt=dt, A=A, B=B, C=C, D=D, dt_bias=dt_bias, **outs)
    y, new = _alloc(out, shapes, dtypes, device)
    _call("ssd_step", device, _ptr(state), _ptr(x), _ptr(dt), _ptr(A), _ptr(B), _ptr(C), _ptr(D), d_hdim,
          _ptr(dt_bias), _ptr(y), _ptr(new), b, h, p, g, n, dtp, _DTYPE_CODES[x.dtype])
    return y, new


def _conv(x: Tensor, weight: Tensor, bias: Optional[Tensor], conv_state: Optional[Tensor],
          cu_seqlens: Optional[Tensor], silu: bool, out: Optional[tuple]) -> tuple[Tensor, Tensor]:
    """causal_conv1d (cu_seqlens None) or causal_conv1d_packed (x [1, T, d], states [n, d, k-1])."""
    _need_rank("x", x, 3, "[b, l, d]" if cu_seqlens is None else "[1, T, d]")
    _need_rank("weight", weight, 2, "[d, k]")
    b, l, d = x.shape
    k = weight.shape[1]
    dtype = _io_dtype("x", x)
    _need("weight", weight, (d, k), torch.float32)
    if bias is not None:
        _need("bias", bias, (d,), torch.float32)
    state_name, rows = "conv_state", b
    if cu_seqlens is not None:
        if b != 1:
            raise ValueError(f"packed x must be [1, T, d], got {tuple(x.shape)}")
        state_name = "conv_states"
        rows = _sequences(cu_seqlens, l)
    if conv_state is not None:
        _need(state_name, conv_state, (rows, d, k - 1), torch.float32)
    if not 1 <= k <= MAX_CONV_WIDTH:
        raise ValueError(f"conv width k = {k} is outside what the kernel supports (1..{MAX_CONV_WIDTH})")
    if min(b, l, d) < 1:
        raise ValueError(f"empty tensors: x has shape {tuple(x.shape)}")
    shapes, dtypes = ((b, l, d), (rows, d, k - 1)), (dtype, torch.float32)
    outs = _check_out(out, shapes, dtypes, ("y", "new_conv_state" if cu_seqlens is None else "new_conv_states"))
    device = _placement(x=x, weight=weight, bias=bias, cu_seqlens=cu_seqlens, **{state_name: conv_state}, **outs)
    y, new = _alloc(out, shapes, dtypes, device)
    head = (_ptr(x), _ptr(weight), _ptr(bias), _ptr(conv_state))
    if cu_seqlens is None:
        _call("ssd_causal_conv1d", device, *head, _ptr(y), _ptr(new), b, l, d, k, int(bool(silu)), _DTYPE_CODES[dtype])
    else:
        cu = cu_seqlens.to(torch.int32)
        ws_bytes = _lib().ssd_causal_conv1d_packed_workspace_size(rows)
        ws = torch.empty(ws_bytes, dtype=torch.uint8, device=device)
        _call("ssd_causal_conv1d_packed", device, *head, _ptr(cu), _ptr(y), _ptr(new), rows, l, d, k,
              int(bool(silu)), _DTYPE_CODES[dtype], _ptr(ws), ws_bytes)
    return y, new


def causal_conv1d(x: Tensor, weight: Tensor, bias: Optional[Tensor], conv_state: Optional[Tensor] = None, *,
                  silu: bool = True, out: Optional[tuple] = None) -> tuple[Tensor, Tensor]:
    """Depthwise causal conv: (y [b,l,d] in x's dtype, new conv_state [b,d,k-1] float32)."""
    return _conv(x, weight, bias, conv_state, None, silu, out)


def causal_conv1d_packed(x: Tensor, weight: Tensor, bias: Optional[Tensor], conv_states: Optional[Tensor],
                         cu_seqlens: Tensor, *, silu: bool = True,
                         out: Optional[tuple] = None) -> tuple[Tensor, Tensor]:
    """Packed depthwise causal conv (docs/op-contracts.md, "Packed sequences"): x [1,T,d] holds n sequences cut by
    cu_seqlens [n+1]; returns (y [1,T,d] in x's dtype, new conv_states [n,d,k-1] float32). ``conv_states`` None
    means zeros; ``out=(y, conv_states)`` updates the states in place."""
    return _conv(x, weight, bias, conv_states, cu_seqlens, silu, out)


def gated_rmsnorm(y: Tensor, z: Tensor, weight: Tensor, eps: float, group_size: int, *,
                  out: Optional[Tensor] = None) -> Tensor:
    """rmsnorm(y * silu(z)) per group of ``group_size`` channels; y, z [..., d], weight [d] float32."""
    if not isinstance(y, Tensor) or y.dim() < 1:
        raise ValueError("y must be a tensor [..., d]")
    d = y.shape[-1]
    dtype = _io_dtype("y", y)
    _need("z", z, tuple(y.shape), dtype)
    _need("weight", weight, (d,), torch.float32)
    if not isinstance(group_size, int) or group_size < 1 or d % group_size:
        raise ValueError(f"group_size ({group_size!r}) must be a positive divisor of d ({d})")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    rows = y.numel() // d if d else 0
    if rows < 1:
        raise ValueError(f"empty tensors: y has shape {tuple(y.shape)}")
    if out is not None:
        _need("out", out, tuple(y.shape), dtype)
    device = _placement(y=y, z=z, weight=weight, out=out)
    if out is None:
        out = torch.empty_like(y)
    _call("ssd_gated_rmsnorm", device, _ptr(y), _ptr(z), _ptr(weight), _ptr(out), rows, d, group_size, float(eps),
          _DTYPE_CODES[dtype])
    return out


# --------------------------------------------------------------------------------------------------- the build

def _find_nvcc() -> Optional[str]:
    candidates = [os.environ.get("CUDACXX"), shutil.which("nvcc")]
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home:
            candidates.append(str(Path(home) / "bin" / "nvcc"))
    return next((c for c in candidates if c and Path(c).is_file() and os.access(c, os.X_OK)), None)


def _arch_list(archs) -> str:
    items = [archs] if isinstance(archs, (str, int)) else list(archs)
    parts = [p for a in items for p in str(a).replace(",", ";").split(";") if p.strip()]
    out = [p.strip().lower().removeprefix("sm_").removeprefix("compute_") for p in parts]
    if not out or not all(a.isdigit() for a in out):
        raise UserError(f"architectures must be SM numbers such as 90 or 80;90, got {archs!r}")
    return ";".join(out)


def default_archs() -> str:
    """The architectures plugins/CMakeLists.txt builds by default (its SSD_CUDA_ARCHS), read from the file so that
    the list lives in one place."""
    text = (PLUGINS_DIR / "CMakeLists.txt").read_text()
    found = re.search(r'set\(SSD_CUDA_ARCHS\s+"([0-9;]+)"\s+CACHE', text)
    if not found:
        raise UserError(f"{PLUGINS_DIR / 'CMakeLists.txt'}: no default SSD_CUDA_ARCHS")
    return found.group(1)


def _run(cmd: list, log: Callable[[str], None]) -> list[str]:
    """Runs ``cmd``, handing each output line to ``log`` as it comes; returns the lines."""
    lines = []
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    except OSError as e:
        raise UserError(f"`{cmd[0]}` cannot run ({e})") from None
    with proc:
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            log(lines[-1])
    if proc.returncode != 0:
        tail = "\n".join(lines[-30:])
        raise UserError(f"`{' '.join(map(str, cmd))}` failed (exit {proc.returncode}):\n{tail}")
    return lines


@dataclass(frozen=True)
class Built:
    kernels: Path  # libssd_kernels.so
    trt_plugins: Path | None  # the TensorRT plugin library, where it was built
    trt_status: str  # CMake's word on the plugin library (built, or why not)
    ort_custom_ops: Path | None = None  # the ONNX Runtime custom-op library, where it was built
    ort_status: str = ""  # CMake's word on it


def build_all(build_dir: Optional[os.PathLike] = None, archs: Optional[Iterable] = None,
              log: Callable[[str], None] = lambda line: None) -> Built:
    """Configure and build the CMake project (``PLUGINS_DIR``): ``libssd_kernels.so`` always, the TensorRT plugin
    library where TensorRT headers are found, the ONNX Runtime custom-op library where ONNX Runtime's are. ``log`` gets CMake's and the compiler's lines as they come.

    ``archs`` narrows the SM architectures (e.g. ``["90"]``); by default ``default_archs()``, of which CMake keeps
    those the installed nvcc supports. The list is passed on every run: a build directory configured earlier with
    other architectures never keeps them silently.
    """
    cmake = shutil.which("cmake")
    if cmake is None:
        raise UserError("cmake is not on PATH: install CMake >= 3.24 (for example `pip install cmake`) "
                        "to build the CUDA kernels")
    nvcc = _find_nvcc()
    if nvcc is None:
        raise UserError("nvcc not found (looked at $CUDACXX, PATH, $CUDA_HOME/bin, /usr/local/cuda/bin): "
                        "install the CUDA toolkit to build the CUDA kernels")
    if not (PLUGINS_DIR / "CMakeLists.txt").is_file():
        raise UserError(f"{PLUGINS_DIR}: the kernels' CMake sources are missing from this installation")
    build_dir = Path(build_dir) if build_dir is not None else DEFAULT_BUILD_DIR
    configure = [cmake, "-S", str(PLUGINS_DIR), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
                 f"-DSSD_CUDA_ARCHS={_arch_list(archs) if archs is not None else default_archs()}"]
    if not (build_dir / "CMakeCache.txt").exists():  # compiler and generator are fixed once a build dir exists
        configure.append(f"-DCMAKE_CUDA_COMPILER={nvcc}")
        if shutil.which("ninja"):
            configure += ["-G", "Ninja"]
    lines = _run(configure, log)
    status = [ln for ln in lines if "ssd TensorRT plugins:" in ln]
    ort_status = [ln for ln in lines if "ssd ONNX Runtime custom ops:" in ln]
    _run([cmake, "--build", str(build_dir), "--parallel", str(os.cpu_count() or 2)], log)
    lib = build_dir / LIB_NAME
    if not lib.is_file():
        raise UserError(f"the build finished without producing {lib}")
    trt = next(iter(sorted(build_dir.glob(TRT_PLUGINS_GLOB))), None)
    said = status[-1].split("ssd TensorRT plugins:", 1)[1].strip() if status else "no word from CMake"
    ort = build_dir / ORT_OPS_LIB_NAME
    ort_said = ort_status[-1].split(":", 1)[1].strip() if ort_status else "no word from CMake"
    return Built(lib, trt, said, ort if ort.is_file() else None, ort_said)


def build(build_dir: Optional[os.PathLike] = None, archs: Optional[Iterable] = None) -> Path:
    """``build_all``, returning the path of ``libssd_kernels.so``."""
    return build_all(build_dir, archs).kernels
