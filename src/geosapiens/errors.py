"""The project's own error types: every message names the file (and record) and the problem."""

from __future__ import annotations

from pathlib import Path


class GeoSapiensError(Exception):
    """Base class of every error Geo-Sapiens raises on purpose."""


class DataError(GeoSapiensError, ValueError):
    """A dataset file is missing, unreadable or malformed.

    Args:
        path: the offending file (or dataset folder).
        problem: what is wrong, in words a user can act on.
        record: the record inside the file (annotation id, image id, line number), when there is one.
    """

    def __init__(self, path: str | Path, problem: str, record: str | int | None = None) -> None:
        self.path = str(path)
        self.problem = problem
        self.record = record
        where = self.path if record is None else f"{self.path} [{record}]"
        super().__init__(f"{where}: {problem}")

    def __reduce__(self):  # picklable across DataLoader workers
        return (type(self), (self.path, self.problem, self.record))


class CheckpointError(GeoSapiensError, ValueError):
    """A checkpoint is missing, truncated, unsafe to unpickle, or does not fit the model."""


class UsageError(GeoSapiensError, ValueError):
    """A command-line value names something that does not exist or cannot be used (exit status 2)."""
