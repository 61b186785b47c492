"""Inference for deployment: runners over PyTorch or ONNX Runtime, and ONNX export of trained pose models."""
