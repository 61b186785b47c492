"""Procedural infant generator."""
