"""Deployment: video prediction, distillation, ONNX export."""
