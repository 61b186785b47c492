"""Per-keypoint surface-normal priors: von Mises-Fisher fits and their file format (SPEC §5 ``L_geo-norm``).

For each COCO-17 joint, the critic's normal at the ground-truth keypoint of synthetic images is modelled as a
von Mises-Fisher distribution on the unit sphere: a mean direction and a concentration kappa (large = the
normal at that joint is predictable). ``geosapiens priors fit`` runs a critic over a dataset and calls
:func:`fit_keypoint_normal_priors`; training reads the file with :func:`load_normal_priors`.

The concentration uses the approximation of Banerjee et al., "Clustering on the Unit Hypersphere using von
Mises-Fisher Distributions" (JMLR 2005), for p = 3: ``kappa = r (3 - r^2) / (1 - r^2)`` with ``r`` the length
of the mean resultant vector.

File: JSON (small, readable, diffable), ``{"format": "geosapiens.models.normal_prior", "schema_version": 1,
"critic": <identity of the critic that produced the normals>, "keypoints": <keypoint names>, "mean": K x 3,
"kappa": K, "count": K}``. Normals are in the camera frame of the canonical crop (x right, y down, z forward).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geosapiens.errors import DataError
from geosapiens.io import atomic_write_json
from geosapiens.skeleton import COCO17

__all__ = [
    "FORMAT",
    "SCHEMA_VERSION",
    "MAX_KAPPA",
    "NormalPriors",
    "fit_von_mises_fisher",
    "fit_keypoint_normal_priors",
    "save_normal_priors",
    "load_normal_priors",
]

FORMAT = "geosapiens.models.normal_prior"
SCHEMA_VERSION = 1
# Cap for identical samples (r -> 1 makes the estimate infinite): kappa 1e4 is an angular spread of ~0.6 deg.
MAX_KAPPA = 1e4


@dataclass
class NormalPriors:
    """Per-keypoint von Mises-Fisher normal priors.

    Attributes:
        mean: (K, 3) float32 unit mean directions (zeros where no sample was usable).
        kappa: (K,) float32 concentrations (0 = no prior for that joint: the loss ignores it).
        count: (K,) int64 samples each fit used.
        critic: identity of the critic whose normals were fitted (its name, checkpoint and hash); a prior is
            only meaningful with the critic that made it.
        keypoints: keypoint names in channel order.
        extra: free-form provenance (dataset, command line).
    """

    mean: np.ndarray
    kappa: np.ndarray
    count: np.ndarray
    critic: str = ""
    keypoints: tuple[str, ...] = COCO17.names
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.mean = np.asarray(self.mean, np.float32).reshape(-1, 3)
        self.kappa = np.asarray(self.kappa, np.float32).reshape(-1)
        self.count = np.asarray(self.count, np.int64).reshape(-1)
        self.keypoints = tuple(self.keypoints)
        K = len(self.keypoints)
        if not (len(self.mean) == len(self.kappa) == len(self.count) == K):
            raise ValueError(
                f"normal priors: {len(self.mean)} means, {len(self.kappa)} kappas, "
                f"{len(self.count)} counts for {K} keypoints"
            )

    def tensors(self, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean (K, 3), kappa (K,))`` float32 tensors for :func:`~.losses.functional.normal_prior_loss`."""
        return torch.as_tensor(self.mean, device=device), torch.as_tensor(self.kappa, device=device)


def fit_von_mises_fisher(
    normals: np.ndarray | torch.Tensor, weights: np.ndarray | None = None
) -> tuple[np.ndarray, float]:
    """Maximum-likelihood mean direction and approximate concentration of 3D unit vectors.

    Args:
        normals: (N, 3) directions; re-normalised, and non-finite or zero-length rows are ignored.
        weights: (N,) non-negative sample weights, or None.

    Returns:
        ``(mean (3,) float32, kappa)``; ``(zeros, 0.0)`` when no sample is usable; kappa is at most
        :data:`MAX_KAPPA`.
    """
    x = np.asarray(
        normals.detach().cpu() if isinstance(normals, torch.Tensor) else normals, np.float64
    ).reshape(-1, 3)
    w = np.ones(len(x)) if weights is None else np.asarray(weights, np.float64).reshape(-1)
    length = np.linalg.norm(x, axis=1)
    ok = np.isfinite(x).all(1) & np.isfinite(length) & (length > 1e-8) & np.isfinite(w) & (w > 0)
    if not ok.any():
        return np.zeros(3, np.float32), 0.0
    x, w = x[ok] / length[ok, None], w[ok]
    resultant = (w[:, None] * x).sum(0) / w.sum()
    r = float(np.linalg.norm(resultant))
    if r < 1e-12:
        return np.zeros(3, np.float32), 0.0
    mean = (resultant / r).astype(np.float32)
    r = min(r, 1.0 - 1e-12)
    kappa = r * (3.0 - r * r) / (1.0 - r * r)
    return mean, float(min(kappa, MAX_KAPPA))


