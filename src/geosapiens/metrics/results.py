"""The ``test_metrics.json`` a finished test run leaves for ``geosapiens report``: its name and format.

Written by :class:`~geosapiens.callbacks.results.TestResultsWriter`, read by :mod:`geosapiens.metrics.report`.
"""

RESULTS_FILENAME = "test_metrics.json"
RESULTS_FORMAT = 1
NO_PREDICTION = 1e9  # per-sample error of a scored joint without a prediction (JSON has no infinity)
