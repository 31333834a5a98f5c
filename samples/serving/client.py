"""A Triton client of an ssd-deploy model repository with nothing but tritonclient and numpy: one sequence, the
prompt on the request with sequence_start, then one token per request, sequence_end on the last; greedy tokens
streamed as they come.

    python samples/serving/client.py --url 127.0.0.1:8001 --model mamba2 --input-ids 1,2,3 --max-new-tokens 16

The server keeps the sequence's recurrent state between requests (docs/serving.md); the `x-sequence-id` header lets
a load balancer in front of several servers keep the sequence on one of them.
"""

import argparse
import random

import numpy as np
import tritonclient.grpc as grpcclient


def step(client, model, sequence, ids, start=False, end=False):
    ids = np.asarray([ids], dtype=np.int64)
    inp = grpcclient.InferInput("input_ids", list(ids.shape), "INT64")
    inp.set_data_from_numpy(ids)
    res = client.infer(model, [inp], outputs=[grpcclient.InferRequestedOutput("logits")], sequence_id=sequence,
                       sequence_start=start, sequence_end=end, headers={"x-sequence-id": str(sequence)})
    return res.as_numpy("logits")[0, -1]  # the last position's logits


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="127.0.0.1:8001")
    ap.add_argument("--model", default="mamba2")
    ap.add_argument("--input-ids", required=True, help="comma-separated prompt token ids")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    args = ap.parse_args()
    client = grpcclient.InferenceServerClient(args.url)
    config = client.get_model_config(args.model, as_json=True)["config"]
    params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
    vocab = int(params.get("vocab_size", 0)) or None  # columns past the vocabulary are padding
    sequence = random.getrandbits(63) or 1
    prompt = [int(t) for t in args.input_ids.split(",")]
    logits = step(client, args.model, sequence, prompt, start=True, end=args.max_new_tokens == 1)
    for i in range(args.max_new_tokens):
        token = int(np.argmax(logits[:vocab]))
        print(token, end=" ", flush=True)
        if i < args.max_new_tokens - 1:
            logits = step(client, args.model, sequence, [token], end=i == args.max_new_tokens - 2)
    print()
    client.close()


if __name__ == "__main__":
    main()
