"""Temporal consistency of keypoint tracks: G-Error (bone-length variation) and jitter (acceleration).

**G-Error** (our definition; the infant literature has no standard one, ``reference/datasets.md`` §5):
for each bone, the coefficient of variation ``std / mean`` (population std) of its length over the frames
of a sequence where both endpoints are labelled; averaged over bones, then over sequences. A rigid skeleton
scores 0. It works in 2D or 3D; in 2D foreshortening makes true lengths vary too, so report it for the
ground truth as well and the excess ``G(pred) - G(gt)``. For small isotropic noise of std ``s`` per
coordinate on both endpoints, a bone of length ``L`` gets ``CV ~ s * sqrt(2) / L``.

**Jitter**: the mean magnitude of the second finite difference ``x[t+1] - 2 x[t] + x[t-1]`` (units per
frame^2) over labelled joints and frames of a sequence, averaged over sequences; 0 for constant-velocity
motion. With ground truth, the **acceleration error** ``mean ||a_pred - a_gt||`` (as in HMMR/VIBE) is
reported too.

The functions take sequences as ``(T, K, D)`` tensors of consecutive frames. The Metrics
(:class:`GError`, :class:`Jitter`) take frames in any order and on any rank: see :class:`_SequenceMetric`.

Note:
    T: frames, K: keypoints, D: 2 or 3, E: bones (pairs of keypoint indices, COCO-17 limbs by default).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from geosapiens.skeleton import COCO17_CHAIN

__all__ = [
    "DEFAULT_BONES",
    "bone_lengths",
    "bone_length_cv",
    "g_error",
    "jitter",
    "GError",
    "Jitter",
]

# The eight limb bones (upper arms, forearms, thighs, shanks): rigid in 3D, labelled in every infant dataset.
DEFAULT_BONES: tuple[tuple[int, int], ...] = COCO17_CHAIN

Sequences = Tensor | Sequence[Tensor]


def _as_list(x: Sequences | None) -> list[Tensor] | None:
    if x is None:
        return None
    return [x] if isinstance(x, Tensor) else list(x)


def _labelled_or_all(keypoints: Tensor, labelled: Tensor | None) -> Tensor:
    """``(T, K)`` bool: labelled and finite joints."""
    ok = torch.isfinite(keypoints).all(dim=-1)
    return ok if labelled is None else ok & labelled.bool()


def bone_lengths(keypoints: Tensor, bones: Sequence[tuple[int, int]] = DEFAULT_BONES) -> Tensor:
    """Lengths ``(..., E)`` of ``bones`` in keypoints ``(..., K, D)``."""
    a = torch.tensor([b[0] for b in bones], device=keypoints.device)
    b = torch.tensor([b[1] for b in bones], device=keypoints.device)
    return torch.linalg.vector_norm(keypoints[..., a, :] - keypoints[..., b, :], dim=-1)


def bone_length_cv(
    keypoints: Tensor, labelled: Tensor | None = None, bones: Sequence[tuple[int, int]] = DEFAULT_BONES
) -> Tensor:
    """Per-bone coefficient of variation ``(E,)`` of one sequence ``(T, K, D)``.

    NaN for a bone with fewer than two frames where both endpoints are labelled, or a zero mean length.
    """
    kp = keypoints.double()
    ok = _labelled_or_all(kp, labelled)
    a = [e[0] for e in bones]
    b = [e[1] for e in bones]
    valid = ok[:, a] & ok[:, b]  # (T, E)
    lengths = torch.where(valid, bone_lengths(kp, bones), torch.zeros((), dtype=kp.dtype, device=kp.device))
    n = valid.sum(dim=0).double()
    mean = lengths.sum(dim=0) / n
    var = (((lengths - mean) ** 2) * valid).sum(dim=0) / n
    cv = var.sqrt() / mean
    return torch.where((n >= 2) & (mean > 0), cv, torch.full_like(cv, float("nan")))


def g_error(
    sequences: Sequences, labelled: Sequences | None = None, bones: Sequence[tuple[int, int]] = DEFAULT_BONES
) -> Tensor:
    """G-Error: bone-length CV averaged over bones, then over sequences (NaN bones/sequences skipped).

    Args:
        sequences: one ``(T, K, D)`` sequence or a list of them.
        labelled: matching ``(T, K)`` bool masks (default: every finite joint).
        bones: keypoint index pairs.
    """
    seqs, masks = _as_list(sequences), _as_list(labelled)
    per_seq = torch.stack(
        [bone_length_cv(s, None if masks is None else masks[i], bones).nanmean() for i, s in enumerate(seqs)]
    )
    return per_seq.nanmean()


def _acceleration(keypoints: Tensor, labelled: Tensor | None) -> tuple[Tensor, Tensor]:
    """Second differences ``(T-2, K, D)`` and validity ``(T-2, K)`` (joint labelled in all three frames)."""
    kp = keypoints.double()
    ok = _labelled_or_all(kp, labelled)
    acc = kp[2:] - 2 * kp[1:-1] + kp[:-2]
    return acc, ok[2:] & ok[1:-1] & ok[:-2]


def _mean_norm(vectors: Tensor, valid: Tensor) -> Tensor:
    return torch.linalg.vector_norm(vectors, dim=-1)[valid].mean()


def jitter(sequences: Sequences, labelled: Sequences | None = None) -> Tensor:
    """Mean acceleration magnitude per sequence (``(T, K, D)``, consecutive frames), then over sequences."""
    seqs, masks = _as_list(sequences), _as_list(labelled)
    values = [_mean_norm(*_acceleration(s, None if masks is None else masks[i])) for i, s in enumerate(seqs)]
    return torch.stack(values).nanmean()


class _SequenceMetric(Metric):
    """Accumulates per-frame rows and regroups them into sequences at ``compute``.

    DDP design: a per-sequence state keyed by sequence cannot be a sum (ranks do not know each other's
    sequences, and jitter needs neighbouring frames, which may sit on other ranks). So every state is a
    ``cat`` list of rows ``(sequence_id, frame, keypoints, labelled[, target])``; after the gather,
    ``compute`` sorts by ``(sequence_id, frame)``, keeps one row per pair (``DistributedSampler`` pads with
    repeats), and runs the functional metric per sequence. The result does not depend on how frames were
    split across ranks and batches. Memory is one row per frame (12,000 MINI-RGBD frames x 17 x 3 floats
    ~ 2.4 MB).

    Args:
        with_target: whether :meth:`update` receives ground truth (then the GT and excess values are added).
        kwargs: :class:`torchmetrics.Metric` keyword arguments.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False
    plot_lower_bound = 0.0

    sequence_ids: list[Tensor]
    frames: list[Tensor]
    preds: list[Tensor]
    labelled: list[Tensor]
    targets: list[Tensor]

    def __init__(self, with_target: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.with_target = with_target
        for name in ("sequence_ids", "frames", "preds", "labelled") + (("targets",) if with_target else ()):
            self.add_state(name, [], dist_reduce_fx="cat")

    def update(
        self,
        preds: Tensor,
        sequence_ids: Tensor,
        frames: Tensor,
        target: Tensor | None = None,
        labelled: Tensor | None = None,
    ) -> None:
        """Add frames: ``preds`` ``(B, K, D)``, integer ``sequence_ids`` ``(B,)`` (map names to ints
        yourself), integer ``frames`` ``(B,)`` (consecutive frames differ by 1), ``target`` ``(B, K, D)`` iff
        ``with_target``, ``labelled`` ``(B, K)`` (default all)."""
        b, k = preds.shape[:2]
        if sequence_ids.shape != (b,) or frames.shape != (b,):
            raise ValueError(f"{type(self).__name__}: sequence_ids and frames must be ({b},)")
        if (target is not None) != self.with_target:
            raise ValueError(
                f"{type(self).__name__}: target must be given iff with_target={self.with_target}"
            )
        if target is not None and target.shape != preds.shape:
            raise ValueError(
                f"{type(self).__name__}: target {tuple(target.shape)} != preds {tuple(preds.shape)}"
            )
        self.sequence_ids.append(sequence_ids.long())
        self.frames.append(frames.long())
        self.preds.append(preds)
        self.labelled.append(
            torch.ones(b, k, dtype=torch.bool, device=preds.device) if labelled is None else labelled.bool()
        )
        if target is not None:
            self.targets.append(target)

    def _sequences(self) -> list[dict[str, list[Tensor]]]:
        """Per sequence, its runs of consecutive frames as ``{"preds": [...], "labelled": [...], ...}``."""
        if len(self.sequence_ids) == 0:
            return []
        seq, frame = dim_zero_cat(self.sequence_ids), dim_zero_cat(self.frames)
        rows = {"preds": dim_zero_cat(self.preds), "labelled": dim_zero_cat(self.labelled)}
        if self.with_target:
            rows["targets"] = dim_zero_cat(self.targets)
        order = torch.argsort(frame, stable=True)
        order = order[torch.argsort(seq[order], stable=True)]  # sorted by (sequence, frame)
        seq, frame = seq[order], frame[order]
        keep = torch.ones_like(seq, dtype=torch.bool)
        keep[1:] = (seq[1:] != seq[:-1]) | (frame[1:] != frame[:-1])
        order, seq, frame = order[keep], seq[keep], frame[keep]
        new_seq = torch.ones(len(seq), dtype=torch.bool, device=seq.device)
        new_seq[1:] = seq[1:] != seq[:-1]
        new_run = new_seq.clone()
        new_run[1:] |= frame[1:] != frame[:-1] + 1
        seq_starts = torch.nonzero(new_seq).flatten().tolist() + [len(seq)]
        out = []
        for s0, s1 in zip(seq_starts[:-1], seq_starts[1:], strict=True):
            run_starts = [s0 + int(i) for i in torch.nonzero(new_run[s0:s1]).flatten()] + [s1]
            out.append(
                {
                    name: [v[order[r0:r1]] for r0, r1 in zip(run_starts[:-1], run_starts[1:], strict=True)]
                    for name, v in rows.items()
                }
            )
        return out


class GError(_SequenceMetric):
    """G-Error over accumulated frames (see the module docstring and :class:`_SequenceMetric` for DDP).

    ``compute()`` returns ``g_error``, and with ``with_target=True`` also ``g_error_gt`` and
    ``g_error_excess`` (``g_error - g_error_gt``). Frame gaps do not matter for it.

    Args:
        bones: keypoint index pairs (default :data:`DEFAULT_BONES`).
        with_target, kwargs: see :class:`_SequenceMetric`.
    """

    def __init__(
        self, bones: Sequence[tuple[int, int]] = DEFAULT_BONES, with_target: bool = False, **kwargs
    ) -> None:
        super().__init__(with_target=with_target, **kwargs)
        self.bones = tuple((int(a), int(b)) for a, b in bones)

    def compute(self) -> dict[str, Tensor]:
        seqs = self._sequences()
        nan = torch.tensor(float("nan"), dtype=torch.float64)

        def score(name: str) -> Tensor:
            if not seqs:
                return nan
            return g_error(
                [torch.cat(s[name]) for s in seqs], [torch.cat(s["labelled"]) for s in seqs], self.bones
            )

        out = {"g_error": score("preds")}
        if self.with_target:
            out["g_error_gt"] = score("targets")
            out["g_error_excess"] = out["g_error"] - out["g_error_gt"]
        return out


class Jitter(_SequenceMetric):
    """Jitter over accumulated frames; second differences only within runs of consecutive frames.

    ``compute()`` returns ``jitter``, and with ``with_target=True`` also ``jitter_gt`` and ``accel_error``.
    Each sequence's value pools the accelerations of all its runs.
    """

    @staticmethod
    def _sequence_value(seq: dict[str, list[Tensor]], name: str, minus: str | None = None) -> Tensor:
        """Mean ``||a[name] (- a[minus])||`` over the valid joints and frames of all runs of one sequence."""
        vectors, valid = [], []
        for i, mask in enumerate(seq["labelled"]):
            a, v = _acceleration(seq[name][i], mask)
            if minus is not None:
                b, w = _acceleration(seq[minus][i], mask)
                a, v = a - b, v & w
            vectors.append(a.reshape(-1, a.shape[-1]))
            valid.append(v.reshape(-1))
        return _mean_norm(torch.cat(vectors), torch.cat(valid))

    def compute(self) -> dict[str, Tensor]:
        seqs = self._sequences()

        def mean_over_sequences(name: str, minus: str | None = None) -> Tensor:
            if not seqs:
                return torch.tensor(float("nan"), dtype=torch.float64)
            return torch.stack([self._sequence_value(s, name, minus) for s in seqs]).nanmean()

        out = {"jitter": mean_over_sequences("preds")}
        if self.with_target:
            out["jitter_gt"] = mean_over_sequences("targets")
            out["accel_error"] = mean_over_sequences("preds", minus="targets")
        return out
