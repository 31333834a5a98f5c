"""The ``build`` command: a TensorRT engine and its JSON sidecar from an export."""

from __future__ import annotations

import json

import click

from ..cli_vocabulary import PATH, Choice, export_argument, output_option
from ..errors import user_errors
from .profiles import CHOICES as PROFILE_CHOICES


@click.command()
@export_argument
@click.option("--recipe", default=None, metavar="NAME|PATH",
              help="export recipe whose [tensorrt] ranges to use (default: the one stored in the export)")
@click.option("--plugins", type=PATH, default=None, metavar="LIB",
              help="TensorRT plugin library; required for trt-flavor graphs "
                   "(plugins/build/libssd_trt_plugins.so)")
@click.option("--profile", type=Choice(PROFILE_CHOICES, "profile"), default=None,
              help="optimization profiles: decode (seq = 1), prefill (the --seq-range) or both  [default: the "
                   "recipe's, else both]")
@click.option("--batch-range", default=None, metavar="MIN,OPT,MAX",
              help="batch range of every profile  [default: the recipe's, else 1,1,4]")
@click.option("--seq-range", default=None, metavar="MIN,OPT,MAX",
              help="sequence range of the prefill profile  [default: the recipe's, else 1,256,2048]")
@click.option("--timing-cache", type=PATH, default=None, metavar="PATH",
              help="TensorRT timing cache to read and update (ignored by TensorRT-RTX)")
@click.option("--workspace-mib", type=click.IntRange(min=1), default=None, metavar="MIB",
              help="builder workspace limit  [default: the recipe's workspace_mib, else TensorRT's]")
@output_option("ENGINE", "engine file  [default: EXPORT/model.engine; the sidecar is ENGINE.json]", required=False)
@click.option("-v", "--verbose", is_flag=True, help="show TensorRT's log while building")
@click.option("--verify-weights", is_flag=True, help="hash the export's weight files whatever their size (they are "
                                                     "always size-checked, and hashed up to 1 GiB)")
@click.option("--json", "as_json", is_flag=True,
              help="print the new engine's sidecar as JSON (no progress display); this builds: to describe an "
                   "existing engine, `ssd-deploy inspect ENGINE --json`")
@user_errors
def build(export_dir, recipe, plugins, profile, batch_range, seq_range, timing_cache, workspace_mib, output, verbose,
          verify_weights, as_json):
    """Build a TensorRT engine (and its JSON sidecar) from the export in EXPORT.

    Uses TensorRT, or TensorRT-RTX where TensorRT is not installed (it builds without a GPU); set
    SSD_DEPLOY_TENSORRT=tensorrt|tensorrt_rtx to choose."""
    import ssd_deploy as api
    from ..interface import verify_weights as verify

    if verify_weights:
        verify(export_dir, always_hash=True)
    result = api.build(export_dir, output, recipe=recipe, plugins=plugins, profile=profile, batch_range=batch_range,
                       seq_range=seq_range, timing_cache=timing_cache, workspace_mib=workspace_mib, verbose=verbose)
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
