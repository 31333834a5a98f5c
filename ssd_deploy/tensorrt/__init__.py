"""TensorRT engines: build (with optimization profiles and a JSON sidecar), check and run exported models."""
