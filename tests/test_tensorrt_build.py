"""TensorRT acceptance (docs/verification.md): the tiny portable export parsed and built into an engine with decode and prefill
profiles over batch and sequence, by whichever TensorRT builder is importable (in CI TensorRT-RTX, which builds
ahead of time on the CPU); the sidecar written with it; and the builder's refusals.

Engines are not run here: TensorRT needs a GPU for that (the runner's GPU tests are marked ``gpu``)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from ssd_deploy.checkpoint import random_model, write_checkpoint
from ssd_deploy import recipes
from ssd_deploy.errors import UserError
from ssd_deploy.onnx.export import ExportOptions, export
from ssd_deploy.interface import PREFIX, read_metadata
from ssd_deploy.presets import preset
from ssd_deploy.tensorrt import api as trt_api
from ssd_deploy.tensorrt import sidecar as sc
from ssd_deploy.tensorrt.build import BuildOptions, add_profiles, build
from ssd_deploy.cli_vocabulary import engine_options
from ssd_deploy.tensorrt.cli import build as build_command
from ssd_deploy.tensorrt.profiles import Profile, Range
from ssd_deploy.tensorrt.runner import NEEDS, TrtRunner, trt_runner


def _api():
    try:
        return trt_api.load()
    except UserError as e:
        return e


API = _api()
needs_builder = pytest.mark.skipif(isinstance(API, UserError), reason=f"no TensorRT builder: {API}")
pytestmark = needs_builder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(random_model(preset("tiny"), seed=3), tmp_path_factory.mktemp("trt") / "ckpt", "hf")


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    """dtype → export directory (portable flavor), exported once per module."""
    cache = {}

    def get(dtype="fp32"):
        if dtype not in cache:
            cache[dtype] = export(checkpoint, tmp_path_factory.mktemp("trt") / dtype, ExportOptions(dtype=dtype)).parent
        return cache[dtype]

    return get


def copy_export(src, dst, edit):
    """A copy of an export with its graph changed by ``edit(model)`` (weights are inline in the tiny export)."""
    model = onnx.load(str(src / "model.onnx"))
    edit(model)
    dst.mkdir()
    onnx.save(model, str(dst / "model.onnx"))
    return dst


def set_flavor(flavor):
    def edit(model):
        for p in model.metadata_props:
            if p.key == PREFIX + "flavor":
                p.value = flavor
    return edit


def leftovers(directory):
    return [p.name for p in directory.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_builds_engine_with_decode_and_prefill_profiles(exported, tmp_path, dtype):
    export_dir = exported(dtype)
    engine = tmp_path / f"tiny-{dtype}.engine"
    result = build(export_dir, BuildOptions(batch_range="1,2,4", seq_range="1,48,160", output=engine))
    assert result.engine == engine and engine.stat().st_size > 0 and not leftovers(tmp_path)
    car = sc.load(engine)
    assert [p.to_dict() for p in car.profiles] == [
        {"name": "decode", "batch": [1, 2, 4], "seq": [1, 1, 1]},
        {"name": "prefill", "batch": [1, 2, 4], "seq": [1, 48, 160]}]
    assert (car.tensorrt, car.tensorrt_version) == (API.package, API.version)
    assert car.engine_sha256 == sc.sha256_bytes(engine.read_bytes())
    assert car.onnx_sha256 == sc.sha256_files(sc.onnx_files(export_dir))
    assert car.onnx_dir == str(export_dir.resolve()) and car.plugins is None
    assert car.metadata == read_metadata(export_dir)
    side = json.loads(sc.sidecar_path(engine).read_text())
    assert side["export"]["dtype"] == dtype and side["export"]["flavor"] == "portable"
    if API.builds_ahead_of_time:
        assert car.compute_capability == sc.AHEAD_OF_TIME and "8.6" in car.compute_targets
        assert "9.0" not in car.compute_targets  # TensorRT-RTX cannot run on an H200
    else:
        assert car.compute_capability == sc.gpu_compute_capability()


def test_tensorrt_profiles_hold_the_asked_ranges(exported):
    """The profiles handed to TensorRT, read back from TensorRT's own objects."""
    export_dir = exported()
    logger = API.logger(lambda *_: None)
    builder = API.module.Builder(logger)
    network = API.create_network(builder)
    parser = API.module.OnnxParser(network, logger)
    assert parser.parse_from_file(str(export_dir / "model.onnx"))
    config = builder.create_builder_config()
    asked = [Profile("decode", Range(1, 3, 6), Range(1, 1, 1)), Profile("prefill", Range(2, 3, 6), Range(5, 9, 70))]
    made = add_profiles(builder, config, network, asked)
    assert config.num_optimization_profiles == 2
    ssm = read_metadata(export_dir).states[1]
    for prof, p in zip(made, asked):
        ids = [tuple(s) for s in prof.get_shape("input_ids")]
        assert ids == [(p.batch.min, p.seq.min), (p.batch.opt, p.seq.opt), (p.batch.max, p.seq.max)]
        assert [tuple(s) for s in prof.get_shape(ssm.name)] == [(b, *ssm.shape[1:]) for b in p.batch.to_list()]


