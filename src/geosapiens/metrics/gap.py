"""Sim-to-real gap reduction: how much of the source-only -> oracle gap a method closes.

``gap = (ours - source_only) / (oracle - source_only)``: 0 = no better than training on synthetic data only,
1 = as good as the oracle trained on labelled real data, > 1 = better than the oracle, < 0 = worse than
source-only. The ratio is sign-safe, so it reads the same for lower-is-better metrics (G-Error, jitter).
When the oracle does not differ from source-only there is no gap to close: the value is NaN with a reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["GapReduction", "gap_reduction"]


@dataclass(frozen=True)
class GapReduction:
    """A gap-reduction value and, when it is NaN, why."""

    value: float
    reason: str = ""

    def __float__(self) -> float:
        return self.value

    def __str__(self) -> str:
        return f"nan ({self.reason})" if math.isnan(self.value) else f"{self.value:.3f}"


def gap_reduction(ours: float, source_only: float, oracle: float, *, rel_tol: float = 1e-9) -> GapReduction:
    """``(ours - source_only) / (oracle - source_only)``, NaN with a reason when undefined.

    Example:
        >>> gap_reduction(0.80, 0.60, 0.90).value
        0.6666666666666667
        >>> str(gap_reduction(0.8, 0.6, 0.6))
        'nan (oracle equals source-only (0.6): there is no gap to reduce)'
    """
    values = {"ours": ours, "source_only": source_only, "oracle": oracle}
    bad = [k for k, v in values.items() if v is None or not math.isfinite(float(v))]
    if bad:
        return GapReduction(float("nan"), f"not finite: {', '.join(f'{k}={values[k]}' for k in bad)}")
    ours, source_only, oracle = float(ours), float(source_only), float(oracle)
    if math.isclose(oracle, source_only, rel_tol=rel_tol, abs_tol=0.0) or oracle == source_only:
        return GapReduction(
            float("nan"), f"oracle equals source-only ({oracle:g}): there is no gap to reduce"
        )
    return GapReduction((ours - source_only) / (oracle - source_only))

