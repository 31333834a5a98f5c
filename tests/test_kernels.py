"""The CUDA kernels (plugins/kernels) and their Python loader (ssd_deploy/kernels.py).

On any machine: the library compiles with nvcc for one architecture and exports the C ABI, whose host-side checks
answer without a GPU; the loader rejects bad arguments with ValueError before loading anything. With a GPU
(marker ``gpu``): every kernel against the float64 reference listings on fresh random inputs, outputs poisoned with
NaN first, across dtypes and the contract's edge cases.
"""

from __future__ import annotations

import ctypes
import math
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import rel_err  # NaN for any NaN (an unwritten poisoned element), which fails every tolerance
from ssd_deploy import kernels
from ssd_deploy.errors import UserError
from ssd_deploy.ssd import reference

CUDA = torch.cuda.is_available()
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}


# ------------------------------------------------------------------------------------------- build and C ABI

def _toolchain_missing() -> str:
    if shutil.which("cmake") is None:
        return "cmake is not installed"
    if kernels._find_nvcc() is None:
        return "nvcc is not installed"
    return ""


@pytest.fixture(scope="module")
def built_lib(tmp_path_factory) -> ctypes.CDLL:
    """The library built for one architecture (sm_80) into a temporary folder: CI's compile check."""
    missing = _toolchain_missing()
    if missing:
        pytest.skip(missing)
    path = kernels.build(tmp_path_factory.mktemp("ssd_kernels_build"), archs=["80"])
    return kernels._load(str(path))


def test_library_exports_the_c_abi(built_lib):
    for name in kernels.SYMBOLS:
        assert hasattr(built_lib, name), name


def test_c_abi_host_checks(built_lib):
    """What the C entry points answer before launching anything (no GPU involved)."""
    ws = built_lib.ssd_scan_workspace_size
    b, l, h, p, g, n = 2, 512, 8, 64, 1, 128
    # bf16 at a tile shape: ring of two fp32 states per (b, h), plus counters
    assert ws(b, l, h, p, g, n, 256, 2) >= 2 * b * h * p * n * 4
    assert ws(b, l, h, p, g, n, 256, 0) == 0  # fp32 runs the recurrence: no workspace
    assert ws(b, 8, h, p, g, n, 256, 2) == 0  # a few tokens: recurrence
    assert ws(b, l, h, 48, g, n, 256, 2) == 0  # head dim without a tile
    assert ws(b, l, 6, p, 4, n, 256, 2) == 0  # heads not a multiple of groups
    dtp = kernels._DtParams(1, 0.0, math.inf)
    args = [None] * 6 + [0] + [None] * 4 + [b, l, h, p, g, n, 256, dtp, 2, None, 0, None]
    assert built_lib.ssd_scan(*args) == -1  # null tensors
    assert built_lib.ssd_error_string(-2).decode().startswith("workspace")
    assert built_lib.ssd_causal_conv1d(None, None, None, None, None, None, 1, 1, 8, 4, 1, 2, None) == -1
    assert built_lib.ssd_gated_rmsnorm(None, None, None, None, 1, 8, 3, 1e-5, 2, None) == -1


def test_packed_c_abi_host_checks(built_lib):
    """The packed entry points: workspace sizes for the chunked path whatever the mean length (so that a size for
    the most sequences covers fewer), and argument checks before any launch."""
    ws = built_lib.ssd_scan_packed_workspace_size
    nseq, total, h, p, g, n = 4, 100, 8, 64, 1, 128
    assert ws(nseq, total, h, p, g, n, 256, 2) >= 2 * nseq * h * p * n * 4  # ring per (sequence, head)
    assert ws(nseq, total, h, p, g, n, 256, 0) == 0  # fp32: the recurrence
    assert ws(nseq, total, h, 48, g, n, 256, 1) == 0  # no tile for this head dim
    assert ws(0, total, h, p, g, n, 256, 2) == 0
    assert ws(nseq, total, h, p, g, n, 256, 2) <= ws(2 * nseq, total, h, p, g, n, 256, 2)
    dtp = kernels._DtParams(1, 0.0, math.inf)
    args = [None] * 6 + [0] + [None] * 5 + [nseq, total, h, p, g, n, 256, dtp, 2, None, 0, None]
    assert built_lib.ssd_scan_packed(*args) == -1  # null tensors, cu_seqlens among them
    conv_ws = built_lib.ssd_causal_conv1d_packed_workspace_size
    assert conv_ws(3) >= 4 * 4 and conv_ws(0) == 0
    assert built_lib.ssd_causal_conv1d_packed(*[None] * 7, 3, 10, 8, 4, 1, 2, None, 0, None) == -1


