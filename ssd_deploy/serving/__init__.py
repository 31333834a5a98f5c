"""Serving on NVIDIA Triton Inference Server (docs/serving.md): model repositories for exports and engines
(``repository``, ``pbtxt``), the python-backend model that keeps per-sequence states itself (``python_model``,
``sequences``), the bundled server binary of the ``nvidia-pytriton`` wheel (``server``) and a sequence client
(``client``)."""
