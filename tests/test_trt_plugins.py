"""TensorRT plugin library (plugins/, docs/verification.md; plugins/README.md), without TensorRT: it compiles against TensorRT headers, exports
only TensorRT's entry points with no link to libnvinfer, passes the harness's host checks (creators, fields,
serialisation, dtypes and formats, output shapes, shape checks, self-registration), and on a GPU matches the float64
reference through enqueue.

Headers: TensorRT_INCLUDE_DIR or TensorRT_ROOT (as for cmake), else third_party/TensorRT/include; TensorRT 10 headers
for the compatibility build: SSD_TENSORRT10_INCLUDE_DIR, else third_party/TensorRT-10*/include. Without headers,
cmake or nvcc the tests skip, saying which is missing.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
RUNNER = REPO / "plugins" / "harness" / "run_parity.py"
ARCH = "90"  # one architecture keeps the kernel build short; the host checks do not run it


def _runner():
    spec = importlib.util.spec_from_file_location("run_parity", RUNNER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _headers(*candidates) -> Path | None:
    for c in candidates:
        if c and (Path(c) / "NvInferRuntime.h").exists():
            return Path(c)
    return None


def _trt11_include() -> Path | None:
    root = os.environ.get("TensorRT_ROOT")
    return _headers(os.environ.get("TensorRT_INCLUDE_DIR"), root and Path(root) / "include",
                    REPO / "third_party" / "TensorRT" / "include")


def _trt10_include() -> Path | None:
    return _headers(os.environ.get("SSD_TENSORRT10_INCLUDE_DIR"),
                    *sorted((REPO / "third_party").glob("TensorRT-10*/include")))


def _missing_toolchain() -> str | None:
    if not (REPO / "plugins" / "CMakeLists.txt").exists():
        return "plugins/CMakeLists.txt is missing"
    if shutil.which("cmake") is None:
        return "cmake not found"
    if shutil.which("nvcc") is None and not os.environ.get("CUDACXX"):
        return "nvcc not found (put it on PATH or set CUDACXX)"
    return None


def _require(include: Path | None, what: str) -> Path:
    if include is None:
        pytest.skip(f"no {what} headers (set TensorRT_INCLUDE_DIR, or copy NVIDIA/TensorRT include/ into third_party)")
    reason = _missing_toolchain()
    if reason:
        pytest.skip(reason)
    return include


@pytest.fixture(scope="module")
def trt11_build(tmp_path_factory) -> Path:
    include = _require(_trt11_include(), "TensorRT")
    build_dir = tmp_path_factory.mktemp("trt11")
    with open(build_dir / "build.log", "w") as log:
        try:
            _runner().build(build_dir, ARCH, str(include), log)
        except subprocess.CalledProcessError:
            log.flush()
            pytest.fail("build failed:\n" + (build_dir / "build.log").read_text()[-4000:])
    return build_dir


def _dynamic_section(lib: Path) -> tuple[set[str], set[str]]:
    """(NEEDED libraries, defined dynamic symbols) of an ELF shared library, through binutils."""
    if shutil.which("readelf") is None or shutil.which("nm") is None:
        pytest.skip("binutils (readelf, nm) not found")
    dyn = subprocess.run(["readelf", "-d", str(lib)], capture_output=True, text=True, check=True).stdout
    needed = {line.split("[")[1].rstrip("]") for line in dyn.splitlines() if "(NEEDED)" in line}
    syms = subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True, text=True, check=True).stdout
    return needed, {line.split()[-1] for line in syms.splitlines() if line.strip()}


@pytest.mark.parametrize("name", ["libssd_trt_plugins.so", "libssd_trt_plugins_autoreg.so"])
def test_library_exports_only_tensorrt_entry_points_and_needs_no_libnvinfer(trt11_build, name):
    needed, exported = _dynamic_section(trt11_build / name)
    assert exported == {"getCreators", "setLoggerFinder"}
    assert not [lib for lib in needed if "nvinfer" in lib], needed


def test_host_checks(trt11_build):
    proc = subprocess.run([str(trt11_build / "ssd_plugin_harness"), "check",
                           *(str(trt11_build / f) for f in ("libssd_trt_plugins.so", "libssd_trt_plugins_autoreg.so",
                                                            "libssd_fake_nvinfer.so"))],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert " 0 of " in proc.stdout.splitlines()[-1]


def test_compiles_against_tensorrt10_headers(tmp_path):
    """Every plugin source, the self-registration (whose registry vtable differs in 10) and the harness compile
    against TensorRT 10 headers; the kernels are not rebuilt for it."""
    include = _require(_trt10_include(), "TensorRT 10")
    configure = ["cmake", "-S", str(REPO / "plugins"), "-B", str(tmp_path), f"-DSSD_CUDA_ARCHS={ARCH}",
                 f"-DTensorRT_INCLUDE_DIR={include}"]
    proc = subprocess.run(configure, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "ssd TensorRT plugins: TensorRT 10." in proc.stdout
    targets = ["ssd_trt_plugin_objects", "ssd_trt_selfregister_object", "ssd_plugin_harness", "ssd_fake_nvinfer"]
    proc = subprocess.run(["cmake", "--build", str(tmp_path), "--target", *targets], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("version,arch", [("10.3", 87), ("10.13", 110)],
                         ids=["jetpack6-tensorrt10.3-sm_87", "jetpack7-tensorrt10.13-sm_110"])
def test_plugin_library_builds_for_jetson(tmp_path, version, arch):
    """The whole plugin library (kernels included) for a Jetson: TensorRT 10.3's headers and sm_87 (JetPack 6),
    10.13's and sm_110 (JetPack 7; CUDA 13 names Thor sm_110). Headers: third_party/TensorRT-<version>/include,
    fetched from NVIDIA/TensorRT at tag v<version>.x (docs/jetson.md)."""
    include = _require(_headers(*sorted((REPO / "third_party").glob(f"TensorRT-{version}*/include"))),
                       f"TensorRT {version}")
    nvcc = shutil.which("nvcc") or os.environ.get("CUDACXX")
    if f"compute_{arch}" not in subprocess.run([nvcc, "--list-gpu-arch"], capture_output=True, text=True).stdout:
        pytest.skip(f"this nvcc does not know sm_{arch}")
    configure = ["cmake", "-S", str(REPO / "plugins"), "-B", str(tmp_path), f"-DSSD_CUDA_ARCHS={arch}",
                 f"-DTensorRT_INCLUDE_DIR={include}"]
    proc = subprocess.run(configure, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert f"ssd TensorRT plugins: TensorRT {version}." in proc.stdout
    assert f"{arch}-real" in proc.stdout  # the architecture was kept, not dropped
    proc = subprocess.run(["cmake", "--build", str(tmp_path), "--parallel", "2"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert list(tmp_path.glob("libssd_trt_plugins*.so"))


@pytest.mark.gpu
def test_gpu_parity(tmp_path):
    """Every plugin, every I/O dtype, through the plugin's build and runtime phases and enqueue on the GPU."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    include = _require(_trt11_include(), "TensorRT")
    proc = subprocess.run([sys.executable, str(RUNNER), "--build-dir", str(tmp_path / "build"), "--work",
                           str(tmp_path / "cases"), "--trt-include", str(include), "--no-timing"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-6000:]


# --- the contracts as data (plugins/<Plugin>/contract.toml): everything derived from them agrees ---------------------

def test_every_plugin_has_one_contract_and_the_derived_files_are_current():
    from ssd_deploy import plugin_contracts

    all_contracts = plugin_contracts.contracts()
    folders = sorted(p.parent.name for p in (REPO / "plugins").glob("*/README.md") if p.parent.name[0].isupper())
    assert sorted(all_contracts) == folders == ["CausalConv1d", "CausalConv1dPacked", "GatedRmsNorm", "SsdChunkScan",
                                               "SsdChunkScanPacked", "SsdStateUpdate"]
    stale = plugin_contracts.stale(REPO / "plugins")
    assert not stale, f"out of date (python -m ssd_deploy.plugin_contracts --write): {sorted(map(str, stale))}"


def test_the_trt_lowering_and_the_harness_read_the_contracts():
    from ssd_deploy import plugin_contracts
    from ssd_deploy.onnx import trt

    for name, c in plugin_contracts.contracts().items():
        p = trt.PLUGINS[name]
        assert p.inputs == tuple(t.name for t in c.inputs) and p.outputs == tuple(t.name for t in c.outputs)
        assert p.attributes == {a.name: a.python_type for a in c.attributes} and p.op == c.op
        assert c.domain == trt.DOMAIN and c.version == "1"
    sys.path.insert(0, str(REPO / "plugins" / "harness"))
    try:
        import parity_cases
    finally:
        sys.path.pop(0)
    case = parity_cases.norm_case("f16", 1, 2, 8, 4, gen=torch.Generator().manual_seed(0))
    assert [(t.name, t.dtype) for t in case.inputs] == [("y", "f16"), ("z", "f16"), ("weight", "f32")]
    assert case.attrs == [("eps", "f32", 1e-5), ("group_size", "i32", 4)]
    with pytest.raises(ValueError, match="not in GatedRmsNorm's contract"):
        parity_cases._case("bad", "GatedRmsNorm", "f32", {"colour": 1}, {}, {}, 0)


def test_adding_an_input_is_one_edit(tmp_path):
    """An optional input added to a contract file reaches the README tables, the harness header and the ONNX
    Runtime custom-op library's table on regeneration (what packed sequences' cu_seqlens will need), and a
    hand-edited README table is caught."""
    from ssd_deploy import plugin_contracts

    plugins = tmp_path / "plugins"
    shutil.copytree(REPO / "plugins", plugins, ignore=shutil.ignore_patterns("build"))
    contract = plugins / "SsdChunkScan" / "contract.toml"
    contract.write_text(contract.read_text() + '\n[[inputs]]\nname = "cu_seqlens"\nshape = "[n + 1]"\n'
                                               'dtype = "float32"\noptional = true\n')
    stale = plugin_contracts.stale(plugins)
    assert set(stale) == {plugins / "harness" / "contracts.h", plugins / "SsdChunkScan" / "README.md",
                          plugins / "ort_custom_ops" / "contracts.h"}
    assert '{"SsdChunkScan", 9, "AAFAAFFFF" "AF"' in stale[plugins / "harness" / "contracts.h"]
    ort = stale[plugins / "ort_custom_ops" / "contracts.h"]
    assert 'inline constexpr Dim kInput_cu_seqlens_0[] = {{"n", 1}};' in ort
    assert '{"cu_seqlens", Role::kFloat32, true, kInput_cu_seqlens, 1}' in ort
    assert "| 8 | cu_seqlens | [n + 1] (optional) | float32 |" in stale[plugins / "SsdChunkScan" / "README.md"]
    readme = plugins / "GatedRmsNorm" / "README.md"
    readme.write_text(readme.read_text().replace("| 0 | y | [b, l, d] | T |", "| 0 | y | [b, d] | T |"))
    assert readme in plugin_contracts.stale(plugins)
