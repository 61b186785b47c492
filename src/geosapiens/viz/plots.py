"""Plots as Matplotlib figures: PCK curves, per-joint bars, paired differences with their intervals.

Matplotlib is used through :class:`~matplotlib.figure.Figure` and the Agg canvas directly (no ``pyplot``
global state), so plotting is safe inside a training process and never opens a window. It is imported on
first use, so training (and a config naming a drawing callback) works where matplotlib is not installed.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from geosapiens.skeleton import COCO17

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "figure_to_rgb",
    "figure_to_png_bytes",
    "plot_pck_curves",
    "plot_per_joint_bars",
    "plot_paired_differences",
]


def _matplotlib():
    """matplotlib's ``Figure`` and Agg canvas classes, imported on first use."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(
            f"geosapiens.viz.plots: plots need matplotlib, which is not installed ({err})"
        ) from err
    return Figure, FigureCanvasAgg


def figure_to_rgb(fig: Figure) -> np.ndarray:
    """Render a Matplotlib figure with Agg to ``(H, W, 3)`` uint8 RGB."""
    canvas = _matplotlib()[1](fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def figure_to_png_bytes(fig: Figure, dpi: int = 120) -> bytes:
    """A Matplotlib figure as PNG bytes (for atomic file writes)."""
    _matplotlib()[1](fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def plot_pck_curves(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    title: str = "",
    bands: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
) -> Figure:
    """PCK-vs-threshold lines, one per name: ``{name: (thresholds (T,), pck (T,) as fractions)}``; y in %.
    ``bands``: ``{name: (low (T,), high (T,))}`` shaded around that name's line (e.g. the range over
    seeds)."""
    fig = _matplotlib()[0](figsize=(5.5, 4.0), layout="constrained")
    ax = fig.add_subplot()
    for name, (thr, values) in curves.items():
        x = np.asarray(thr, float)
        (line,) = ax.plot(x, 100 * np.asarray(values, float), label=name, linewidth=1.6)
        if bands and name in bands:
            low, high = (100 * np.asarray(v, float) for v in bands[name])
            ax.fill_between(x, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel("threshold (fraction of the normaliser)")
    ax.set_ylabel("PCK (%)")
    ax.set_ylim(0, 100)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    if curves:
        ax.legend(loc="lower right", fontsize="small")
    return fig


def plot_per_joint_bars(
    values: Mapping[str, Sequence[float]], joint_names: Sequence[str] = COCO17.names, title: str = ""
) -> Figure:
    """Grouped bars of one per-joint value (fractions, NaN = no bar) per run: ``{run: (K,)}``; y in %."""
    fig = _matplotlib()[0](
        figsize=(max(7.0, 0.5 * len(joint_names) * (1 + 0.25 * len(values))), 4.2), layout="constrained"
    )
    ax = fig.add_subplot()
    x = np.arange(len(joint_names))
    width = 0.8 / max(1, len(values))
    for i, (name, v) in enumerate(values.items()):
        ax.bar(x + (i - (len(values) - 1) / 2) * width, 100 * np.asarray(v, float), width, label=name)
    ax.set_xticks(x, list(joint_names), rotation=60, ha="right", fontsize="small")
    ax.set_ylabel("PCK (%)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    if title:
        ax.set_title(title)
    if values:
        ax.legend(fontsize="small")
    return fig


def plot_paired_differences(
    rows: Mapping[str, tuple[float, float, float, Sequence[float]]],
    noise: float | None = None,
    xlabel: str = "difference",
    title: str = "",
) -> Figure:
    """One line per comparison, ``{label: (diff, ci_low, ci_high, per-seed diffs)}``: the CI as a bar, the
    mean as a dot, each seed as a cross; a line at 0 and, with ``noise``, the band ``[-noise, noise]``
    shaded."""
    fig = _matplotlib()[0](figsize=(6.5, 0.45 * len(rows) + 1.4), layout="constrained")
    ax = fig.add_subplot()
    if noise is not None and np.isfinite(noise):
        ax.axvspan(-noise, noise, color="0.85", label=f"seed noise (±{noise:.1f})")
    ax.axvline(0.0, color="0.3", linewidth=1.0)
    for y, (diff, low, high, seeds) in enumerate(reversed(list(rows.values()))):
        resolved = np.isfinite(low) and (low > 0 or high < 0)
        color = "tab:blue" if resolved else "tab:gray"
        if np.isfinite(low):
            ax.plot([low, high], [y, y], color=color, linewidth=2.5, solid_capstyle="butt")
        ax.plot([diff], [y], "o", color=color, markersize=6)
        ax.plot(list(seeds), [y] * len(seeds), "x", color="black", markersize=5, alpha=0.7)
    ax.set_yticks(range(len(rows)), list(reversed(list(rows))), fontsize="small")
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(
        title or "paired difference to the baseline (blue: CI excludes 0; x: seeds)", fontsize="medium"
    )
    if noise is not None and np.isfinite(noise):
        ax.legend(loc="best", fontsize="small")
    return fig
