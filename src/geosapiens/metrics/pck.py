"""PCK (percentage of correct keypoints) with a selectable normaliser, functional first (torchmetrics style).

A labelled joint is correct at threshold ``alpha`` when ``||pred - target|| < alpha * norm`` (strict, as
mmpose's ``keypoint_pck_accuracy``), where ``norm`` is one length per sample:

- ``"bbox"``: max(w, h) of the ground-truth box (the team default, ``reference/datasets.md`` §5);
- ``"bbox_diag"``: the box diagonal sqrt(w^2 + h^2);
- ``"torso"``: distance between the shoulder midpoint and the hip midpoint of the ground truth (COCO-17
  joints 5, 6, 11, 12). Note: the FiDIP re-scoring table in ``datasets.md`` §2.6 used L-shoulder to R-hip, a
  different length; numbers are not interchangeable;
- ``"head_neck"``: the head-to-neck length, for COCO-17 the distance from the nose (0) to the shoulder
  midpoint ("neck") of the ground truth. MINI-RGBD papers use a constant per-sequence head-to-neck length:
  pass it as ``head_size`` and it is used as is. Not MPII's PCKh (0.6 x the head box diagonal): the name
  says so, numbers are not comparable with MPII PCKh@0.5;
- ``"image"``: max(image height, width) (SHIFT-style, ``datasets.md`` §5).

A sample whose norm cannot be formed (a needed joint unlabelled, or a zero length) is excluded entirely and
counted in ``excluded``; this makes torso and head-neck PCK honest on partly labelled data. Predictions that
are missing (NaN) count as wrong, not as excluded.

Note:
    B: samples, K: keypoints, D: coordinate dims (2, or 3 for 3D PCK), T: thresholds.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from geosapiens.metrics.protocol import DEFAULT_THRESHOLDS, NORM_KINDS
from geosapiens.skeleton import COCO17

__all__ = [
    "NORM_KINDS",
    "DEFAULT_THRESHOLDS",
    "norm_factor",
    "pck_update",
    "pck_compute",
    "pck",
    "pck_curve",
    "CURVE_THRESHOLDS",
    "pck_from_errors",
    "pck_curve_from_errors",
    "normalised_errors",
    "PCK",
    "SampleErrors",
]


_L_SHOULDER, _R_SHOULDER = COCO17.index("left_shoulder"), COCO17.index("right_shoulder")
_L_HIP, _R_HIP = COCO17.index("left_hip"), COCO17.index("right_hip")
_NOSE = COCO17.index("nose")


def _midpoint_length(target: Tensor, labelled: Tensor, a: tuple[int, ...], b: tuple[int, ...]) -> Tensor:
    """Distance between the mean of joints ``a`` and the mean of joints ``b``; NaN where any is unlabelled."""
    pa = target[:, list(a)].mean(dim=1)
    pb = target[:, list(b)].mean(dim=1)
    length = torch.linalg.vector_norm(pa - pb, dim=-1)
    ok = labelled[:, list(a) + list(b)].all(dim=1)
    return torch.where(ok, length, torch.full_like(length, float("nan")))


def norm_factor(
    kind: str,
    *,
    target: Tensor | None = None,
    labelled: Tensor | None = None,
    bbox: Tensor | None = None,
    image_hw: Tensor | None = None,
    head_size: Tensor | None = None,
) -> Tensor:
    """Per-sample PCK normaliser (see the module docstring for each ``kind``).

    Args:
        kind: one of :data:`NORM_KINDS`.
        target: ``(B, 17, D)`` COCO-17 ground truth (``torso``, ``head_neck`` without ``head_size``).
        labelled: ``(B, 17)`` bool, which ground-truth joints exist.
        bbox: ``(B, 4)`` ground-truth boxes ``[x, y, w, h]`` (``bbox``, ``bbox_diag``).
        image_hw: ``(B, 2)`` image ``(H, W)`` (``image``).
        head_size: ``(B,)`` explicit head-segment lengths (``head_neck``; MINI-RGBD's per-sequence constant).

    Returns:
        ``(B,)`` float lengths; NaN where the sample has no valid normaliser (it will be excluded).
    """
    if kind not in NORM_KINDS:
        raise ValueError(f"norm_factor: unknown kind {kind!r}; expected one of {NORM_KINDS}")

    def need(name: str, value: Tensor | None) -> Tensor:
        if value is None:
            raise ValueError(f"norm_factor({kind!r}) needs `{name}`")
        return value

    if kind in ("bbox", "bbox_diag"):
        wh = need("bbox", bbox)[..., 2:4].double()
        return wh.amax(dim=-1) if kind == "bbox" else torch.linalg.vector_norm(wh, dim=-1)
    if kind == "image":
        return need("image_hw", image_hw).amax(dim=-1).double()
    if kind == "head_neck" and head_size is not None:
        return head_size
    target, labelled = need("target", target), need("labelled", labelled).bool()
    if target.shape[1] != COCO17.num_keypoints:
        raise ValueError(f"norm_factor({kind!r}) needs COCO-17 keypoints, got K={target.shape[1]}")
    if kind == "torso":
        return _midpoint_length(target, labelled, (_L_SHOULDER, _R_SHOULDER), (_L_HIP, _R_HIP))
    return _midpoint_length(target, labelled, (_NOSE,), (_L_SHOULDER, _R_SHOULDER))


def _valid_norm(norm: Tensor) -> Tensor:
    """``(B,)`` bool: samples with a usable normaliser (finite and > 0)."""
    return torch.isfinite(norm) & (norm > 0)


def _pck_tensor_validation(preds: Tensor, target: Tensor, labelled: Tensor, norm: Tensor) -> None:
    if preds.ndim != 3 or preds.shape != target.shape:
        raise ValueError(
            f"PCK: preds {tuple(preds.shape)} and target {tuple(target.shape)} must both be (B, K, D)"
        )
    if labelled.shape != preds.shape[:2]:
        raise ValueError(f"PCK: labelled {tuple(labelled.shape)} must be (B, K) = {tuple(preds.shape[:2])}")
    if norm.shape != preds.shape[:1]:
        raise ValueError(f"PCK: norm {tuple(norm.shape)} must be (B,) = ({preds.shape[0]},)")


def _as_thresholds(thresholds: Sequence[float] | Tensor, device: torch.device) -> Tensor:
    thr = torch.as_tensor(thresholds, dtype=torch.float64, device=device).reshape(-1)
    if thr.numel() == 0 or (thr < 0).any() or not torch.isfinite(thr).all():
        raise ValueError(f"PCK: thresholds must be a non-empty list of finite values >= 0, got {thresholds}")
    return thr


def pck_update(
    preds: Tensor,
    target: Tensor,
    labelled: Tensor,
    norm: Tensor,
    thresholds: Sequence[float] | Tensor = DEFAULT_THRESHOLDS,
) -> tuple[Tensor, Tensor]:
    """Sufficient statistics of PCK for one batch.

    Args:
        preds: ``(B, K, D)`` predicted keypoints (NaN = no prediction, counted wrong).
        target: ``(B, K, D)`` ground truth.
        labelled: ``(B, K)`` bool; unlabelled joints neither count nor score.
        norm: ``(B,)`` normalising lengths (:func:`norm_factor`); non-finite or <= 0 excludes the sample.
        thresholds: ``T`` fractions of ``norm``.

    Returns:
        ``correct`` ``(T, K)`` long (joints within each threshold), ``count`` ``(K,)`` long (joints scored).
    """
    _pck_tensor_validation(preds, target, labelled, norm)
    thr = _as_thresholds(thresholds, preds.device)
    mask = labelled.bool() & _valid_norm(norm)[:, None]  # (B, K)
    dist = torch.linalg.vector_norm((preds - target).double(), dim=-1) / norm.double()[:, None]  # (B, K)
    hit = (dist[None] < thr[:, None, None]) & mask[None]  # (T, B, K); NaN distances compare False
    return hit.sum(dim=1), mask.sum(dim=0)


def normalised_errors(preds: Tensor, target: Tensor, labelled: Tensor, norm: Tensor) -> Tensor:
    """Per-joint error as a fraction of the sample's normaliser: what PCK thresholds, kept per sample.

    A joint is correct at ``alpha`` exactly when its error is ``< alpha`` (as :func:`pck_update`), so PCK at
    any threshold, and PCK of any resampling of the samples, follows from these errors alone.

    Returns:
        ``(B, K)`` float64: NaN where the joint is not scored (unlabelled, or the sample has no valid
        normaliser), ``inf`` where it is scored but has no prediction (NaN prediction: wrong at every alpha).
    """
    _pck_tensor_validation(preds, target, labelled, norm)
    scored = labelled.bool() & _valid_norm(norm)[:, None]
    dist = torch.linalg.vector_norm((preds - target).double(), dim=-1) / norm.double()[:, None]
    dist = torch.where(torch.isnan(dist), torch.full_like(dist, torch.inf), dist)
    return torch.where(scored, dist, torch.full_like(dist, torch.nan))


def pck_compute(correct: Tensor, count: Tensor) -> tuple[Tensor, Tensor]:
    """Finish PCK from summed statistics.

    Returns:
        ``mean`` ``(T,)``: correct over scored joints, all joints pooled (the count-weighted joint mean);
        ``per_joint`` ``(T, K)``; NaN where nothing was scored.
    """
    count = count.double()
    mean = correct.double().sum(dim=-1) / count.sum()
    per_joint = correct.double() / count
    return mean, per_joint


def pck(
    preds: Tensor,
    target: Tensor,
    labelled: Tensor,
    norm: Tensor,
    thresholds: Sequence[float] | Tensor = DEFAULT_THRESHOLDS,
) -> tuple[Tensor, Tensor]:
    """PCK of one set of predictions: ``(mean (T,), per_joint (T, K))``.

    Example:
        >>> t = torch.zeros(1, 2, 2); p = torch.tensor([[[3.0, 4.0], [30.0, 40.0]]])
        >>> pck(p, t, torch.ones(1, 2, dtype=torch.bool), torch.tensor([100.0]), [0.1])[0]
        tensor([0.5000], dtype=torch.float64)
    """
    return pck_compute(*pck_update(preds, target, labelled, norm, thresholds))


def pck_curve(
    preds: Tensor,
    target: Tensor,
    labelled: Tensor,
    norm: Tensor,
    thresholds: Sequence[float] | Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """PCK-vs-threshold curve (default thresholds 0, 0.01, ..., 0.5).

    Returns:
        ``thresholds`` ``(T,)``, ``mean`` ``(T,)``, ``per_joint`` ``(T, K)``.
    """
    thr = (
        torch.linspace(0.0, 0.5, 51, dtype=torch.float64)
        if thresholds is None
        else torch.as_tensor(thresholds)
    )
    mean, per_joint = pck(preds, target, labelled, norm, thr)
    return thr.double(), mean, per_joint


CURVE_THRESHOLDS: tuple[float, ...] = tuple(round(0.01 * i, 2) for i in range(51))  # 0, 0.01, ..., 0.5


def pck_from_errors(errors: Tensor, thresholds: Sequence[float] | Tensor) -> tuple[Tensor, Tensor]:
    """PCK of normalised errors (:func:`normalised_errors`, ``(N, K)``: NaN not scored, ``inf`` no
    prediction): ``(mean (T,), per_joint (T, K))``, equal to :func:`pck` of the predictions they came from.

    Example:
        >>> pck_from_errors(torch.tensor([[0.05, float("nan")], [float("inf"), 0.3]]), [0.1])[0]
        tensor([0.3333], dtype=torch.float64)
    """
    thr = _as_thresholds(thresholds, errors.device)
    errors = errors.double()
    correct = (errors[None] < thr[:, None, None]).sum(dim=1)  # NaN and inf compare False
    return pck_compute(correct, (~torch.isnan(errors)).sum(dim=0))


def pck_curve_from_errors(
    errors: Tensor,
    norm: str,
    thresholds: Sequence[float] = CURVE_THRESHOLDS,
    keypoint_names: Sequence[str] = COCO17.names,
) -> dict:
    """The PCK-vs-threshold curve of a test run's per-sample errors, as ``test_metrics.json`` stores it:
    ``{"thresholds": [...], "pck": [...], "per_joint": {name: [...]}, "norm": norm}`` (NaN: never scored)."""
    mean, per_joint = pck_from_errors(errors.reshape(-1, len(keypoint_names)), thresholds)
    return {
        "thresholds": [float(t) for t in thresholds],
        "pck": mean.tolist(),
        "per_joint": {name: per_joint[:, j].tolist() for j, name in enumerate(keypoint_names)},
        "norm": norm,
    }


class PCK(Metric):
    """PCK at several thresholds, per joint and pooled; correct under DDP (all states are sums).

    ``compute()`` returns ``pck@<thr>`` (pooled over labelled joints) for each threshold,
    ``pck@<thr>/<joint name>`` per joint (NaN for a joint never labelled, e.g. MINI-RGBD's eyes), and
    ``pck_excluded_samples`` (samples without a valid normaliser).

    Args:
        thresholds: fractions of the normaliser.
        norm: normaliser kind (:data:`NORM_KINDS`); an explicit ``norm`` tensor given to :meth:`update` wins.
        keypoint_names: names used in the per-joint keys; their number fixes K.
        kwargs: :class:`torchmetrics.Metric` keyword arguments.

    Example:
        >>> m = PCK(thresholds=(0.1,), norm="bbox", keypoint_names=("a", "b"))
        >>> m.update(torch.tensor([[[3.0, 4.0], [30.0, 40.0]]]), torch.zeros(1, 2, 2),
        ...          torch.ones(1, 2, dtype=torch.bool), bbox=torch.tensor([[0.0, 0.0, 100.0, 50.0]]))
        >>> {k: round(v.item(), 3) for k, v in m.compute().items()}
        {'pck@0.1': 0.5, 'pck@0.1/a': 1.0, 'pck@0.1/b': 0.0, 'pck_excluded_samples': 0.0}
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    correct: Tensor
    count: Tensor
    excluded: Tensor

    def __init__(
        self,
        thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
        norm: str = "bbox",
        keypoint_names: Sequence[str] = COCO17.names,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if norm not in NORM_KINDS:
            raise ValueError(f"PCK: norm must be one of {NORM_KINDS}, got {norm!r}")
        self.thresholds = tuple(float(t) for t in _as_thresholds(thresholds, torch.device("cpu")).tolist())
        self.norm = norm
        self.keypoint_names = tuple(keypoint_names)
        t, k = len(self.thresholds), len(self.keypoint_names)
        self.add_state("correct", torch.zeros(t, k, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(k, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("excluded", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(
        self,
        preds: Tensor,
        target: Tensor,
        labelled: Tensor,
        *,
        bbox: Tensor | None = None,
        image_hw: Tensor | None = None,
        head_size: Tensor | None = None,
        norm: Tensor | None = None,
    ) -> None:
        """Add a batch: ``preds``/``target`` ``(B, K, D)``, ``labelled`` ``(B, K)``, what the norm needs."""
        if norm is None:
            norm = norm_factor(
                self.norm, target=target, labelled=labelled, bbox=bbox, image_hw=image_hw, head_size=head_size
            )
        correct, count = pck_update(preds, target, labelled, norm, self.thresholds)
        self.correct += correct
        self.count += count
        self.excluded += (~_valid_norm(norm)).sum()

    def compute(self) -> dict[str, Tensor]:
        mean, per_joint = pck_compute(self.correct, self.count)
        out: dict[str, Tensor] = {}
        for i, thr in enumerate(self.thresholds):
            out[f"pck@{thr:g}"] = mean[i]
            for j, name in enumerate(self.keypoint_names):
                out[f"pck@{thr:g}/{name}"] = per_joint[i, j]
        out["pck_excluded_samples"] = self.excluded.double()
        return out


class SampleErrors(Metric):
    """Every test sample's normalised joint errors (:func:`normalised_errors`), keyed by its dataset index.

    What a paired, resampled comparison of two runs needs (``geosapiens report`` bootstraps over test
    samples): PCK at any threshold is ``(errors < alpha).sum() / scored.sum()`` over any subset of samples.
    States are ``"cat"`` lists (the torchmetrics exception to sum states): a DistributedSampler that pads a
    split repeats a few samples, and :meth:`compute` keeps each index once, sorted.

    Args:
        norm: normaliser kind (:data:`NORM_KINDS`), as :class:`PCK`.
        kwargs: :class:`torchmetrics.Metric` keyword arguments.

    Example:
        >>> m = SampleErrors(norm="bbox")
        >>> m.update(torch.tensor([[[3.0, 4.0], [30.0, 40.0]]]), torch.zeros(1, 2, 2),
        ...          torch.tensor([[True, False]]), index=torch.tensor([7]),
        ...          bbox=torch.tensor([[0.0, 0.0, 100.0, 50.0]]))
        >>> index, errors = m.compute()
        >>> index.reshape(-1).tolist(), errors.tolist()
        ([7], [[0.05, nan]])
    """

    is_differentiable = False
    full_state_update = False

    index: list[Tensor]
    errors: list[Tensor]

    def __init__(self, norm: str = "bbox", **kwargs) -> None:
        super().__init__(**kwargs)
        if norm not in NORM_KINDS:
            raise ValueError(f"SampleErrors: norm must be one of {NORM_KINDS}, got {norm!r}")
        self.norm = norm
        self.add_state("index", [], dist_reduce_fx="cat")
        self.add_state("errors", [], dist_reduce_fx="cat")

    def update(
        self,
        preds: Tensor,
        target: Tensor,
        labelled: Tensor,
        *,
        index: Tensor,
        bbox: Tensor | None = None,
        image_hw: Tensor | None = None,
        head_size: Tensor | None = None,
    ) -> None:
        """Add a batch (as :meth:`PCK.update`) with each sample's dataset ``index`` ``(B,)``."""
        norm = norm_factor(
            self.norm, target=target, labelled=labelled, bbox=bbox, image_hw=image_hw, head_size=head_size
        )
        self.errors.append(normalised_errors(preds, target, labelled, norm))
        self.index.append(torch.as_tensor(index, device=preds.device).reshape(-1).long())

    def compute(self) -> tuple[Tensor, Tensor]:
        """``index`` ``(N,)`` sorted and unique, ``errors`` ``(N, K)`` float64 (torchmetrics squeezes a
        one-element output: with one sample ``index`` comes back 0-d, hence ``reshape(-1)`` in callers)."""
        index = self.index if isinstance(self.index, Tensor) else torch.cat(self.index)
        errors = self.errors if isinstance(self.errors, Tensor) else torch.cat(self.errors)
        unique, inverse = torch.unique(index, sorted=True, return_inverse=True)
        first = torch.full_like(unique, len(index)).scatter_reduce(
            0, inverse, torch.arange(len(index), device=index.device), reduce="amin"
        )
        return unique, errors[first]
