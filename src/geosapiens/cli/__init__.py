"""The ``geosapiens`` command tree: every command's options and ``main``, and the demo that drives them.

The library below it (data, models, losses, stages, ...) has no ``main`` and parses no command line.
"""