def _cuobjdump() -> str | None:
    """cuobjdump from the CUDA toolkit, else the one Triton ships."""
    found = shutil.which("cuobjdump")
    if found:
        return found
    try:
        import triton.backends.nvidia as nv
    except ImportError:
        return None
    bundled = Path(nv.__file__).parent / "bin" / "cuobjdump"
    return str(bundled) if bundled.is_file() else None


@pytest.mark.slow
@pytest.mark.parametrize("arch", [87, 110], ids=["sm_87-jetson-orin", "sm_110-jetson-thor"])
def test_compiles_for_jetson(tmp_path, arch):
    """Machine code for the Jetson GPUs (docs/jetson.md), where the installed nvcc knows them (sm_110: CUDA 13)."""
    missing = _toolchain_missing()
    if missing:
        pytest.skip(missing)
    listed = subprocess.run([kernels._find_nvcc(), "--list-gpu-arch"], capture_output=True, text=True).stdout.split()
    if f"compute_{arch}" not in listed:
        pytest.skip(f"this nvcc does not know sm_{arch}")
    lib = kernels.build(tmp_path, archs=[str(arch)])
    dump = _cuobjdump()
    if dump is None:
        pytest.skip("cuobjdump not found to list the machine code")
    elves = subprocess.run([dump, "--list-elf", str(lib)], capture_output=True, text=True, check=True).stdout
    assert f"sm_{arch}" in elves, elves


def test_build_without_cmake_is_a_user_error(monkeypatch):
    monkeypatch.setattr(kernels.shutil, "which", lambda name: None)
    with pytest.raises(UserError, match="cmake"):
        kernels.build()


def test_build_rejects_bad_architectures(monkeypatch):
    with pytest.raises(UserError, match="SM numbers"):
        kernels._arch_list(["hopper"])
    assert kernels._arch_list(["sm_90", 80]) == "90;80"


# ------------------------------------------------------------------------------------------- argument checks

@pytest.fixture
def no_library(monkeypatch):
    """Any attempt to load the library fails loudly, so a ValueError proves the check came first."""
    monkeypatch.setenv(kernels.ENV_LIB, "/nonexistent/libssd_kernels.so")


def _scan_args(b=1, l=4, h=4, p=8, g=2, n=16, dtype=torch.float16, device="cpu"):
    t = dict(dtype=dtype, device=device)
    f = dict(dtype=torch.float32, device=device)
    return dict(x=torch.randn(b, l, h, p, **t), dt=torch.randn(b, l, h, **t), A=-torch.rand(h, **f),
                B=torch.randn(b, l, g, n, **t), C=torch.randn(b, l, g, n, **t), D=torch.randn(h, **f),
                dt_bias=torch.randn(h, **f))


@pytest.mark.parametrize("change, match", [
    (lambda a: a.update(x=a["x"][0]), r"x must be \[b, l, h, p\]"),
    (lambda a: a.update(dt=a["dt"][:, :, :2]), "dt has shape"),
    (lambda a: a.update(C=a["C"][:, :2]), "C has shape"),
    (lambda a: a.update(A=a["A"].double()), "A has dtype"),
    (lambda a: a.update(B=a["B"].float()), "B has dtype"),
    (lambda a: a.update(x=a["x"].to(torch.int32)), "x has dtype"),
    (lambda a: a.update(D=torch.zeros(4, 3)), "D has shape"),
    (lambda a: a.update(B=torch.randn(1, 4, 3, 16, dtype=torch.float16),
                        C=torch.randn(1, 4, 3, 16, dtype=torch.float16)), "multiple of groups"),
    (lambda a: a.update(initial_state=torch.zeros(1, 4, 8, 15)), "initial_state has shape"),
    (lambda a: a.update(x=a["x"].transpose(2, 3).contiguous().transpose(2, 3)), "contiguous"),
    (lambda a: None, "CUDA tensors"),
])
def test_scan_argument_checks(no_library, change, match):
    args = _scan_args()
    change(args)
    with pytest.raises(ValueError, match=match):
        kernels.ssd_scan(**args)


def test_scan_rejects_bad_outputs_and_attributes(no_library):
    with pytest.raises(ValueError, match="chunk_size"):
        kernels.ssd_scan(**_scan_args(), chunk_size=0)
    with pytest.raises(ValueError, match="dt_min"):
        kernels.ssd_scan(**_scan_args(), dt_min=math.nan)


