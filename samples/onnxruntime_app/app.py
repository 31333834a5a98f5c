"""Run an ssd-deploy export with onnxruntime, numpy and tokenizers only: what an application needs, nothing more.

Everything comes from the export: the state inputs and outputs (names, shapes, dtypes, layouts), the vocabulary
size, whether the graph returns the logits of every position or of the last one, and whether it takes whole prompts
or one token per call. The format is described in docs/graph-interface.md of the ssd-deploy repository.

    python app.py EXPORT_DIR --input-ids 1,2,3 [--max-new-tokens 32] [--temperature 0.8 --top-k 50 --seed 0]
    python app.py EXPORT_DIR --prompt "Hello" [--tokenizer tokenizer.json]   # tokenizer.json beside the model
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

PREFIX = "ssd_deploy."
NUMPY = {"fp32": np.float32, "fp16": np.float16}
PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


class Model:
    """One ONNX Runtime session over an export, and what its metadata says about it."""

    def __init__(self, export_dir: Path, provider: str = "cpu"):
        path = Path(export_dir) / "model.onnx"
        if not path.is_file():
            sys.exit(f"error: {path}: no such file (give an ssd-deploy export directory)")
        self.session = ort.InferenceSession(str(path), providers=PROVIDERS[provider])
        meta = {k[len(PREFIX):]: v for k, v in self.session.get_modelmeta().custom_metadata_map.items()
                if k.startswith(PREFIX)}
        if "states" not in meta:
            sys.exit(f"error: {path}: no {PREFIX}* metadata (not an ssd-deploy export)")
        if meta["flavor"] == "trt":
            sys.exit("error: a trt-flavor export holds TensorRT plugin nodes; run it with TensorRT (samples/tensorrt)")
        self.states = json.loads(meta["states"])  # [{name, output, shape (with "batch"), dtype, layout}, ...]
        self.vocab_size = json.loads(meta["config"])["vocab_size"]  # logits columns past it are padding
        self.one_token_per_call = meta["graph"] == "decode"
        self.outputs = [o.name for o in self.session.get_outputs()]
        # a packed graph (graph = "packed") takes sequences end to end with their offsets; one sequence here
        self.packed = "cu_seqlens" in {i.name for i in self.session.get_inputs()}

    def zero_states(self, batch: int) -> dict[str, np.ndarray]:
        return {s["name"]: np.zeros([batch if d == "batch" else d for d in s["shape"]], NUMPY[s["dtype"]])
                for s in self.states}

    def forward(self, ids: np.ndarray, states: dict[str, np.ndarray]):
        """ids [batch, seq] → (logits of the last position [batch, vocab_size] float32, the states to feed next)."""
        feed = {"input_ids": ids.astype(np.int64), **states}
        if self.packed:
            feed["cu_seqlens"] = np.array([0, ids.shape[1]], np.int64)
        out = dict(zip(self.outputs, self.session.run(None, feed)))
        logits = out["logits"][:, -1, :self.vocab_size]  # [b, 1, V] ("last") or [b, seq, V] ("all")
        return logits.astype(np.float32), {s["name"]: out[s["output"]] for s in self.states}

    def prefill(self, prompt: list[int]):
        ids = np.array([prompt], np.int64)
        states = self.zero_states(1)
        if not self.one_token_per_call:
            return self.forward(ids, states)
        for i in range(ids.shape[1]):  # a decode-only graph takes the prompt one token at a time
            logits, states = self.forward(ids[:, i:i + 1], states)
        return logits, states


def pick(logits: np.ndarray, temperature: float, top_k: int, top_p: float, rng: np.random.Generator) -> int:
    """Greedy at temperature 0, else a sample from the temperature-scaled, top-k and top-p filtered distribution."""
    if temperature == 0:
        return int(logits.argmax())
    z = logits.astype(np.float64) / temperature
    if top_k:
        z = np.where(z < np.sort(z)[-min(top_k, z.size)], -np.inf, z)
    p = np.exp(z - z.max())
    p /= p.sum()
    if top_p < 1:
        order = np.argsort(-p)
        outside = np.cumsum(p[order]) - p[order] >= top_p  # keep the smallest set that reaches top_p
        p[order[outside]] = 0
        p /= p.sum()
    return int(rng.choice(p.size, p=p))


def generate(model: Model, prompt: list[int], max_new_tokens: int, temperature: float = 0.0, top_k: int = 0,
             top_p: float = 1.0, seed: int | None = None, eos_id: int | None = None):
    """Yields new tokens one by one: the prompt in one call, then one call per token with the carried states."""
    rng = np.random.default_rng(seed)
    logits, states = model.prefill(prompt)
    for step in range(max_new_tokens):
        token = pick(logits[0], temperature, top_k, top_p, rng)
        yield token
        if token == eos_id or step == max_new_tokens - 1:
            return
        logits, states = model.forward(np.array([[token]]), states)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("export_dir", type=Path)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="text (needs a tokenizer.json)")
    src.add_argument("--input-ids", help="comma-separated token ids")
    ap.add_argument("--tokenizer", type=Path, help="tokenizer.json (default: the one beside the model, if any)")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--eos-id", type=int, default=None)
    ap.add_argument("--provider", choices=list(PROVIDERS), default="cpu")
    ap.add_argument("--json", action="store_true", help="print the new token ids as JSON instead of streaming")
    args = ap.parse_args(argv)

    model = Model(args.export_dir, args.provider)
    tok_path = args.tokenizer or args.export_dir / "tokenizer.json"
    tokenizer = None
    if args.prompt is not None:
        if not tok_path.is_file():
            sys.exit(f"error: --prompt needs a tokenizer: {tok_path} not found (or use --input-ids)")
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(tok_path))
        prompt = tokenizer.encode(args.prompt).ids
    else:
        prompt = [int(t) for t in args.input_ids.split(",") if t.strip()]
    if not prompt:
        sys.exit("error: empty prompt")

    tokens = generate(model, prompt, args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed,
                      args.eos_id)
    if args.json:
        print(json.dumps({"prompt": prompt, "generated": list(tokens)}))
        return
    for t in tokens:  # stream as they come
        print(tokenizer.decode([t]) if tokenizer else f"{t} ", end="", flush=True)
    print()


if __name__ == "__main__":
    main()
