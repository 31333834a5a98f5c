"""One vocabulary: the CLI's option names, forms and choices, the recipes' keys, ExportOptions/BuildOptions and the
export metadata use the same words (ssd_deploy/cli_vocabulary.py says which)."""

import dataclasses
import re
import typing
from pathlib import Path

import click
import pytest

from ssd_deploy import recipes
from ssd_deploy.cli import main
from ssd_deploy.config import FORMATS
from ssd_deploy.onnx import export as export_mod
from ssd_deploy.interface import ExportMetadata
from ssd_deploy.onnx.options import CHOICES, DTYPES, FLAVORS, ExportOptions
from ssd_deploy.presets import PRESETS
from ssd_deploy.runtime import backends
from ssd_deploy.runtime.kinds import BACKENDS, PROVIDERS, RUN_BACKENDS
from ssd_deploy.serving import pbtxt
from ssd_deploy.tensorrt.build import BuildOptions
from ssd_deploy.tensorrt.profiles import CHOICES as PROFILE_CHOICES

COMMANDS = {name: cmd for name, cmd in main.commands.items() if not isinstance(cmd, click.Group)}
COMMANDS.update({f"{g} {n}": c for g, grp in main.commands.items() if isinstance(grp, click.Group)
                 for n, c in grp.commands.items()})


def params(cmd) -> dict:
    return {p.name: p for p in cmd.params}


def flag(option) -> str:
    return max(option.opts, key=len)


def field_flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def test_every_recipe_export_key_is_an_export_option_and_a_cli_flag():
    fields = {f.name for f in dataclasses.fields(ExportOptions)}
    assert set(recipes.EXPORT_KEYS) == fields
    assert recipes.EXPORT_KEYS == typing.get_type_hints(ExportOptions)
    export = params(main.commands["export"])
    for name in fields:
        assert name in export, f"ExportOptions.{name} has no export flag"
        assert flag(export[name]) == field_flag(name)


def test_every_export_option_but_the_file_layout_is_recorded_in_the_metadata():
    meta = {f.name for f in dataclasses.fields(ExportMetadata)}
    assert {f.name for f in dataclasses.fields(ExportOptions)} - meta == {"external_data"}


def test_every_build_option_is_a_build_flag_of_the_same_name():
    build = params(main.commands["build"])
    for f in dataclasses.fields(BuildOptions):
        assert f.name in build, f"BuildOptions.{f.name} has no build flag"
        assert flag(build[f.name]) == field_flag(f.name)


def test_recipe_tensorrt_keys_are_build_words():
    """The recipe's workspace_mib is build's --workspace-mib; its profile names are build's --profile choices."""
    build = params(main.commands["build"])
    assert flag(build["workspace_mib"]) == "--workspace-mib"
    assert set(recipes.PROFILES) < set(build["profile"].type.choices)
    assert list(build["profile"].type.choices) == list(PROFILE_CHOICES)
    assert "workspace_mib" in recipes.load("trt-jetson-orin-fp16").to_dict()


@pytest.mark.parametrize("command,option,table", [
    ("export", "flavor", FLAVORS), ("export", "dtype", DTYPES),
    *[("export", name, values) for name, values in CHOICES.items()],
    ("new", "preset_name", tuple(PRESETS)), ("new", "fmt", FORMATS),
    ("run", "backend", RUN_BACKENDS), ("run", "provider", PROVIDERS), ("validate", "provider", PROVIDERS),
    ("serve-repo", "backend", pbtxt.BACKENDS), ("serve-repo", "strategy", pbtxt.STRATEGIES),
    ("serve-repo", "runtime", pbtxt.RUNTIMES), ("serve-repo", "provider", PROVIDERS), ("serve-repo", "dtype", DTYPES),
    ("bench", "provider", PROVIDERS), ("bench", "dtype", DTYPES),
])
def test_choices_are_the_modules_tables(command, option, table):
    p = params(COMMANDS[command])[option]
    assert isinstance(p.type, click.Choice), f"{command} {flag(p)} accepts any text"
    assert list(p.type.choices) == list(table)


def test_the_tables_name_what_the_modules_implement():
    assert tuple(export_mod.FLAVORS) == FLAVORS and tuple(export_mod.DTYPES) == DTYPES
    assert backends.BACKENDS == BACKENDS
    assert set(params(COMMANDS["validate"])["backend"].type.choices) == set(BACKENDS) - {"torch"}


def test_one_form_per_word():
    """-o/--output is what a command writes; EXPORT and CKPT name the same directories everywhere; --batch is one
    integer, lists and ranges have names of their own; --json and --provider mean the same everywhere."""
    for name, cmd in COMMANDS.items():
        ps = params(cmd)
        if "output" in ps:
            assert ps["output"].opts == ["-o", "--output"], name
        for p in cmd.params:
            assert "--out" not in p.opts, name
            if isinstance(p, click.Argument):
                assert p.metavar in ("EXPORT", "CKPT", "MODEL", "ARTIFACT"), f"{name}: argument {p.name} named {p.metavar}"
        if "export_dir" in ps:
            assert ps["export_dir"].metavar == "EXPORT", name
        if "ckpt" in ps:
            assert ps["ckpt"].metavar == "CKPT", name
        if "batch" in ps:
            assert isinstance(ps["batch"].type, click.types.IntParamType) and flag(ps["batch"]) == "--batch", name
        if "as_json" in ps:
            assert ps["as_json"].opts == ["--json"] and ps["as_json"].is_flag, name
    for writer in ("new", "export", "build", "serve-repo"):
        assert "output" in params(COMMANDS[writer]), f"{writer} has no -o/--output"
    assert flag(params(COMMANDS["bench"])["batches"]) == "--batches"
    assert flag(params(COMMANDS["build"])["batch_range"]) == "--batch-range"


def test_choice_refusals_read_like_the_modules(tmp_path):
    from click.testing import CliRunner

    r = CliRunner().invoke(main, ["export", str(tmp_path), "-o", str(tmp_path / "o"), "--flavor", "tflite"])
    assert r.exit_code == 2 and "unknown flavor 'tflite'; choose one of portable, ort, trt" in r.output


def test_flags_that_change_a_recipe_are_said(tmp_path):
    from click.testing import CliRunner

    r = CliRunner().invoke(main, ["export", str(tmp_path / "none"), "-o", str(tmp_path / "o"), "--recipe",
                                  "cpu-fp32", "--dtype", "fp16", "--logits", "last"])
    assert "recipe cpu-fp32: dtype fp32 -> fp16 (--dtype)" in r.output
    assert "logits" not in r.output.split("error")[0]  # the recipe's value already: nothing changed
    assert r.exit_code == 2  # then the missing checkpoint is refused


def test_the_readme_usage_block_uses_the_cli_words():
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = text.split("## Using it", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    lines = block.replace("\\\n", " ").splitlines()
    seen = set()
    for line in lines:
        words = line.split("#")[0].split()
        name = " ".join(words[1:3]) if words[1:3] == ["plugins", "build"] else words[1]
        opts = {o for p in COMMANDS[name].params for o in p.opts}
        for word in re.findall(r"(?<![\w-])(--[a-z][\w-]*|-[a-z]\b)", " ".join(words[2:])):
            assert word in opts, f"README: ssd-deploy {name} has no {word}"
        seen.add(name)
    assert seen == set(COMMANDS)