def test_step_argument_checks(no_library):
    a = _scan_args()
    x, dt, B, C = a["x"][:, 0], a["dt"][:, 0], a["B"][:, 0], a["C"][:, 0]
    state = torch.zeros(1, 4, 8, 16)
    rest = dict(A=a["A"], D=a["D"], dt_bias=a["dt_bias"])
    with pytest.raises(ValueError, match="state has shape"):
        kernels.ssd_step(state[..., :8], x, dt, B=B, C=C, **rest)
    with pytest.raises(ValueError, match="state has dtype"):
        kernels.ssd_step(state.half(), x, dt, B=B, C=C, **rest)
    with pytest.raises(ValueError, match="new_state has shape"):
        kernels.ssd_step(state, x, dt, B=B, C=C, **rest, out=(torch.empty_like(x), state[:, :2]))
    with pytest.raises(ValueError, match="CUDA tensors"):
        kernels.ssd_step(state, x, dt, B=B, C=C, **rest)


def test_packed_argument_checks(no_library):
    a = _scan_args(l=10)
    cu = torch.tensor([0, 3, 10])
    with pytest.raises(ValueError, match=r"x must be \[1, T, h, p\]"):
        kernels.ssd_scan_packed(**{**a, "x": a["x"][0]}, initial_states=None, cu_seqlens=cu)
    with pytest.raises(ValueError, match="initial_states has shape"):
        kernels.ssd_scan_packed(**a, initial_states=torch.zeros(3, 4, 8, 16), cu_seqlens=cu)
    with pytest.raises(ValueError, match="cu_seqlens has dtype"):
        kernels.ssd_scan_packed(**a, initial_states=None, cu_seqlens=cu.float())
    with pytest.raises(ValueError, match=r"cu_seqlens must be \[n \+ 1\]"):
        kernels.ssd_scan_packed(**a, initial_states=None, cu_seqlens=cu[None])
    with pytest.raises(ValueError, match="empty packed batch"):
        kernels.ssd_scan_packed(**a, initial_states=None, cu_seqlens=cu[:1])
    with pytest.raises(ValueError, match="final_states has shape"):
        kernels.ssd_scan_packed(**a, initial_states=None, cu_seqlens=cu,
                                out=(torch.empty_like(a["x"]), torch.empty(1, 4, 8, 16)))
    with pytest.raises(ValueError, match="CUDA tensors"):
        kernels.ssd_scan_packed(**a, initial_states=torch.zeros(2, 4, 8, 16), cu_seqlens=cu)
    x, w = torch.randn(1, 10, 8, dtype=torch.bfloat16), torch.randn(8, 4)
    with pytest.raises(ValueError, match="packed x must be"):
        kernels.causal_conv1d_packed(torch.randn(2, 5, 8), w, None, None, cu)
    with pytest.raises(ValueError, match="conv_states has shape"):
        kernels.causal_conv1d_packed(x, w, None, torch.zeros(3, 8, 3), cu)
    with pytest.raises(ValueError, match="CUDA tensors"):
        kernels.causal_conv1d_packed(x, w, None, torch.zeros(2, 8, 3), cu)


def test_conv_and_norm_argument_checks(no_library):
    x, w = torch.randn(2, 5, 8, dtype=torch.bfloat16), torch.randn(8, 4)
    with pytest.raises(ValueError, match="conv_state has shape"):
        kernels.causal_conv1d(x, w, None, torch.zeros(2, 8, 4))
    with pytest.raises(ValueError, match="weight has dtype"):
        kernels.causal_conv1d(x, w.half(), None)
    with pytest.raises(ValueError, match="conv width"):
        kernels.causal_conv1d(x, torch.randn(8, 9), None)
    with pytest.raises(ValueError, match="CUDA tensors"):
        kernels.causal_conv1d(x, w, torch.zeros(8))
    y, z = torch.randn(3, 12, dtype=torch.float16), torch.randn(3, 12, dtype=torch.float16)
    with pytest.raises(ValueError, match="group_size"):
        kernels.gated_rmsnorm(y, z, torch.ones(12), 1e-5, 5)
    with pytest.raises(ValueError, match="z has dtype"):
        kernels.gated_rmsnorm(y, z.float(), torch.ones(12), 1e-5, 4)
    with pytest.raises(ValueError, match="CUDA tensors"):
        kernels.gated_rmsnorm(y, z, torch.ones(12), 1e-5, 4)


