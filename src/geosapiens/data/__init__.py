"""Datasets: real-format readers, crops, augmentation, DataModules and the procedural generator."""
