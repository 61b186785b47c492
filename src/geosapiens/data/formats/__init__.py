"""Readers for the real dataset formats, and the validation machinery they share with the checker.

Every validator reports problems to a :class:`Reporter` instead of raising directly. A loader passes a
raising reporter and stops at the first problem with a :class:`~geosapiens.errors.DataError`;
``geosapiens data check`` passes a collecting one and lists every problem. The two therefore run the same
checks and cannot disagree.

The readers live in :mod:`geosapiens.data.formats.mini_rgbd` and :mod:`geosapiens.data.formats.syrip`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from geosapiens.data.records import MAPS_DIRNAME
from geosapiens.errors import DataError

__all__ = ["Problem", "Reporter", "maps_path_for"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset.

    Attributes:
        path: the offending file (or folder).
        record: where in the file (``"annotation 102"``, ``"line 4"``), or None for the whole file.
        problem: what is wrong, in words a user can act on.
    """

    path: str
    record: str | int | None
    problem: str

    def __str__(self) -> str:
        where = self.path if self.record is None else f"{self.path} [{self.record}]"
        return f"{where}: {self.problem}"


class Reporter:
    """Where validators send problems: raise the first one, or collect every one.

    Validators call ``report(path, problem, record)`` and then carry on with whatever they can still check
    (or return None when nothing more can be checked). Collecting is thread-safe, so frames can be validated
    in a thread pool.

    Args:
        collect: False (loaders): raise :class:`DataError` at the first problem. True (the checker): keep
            every problem in :attr:`problems`.
    """

    def __init__(self, collect: bool = False) -> None:
        self.collect = collect
        self.problems: list[Problem] = []
        self._lock = threading.Lock()

    def __call__(self, path: str | Path, problem: str, record: str | int | None = None) -> None:
        if not self.collect:
            raise DataError(path, problem, record)
        with self._lock:
            self.problems.append(Problem(str(path), record, problem))


def maps_path_for(root: Path, image_path: Path) -> Path | None:
    """The rendered-geometry file ``<root>/geosapiens_maps/<relative image path>.npz`` if it exists.

    Readers note it and never require it (API.md, "Records").
    """
    try:
        relative = image_path.relative_to(root)
    except ValueError:  # an image folder given outside the dataset root has no side folder
        return None
    candidate = root / MAPS_DIRNAME / relative.with_suffix(".npz")
    return candidate if candidate.is_file() else None
