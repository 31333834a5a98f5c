"""The ``ssd-deploy`` command line. Each command is a thin shell over one module; user errors become one message
and exit status 2, a failed validation exit status 1."""

from __future__ import annotations

import functools
import json
import sys
import tempfile
from pathlib import Path

import click

from .errors import UserError


def user_errors(fn):
    """Turns UserError into one line on stderr and exit status 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)

    return wrapper


@click.group()
@click.version_option(package_name="ssd-deploy")
def main():
    """Mamba-2 (SSD) checkpoints to proven ONNX Runtime and TensorRT inference."""


@main.command()
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--preset", "preset_name", default="tiny", show_default=True, help="tiny | 130m | 2.7b | codestral")
@click.option("--format", "fmt", type=click.Choice(["hf", "mamba_ssm"]), default="hf", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@user_errors
def new(out_dir, preset_name, fmt, seed):
    """Write a random checkpoint (either on-disk format) to OUT_DIR."""
    from .checkpoint import random_model, write_checkpoint
    from .presets import preset

    path = write_checkpoint(random_model(preset(preset_name), seed), out_dir, fmt)
    click.echo(f"wrote {fmt} checkpoint ({preset_name}, seed {seed}) to {path}")


def export_options(fn):
    for opt in reversed([
        click.option("--flavor", default="portable", show_default=True, help="portable"),
        click.option("--dtype", default="fp32", show_default=True, help="fp32 | fp16 | bf16"),
        click.option("--opset", type=int, default=18, show_default=True),
        click.option("--external-data", type=click.Choice(["auto", "always", "never"]), default="auto",
                     show_default=True, help="weights in a side file (auto: when the model is large)"),
        click.option("--logits", type=click.Choice(["all", "last"]), default="all", show_default=True,
                     help="logits for every position, or the last one only"),
        click.option("--graph", type=click.Choice(["unified", "decode"]), default="unified", show_default=True,
                     help="one graph for prefill and decode, or a single-token decode graph"),
    ]):
        fn = opt(fn)
    return fn


@main.command()
@click.argument("ckpt", type=click.Path(path_type=Path))
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), required=True, help="output directory")
@export_options
@user_errors
def export(ckpt, out_dir, flavor, dtype, opset, external_data, logits, graph):
    """Export checkpoint directory CKPT to ONNX in OUT_DIR."""
    from .onnx.export import ExportOptions, export as do_export

    opts = ExportOptions(flavor=flavor, dtype=dtype, opset=opset, external_data=external_data, logits=logits,
                         graph=graph)
    path = do_export(ckpt, out_dir, opts)
    click.echo(f"exported {ckpt} ({flavor}, {dtype}) to {path}")


@main.command()
@click.argument("export_dir", type=click.Path(path_type=Path))
@click.option("--against", "ckpt", type=click.Path(path_type=Path), required=True,
              help="the checkpoint directory the model was exported from")
@click.option("--provider", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--steps", type=int, default=4, show_default=True, help="decode steps after the prefill")
@click.option("--batch", type=int, default=2, show_default=True)
@click.option("--prompt-len", type=int, default=None, help="default: 1.5 chunks + 3 tokens")
@click.option("--seed", type=int, default=None)
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
@user_errors
def validate(export_dir, ckpt, provider, steps, batch, prompt_len, seed, as_json):
    """Prove an export against the PyTorch reference (exit 1 on failure)."""
    from .runtime.ort_runner import ort_runner
    from .validate import format_report, validate as do_validate

    report = do_validate(export_dir, ckpt, ort_runner(export_dir, provider), steps=steps, batch=batch,
                         prompt_len=prompt_len, seed=seed)
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else format_report(report))
    sys.exit(0 if report.ok else 1)


@main.command()
@click.argument("export_dir", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True)
@user_errors
def inspect(export_dir, as_json):
    """Print an export's metadata, inputs/outputs and op histogram."""
    from .inspect import describe, format_description

    info = describe(export_dir)
    click.echo(json.dumps(info, indent=2) if as_json else format_description(info))


@main.command()
@click.option("--workdir", type=click.Path(path_type=Path), default=None,
              help="where to write the checkpoint and export (default: a new temporary directory)")
@user_errors
def demo(workdir):
    """Tiny random Mamba-2 → portable ONNX → ONNX Runtime, validated against PyTorch."""
    from .checkpoint import random_model, write_checkpoint
    from .onnx.export import export as do_export
    from .presets import preset
    from .runtime.ort_runner import ort_runner
    from .validate import format_report, validate as do_validate

    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="ssd-deploy-demo-"))
    ckpt = write_checkpoint(random_model(preset("tiny"), seed=0), work / "checkpoint", "hf")
    click.echo(f"checkpoint: {ckpt}")
    out = do_export(ckpt, work / "export")
    click.echo(f"export:     {out}")
    report = do_validate(out.parent, ckpt, ort_runner(out.parent), steps=4, seed=0)
    click.echo(format_report(report))
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
