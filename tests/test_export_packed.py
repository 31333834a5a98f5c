"""Packed graphs (``--graph packed``: input_ids [1, T], cu_seqlens [n+1], states [n, ...]) in the three flavors on
ONNX Runtime CPU, against the PyTorch model run on each sequence alone (docs/op-contracts.md, "Packed sequences";
docs/graph-interface.md)."""

import numpy as np
import pytest
import torch

from conftest import VARIANTS, random_states, rel_err
from ssd_deploy.checkpoint import load_model
from ssd_deploy.interface import CU_SEQLENS, INPUT_IDS, LAYOUT_SSM, read_metadata, state_names
from ssd_deploy.runtime.ort_runner import ort_session
from ssd_deploy.runtime.validation_copy import validation_model

# (flavor, options, logits): every flavor, both logits forms (exports cost seconds each: not the full product)
CASES = [("portable", {}, "all"), ("portable", {}, "last"), ("ort", {}, "last"), ("ort", {"prefill": "chunked"}, "all"),
         ("trt", {}, "last")]


def per_sequence_reference(model, prompts, states, swap):
    """Each prompt alone through the PyTorch model from its own states: last logits [n, V] and states [n, ...]."""
    names = state_names(model.cfg.n_layer)
    to_contract = lambda k, v: np.swapaxes(v, -1, -2) if swap and k.startswith("ssm") else v  # noqa: E731
    logits, outs = [], {o: [] for _, o in names}
    with torch.no_grad():
        for s, ids in enumerate(prompts):
            st = [torch.from_numpy(to_contract(i, states[i][s:s + 1])) for i, _ in names]
            lg, conv, ssm = model(torch.from_numpy(ids[None]), st[0::2], st[1::2])
            logits.append(lg[0])
            for (_, o), t in zip(names, [t for pair in zip(conv, ssm) for t in pair]):
                outs[o].append(to_contract(o, t.numpy()))
    return logits, {k: np.concatenate(v) for k, v in outs.items()}


@pytest.mark.slow
@pytest.mark.parametrize("flavor,options,logits", CASES, ids=["-".join([f, *o.values(), lg]) for f, o, lg in CASES])
def test_packed_graph_equals_each_prompt_alone(make_export, flavor, options, logits):
    cfg = VARIANTS["g4"]  # ngroups 4, chunk 16
    ckpt, export_dir = make_export(cfg, flavor, graph="packed", logits=logits, **options)
    meta = read_metadata(export_dir)
    assert meta.graph == "packed"
    model = load_model(ckpt)
    rng = np.random.default_rng()
    q = cfg.chunk_size
    with validation_model(export_dir) as path:
        sess = ort_session(export_dir, model_file=path)
        outputs = [o.name for o in sess.get_outputs()]
        # boundaries inside chunks, shorter than the conv width, length 1 among long ones; all ones (decode);
        # equal lengths
        for lengths in ([q + 3, 1, 2, q, 5, 2 * q + 1], [1, 1, 1], [7, 7]):
            prompts = [rng.integers(0, cfg.vocab_size, n) for n in lengths]
            states = random_states(meta, len(lengths), rng)
            cu = np.array([0, *np.cumsum(lengths)], np.int64)
            got = dict(zip(outputs, sess.run(None, {INPUT_IDS: np.concatenate(prompts)[None], CU_SEQLENS: cu,
                                                    **states})))
            ref_logits, ref_states = per_sequence_reference(model, prompts, states, meta.ssm_layout != LAYOUT_SSM)
            if logits == "last":
                assert got["logits"].shape == (len(lengths), 1, got["logits"].shape[-1])
                assert rel_err(got["logits"][:, 0], np.stack([r[-1] for r in ref_logits])) < 1e-4, lengths
            else:
                assert rel_err(got["logits"][0], torch.cat(ref_logits)) < 1e-4, lengths
            for name, ref in ref_states.items():
                assert rel_err(got[name], ref) < 1e-4, (lengths, name)


def test_trt_packed_graph_ships_the_packed_plugins(make_export):
    """The trt packed graph: the packed scan and conv as the packed plugins, fed the int64 cu_seqlens cast to int32
    once, and no body (TensorRT would import a body in place of the plugin); the validation copy runs above."""
    import onnx

    from ssd_deploy.interface import model_path

    _, export_dir = make_export(VARIANTS["g4"], "trt", graph="packed", logits="last")
    proto = onnx.load(str(model_path(export_dir)), load_external_data=False)
    plugins = {n.op_type for n in proto.graph.node if n.domain == "trt.plugins"}
    assert plugins == {"SsdChunkScanPacked", "CausalConv1dPacked", "GatedRmsNorm"}
    assert not proto.functions
    assert not {n.op_type for n in proto.graph.node if n.domain == ""} & {"Conv", "Scan", "Loop"}
    casts = [n for n in proto.graph.node if n.op_type == "Cast" and CU_SEQLENS in n.input]
    assert len(casts) == 1 and casts[0].attribute[0].i == onnx.TensorProto.INT32
    for node in proto.graph.node:
        if node.op_type in ("SsdChunkScanPacked", "CausalConv1dPacked"):
            assert node.input[-1] == casts[0].output[0]
