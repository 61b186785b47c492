"""One-Euro filtering of keypoint tracks (Casiez, Roussel and Vogel, CHI 2012).

A low-pass filter whose cut-off rises with speed: still joints lose their jitter, fast ones keep up (little
lag). Causal, so the same filter serves offline tracks and a live stream. Scores are not filtered; joints
whose score is below ``min_score`` pass through unfiltered and do not update the filter state, so a missed
detection neither drags the track nor is smeared into it.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["OneEuroFilter", "smooth_track"]


def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray:
    """Exponential smoothing factor of a first-order low-pass at ``cutoff`` Hz for a step of ``dt`` s."""
    tau = 1.0 / (2.0 * math.pi * np.asarray(cutoff, dtype=np.float64))
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """Filter a stream of (K, 2) keypoints sampled at ``fps``.

    Args:
        fps: sampling rate in Hz.
        min_cutoff: cut-off at rest, Hz (lower: smoother, more lag when starting to move).
        beta: cut-off increase per px/s of speed (higher: less lag on fast moves).
        d_cutoff: cut-off of the speed estimate, Hz.
        min_score: joints scored below this pass through and leave the state alone.
    """

    def __init__(
        self,
        fps: float,
        min_cutoff: float = 1.0,
        beta: float = 0.01,
        d_cutoff: float = 1.0,
        min_score: float = 0.0,
    ) -> None:
        if fps <= 0 or min_cutoff <= 0 or d_cutoff <= 0 or beta < 0:
            raise ValueError(
                f"OneEuroFilter: need fps, min_cutoff, d_cutoff > 0 and beta >= 0, got {fps}, {min_cutoff}, "
                f"{d_cutoff}, {beta}"
            )
        self.dt = 1.0 / fps
        self.min_cutoff, self.beta, self.d_cutoff, self.min_score = min_cutoff, beta, d_cutoff, min_score
        self.reset()

    def reset(self) -> None:
        self._x: np.ndarray | None = None  # (K, 2) last filtered position
        self._dx: np.ndarray | None = None  # (K, 2) last filtered speed, px/s

    def __call__(self, keypoints: np.ndarray, scores: np.ndarray | None = None) -> np.ndarray:
        x = np.asarray(keypoints, dtype=np.float64)
        use = np.isfinite(x).all(-1)
        if scores is not None:
            use &= np.asarray(scores) >= self.min_score
        if self._x is None:
            self._x, self._dx = np.where(use[:, None], x, np.nan), np.zeros_like(x)
            return x.copy()
        fresh = use & ~np.isfinite(self._x).all(-1)  # first confident sighting of a joint: start there
        self._x[fresh], self._dx[fresh] = x[fresh], 0.0
        track = use & ~fresh
        dx = (x - self._x) / self.dt
        dx_hat = self._dx + _alpha(self.d_cutoff, self.dt) * (dx - self._dx)
        speed = np.linalg.norm(dx_hat, axis=-1, keepdims=True)
        a = _alpha(self.min_cutoff + self.beta * speed, self.dt)
        x_hat = self._x + a * (x - self._x)
        self._x[track], self._dx[track] = x_hat[track], dx_hat[track]
        return np.where(track[:, None], x_hat, x)


def smooth_track(keypoints: np.ndarray, scores: np.ndarray | None, fps: float, **filter_kwargs) -> np.ndarray:
    """A whole (T, K, 2) track through a fresh :class:`OneEuroFilter`; returns the filtered (T, K, 2)."""
    f = OneEuroFilter(fps, **filter_kwargs)
    out = np.empty(np.shape(keypoints), dtype=np.float64)
    for t in range(len(out)):
        out[t] = f(keypoints[t], None if scores is None else scores[t])
    return out