def test_build_passes_the_architectures_every_time(monkeypatch, tmp_path):
    """A run without --arch configures the default list again instead of keeping an earlier --arch from CMake's
    cache; the default is plugins/CMakeLists.txt's own."""
    calls = []

    def fake_run(cmd, log):
        calls.append(cmd)
        if "--build" in cmd:
            (tmp_path / kernels.LIB_NAME).write_bytes(b"")
        return ["-- ssd TensorRT plugins: no TensorRT headers (set TensorRT_INCLUDE_DIR or TensorRT_ROOT); not built"]

    monkeypatch.setattr(kernels, "_run", fake_run)
    monkeypatch.setattr(kernels.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(kernels, "_find_nvcc", lambda: "/usr/bin/nvcc")
    first = kernels.build_all(tmp_path, ["90"])
    (tmp_path / "CMakeCache.txt").write_text("SSD_CUDA_ARCHS:STRING=90\n")
    kernels.build_all(tmp_path)
    configures = [c for c in calls if "-S" in c]
    assert "-DSSD_CUDA_ARCHS=90" in configures[0]
    cmake_default = kernels.default_archs()
    assert f"-DSSD_CUDA_ARCHS={cmake_default}" in configures[1] and "90" in cmake_default.split(";")
    assert first.trt_plugins is None and "no TensorRT headers" in first.trt_status


@pytest.mark.slow
def test_installed_package_finds_the_kernel_sources(tmp_path):
    """A regular (non-editable) pip install ships plugins/ as package data: the installed kernels module builds
    from its own copy of the CMake project and puts the library in a user cache, not in site-packages."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    src, target = tmp_path / "src", tmp_path / "site"  # a copy: setuptools writes build/ into the tree it builds
    shutil.copytree(root, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", "third_party", "*.engine", "*.onnx*"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                    str(target), str(src)], check=True, cwd=tmp_path)
    installed = target / "ssd_deploy" / "plugins_src"
    assert (installed / "CMakeLists.txt").is_file() and not installed.is_symlink()
    assert (installed / "kernels" / "ssd_kernels.h").is_file() and (installed / "cmake" / "trt_plugins.cmake").is_file()
    assert not (installed / "build").exists()
    probe = ("from ssd_deploy import kernels; "
             "print(kernels.PLUGINS_DIR, kernels.SOURCE_TREE, kernels.DEFAULT_BUILD_DIR, kernels.default_archs())")
    env = {**os.environ, "PYTHONPATH": str(target), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", probe], check=True, cwd=tmp_path, env=env, capture_output=True,
                         text=True).stdout.split()
    assert Path(out[0]) == installed.resolve() and out[1] == "False"
    assert Path(out[2]).is_relative_to(tmp_path / "cache" / "ssd-deploy") and out[3] == kernels.default_archs()


def test_missing_library_is_a_user_error(monkeypatch, tmp_path):
    monkeypatch.setenv(kernels.ENV_LIB, str(tmp_path / "nope.so"))
    with pytest.raises(UserError, match=kernels.ENV_LIB):
        kernels.library_path()


# ------------------------------------------------------------------------------------------- GPU parity

@pytest.fixture(scope="module")
def cuda_lib(tmp_path_factory):
    """The library to test on the GPU: the one the loader finds, else one built here for this GPU."""
    if not CUDA:
        pytest.skip("needs a CUDA GPU")
    try:
        kernels.library_path()
    except UserError:
        missing = _toolchain_missing()
        if missing:
            pytest.skip(f"no built library and {missing}")
        major, minor = torch.cuda.get_device_capability()
        path = kernels.build(tmp_path_factory.mktemp("ssd_kernels_gpu"), archs=[f"{major}{minor}"])
        mp = pytest.MonkeyPatch()
        mp.setenv(kernels.ENV_LIB, str(path))
        yield
        mp.undo()
        return
    yield


class Rng:
    """Fresh random inputs per test; the seed is in every failure message."""

    def __init__(self):
        self.seed = secrets.randbits(31)
        self.gen = torch.Generator().manual_seed(self.seed)

    def normal(self, *shape, scale=1.0):
        return torch.randn(*shape, generator=self.gen, dtype=torch.float64) * scale

    def uniform(self, lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(*shape, generator=self.gen, dtype=torch.float64)


def _close(name: str, out: torch.Tensor, ref: torch.Tensor, tol: float, rng: Rng) -> None:
    err = rel_err(out.cpu(), ref)
    assert err <= tol, f"{name}: relative error {err:.3e} > {tol:.0e} (seed {rng.seed})"


def _poisoned(*shape, dtype):
    return torch.full(shape, math.nan, dtype=dtype, device="cuda")


SCAN_CASES = {
    # name: (b, l, h, p, g, n, chunk_size, options)
    "l1": (2, 1, 4, 64, 1, 128, 256, {}),
    "short_recurrent": (2, 7, 4, 64, 2, 128, 256, {}),
    "partial_chunk": (2, 300, 4, 64, 1, 128, 256, {}),
    "tile128_carried_state": (1, 700, 4, 64, 1, 128, 128, {"slow": True, "init": True}),
    "groups8_D_hdim": (2, 200, 16, 64, 8, 128, 256, {"d_hdim": True}),
    "n64_initial_state": (1, 257, 4, 64, 2, 64, 128, {"init": True}),
    "dt_clamp": (1, 150, 4, 64, 1, 128, 256, {"dt_min": 0.02, "dt_max": 0.06, "init": True}),
    "no_softplus": (2, 90, 4, 64, 1, 128, 256, {"softplus": False}),
    "long_four_chunks": (1, 1024, 4, 64, 1, 128, 256, {"slow": True, "init": True}),
    "many_tiles": (3, 520, 24, 64, 1, 128, 128, {"slow": True}),
    "odd_shape": (1, 37, 3, 16, 1, 24, 256, {"d_hdim": True, "init": True}),
    "n_not_multiple_of_8": (2, 70, 2, 32, 1, 20, 256, {"init": True}),
    "misaligned_fallback": (1, 300, 4, 64, 1, 128, 256, {"misalign": True, "init": True}),
}


def _scan_inputs(rng, b, l, h, p, g, n, opts):
    """float64 tensors; dt and dt_bias as mamba_ssm initialises them (dt' mostly in [0.001, 0.1])."""
    slow = opts.get("slow", False)
    A = -rng.uniform(0.01, 0.1, h) if slow else -torch.exp(rng.uniform(0.0, math.log(16), h))
    if opts.get("softplus", True):
        dt = rng.normal(b, l, h, scale=0.5)
        dt_bias = torch.log(torch.expm1(rng.uniform(0.001, 0.1, h)))
    else:
        dt, dt_bias = rng.uniform(0.001, 0.1, b, l, h), torch.zeros(h, dtype=torch.float64)
    return dict(x=rng.normal(b, l, h, p), dt=dt, A=A, B=rng.normal(b, l, g, n), C=rng.normal(b, l, g, n),
                D=rng.normal(h, p) if opts.get("d_hdim") else rng.normal(h), dt_bias=dt_bias,
                initial_state=rng.normal(b, h, p, n) if opts.get("init") else None)


def _to_cuda(t, dtype, misalign=False):
    """A CUDA copy; misaligned: same values at an address 2 elements past a 16-byte boundary (still contiguous)."""
    if not misalign:
        return t.to(device="cuda", dtype=dtype).contiguous()
    flat = torch.empty(t.numel() + 2, dtype=dtype, device="cuda")
    view = flat[2:].view(t.shape)
    view.copy_(t)
    return view


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("case", list(SCAN_CASES))
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_ssd_scan_matches_float64_recurrence(cuda_lib, case, dtype):
    b, l, h, p, g, n, chunk, opts = SCAN_CASES[case]
    rng = Rng()
    ref_in = _scan_inputs(rng, b, l, h, p, g, n, opts)
    act = {k: ref_in[k].to(dtype) for k in ("x", "dt", "B", "C")}  # the values the kernel sees
    attrs = dict(dt_softplus=opts.get("softplus", True), dt_min=opts.get("dt_min", 0.0),
                 dt_max=opts.get("dt_max", math.inf))
    misalign = opts.get("misalign", False)
    dev = {k: _to_cuda(v, dtype, misalign) for k, v in act.items()}
    par = {k: ref_in[k].float().cuda() for k in ("A", "D", "dt_bias")}
    init = ref_in["initial_state"]
    init_dev = None if init is None else init.float().cuda()
    y, state = _poisoned(b, l, h, p, dtype=dtype), _poisoned(b, h, p, n, dtype=torch.float32)
    kernels.ssd_scan(dev["x"], dev["dt"], par["A"], dev["B"], dev["C"], par["D"], par["dt_bias"], init_dev,
                     chunk_size=chunk, out=(y, state), **attrs)
    torch.cuda.synchronize()
    y_ref, s_ref = reference.ssd_sequential(
        act["x"].double(), act["dt"].double(), ref_in["A"].float().double(), act["B"].double(), act["C"].double(),
        ref_in["D"].float().double(), ref_in["dt_bias"].float().double(),
        None if init is None else init.float().double(), **attrs)
    _close("y", y, y_ref, TOL[dtype], rng)
    _close("final_state", state, s_ref, TOL[dtype], rng)


STEP_CASES = {
    "groups2": (3, 8, 64, 2, 128, {}),
    "D_hdim_clamp": (2, 16, 64, 8, 128, {"d_hdim": True, "dt_min": 0.01, "dt_max": 0.05}),
    "odd_shape": (2, 3, 16, 1, 20, {}),
}


@pytest.mark.parametrize("inplace", [False, True], ids=["out_of_place", "in_place"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("case", list(STEP_CASES))
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_ssd_step_matches_float64_step(cuda_lib, case, dtype, inplace):
    b, h, p, g, n, opts = STEP_CASES[case]
    rng = Rng()
    r = _scan_inputs(rng, b, 1, h, p, g, n, {**opts, "init": True})
    act = {k: r[k][:, 0].to(dtype) for k in ("x", "dt", "B", "C")}
    attrs = dict(dt_min=opts.get("dt_min", 0.0), dt_max=opts.get("dt_max", math.inf))
    state = r["initial_state"].float().cuda()
    y = _poisoned(b, h, p, dtype=dtype)
    new = state if inplace else _poisoned(b, h, p, n, dtype=torch.float32)
    kernels.ssd_step(state, *(act[k].cuda() for k in ("x", "dt")), r["A"].float().cuda(),
                     act["B"].cuda(), act["C"].cuda(), r["D"].float().cuda(), r["dt_bias"].float().cuda(),
                     out=(y, new), **attrs)
    torch.cuda.synchronize()
    y_ref, s_ref = reference.ssd_step(r["initial_state"].float().double(), act["x"].double(), act["dt"].double(),
                                      r["A"].float().double(), act["B"].double(), act["C"].double(),
                                      r["D"].float().double(), r["dt_bias"].float().double(), **attrs)
    _close("y", y, y_ref, TOL[dtype], rng)
    _close("state", new, s_ref, 1e-5, rng)  # fp32 math on the state whatever the I/O dtype


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_steps_equal_scan(cuda_lib):
    """Three in-place decode steps give the prefill of the same three tokens."""
    b, l, h, p, g, n = 2, 3, 8, 64, 2, 128
    rng = Rng()
    r = _scan_inputs(rng, b, l, h, p, g, n, {"init": True})
    f = {k: v.float().cuda() for k, v in r.items()}
    state = f["initial_state"].clone()
    ys = [kernels.ssd_step(state, f["x"][:, t].contiguous(), f["dt"][:, t].contiguous(), f["A"],
                           f["B"][:, t].contiguous(), f["C"][:, t].contiguous(), f["D"], f["dt_bias"],
                           out=(torch.empty(b, h, p, device="cuda"), state))[0] for t in range(l)]
    y_ref, s_ref = reference.ssd_sequential(*(r[k].float().double() for k in ("x", "dt", "A", "B", "C", "D",
                                                                              "dt_bias", "initial_state")))
    _close("y", torch.stack(ys, 1), y_ref, 1e-5, rng)
    _close("state", state, s_ref, 1e-5, rng)


CONV_CASES = {
    # name: (b, l, d, k, with_state, with_bias, silu)
    "l1_decode": (2, 1, 100, 4, True, True, True),
    "l_below_k_minus_1": (2, 2, 64, 4, True, True, True),
    "multi_tile_no_bias": (2, 200, 300, 4, True, False, True),
    "no_state_no_silu_k3": (1, 130, 96, 3, False, True, False),
    "widest_k": (1, 70, 40, 8, True, True, True),
}


@pytest.mark.parametrize("inplace", [False, True], ids=["out_of_place", "in_place"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("case", list(CONV_CASES))
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_causal_conv1d_matches_reference(cuda_lib, case, dtype, inplace):
    b, l, d, k, with_state, with_bias, silu = CONV_CASES[case]
    if inplace and not with_state:
        pytest.skip("in place needs a state")
    rng = Rng()
    x = rng.normal(b, l, d).to(dtype)
    w, bias = rng.normal(d, k, scale=0.5).float(), rng.normal(d).float() if with_bias else None
    st = rng.normal(b, d, k - 1).float() if with_state else None
    y_ref, s_ref = reference.causal_conv1d(x.double(), w.double(), None if bias is None else bias.double(),
                                           None if st is None else st.double(), silu=silu)
    st_dev = None if st is None else st.cuda()
    y = _poisoned(b, l, d, dtype=dtype)
    new = st_dev if inplace else _poisoned(b, d, k - 1, dtype=torch.float32)
    kernels.causal_conv1d(x.cuda(), w.cuda(), None if bias is None else bias.cuda(), st_dev, silu=silu,
                          out=(y, new))
    torch.cuda.synchronize()
    _close("y", y, y_ref, TOL[dtype], rng)
    _close("state", new, s_ref, 0.0, rng)  # a copy of inputs: exact


NORM_CASES = {
    # name: (shape, group_size)
    "one_group": ((2, 33, 256), 256),
    "eight_groups": ((3, 5, 512), 64),
    "scalar_path": ((7, 100), 20),
    "large_group": ((4, 4096), 4096),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("case", list(NORM_CASES))
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_gated_rmsnorm_matches_reference(cuda_lib, case, dtype):
    shape, gs = NORM_CASES[case]
    rng = Rng()
    y, z = rng.normal(*shape).to(dtype), rng.normal(*shape).to(dtype)
    w = rng.normal(shape[-1]).float()
    out = _poisoned(*shape, dtype=dtype)
    kernels.gated_rmsnorm(y.cuda(), z.cuda(), w.cuda(), 1e-5, gs, out=out)
    torch.cuda.synchronize()
    ref = reference.gated_rmsnorm(y.double(), z.double(), w.double(), 1e-5, gs)
    _close("out", out, ref, TOL[dtype], rng)


# ------------------------------------------------------------------------------------------- packed sequences

def _offsets(lengths: list[int], dtype=torch.int32) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=dtype)


def _close_per_sequence(name: str, out: torch.Tensor, ref: torch.Tensor, lengths: list[int], tol: float,
                        rng: Rng) -> None:
    """Every sequence on its own (token axis 1): a leak into a short sequence cannot hide in a long one's norm."""
    cu = _offsets(lengths).tolist()
    for s in range(len(lengths)):
        _close(f"{name} of sequence {s} (length {lengths[s]})", out[:, cu[s]:cu[s + 1]], ref[:, cu[s]:cu[s + 1]],
               tol, rng)


# name: (lengths, h, p, g, n, chunk_size, options). fp16/bf16 at p = 64, n ∈ {64, 128} with a mean length >= 64 run
# the chunked kernel over its piece table; the rest (and fp32) the recurrence. Boundaries inside chunks, sequences
# shorter than a chunk, length 1 among long ones, and rows of one warp spanning sequences of different lengths.
PACKED_SCAN_CASES = {
    "mixed_chunked": ([300, 1, 130, 5, 128, 257, 2], 4, 64, 1, 128, 256, {"init": True}),
    "groups8_D_hdim": ([200, 70, 1, 129], 16, 64, 8, 128, 256, {"d_hdim": True, "init": True}),
    "n64_long_and_short": ([1024, 3, 600], 4, 64, 2, 64, 128, {"slow": True, "init": True}),
    "ones": ([1, 1, 1], 4, 64, 1, 128, 256, {"init": True}),
    "short_recurrent": ([5, 1, 37, 16, 2, 20], 4, 16, 2, 16, 256, {"init": True}),
    "warp_spans_sequences": ([7, 1, 30, 2, 11, 4], 1, 3, 1, 16, 256, {"init": True, "softplus": False}),
    "no_initial_states": ([90, 1, 200], 4, 64, 1, 128, 256, {}),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("case", list(PACKED_SCAN_CASES))
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_ssd_scan_packed_matches_float64_per_sequence(cuda_lib, case, dtype):
    lengths, h, p, g, n, chunk, opts = PACKED_SCAN_CASES[case]
    total, nseq = sum(lengths), len(lengths)
    rng = Rng()
    r = _scan_inputs(rng, 1, total, h, p, g, n, opts)
    act = {k: r[k].to(dtype) for k in ("x", "dt", "B", "C")}
    init = rng.normal(nseq, h, p, n) if opts.get("init") else None
    attrs = dict(dt_softplus=opts.get("softplus", True))
    cu = _offsets(lengths, torch.int64 if opts.get("init") else torch.int32)
    y, states = _poisoned(1, total, h, p, dtype=dtype), _poisoned(nseq, h, p, n, dtype=torch.float32)
    kernels.ssd_scan_packed(*(act[k].cuda() if k in act else r[k].float().cuda() for k in
                              ("x", "dt", "A", "B", "C", "D", "dt_bias")),
                            None if init is None else init.float().cuda(), cu.cuda(), chunk_size=chunk,
                            out=(y, states), **attrs)
    torch.cuda.synchronize()
    zeros = torch.zeros(nseq, h, p, n, dtype=torch.float64)
    y_ref, s_ref = reference.ssd_sequential_packed(
        act["x"].double(), act["dt"].double(), r["A"].float().double(), act["B"].double(), act["C"].double(),
        r["D"].float().double(), r["dt_bias"].float().double(), cu, zeros if init is None else init.float().double(),
        **attrs)
    _close_per_sequence("y", y, y_ref, lengths, TOL[dtype], rng)
    _close_per_sequence("final_states", states[None], s_ref[None], [1] * nseq, TOL[dtype], rng)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("length", [1, 40, 300], ids=["step_1", "recurrent_40", "chunked_300"])
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_ssd_scan_packed_equal_lengths_are_the_unpacked_kernel(cuda_lib, length, dtype):
    """Equal lengths give bit for bit ssd_scan on [n, L] (the contract's promise; same kernel, same tiles)."""
    nseq, h, p, g, n = 3, 8, 64, 2, 128
    rng = Rng()
    r = {k: v.cuda() for k, v in _scan_inputs(rng, nseq, length, h, p, g, n, {"init": True}).items()}
    act = {k: r[k].to(dtype) for k in ("x", "dt", "B", "C")}
    par = {k: r[k].float() for k in ("A", "D", "dt_bias", "initial_state")}
    y, s = kernels.ssd_scan(act["x"], act["dt"], par["A"], act["B"], act["C"], par["D"], par["dt_bias"],
                            par["initial_state"])
    flat = {k: v.reshape(1, nseq * length, *v.shape[2:]) for k, v in act.items()}
    yp, sp = kernels.ssd_scan_packed(flat["x"], flat["dt"], par["A"], flat["B"], flat["C"], par["D"], par["dt_bias"],
                                     par["initial_state"], _offsets([length] * nseq).cuda())
    assert torch.equal(yp.reshape(y.shape), y), f"y differs (seed {rng.seed})"
    assert torch.equal(sp, s), f"final states differ (seed {rng.seed})"


# name: (lengths, d, k, with_bias, silu); d = 256 takes the 16-byte channel groups, several token tiles per sequence
PACKED_CONV_CASES = {
    "mixed": ([5, 1, 37, 2, 3, 20], 40, 4, True, True),
    "ones_no_bias": ([1, 1, 1], 24, 4, False, True),
    "k2_no_silu": ([9, 2, 17], 33, 2, True, False),
    "long_vectorised": ([100, 1, 64, 33, 2], 256, 4, True, True),
    "widest_k": ([3, 70, 1, 6], 40, 8, True, True),
}


@pytest.mark.parametrize("inplace", [False, True], ids=["out_of_place", "in_place"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("case", list(PACKED_CONV_CASES))
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_causal_conv1d_packed_matches_per_sequence(cuda_lib, case, dtype, inplace):
    lengths, d, k, with_bias, silu = PACKED_CONV_CASES[case]
    total, nseq = sum(lengths), len(lengths)
    rng = Rng()
    x = rng.normal(1, total, d).to(dtype)
    w, bias = rng.normal(d, k, scale=0.5).float(), rng.normal(d).float() if with_bias else None
    st = rng.normal(nseq, d, k - 1).float()
    cu = _offsets(lengths)
    y_ref, s_ref = reference.causal_conv1d_sequential_packed(x.double(), w.double(),
                                                             None if bias is None else bias.double(), st.double(), cu,
                                                             silu=silu)
    st_dev = st.cuda()
    y = _poisoned(1, total, d, dtype=dtype)
    new = st_dev if inplace else _poisoned(nseq, d, k - 1, dtype=torch.float32)
    kernels.causal_conv1d_packed(x.cuda(), w.cuda(), None if bias is None else bias.cuda(), st_dev, cu.cuda(),
                                 silu=silu, out=(y, new))
    torch.cuda.synchronize()
    _close_per_sequence("y", y, y_ref, lengths, TOL[dtype], rng)
    _close("states", new, s_ref, 0.0, rng)  # copies of inputs: exact


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_causal_conv1d_packed_equal_lengths_are_the_unpacked_kernel(cuda_lib, dtype):
    nseq, length, d, k = 3, 70, 256, 4
    rng = Rng()
    x = rng.normal(nseq, length, d).to(dtype).cuda()
    w, bias = rng.normal(d, k).float().cuda(), rng.normal(d).float().cuda()
    st = rng.normal(nseq, d, k - 1).float().cuda()
    y, s = kernels.causal_conv1d(x, w, bias, st)
    yp, sp = kernels.causal_conv1d_packed(x.reshape(1, nseq * length, d), w, bias, st,
                                          _offsets([length] * nseq).cuda())
    assert torch.equal(yp.reshape(y.shape), y) and torch.equal(sp, s), f"seed {rng.seed}"