def test_build_command(exported, tmp_path):
    engine = tmp_path / "cli.engine"
    res = CliRunner().invoke(build_command, [str(exported()), "--profile", "prefill", "--batch-range", "2",
                                             "--seq-range", "1,16,64", "--workspace-mib", "256", "-o", str(engine)])
    assert res.exit_code == 0, res.output
    assert "profile prefill  batch 2,2,2  seq 1,16,64" in res.output
    assert [p.name for p in sc.load(engine).profiles] == ["prefill"]


def test_build_command_refusals_are_one_line_and_leave_no_engine(exported, tmp_path):
    cases = [
        (["--batch-range", "4,2,1"], "MIN,OPT,MAX"),
        (["--profile", "decode", "--seq-range", "1,2,3"], "decode-only engine"),
    ]
    for args, match in cases:
        res = CliRunner().invoke(build_command, [str(exported()), *args, "-o", str(tmp_path / "x.engine")])
        assert res.exit_code == 2 and match in res.output and "Traceback" not in res.output, res.output
    res = CliRunner().invoke(build_command, [str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "no exported model" in res.output
    assert not list(tmp_path.glob("*.engine*"))


def test_recipe_sets_the_ranges_and_flags_override_it(exported, tmp_path):
    recipe = tmp_path / "edge.toml"
    recipe.write_text('target = "tensorrt"\n[export]\nflavor = "portable"\ndtype = "fp32"\n'
                      '[shapes]\nbatch = [1, 2]\nprefill = [1, 96]\n'
                      '[tensorrt.profiles.decode]\nbatch = [1, 2, 2]\nseq = [1, 1, 1]\n'
                      '[tensorrt.profiles.prefill]\nbatch = [1, 1, 2]\nseq = [1, 32, 96]\n')
    assert recipes.load(recipe).to_dict()["profiles"]["prefill"]["seq"] == [1, 32, 96]
    engine = tmp_path / "r.engine"
    res = CliRunner().invoke(build_command, [str(exported()), "--recipe", str(recipe), "--seq-range", "1,8,40",
                                             "-o", str(engine)])
    assert res.exit_code == 0, res.output
    assert [p.to_dict() for p in sc.load(engine).profiles] == [
        {"name": "decode", "batch": [1, 2, 2], "seq": [1, 1, 1]},
        {"name": "prefill", "batch": [1, 1, 2], "seq": [1, 8, 40]}]  # --seq overrides the recipe
    cpu = tmp_path / "cpu.toml"
    cpu.write_text('target = "cpu"\n[export]\nflavor = "portable"\ndtype = "fp32"\n'
                   '[shapes]\nbatch = [1, 2]\nprefill = [1, 96]\n')
    res = CliRunner().invoke(build_command, [str(exported()), "--recipe", str(cpu), "-o", str(tmp_path / "c.engine")])
    assert res.exit_code == 2 and "targets cpu, not tensorrt" in res.output and not (tmp_path / "c.engine").exists()


def test_the_recipe_stored_in_the_export_sets_the_ranges(exported, tmp_path):
    stored = {"name": "stored", "target": "tensorrt", "export": {"flavor": "portable", "dtype": "fp32"},
              "profiles": {"prefill": {"batch": [1, 3, 3], "seq": [2, 20, 50]}}}

    def store(model):
        for p in model.metadata_props:
            if p.key == PREFIX + "recipe":
                p.value = json.dumps(stored)
    export_dir = copy_export(exported(), tmp_path / "with-recipe", store)
    assert read_metadata(export_dir).recipe == stored
    result = build(export_dir, BuildOptions())
    assert [p.to_dict() for p in result.record.profiles] == [{"name": "prefill", "batch": [1, 3, 3], "seq": [2, 20, 50]}]
    assert result.notes == []


def test_parser_failures_list_the_offending_nodes(exported, tmp_path):
    src = exported()

    def break_two_nodes(model):
        nodes = model.graph.node
        for i in (3, 7):
            nodes[i].op_type = f"NoSuchOp{i}"  # a standard-domain op TensorRT has no importer (and no plugin) for
    bad = copy_export(src, tmp_path / "bad", break_two_nodes)
    names = [onnx.load(str(bad / "model.onnx")).graph.node[i].name for i in (3, 7)]
    with pytest.raises(UserError, match="ONNX parser rejected the graph") as e:
        build(bad, BuildOptions())
    msg = str(e.value)
    assert f"node 3 (NoSuchOp3 {names[0]!r})" in msg and f"node 7 (NoSuchOp7 {names[1]!r})" in msg
    assert not (bad / "model.engine").exists() and not leftovers(bad)


def test_trt_flavor_needs_plugins_and_ort_flavor_is_refused(exported, tmp_path):
    trt_graph = copy_export(exported(), tmp_path / "trt", set_flavor("trt"))
    expect = "does not support" if not API.supports_plugins else "libssd_trt_plugins.so"
    with pytest.raises(UserError, match=expect):
        build(trt_graph, BuildOptions())  # refused before the parser sees any plugin node
    ort_graph = copy_export(exported(), tmp_path / "ort", set_flavor("ort"))
    with pytest.raises(UserError, match="ONNX Runtime contrib ops"):
        build(ort_graph, BuildOptions())


def test_unneeded_plugins_and_rtx_timing_cache_are_noted_not_recorded(exported, tmp_path):
    lib = tmp_path / "libfake.so"
    lib.write_bytes(b"\x7fELF")
    cache = tmp_path / "timing.cache"
    result = build(exported(), BuildOptions(profile="decode", plugins=lib, timing_cache=cache,
                                            output=tmp_path / "n.engine"))
    assert any("--plugins ignored" in n for n in result.notes) and result.record.plugins is None
    if not API.supports_timing_cache:
        assert any("--timing-cache ignored" in n for n in result.notes) and not cache.exists()
    else:
        assert cache.stat().st_size > 0


def test_rebuilt_onnx_or_replaced_engine_is_refused_by_the_sidecar(exported, tmp_path):
    """The checks the runner makes before deserializing, against a real build (no GPU needed up to here)."""
    export_dir = exported()
    engine = tmp_path / "s.engine"
    build(export_dir, BuildOptions(profile="decode", output=engine))
    car = sc.load(engine)
    here = sc.Environment(tensorrt=API.package, tensorrt_version=API.version,
                          compute_capability=(car.compute_targets or [car.compute_capability])[0],
                          engine_sha256=sc.sha256_bytes(engine.read_bytes()),
                          onnx_sha256=sc.sha256_files(sc.onnx_files(export_dir)), onnx_dir=str(export_dir))
    assert sc.problems(car, here) == []
    other = copy_export(export_dir, tmp_path / "other", lambda m: setattr(m, "doc_string", "re-exported"))
    moved = sc.Environment(**{**here.__dict__, "onnx_sha256": sc.sha256_files(sc.onnx_files(other))})
    assert any("built from another ONNX" in p for p in sc.problems(car, moved))
    engine.write_bytes(engine.read_bytes()[:-1])
    replaced = sc.Environment(**{**here.__dict__, "engine_sha256": sc.sha256_bytes(engine.read_bytes())})
    assert any("replaced without its sidecar" in p for p in sc.problems(car, replaced))


def test_validate_plumbing_finds_the_engine_of_an_export(exported, tmp_path):
    """What ``validate --backend trt`` uses: the export's engine by default, tied to that export's ONNX."""
    import click

    @click.command()
    @click.argument("export_dir")
    @engine_options
    def probe(export_dir, engine, plugins):
        runner = trt_runner(export_dir, engine, plugins)
        click.echo(f"{runner.engine_path}|{runner.export_dir}|{runner.plugins}")

    export_dir = exported()
    with pytest.raises(UserError, match=f"ssd-deploy build {tmp_path}"):
        trt_runner(tmp_path)
    engine = tmp_path / "v.engine"
    build(export_dir, BuildOptions(profile="decode", output=engine))
    res = CliRunner().invoke(probe, [str(export_dir), "--engine", str(engine), "--plugins", "lib.so"])
    assert res.exit_code == 0 and res.output.strip() == f"{engine}|{export_dir}|lib.so", res.output


# --- on a GPU with TensorRT ---------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason=NEEDS)
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_engine_matches_pytorch_prefill_then_decode(exported, checkpoint, tmp_path, dtype):
    from ssd_deploy.validate import validate

    export_dir = exported(dtype)
    engine = tmp_path / "gpu.engine"
    car = build(export_dir, BuildOptions(batch_range="1,2,4", seq_range="1,64,128", output=engine)).record
    if car.compute_capability == sc.AHEAD_OF_TIME and sc.gpu_compute_capability() not in car.compute_targets:
        pytest.skip(f"{NEEDS}: {car.label} cannot target this GPU ({sc.gpu_compute_capability()})")
    report = validate(export_dir, checkpoint, TrtRunner(engine, export_dir=export_dir), steps=4, batch=2, seed=5)
    assert report.ok, report.to_dict()
    ids = np.random.default_rng(1).integers(0, 250, (2, 3))
    with TrtRunner(engine) as runner:  # device-resident decode: states stay on the GPU between steps
        states, host = runner.zero_states(2), {k: v.cpu().numpy() for k, v in runner.zero_states(2).items()}
        for i in range(3):
            out = runner.infer_torch({"input_ids": torch.from_numpy(ids[:, i:i + 1]).cuda(), **states})
            assert runner.active_profile == 0 and all(t.is_cuda for t in out.values())
            states = runner.carried(out)
            ref = runner.infer({"input_ids": ids[:, i:i + 1], **host})  # the host path, copies in and out
            host = {st.name: ref[st.output] for st in runner.metadata.states}
        torch.cuda.synchronize()
        for name, t in out.items():
            assert np.isfinite(ref[name]).all()
            np.testing.assert_array_equal(t.float().cpu().numpy(), np.asarray(ref[name], np.float32))
