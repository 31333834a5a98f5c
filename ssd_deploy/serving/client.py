"""Drive sequences on a Triton server with ``tritonclient`` (gRPC): the prompt with ``sequence_start``, then one
token per request, ``sequence_end`` on the last; tokens streamed as they come (docs/serving.md).

Works with every repository ``ssd-deploy serve-repo`` writes (same ``input_ids`` / ``logits`` interface); greedy
decoding asks a python-backend model for its ``next_token`` output only (no logits on the wire).
"""

from __future__ import annotations

import random
from typing import Callable

import numpy as np

from ..errors import UserError
from ..generate import SamplingOptions, sample
from ..interface import INPUT_IDS, LOGITS
from .pbtxt import NEXT_TOKEN

STICKY_HEADER = "x-sequence-id"  # the sequence id where a load balancer can hash on it (docs/serving.md)


def _client_errors():
    from tritonclient.utils import InferenceServerException

    return InferenceServerException


class SequenceClient:
    def __init__(self, url: str, model: str, timeout_s: float = 600.0):
        try:
            import tritonclient.grpc as grpcclient
        except ImportError:
            raise UserError("the Triton client needs tritonclient[grpc]: pip install 'tritonclient[grpc]'") from None
        self.grpc, self.model, self.url, self.timeout_s = grpcclient, model, url, timeout_s
        self.client = grpcclient.InferenceServerClient(url)
        try:
            if not self.client.is_model_ready(model):
                raise UserError(f"triton at {url}: model {model!r} is not ready (is it in the repository?)")
            config = self.client.get_model_config(model, as_json=True)["config"]
        except _client_errors() as e:
            self.close()
            raise UserError(f"triton at {url}: {e.message()}") from None
        self.outputs = {o["name"]: o for o in config.get("output", [])}
        if LOGITS not in self.outputs:
            self.close()
            raise UserError(f"triton at {url}: model {model!r} has no {LOGITS} output: not an ssd-deploy model")
        params = {k: v.get("string_value") for k, v in config.get("parameters", {}).items()}
        # rows past the vocabulary are padding, never sampled; only the python model says where they start
        self.vocab = int(params["vocab_size"]) if "vocab_size" in params else int(self.outputs[LOGITS]["dims"][-1])

    def close(self):
        self.client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def step(self, sequence: int, ids, start: bool = False, end: bool = False,
             outputs: tuple[str, ...] = (LOGITS,)) -> dict[str, np.ndarray]:
        """One request of a sequence: ``ids`` its tokens; returns the requested outputs (batch axis dropped)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(1, -1)
        inp = self.grpc.InferInput(INPUT_IDS, list(ids.shape), "INT64")
        inp.set_data_from_numpy(ids)
        try:
            res = self.client.infer(self.model, [inp], outputs=[self.grpc.InferRequestedOutput(o) for o in outputs],
                                    sequence_id=sequence, sequence_start=start, sequence_end=end,
                                    client_timeout=self.timeout_s,
                                    # for a balancer in front of several servers: sticky on this header
                                    headers={STICKY_HEADER: str(sequence)})
        except _client_errors() as e:
            raise UserError(f"triton at {self.url}, sequence {sequence}: {e.message()}") from None
        return {o: res.as_numpy(o)[0] for o in outputs}

    def generate(self, prompt: list[int], opts: SamplingOptions, sequence: int | None = None,
                 on_token: Callable[[int], None] | None = None) -> list[int]:
        """The new tokens of one prompt, as ``generate.generate`` makes them in-process."""
        opts.check()
        if not prompt:
            raise UserError("empty prompt")
        sequence = sequence if sequence is not None else random.getrandbits(63) or 1
        rng = np.random.default_rng(opts.seed)
        greedy = opts.temperature == 0 and NEXT_TOKEN in self.outputs
        wanted = (NEXT_TOKEN,) if greedy else (LOGITS,)

        def token_of(out) -> int:
            if greedy:
                return int(out[NEXT_TOKEN].reshape(-1)[0])
            logits = np.asarray(out[LOGITS], np.float32)[-1:, :self.vocab]  # the last position
            return int(sample(logits, opts, rng)[0])

        out = self.step(sequence, prompt, start=True, end=opts.max_new_tokens == 1, outputs=wanted)
        tokens: list[int] = []
        for i in range(opts.max_new_tokens):
            token = token_of(out)
            tokens.append(token)
            if on_token:
                on_token(token)
            if i == opts.max_new_tokens - 1:
                break
            if opts.eos_id is not None and token == opts.eos_id:
                self.step(sequence, [token], end=True, outputs=wanted)  # ends the sequence on the server
                break
            out = self.step(sequence, [token], end=i == opts.max_new_tokens - 2, outputs=wanted)
        return tokens


def generate_remote(url: str, model: str, prompts: list[list[int]], opts: SamplingOptions,
                    on_token: Callable[[int], None] | None = None) -> list[list[int]]:
    """``generate`` through a Triton server: one sequence per prompt, all of them concurrently (the server batches
    their steps). ``on_token`` streams the tokens of a single prompt."""
    from concurrent.futures import ThreadPoolExecutor

    with SequenceClient(url, model) as client:
        if len(prompts) == 1:
            return [client.generate(prompts[0], opts, on_token=on_token)]
        with ThreadPoolExecutor(min(len(prompts), 64)) as pool:
            return list(pool.map(lambda p: client.generate(p, opts), prompts))
