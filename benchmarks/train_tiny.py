"""Trains the tiny Mamba-2 that ships in ssd_deploy/data/tiny-stdlib: a model that has learned something, so that
quantization error can be measured (docs/quantization.md) and ``ssd-deploy demo`` prints readable text.

Data: the Python standard library's own sources (ssd_deploy/corpus.py: fixed split by file). Tokenizer: byte-level
BPE (``tokenizers``) trained on the train split. Model: ssd_deploy.model.Mamba2LM on the ops' PyTorch listings.
Everything is seeded; on the same Python (its stdlib is the data), torch version and thread count the run repeats.

    python benchmarks/train_tiny.py [--out ssd_deploy/data/tiny-stdlib] [--steps 600] [--threads 2]

The ``ssd_deploy::`` ops are inference contracts with no backward; here they get one that differentiates their
PyTorch listings (recomputed in the backward pass), registered for this process only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# OpenMP threads that spin while waiting make a shared, oversubscribed machine ~10x slower (measured: a training
# step 28 s with the default policy, 3 s passive); set before torch loads its OpenMP runtime
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402

from ssd_deploy import corpus  # noqa: E402
from ssd_deploy.checkpoint import write_checkpoint  # noqa: E402
from ssd_deploy.config import Mamba2Config  # noqa: E402
from ssd_deploy.model import Mamba2LM  # noqa: E402
from ssd_deploy.ssd import ops, reference  # noqa: E402

VOCAB = 1024
# ~0.9 M parameters (3.6 MB in fp32: within the repository's 5 MB budget for shipped weights); sized so that
# training takes minutes on a shared 2-core machine, where the ops' PyTorch listings are the cost
CONFIG = Mamba2Config(d_model=192, n_layer=3, vocab_size=VOCAB, d_state=32, d_conv=4, expand=2, headdim=64,
                      ngroups=1, chunk_size=32)
SEQ, BATCH, LR, WARMUP, SEED = 256, 16, 4e-3, 15, 0


def register_listing_gradients():
    """Backward of each op = autograd through its PyTorch listing, recomputed from the saved inputs."""
    listings = {
        ops.ssd_scan: lambda x, dt, A, B, C, D, dt_bias, s, q, sp, lo, hi: reference.ssd_chunked(
            x, dt, A, B, C, D, dt_bias, s, chunk_size=q, dt_softplus=sp, dt_min=lo, dt_max=hi),
        ops.causal_conv1d: lambda x, w, b, s, silu: reference.causal_conv1d(x, w, b, s, silu=silu),
        ops.gated_rmsnorm: reference.gated_rmsnorm,
    }
    for op, listing in listings.items():
        def setup_context(ctx, inputs, output):
            ctx.inputs = inputs

        def backward(ctx, *grads, listing=listing):
            with torch.enable_grad():
                ins = [x.detach().requires_grad_(True) if isinstance(x, torch.Tensor) and x.is_floating_point()
                       else x for x in ctx.inputs]
                outs = listing(*ins)
                outs = outs if isinstance(outs, tuple) else (outs,)
                used = [(o, g) for o, g in zip(outs, grads) if g is not None]
                wrt = [x for x in ins if isinstance(x, torch.Tensor) and x.requires_grad]
                got = iter(torch.autograd.grad([o for o, _ in used], wrt, [g for _, g in used], allow_unused=True))
            return tuple(next(got) if isinstance(x, torch.Tensor) and x.requires_grad else None for x in ins)

        op.register_autograd(backward, setup_context=setup_context)


def init_model(cfg: Mamba2Config, g: torch.Generator) -> Mamba2LM:
    """mamba_ssm's initialisation: A in [1, 16], dt in [1e-3, 0.1] through an inverse softplus, small embedding
    (tied to the head), out_proj scaled down by the depth."""
    model = Mamba2LM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_log"):
                p.copy_(torch.log(torch.empty(p.shape).uniform_(1, 16, generator=g)))
            elif name.endswith("dt_bias"):
                dt = torch.exp(torch.rand(p.shape, generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
                p.copy_(dt + torch.log(-torch.expm1(-dt)))
            elif name.endswith("embedding.weight"):
                p.normal_(0, 0.02, generator=g)
            elif name.endswith("in_proj.weight") or name.endswith("out_proj.weight"):
                bound = 1 / math.sqrt(p.shape[1])
                p.uniform_(-bound, bound, generator=g)
                if name.endswith("out_proj.weight"):
                    p.div_(math.sqrt(2 * cfg.n_layer))
            elif name.endswith("conv1d.weight"):
                bound = 1 / math.sqrt(p.shape[-1])
                p.uniform_(-bound, bound, generator=g)
            elif name.endswith("conv1d.bias"):
                p.zero_()
    return model


def train_tokenizer(path: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=[corpus.EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus.texts("train"), trainer)
    tok.save(str(path))
    return tok


def loss_of(model: Mamba2LM, batch: torch.Tensor) -> torch.Tensor:
    conv, ssm = model.init_states(batch.shape[0])
    logits, _, _ = model(batch[:, :-1], conv, ssm)
    return torch.nn.functional.cross_entropy(logits[..., :VOCAB].reshape(-1, VOCAB), batch[:, 1:].reshape(-1))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "ssd_deploy/data/tiny-stdlib")
    ap.add_argument("--steps", type=int, default=160)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    g = torch.Generator().manual_seed(SEED)
    register_listing_gradients()
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        tok = train_tokenizer(Path(tmp) / "tokenizer.json")
        tok_json = (Path(tmp) / "tokenizer.json").read_text()
    train = torch.from_numpy(corpus.token_stream(tok, "train"))
    held = corpus.windows(corpus.token_stream(tok, "held-out"), SEQ, 64)
    print(f"tokenizer + data: {time.time() - t0:.0f} s; train {len(train)} tokens, held-out windows {len(held)}",
          flush=True)
    model = init_model(CONFIG, g)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "conv1d" not in n]
    other = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "conv1d" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                            lr=LR, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1, (s + 1) / WARMUP) * (
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps)))))
    log = []
    t0 = time.time()
    for step in range(args.steps):
        starts = torch.randint(0, len(train) - SEQ - 1, (BATCH,), generator=g)
        batch = torch.stack([train[s:s + SEQ + 1] for s in starts])
        loss = loss_of(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 10 == 0 or step == args.steps - 1:
            log.append({"step": step, "loss": round(loss.item(), 4), "s": round(time.time() - t0, 1)})
            print(log[-1], flush=True)
    train_s = time.time() - t0
    model.eval()
    with torch.no_grad():
        held_loss = float(np.mean([loss_of(model, torch.from_numpy(held[i:i + 8])).item()
                                   for i in range(0, len(held), 8)]))
    print(f"held-out loss {held_loss:.4f} (perplexity {math.exp(held_loss):.3f}); trained in {train_s:.0f} s")
    manifest = {
        "script": "benchmarks/train_tiny.py", "seed": SEED, "steps": args.steps, "batch": BATCH, "seq": SEQ,
        "lr": LR, "warmup": WARMUP, "threads": args.threads, "train_seconds": round(train_s),
        "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
        "corpus": {"root": "sysconfig stdlib", "held_out_every": corpus.HELD_OUT_EVERY,
                   "excluded": sorted(corpus.EXCLUDED), "train_files": len(corpus.files("train")),
                   "held_out_files": len(corpus.files("held-out")), "train_tokens": len(train)},
        "held_out": {"windows": len(held), "tokens_per_window": SEQ, "loss": round(held_loss, 4),
                     "perplexity": round(math.exp(held_loss), 3)},
        "log": log,
    }
    path = write_checkpoint(model, args.out, "hf")
    (path / "tokenizer.json").write_text(tok_json)
    (path / "training.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
