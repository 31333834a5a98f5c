"""Per-sequence states without a server (ssd_deploy/serving/sequences.py): batched steps against each sequence run
alone, the zero-copy steady state, rejected steps, END and idle release, on ONNX Runtime and the torch backend."""

import dataclasses

import numpy as np
import pytest

from conftest import TINY, rel_err
from ssd_deploy.runtime.backends import OrtBackend, TorchBackend
from ssd_deploy.serving.sequences import Sequences, Step

UNTIED = dataclasses.replace(TINY, tie_embeddings=False)


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def alone(backend, prompt, tokens):
    """Logits of every call of one sequence run alone: the prompt, then each given token."""
    logits, states = backend.forward(np.array([prompt]), backend.zero_states(1))
    out = [logits[0]]
    for t in tokens:
        logits, states = backend.forward(np.array([[t]]), states)
        out.append(logits[0])
    return out


@pytest.fixture(scope="module", params=["ort", "ort-packed", "torch"])
def backend(request, make_export):
    """ONNX Runtime (prompts of different lengths one call each), ONNX Runtime on a packed graph (in one packed
    call), and the PyTorch model (packs too)."""
    packed = {"graph": "packed"} if request.param == "ort-packed" else {}
    ckpt, export_dir = make_export(UNTIED, "ort", logits="last", **packed)
    return OrtBackend(export_dir) if request.param.startswith("ort") else TorchBackend(ckpt)


def test_batched_steps_equal_each_sequence_alone(backend):
    rng = np.random.default_rng()
    n, steps = 5, 6
    prompts = [rng.integers(0, UNTIED.vocab_size, int(rng.integers(1, 45))).tolist() for _ in range(n)]
    prompts[1] = prompts[1][:1]  # a one-token prompt joins the batched decode at its START
    prompts[2] = prompts[2][:1] * 7  # two prompts of equal lengths: one batched prefill call besides the others
    prompts[4] = prompts[4][:1] * 7
    tokens = rng.integers(0, UNTIED.vocab_size, (n, steps))
    seqs = Sequences(backend, idle_timeout_s=60)
    got = {i: [] for i in range(n)}
    for i, r in enumerate(seqs.run([Step(10 + i, np.array(p), start=True) for i, p in enumerate(prompts)])):
        got[i].append(r.logits)
    for s in range(steps):
        # requests arrive in any order; at step 2 sequence 3 misses the batch and comes alone after it
        batch = [int(i) for i in rng.permutation(n) if not (s == 2 and i == 3)]
        for i, r in zip(batch, seqs.run([Step(10 + i, np.array([tokens[i, s]])) for i in batch])):
            assert r.error is None, r.error
            got[i].append(r.logits)
        if s == 2:
            (r,) = seqs.run([Step(13, np.array([tokens[3, s]]))])
            got[3].append(r.logits)
    for i in range(n):
        ref = alone(backend, prompts[i], tokens[i])
        assert len(got[i]) == len(ref)
        for g, r in zip(got[i], ref):
            assert rel_err(g, r) < 1e-4


def test_steady_state_passes_the_batch_on_without_copies(make_export):
    _, export_dir = make_export(UNTIED, "ort", logits="last")
    backend = OrtBackend(export_dir)
    seqs = Sequences(backend, idle_timeout_s=60)
    seqs.run([Step(i, np.array([1 + i]), start=True) for i in range(3)])
    gathered = []
    backend.concat_states = lambda parts, f=backend.concat_states: gathered.append(len(parts)) or f(parts)
    seqs.run([Step(i, np.array([5])) for i in (2, 0, 1)])  # the batch of the three STARTs, in any order
    seqs.run([Step(i, np.array([6])) for i in (1, 2, 0)])
    assert gathered == []
    seqs.run([Step(i, np.array([7])) for i in (0, 1)])  # one sequence missing: gathered once
    assert gathered == [2]


def reusing_torch_backend(ckpt):
    """The torch backend with its decode on states it owns and rewrites in place (runtime/cuda_graphs.py), the
    steps run eagerly on the CPU: the ownership of the CUDA-graph decode without a GPU."""
    from functools import partial

    from ssd_deploy.runtime.cuda_graphs import DecodeGraphs

    backend = TorchBackend(ckpt)
    backend.graphs = DecodeGraphs(partial(backend.model, decode=True, last_token_only=True, in_place=True),
                                  capture=False)
    backend.decode_reuses_states = True
    return backend


