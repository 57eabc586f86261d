"""On-gateway models: ONNX files, model cards, training scripts and thin runtime wrappers."""
