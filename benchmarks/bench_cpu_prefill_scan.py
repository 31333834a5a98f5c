"""The ort flavor's prefill scan on the CPU: ONNX Runtime's LinearAttention (``--prefill contrib``) against the
portable chunked scan (``--prefill chunked``) at several chunk sizes, side by side in one run (issue 15, "The CPU
too"; benchmarks/RESULTS.md).

Each ``LABEL=DIR`` is an export of the same weights (the chunk size is the checkpoint config's ``chunk_size``, so a
chunk-size variant is a copy of the checkpoint with another value there). Prefill of 1 x L tokens from zero states,
for every L of ``--lengths``: median seconds over ``--repeats`` calls, the exports interleaved call by call (the
order rotating, so that no export always follows itself: ONNX Runtime's worker threads spin a while after a call
and slow the next session's) so that all see the same load; ratios to the first export. Parity first: every export's
last-position logits within 1e-4 of the first one's at each length. ``uptime``'s load is recorded before and after.

    PYTHONPATH=. python benchmarks/bench_cpu_prefill_scan.py contrib=DIR chunked64=DIR ... [--lengths 128,512,2048]
"""

from __future__ import annotations

import datetime
import json
import os
import statistics
import time
from collections import defaultdict
from pathlib import Path

import click
import numpy as np

from bench_cpu_flavors import _commit
from ssd_deploy.interface import read_metadata
from ssd_deploy.runtime.backends import OrtBackend

MAX_REL_ERR = 1e-4  # fp32 end to end (docs/verification.md)


@click.command()
@click.argument("exports", nargs=-1, required=True)
@click.option("--lengths", default="128,512,2048", show_default=True)
@click.option("--repeats", default=5, show_default=True)
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None)
def main(exports, lengths, repeats, json_out):
    backends = {}
    for item in exports:
        label, _, path = item.partition("=")
        backends[label] = OrtBackend(Path(path))
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "commit": _commit(), "load_avg_start": list(os.getloadavg()), "repeats": repeats,
              "exports": {k: {"dir": v.split("=", 1)[1], "prefill": read_metadata(Path(v.split("=", 1)[1])).prefill,
                              "chunk_size": b.config.chunk_size}
                          for (k, b), v in zip(backends.items(), exports)}, "lengths": {}}
    names = list(backends)
    cfg = backends[names[0]].config
    for length in map(int, lengths.split(",")):
        ids = np.random.default_rng(length).integers(0, cfg.vocab_size, (1, length))
        first = {n: backends[n].forward(ids, backends[n].zero_states(1))[0] for n in names}  # warm-up and parity
        rel = {n: float(np.linalg.norm(first[n] - first[names[0]]) / np.linalg.norm(first[names[0]])) for n in names}
        times = defaultdict(list)
        for r in range(repeats):
            for n in names[r % len(names):] + names[:r % len(names)]:  # rotated: each follows each other alike
                b = backends[n]
                states = b.zero_states(1)
                t = time.perf_counter()
                b.forward(ids, states)
                times[n].append(time.perf_counter() - t)
        med = {n: statistics.median(v) for n, v in times.items()}
        result["lengths"][length] = {n: {"s": med[n], "tok_s": length / med[n], "vs_first": med[names[0]] / med[n],
                                         "rel_err_vs_first": rel[n]} for n in names}
        click.echo(f"1x{length}: " + ", ".join(f"{n} {length / med[n]:.0f} tok/s ({med[names[0]] / med[n]:.2f}x, "
                                               f"err {rel[n]:.1e})" for n in names), err=True)
    result["load_avg_end"] = list(os.getloadavg())
    result["ok"] = all(v["rel_err_vs_first"] <= MAX_REL_ERR for r in result["lengths"].values() for v in r.values())
    click.echo(json.dumps(result, indent=1))
    if json_out:
        json_out.write_text(json.dumps(result, indent=1))
    if not result["ok"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
