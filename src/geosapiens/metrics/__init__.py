"""Metrics as torchmetrics Metrics (PCK, COCO OKS AP, G-Error) and the report builder."""
