"""ssd-deploy: Mamba-2 (SSD) checkpoints to proven ONNX Runtime and TensorRT inference."""

__version__ = "0.1.0"
