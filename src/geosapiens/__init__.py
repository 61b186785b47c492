"""Geo-Sapiens: geometry-guided adaptation of Sapiens foundation models to infant 2D pose estimation."""

__version__ = "0.1.0"