def fit_keypoint_normal_priors(
    normals: np.ndarray | torch.Tensor,
    valid: np.ndarray | torch.Tensor,
    *,
    min_count: int = 10,
    critic: str = "",
    keypoints: tuple[str, ...] = COCO17.names,
    extra: dict[str, Any] | None = None,
) -> NormalPriors:
    """Fit one von Mises-Fisher distribution per keypoint.

    Args:
        normals: (N, K, 3) critic normals sampled at the ground-truth keypoints of N instances.
        valid: (N, K) bool, the joint is labelled and on the body.
        min_count: joints with fewer usable samples get kappa 0 (no prior).
        critic: identity string of the critic.
        keypoints: names of the K channels.
        extra: provenance stored in the file.

    Returns:
        :class:`NormalPriors`.
    """
    n = np.asarray(normals.detach().cpu() if isinstance(normals, torch.Tensor) else normals, np.float64)
    v = np.asarray(valid.detach().cpu() if isinstance(valid, torch.Tensor) else valid, bool)
    if n.ndim != 3 or n.shape[-1] != 3 or v.shape != n.shape[:2]:
        raise ValueError(f"normals must be (N, K, 3) and valid (N, K); got {n.shape} and {v.shape}")
    K = n.shape[1]
    mean, kappa, count = np.zeros((K, 3), np.float32), np.zeros(K, np.float32), np.zeros(K, np.int64)
    for k in range(K):
        samples = n[v[:, k], k]
        usable = np.isfinite(samples).all(1) & (np.linalg.norm(samples, axis=1) > 1e-8)
        count[k] = int(usable.sum())
        mean[k], kap = fit_von_mises_fisher(samples[usable])
        kappa[k] = kap if count[k] >= min_count else 0.0
    return NormalPriors(mean, kappa, count, critic=critic, keypoints=keypoints, extra=dict(extra or {}))


def save_normal_priors(path: str | Path, priors: NormalPriors) -> None:
    """Write ``priors`` as JSON (see the module docstring for the schema)."""
    doc = {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "critic": priors.critic,
        "keypoints": list(priors.keypoints),
        "mean": priors.mean.tolist(),
        "kappa": priors.kappa.tolist(),
        "count": priors.count.tolist(),
        "extra": priors.extra,
    }
    atomic_write_json(doc, path, indent=1)


def load_normal_priors(path: str | Path, *, critic: str | None = None) -> NormalPriors:
    """Read a priors file, checking its format, schema version, shapes and (optionally) the critic identity.

    Args:
        path: the JSON file.
        critic: when given, the file must have been fitted with this critic.

    Raises:
        DataError: missing file, not a priors file, unknown schema, malformed arrays, or another critic.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(path, "normal-priors file not found") from None
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(path, f"not readable as JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise DataError(path, f'not a normal-priors file (expected "format": "{FORMAT}")')
    if doc.get("schema_version") != SCHEMA_VERSION:
        raise DataError(
            path, f"schema_version {doc.get('schema_version')!r}; this version reads {SCHEMA_VERSION}"
        )
    if critic is not None and doc.get("critic") != critic:
        raise DataError(path, f"fitted with critic {doc.get('critic')!r}, but the run uses {critic!r}")
    try:
        priors = NormalPriors(
            np.asarray(doc["mean"], np.float32),
            np.asarray(doc["kappa"], np.float32),
            np.asarray(doc["count"], np.int64),
            critic=str(doc.get("critic", "")),
            keypoints=tuple(doc["keypoints"]),
            extra=dict(doc.get("extra") or {}),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(path, f"malformed priors ({type(e).__name__}: {e})") from None
    if not (np.isfinite(priors.mean).all() and np.isfinite(priors.kappa).all() and (priors.kappa >= 0).all()):
        raise DataError(path, "mean and kappa must be finite and kappa non-negative")
    norms = np.linalg.norm(priors.mean, axis=1)
    if not np.all((priors.kappa == 0) | (np.abs(norms - 1.0) < 1e-3)):
        raise DataError(path, "every mean with kappa > 0 must be a unit vector")
    return priors