def test_batches_of_one_size_keep_their_states_apart_on_a_reusing_backend(make_export):
    """Two batches of the same size stepping in turn (and one sequence leaving one of them) on a backend whose
    one-token calls rewrite the states they returned before: each sequence as if alone."""
    ckpt, _ = make_export(UNTIED, "ort", logits="last")
    backend = reusing_torch_backend(ckpt)
    rng = np.random.default_rng()
    prompts = {i: rng.integers(0, UNTIED.vocab_size, 5).tolist() for i in range(5)}
    tokens = rng.integers(0, UNTIED.vocab_size, (5, 4))
    seqs = Sequences(backend, idle_timeout_s=60)
    got = {i: [r.logits] for i, r in zip((0, 1), seqs.run([Step(i, np.array(prompts[i]), start=True)
                                                            for i in (0, 1)]))}
    got |= {i: [r.logits] for i, r in zip((2, 3, 4), seqs.run([Step(i, np.array(prompts[i]), start=True)
                                                                for i in (2, 3, 4)]))}
    for s in range(4):
        groups = [(0, 1), (2, 3, 4)] if s < 2 else [(0, 1), (2, 3), (4,)]  # 4 steps alone from s = 2
        for group in groups:
            for i, r in zip(group, seqs.run([Step(i, np.array([tokens[i, s]])) for i in group])):
                assert r.error is None, r.error
                got[i].append(r.logits)
    for i in range(5):
        ref = alone(TorchBackend(ckpt), prompts[i], tokens[i])
        assert all(rel_err(g, r) < 1e-5 for g, r in zip(got[i], ref)), i


def test_rejected_steps_leave_their_sequence_and_the_batch_alone(make_export):
    _, export_dir = make_export(UNTIED, "ort", logits="last")
    backend = OrtBackend(export_dir)
    seqs = Sequences(backend, idle_timeout_s=60, max_prefill=16)
    seqs.run([Step(1, np.array([3, 4, 5]), start=True), Step(2, np.array([6]), start=True)])
    results = seqs.run([Step(1, np.array([1 << 20])), Step(2, np.array([7])), Step(3, np.array([1])),
                        Step(4, np.array([], np.int64), start=True), Step(5, np.ones(17, np.int64), start=True),
                        Step(2, np.array([8]))])
    errors = [r.error for r in results]
    assert "outside the vocabulary" in errors[0] and errors[1] is None
    assert "has no state here" in errors[2] and "tokens >= 1" in errors[3]
    assert "exceed the export recipe's prefill range (at most 16)" in errors[4]
    assert "two requests in one batch" in errors[5]
    (r1,) = seqs.run([Step(1, np.array([9]))])  # sequence 1 as if the bad step had not come
    assert rel_err(r1.logits, alone(backend, [3, 4, 5], [9])[-1]) < 1e-4
    assert rel_err(results[1].logits, alone(backend, [6], [7])[-1]) < 1e-4
    assert sorted(seqs.live) == [1, 2]


def test_end_and_idle_timeout_release_sequences(make_export):
    _, export_dir = make_export(UNTIED, "ort", logits="last")
    clock, log = Clock(), []
    seqs = Sequences(OrtBackend(export_dir), idle_timeout_s=2.0, clock=clock, log=log.append)
    seqs.run([Step(1, np.array([1, 2]), start=True), Step(2, np.array([3]), start=True)])
    clock.t = 1.5
    seqs.run([Step(2, np.array([4]))])
    clock.t = 2.5
    seqs.sweep()  # 1 idle 2.5 s: released; 2 idle 1 s: kept
    assert sorted(seqs.live) == [2] and "sequence 1 released after 2.5 s idle" in log[-1]
    (r,) = seqs.run([Step(1, np.array([5]))])
    assert "has no state here" in r.error
    (r,) = seqs.run([Step(2, np.array([1 << 20]), end=True)])  # END releases even a rejected last step
    assert r.error and len(seqs) == 0
