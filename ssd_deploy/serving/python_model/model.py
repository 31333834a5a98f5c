"""Triton python-backend model of an ssd-deploy export (written into a model repository by ``ssd-deploy
serve-repo --backend python``; docs/serving.md).

The python backend has no implicit state, so this model keeps each sequence's recurrent states itself, keyed by the
CORRID control, reset at START, released at END or after the sequence batcher's idle timeout
(``ssd_deploy.serving.sequences``). The sequence batcher (``oldest``) hands ``execute`` the requests of several
sequences at once: their one-token steps run as one batched call.

It runs in Triton's python-backend stub, a separate interpreter: that interpreter must import ``ssd_deploy`` and
what its runtime needs (numpy, onnxruntime; torch for ``runtime = torch``). ``ssd_deploy.serving.server`` starts
the stub in the environment that wrote the repository; in a Triton container, install ssd-deploy into the
container's Python (docs/serving.md).

Config parameters: ``runtime`` (ort | torch), ``provider`` (cpu | cuda), ``model_dir`` (the export, or the
checkpoint for torch, relative to this file's directory), ``dtype`` (torch), ``vocab_size`` (for clients).
"""

import json
import os
import sys
import threading
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

# The stub's interpreter runs isolated (it ignores PYTHONPATH): honour it here, so that the model imports the
# ssd_deploy of the environment that started the server (a source checkout on PYTHONPATH included)
for _entry in reversed(os.environ.get("PYTHONPATH", "").split(os.pathsep)):
    if _entry and _entry not in sys.path:
        sys.path.insert(0, _entry)

from ssd_deploy.serving.sequences import Sequences, Step  # noqa: E402

INPUT_IDS, LOGITS, NEXT_TOKEN = "input_ids", "logits", "next_token"
START, END, CORRID = "START", "END", "CORRID"


def _error(message: str):
    try:
        return pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG)
    except (AttributeError, TypeError):  # python backends before error codes
        return pb_utils.TritonError(message)


class TritonPythonModel:
    def initialize(self, args):
        from ssd_deploy.runtime.backends import OrtBackend, TorchBackend

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        here = Path(__file__).resolve().parent
        model_dir = here / params.get("model_dir", "export")
        provider = params.get("provider", "cpu")
        if params.get("runtime", "ort") == "torch":
            if provider == "cuda":
                import torch

                torch.cuda.set_device(int(args["model_instance_device_id"]))  # this instance's GPU
            backend = TorchBackend(model_dir, provider, params.get("dtype", "fp32"),
                                   cuda_graphs=provider == "cuda")
        else:
            backend = OrtBackend(model_dir, provider)
        idle_us = int(config.get("sequence_batching", {}).get("max_sequence_idle_microseconds", 1_000_000))
        self.sequences = Sequences(backend, idle_us / 1e6, log=pb_utils.Logger.log_info)
        self.vocab = backend.config.vocab_size
        self.stop = threading.Event()
        # sequences that never send END are released even while no request comes
        self.sweeper = threading.Thread(target=self._sweep, args=(min(idle_us / 4e6, 1.0),), daemon=True)
        self.sweeper.start()
        pb_utils.Logger.log_info(f"{args['model_instance_name']}: {backend.name} on {model_dir.name}, "
                                 f"idle timeout {idle_us / 1e6:g} s")

    def _sweep(self, every_s: float):
        while not self.stop.wait(every_s):
            self.sequences.sweep()

    def execute(self, requests):
        steps = []
        for request in requests:
            # [1, tokens]: the sequence batcher refuses any other batch size, the config any other rank
            ids = pb_utils.get_input_tensor_by_name(request, INPUT_IDS).as_numpy()[0]
            control = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)[0]
                       for name in (START, END, CORRID)}
            steps.append(Step(int(control[CORRID]), np.ascontiguousarray(ids, np.int64), bool(control[START]),
                              bool(control[END])))
        responses = []
        for request, result in zip(requests, self.sequences.run(steps)):
            if result.error is not None:
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=_error(result.error)))
                continue
            wanted = set(request.requested_output_names()) or {LOGITS, NEXT_TOKEN}
            out = []
            if LOGITS in wanted:
                out.append(pb_utils.Tensor(LOGITS, np.ascontiguousarray(result.logits, np.float32)[None, None]))
            if NEXT_TOKEN in wanted:
                token = np.array([[int(np.argmax(result.logits[:self.vocab]))]], dtype=np.int64)
                out.append(pb_utils.Tensor(NEXT_TOKEN, token))
            responses.append(pb_utils.InferenceResponse(output_tensors=out))
        return responses

    def finalize(self):
        self.stop.set()
