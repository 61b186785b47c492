"""Seeded random mutation ("fuzz") tests of the dataset readers and ``geosapiens data check``.

Each case is one integer seed: ``random.Random(seed)`` chooses the mutation, so a case replays exactly. A
failing run lists, per broken case, the seed, the mutation in words and what went wrong. Environment:

- ``GEOSAPIENS_FUZZ_SEED`` (default 0): base of the seeds; other values explore other mutations.
- ``GEOSAPIENS_FUZZ_SCALE`` (default 1): multiply the number of cases (e.g. 10 for a long local run).
- ``GEOSAPIENS_FUZZ_ONLY``: run only the case with this seed (to debug one failure).

The promise checked for every mutated dataset (:func:`run_case`):

1. the loader either returns records that are valid (checked by the format's own validator) or raises
   :class:`~geosapiens.errors.DataError` whose message starts with the offending path, a path inside the
   dataset; any other exception type is a bug;
2. ``check_dataset`` never raises, and when the loader refused the dataset it lists that very problem.
"""

from __future__ import annotations

import os
import random
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geosapiens.data.check import Problem
from geosapiens.errors import DataError

BASE_SEED = int(os.environ.get("GEOSAPIENS_FUZZ_SEED", "0"))
SCALE = float(os.environ.get("GEOSAPIENS_FUZZ_SCALE", "1"))
ONLY = os.environ.get("GEOSAPIENS_FUZZ_ONLY")
MAX_MESSAGE = 1000  # a message longer than this dumps data at the user instead of naming the problem


def seeds(category_index: int, cases: int) -> list[int]:
    """The seeds of one category: disjoint across categories, shifted by ``GEOSAPIENS_FUZZ_SEED``."""
    if ONLY is not None:
        seed = int(ONLY)
        return [seed] if (seed // 10_000) % 100 == category_index else []
    start = BASE_SEED * 1_000_000 + category_index * 10_000
    return list(range(start, start + max(1, round(cases * SCALE))))


@dataclass
class Case:
    """One mutated dataset: its seed, a random generator and the description of what was done."""

    seed: int
    root: Path
    rng: random.Random = field(init=False)
    steps: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def did(self, step: str) -> None:
        self.steps.append(step)

    @property
    def label(self) -> str:
        return f"seed {self.seed}: {'; '.join(self.steps) or 'no mutation'}"


@dataclass
class Outcome:
    """What the loader and the checker did with one case."""

    records: list | None
    error: DataError | None
    problems: list[Problem]


def run_case(
    case: Case,
    load: Callable[[], list],
    check: Callable[[], list[Problem]],
    validate: Callable[[Any], None],
) -> Outcome:
    """Load and check one mutated dataset and hold both to the promise (module docstring).

    Raises:
        AssertionError: naming the case when the promise is broken.
    """
    root = str(case.root)
    records, error = None, None
    try:
        records = load()
    except DataError as e:
        error = e
    except Exception as e:
        raise AssertionError(f"loader raised {type(e).__name__} instead of DataError:\n{_trace(e)}") from e
    if records is not None:
        for record in records:
            validate(record)
    else:
        message = str(error)
        assert message.startswith(error.path), f"the message does not start with the path: {message!r}"
        assert error.path.startswith(root), f"names {error.path}, outside the dataset {root}"
        assert len(message) <= MAX_MESSAGE, f"message of {len(message)} characters: {message[:300]}..."
    try:
        problems = check()
    except Exception as e:
        raise AssertionError(f"check_dataset raised {type(e).__name__}:\n{_trace(e)}") from e
    assert all(isinstance(p, Problem) for p in problems)
    for p in problems:
        assert p.path.startswith(root), f"problem names {p.path}, outside the dataset {root}"
        assert len(str(p)) <= MAX_MESSAGE, f"problem of {len(str(p))} characters: {str(p)[:300]}..."
    if error is not None:
        assert any(
            (p.path, p.record, p.problem) == (error.path, error.record, error.problem) for p in problems
        ), f"the loader refused with {error}\nbut check_dataset listed: {[str(p) for p in problems]}"
    return Outcome(records, error, problems)


class Failures:
    """Collects broken cases so one run reports all of them (each with its seed and mutation)."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def run(self, case: Case, body: Callable[[], None]) -> None:
        try:
            body()
        except AssertionError as e:
            self.items.append(f"{case.label}\n  {e}")

    def assert_none(self, what: str) -> None:
        shown = "\n\n".join(self.items[:8])
        more = f"\n\n... and {len(self.items) - 8} more" if len(self.items) > 8 else ""
        hint = "rerun one case with GEOSAPIENS_FUZZ_ONLY=<seed>"
        assert not self.items, f"{len(self.items)} broken {what} case(s) ({hint}):\n\n{shown}{more}"


def walk(value: Any, where: str = "") -> Iterator[tuple[str, Any, Any]]:
    """Every ``(label, container, key)`` slot inside nested dicts and lists."""
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list):
        items = list(enumerate(value))
    else:
        return
    for key, child in items:
        label = f"{where}[{key!r}]" if isinstance(value, dict) else f"{where}[{key}]"
        yield label, value, key
        yield from walk(child, label)


def brief(value: Any, limit: int = 40) -> str:
    """A short repr for case labels."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 12]}...<{len(text)} chars>"


def _trace(error: BaseException) -> str:
    return "".join(traceback.format_exception(error)[-6:])
