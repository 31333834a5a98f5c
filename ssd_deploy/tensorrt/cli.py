"""Click pieces for TensorRT: the ``build`` command, and the options a command running an engine takes
(``validate --backend trt``)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import user_errors


def engine_options(fn):
    """--engine and --plugins, for commands that run a TensorRT engine through ``runner.trt_runner``."""
    fn = click.option("--plugins", type=click.Path(path_type=Path), default=None,
                      help="TensorRT plugin library (trt-flavor engines; default: the one the engine was built "
                           "with)")(fn)
    return click.option("--engine", type=click.Path(path_type=Path), default=None,
                        help="TensorRT engine (default: EXPORT_DIR/model.engine)")(fn)


@click.command()
@click.argument("export_dir", metavar="OUTDIR", type=click.Path(path_type=Path))
@click.option("--recipe", default=None, metavar="NAME|PATH",
              help="export recipe whose [tensorrt] ranges to use (default: the one stored in the export)")
@click.option("--plugins", type=click.Path(path_type=Path), default=None, metavar="LIB",
              help="TensorRT plugin library; required for trt-flavor graphs "
                   "(plugins/build/libssd_trt_plugins.so)")
@click.option("--profile", type=click.Choice(["decode", "prefill", "both"]), default=None,
              help="optimization profiles: decode (seq = 1), prefill (the --seq range) or both  [default: the "
                   "recipe's, else both]")
@click.option("--batch", default=None, metavar="MIN,OPT,MAX", help="batch range of every profile  [default: the recipe's, else 1,1,4]")
@click.option("--seq", default=None, metavar="MIN,OPT,MAX", help="sequence range of the prefill profile  "
                                                                  "[default: the recipe's, else 1,256,2048]")
@click.option("--timing-cache", type=click.Path(path_type=Path), default=None, metavar="PATH",
              help="TensorRT timing cache to read and update (ignored by TensorRT-RTX)")
@click.option("--workspace", "workspace_mb", type=click.IntRange(min=1), default=None, metavar="MB",
              help="builder workspace limit in MiB  [default: the recipe's, else TensorRT's]")
@click.option("-o", "--output", "engine", type=click.Path(path_type=Path), default=None, metavar="ENGINE",
              help="engine file  [default: OUTDIR/model.engine; the sidecar is ENGINE.json]")
@click.option("-v", "--verbose", is_flag=True, help="show TensorRT's log while building")
@click.option("--json", "as_json", is_flag=True, help="print the sidecar as JSON")
@user_errors
def build(export_dir, recipe, plugins, profile, batch, seq, timing_cache, workspace_mb, engine, verbose, as_json):
    """Build a TensorRT engine (and its JSON sidecar) from the export in OUTDIR.

    Uses TensorRT, or TensorRT-RTX where TensorRT is not installed (it builds without a GPU); set
    SSD_DEPLOY_TENSORRT=tensorrt|tensorrt_rtx to choose."""
    from .build import BuildOptions, build as do_build, read_recipe

    opts = BuildOptions(profile=profile, batch=batch, seq=seq, recipe=read_recipe(recipe) if recipe else None,
                        plugins=plugins, timing_cache=timing_cache, workspace_mb=workspace_mb, engine=engine,
                        verbose=verbose)
    result = do_build(export_dir, opts)
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    if as_json:
        click.echo(json.dumps({"engine": str(result.engine), "sidecar": str(result.sidecar),
                               **result.record.to_dict()}, indent=2))
        return
    rec = result.record
    size = result.engine.stat().st_size / 2**20
    click.echo(f"wrote {result.engine} ({size:.1f} MiB, {rec.label}, built in {rec.build_seconds:.1f} s) and "
               f"{result.sidecar.name}")
    gpu = rec.compute_capability + (f" → runs on {', '.join(rec.compute_targets)}" if rec.compute_targets else "")
    click.echo(f"  compute capability: {gpu}")
    for p in rec.profiles:
        click.echo(f"  profile {p.name:<8} batch {p.batch}  seq {p.seq}")
