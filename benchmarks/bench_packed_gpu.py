"""Packed prefill on one GPU (docs/op-contracts.md, "Packed sequences"): 16 prompts of lengths drawn from 16..4096,
bf16, chunk 256, parity checked in the same run.

Kernels, per head shape (h, p, n, g): our Triton ``ssd_scan_packed`` (one call, per-sequence initial and final
states) vs our ``ssd_scan`` called once per sequence, the same two for our CUDA kernels (``ssd_deploy.kernels``,
where the library is built: ``ssd-deploy plugins build``) vs mamba_ssm's ``mamba_chunk_scan_combined`` with ``seq_idx``
(one call; ``cu_seqlens`` + ``return_varlen_states`` for the per-sequence final states; it takes no per-sequence
initial states, so every kernel starts from zero states here) and called once per sequence. Device time of each
variant (``triton.testing.do_bench``, median). Parity: every variant's y and final states against the fp32 packed
listing fed the same bf16-rounded inputs (<= 1e-2).

Model: the torch backend (130m random checkpoint, bf16, our Triton kernels) prefilling the 16 prompts in one packed
call vs one call per prompt (wall time with CUDA synchronisation, median of repeats), last-token logits of the
packed call against the one-by-one ones.

    MAMBA_SSM_SRC=/path/to/mamba PYTHONPATH=.:benchmarks python3 benchmarks/bench_packed_gpu.py --out DIR

mamba_ssm is read from its source tree (``--mamba``, default ``$MAMBA_SSM_SRC``), imported as in
bench_ssd_kernels.py (its Triton modules only; ``einops`` needed).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench_ssd_kernels import CHUNK, DTYPE, PARITY_TOL, ceilings, load_mamba, median_ms, random_inputs, rel_err
from ssd_deploy.ssd import reference
from ssd_deploy.ssd.triton.scan import ssd_scan, ssd_scan_packed

HEADS = [(24, 64, 128, 1), (80, 64, 128, 1), (128, 64, 128, 8)]  # 130m, 2.7b, Codestral-like (h, p, n, g)


def kernel_rows(lengths: list[int], mamba_scan, cuda_kernels) -> list[dict]:
    total, nseq = sum(lengths), len(lengths)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], device="cuda")
    seq_idx = torch.repeat_interleave(torch.arange(nseq, device="cuda", dtype=torch.int32),
                                      torch.tensor(lengths, device="cuda"))[None]
    spans = list(zip(cu[:-1].tolist(), cu[1:].tolist()))
    rows = []
    for h, p, n, g in HEADS:
        t = random_inputs(1, total, h, p, n, g)
        zeros = torch.zeros(nseq, h, p, n, device="cuda")
        args = (t["x"], t["dt"], t["A"], t["B"], t["C"], t["D"], t["dt_bias"])

        def ours_packed():
            return ssd_scan_packed(*args, zeros, cu, CHUNK)

        def per_sequence(fn):
            outs = [fn(*(v[:, a:e] if v.dim() > 1 else v for v in args), s) for s, (a, e) in enumerate(spans)]
            return torch.cat([y for y, _ in outs], 1), torch.cat([f for _, f in outs])

        def ours_each():
            return per_sequence(lambda *a: ssd_scan(*a[:7], zeros[a[7]:a[7] + 1], CHUNK))

        variants = {"ours packed": ours_packed, "ours one call per sequence": ours_each}
        if cuda_kernels is not None:
            cu32 = cu.to(torch.int32)
            variants["CUDA packed"] = lambda: cuda_kernels.ssd_scan_packed(*args, zeros, cu32, chunk_size=CHUNK)
            variants["CUDA one call per sequence"] = lambda: per_sequence(
                lambda *a: cuda_kernels.ssd_scan(*a[:7], zeros[a[7]:a[7] + 1], chunk_size=CHUNK))
        if mamba_scan is not None:
            variants["mamba_ssm seq_idx"] = lambda: mamba_scan(*args[:5], CHUNK, D=args[5], dt_bias=args[6],
                                                               seq_idx=seq_idx, cu_seqlens=cu.to(torch.int32),
                                                               dt_softplus=True,
                                                               return_varlen_states=True)
            variants["mamba_ssm one call per sequence"] = lambda: per_sequence(
                lambda x, dt, A, B, C, D, dt_bias, s: mamba_scan(x, dt, A, B, C, CHUNK, D=D, dt_bias=dt_bias,
                                                                 dt_softplus=True, return_final_states=True))
        rounded = {k: v.float() for k, v in t.items()}
        y_ref, s_ref = reference.ssd_chunked_packed(**rounded, cu_seqlens=cu, initial_states=zeros, chunk_size=CHUNK)
        row = {"heads": [h, p, n, g], "tokens": total}
        for name, fn in variants.items():
            y, final = fn()
            errs = (rel_err(y, y_ref), rel_err(final, s_ref))
            if not max(errs) <= PARITY_TOL:
                raise SystemExit(f"{name} at {(h, p, n, g)}: relative errors {errs} > {PARITY_TOL}")
            row[name] = {"ms": median_ms(fn), "err_y": errs[0], "err_states": errs[1]}
        del y_ref, s_ref
        torch.cuda.empty_cache()
        rows.append(row)
        print(json.dumps(row))
    return rows


def model_row(lengths: list[int], repeats: int) -> dict:
    from ssd_deploy.checkpoint import random_model, write_checkpoint
    from ssd_deploy.presets import preset
    from ssd_deploy.runtime.backends import TorchBackend

    with tempfile.TemporaryDirectory(prefix="bench-packed-gpu-") as tmp:
        ckpt = write_checkpoint(random_model(preset("130m"), seed=0), Path(tmp) / "ckpt", "hf")
        backend = TorchBackend(ckpt, "cuda", "bf16", triton=True)
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, backend.config.vocab_size, (n,), generator=gen).tolist() for n in lengths]

    def one_by_one():
        return torch.cat([torch.from_numpy(backend.forward([p], backend.zero_states(1))[0]) for p in prompts])

    def packed():
        return torch.from_numpy(backend.forward_packed(prompts, backend.zero_states(len(prompts)))[0])

    timings = {}
    for name, fn in (("one call per prompt", one_by_one), ("packed", packed)):
        fn()  # warm-up (Triton compiles, allocator)
        times = []
        for _ in range(repeats):
            backend.synchronize()
            start = time.perf_counter()
            out = fn()
            backend.synchronize()
            times.append(time.perf_counter() - start)
        timings[name] = (statistics.median(times) * 1e3, out)
    err = rel_err(timings["packed"][1], timings["one call per prompt"][1])
    if not err <= PARITY_TOL:
        raise SystemExit(f"torch backend: packed logits differ from one-by-one (rel err {err:.1e})")
    return {"backend": backend.name, "tokens": sum(lengths), "err": err,
            **{f"{k} ms": v[0] for k, v in timings.items()}}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--mamba", type=Path, default=Path(os.environ.get("MAMBA_SSM_SRC", "third_party/mamba")))
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--min-len", type=int, default=16)
    ap.add_argument("--max-len", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    lengths = torch.randint(args.min_len, args.max_len + 1, (args.prompts,),
                            generator=torch.Generator().manual_seed(args.seed)).tolist()
    from ssd_deploy import kernels as cuda_kernels
    from ssd_deploy.errors import UserError

    try:
        cuda_kernels.library_path()
    except UserError as e:
        print(f"{e}: the CUDA kernels' columns are skipped")
        cuda_kernels = None
    mamba_scan = None
    if (args.mamba / "mamba_ssm").is_dir():
        load_mamba(args.mamba)
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined as mamba_scan
    else:
        print(f"mamba_ssm not found at {args.mamba}: its columns are skipped")
    result = {"date": datetime.date.today().isoformat(), "gpu": torch.cuda.get_device_name(),
              "torch": torch.__version__, "lengths": lengths, "dtype": str(DTYPE), "chunk": CHUNK,
              "ceilings": ceilings(), "kernels": kernel_rows(lengths, mamba_scan, cuda_kernels),
              "model": model_row(lengths, args.repeats)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_packed_gpu.json").write_text(json.dumps(result, indent=2))
    print(f"\nlengths {lengths} ({sum(lengths)} tokens), {result['gpu']}, bf16, chunk {CHUNK}")
    names = [k for k in result["kernels"][0] if k not in ("heads", "tokens")]
    print("| h, p, n, g | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for row in result["kernels"]:
        cells = [f"{row[k]['ms']:.3f} ms" for k in names]
        print(f"| {', '.join(map(str, row['heads']))} | " + " | ".join(cells) + " |")
    m = result["model"]
    print(f"\n{m['backend']} 130m: one call per prompt {m['one call per prompt ms']:.1f} ms, packed "
          f"{m['packed ms']:.1f} ms (logits rel err {m['err']:.1e})")


if __name__ == "__main__":
    main()
