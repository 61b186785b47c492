"""Sapiens' input normalisation (``reference/sapiens.md`` §5): per-channel mean and std on 0-255 RGB.

A property of the pretrained backbone, shared by the data path, the pictures and the ONNX export.
"""

SAPIENS_MEAN = (123.675, 116.28, 103.53)
SAPIENS_STD = (58.395, 57.12, 57.375)
