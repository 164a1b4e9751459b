"""Model registry, multi-head wrapper, checkpoints, ONNX export and quantization."""
