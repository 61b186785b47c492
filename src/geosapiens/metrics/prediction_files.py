"""The files predictions are written to: COCO keypoint results and, for videos, keypoint tracks.

Written by :class:`~geosapiens.callbacks.prediction_writer.PredictionWriter` (``trainer.predict``) and by
``geosapiens infer``; Lightning-free, so prediction from an ONNX file needs no trainer. Rows are
:func:`prediction_rows`' dicts, one per predicted person. :func:`write_predictions` writes:

- ``coco_results.json``: ``[{"image_id", "category_id": 1, "keypoints": [x, y, score] * K, "score"}]``
  with ``score`` the mean keypoint score; what pycocotools and ``geosapiens evaluate --pred`` read;
- for samples with a ``sequence``: ``tracks.csv``, one row per frame sorted by (sequence, frame), columns
  ``sequence, frame, image_path, image_id`` then ``<joint>_x, <joint>_y, <joint>_score`` per joint; and
  ``tracks/<sequence>.npz`` per sequence with ``keypoints`` ``(T, K, 2)``, ``scores`` ``(T, K)``, ``frames``
  ``(T,)``, ``bboxes`` ``(T, 4)``, ``image_paths`` ``(T,)`` and ``sequence``. One infant per frame: when a
  frame holds several people, the track keeps the one with the highest mean score.

Every file is written atomically.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geosapiens.io import atomic_write, atomic_write_file
from geosapiens.skeleton import COCO17

__all__ = [
    "prediction_rows",
    "merge_rows",
    "coco_results",
    "track_columns",
    "write_predictions",
]


def _as_list(value: Any, n: int, name: str) -> list:
    """Per-sample values of a batch field: tensors and lists of length ``n``."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().tolist()
    value = list(value)
    if len(value) != n:
        raise ValueError(
            f"PredictionWriter: predict_step output '{name}' has {len(value)} entries for {n} samples"
        )
    return value


def prediction_rows(output: dict, indices: Sequence[int] | None) -> list[dict]:
    """One JSON-ready row per sample of a ``predict_step`` output dict (see the module docstring).

    ``indices`` are the samples' dataset indices (Lightning's batch indices; None when unknown).
    """
    missing = [k for k in ("keypoints", "scores", "image_path", "image_id", "bbox") if k not in output]
    if missing:
        raise ValueError(f"PredictionWriter: predict_step output has no {missing}; got keys {sorted(output)}")
    kp = output["keypoints"].detach().cpu().double()
    scores = output["scores"].detach().cpu().double()
    n, k = kp.shape[:2]
    if kp.shape != (n, k, 2) or scores.shape != (n, k):
        raise ValueError(
            f"PredictionWriter: keypoints {tuple(kp.shape)} and scores {tuple(scores.shape)} must be "
            "(B, K, 2) and (B, K)"
        )
    paths = _as_list(output["image_path"], n, "image_path")
    ids = _as_list(output["image_id"], n, "image_id")
    bboxes = (
        output["bbox"].detach().cpu().double().tolist() if isinstance(output["bbox"], torch.Tensor) else None
    )
    if bboxes is None or len(bboxes) != n:
        raise ValueError(f"PredictionWriter: 'bbox' must be a ({n}, 4) tensor")
    sequences = (
        _as_list(output["sequence"], n, "sequence") if output.get("sequence") is not None else [None] * n
    )
    frames = _as_list(output["frame"], n, "frame") if output.get("frame") is not None else [None] * n
    idx = list(indices) if indices is not None and len(indices) == n else [None] * n
    rows = []
    for i in range(n):
        if not (torch.isfinite(kp[i]).all() and torch.isfinite(scores[i]).all()):
            raise ValueError(
                f"PredictionWriter: non-finite keypoints or scores for {paths[i]} (image {ids[i]})"
            )
        sequence = sequences[i] if sequences[i] not in (None, "") else None
        if sequence is not None and frames[i] is None:
            raise ValueError(f"PredictionWriter: {paths[i]} has sequence {sequence!r} but no 'frame'")
        rows.append(
            {
                "index": idx[i],
                "image_id": ids[i],
                "image_path": str(paths[i]),
                "bbox": bboxes[i],
                "keypoints": kp[i].tolist(),
                "scores": scores[i].tolist(),
                "sequence": None if sequence is None else str(sequence),
                "frame": None if frames[i] is None else int(frames[i]),
            }
        )
    return rows


def merge_rows(parts: Sequence[Sequence[dict]]) -> list[dict]:
    """Merge per-rank rows into dataset order without the sampler's padding repeats.

    With dataset indices on every row: sort by index, keep one row per index. Without (iterable datasets):
    rank order, dropping rows identical in (image id, path, box, sequence, frame) to an earlier one.
    """
    rows = [r for part in parts for r in part]
    if rows and all(r["index"] is not None for r in rows):
        by_index: dict[int, dict] = {}
        for r in rows:
            by_index.setdefault(int(r["index"]), r)
        return [by_index[i] for i in sorted(by_index)]
    seen, out = set(), []
    for r in rows:
        key = (str(r["image_id"]), r["image_path"], tuple(r["bbox"]), r["sequence"], r["frame"])
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def _json_value(value: Any) -> Any:
    """Extras as JSON values: numpy scalars to Python, NaN (no value) to null."""
    value = value.item() if isinstance(value, np.generic) else value
    return None if isinstance(value, float) and not math.isfinite(value) else value


def coco_results(rows: Sequence[dict], category_id: int = 1) -> list[dict]:
    """COCO keypoint results: flat ``[x, y, score] * K`` and the instance score = mean keypoint score.

    A row's ``extra`` fields (e.g. quality flags) are added to its result; pycocotools ignores them.
    """
    return [
        {
            "image_id": r["image_id"],
            "category_id": category_id,
            "keypoints": [
                v for (x, y), s in zip(r["keypoints"], r["scores"], strict=True) for v in (x, y, s)
            ],
            "score": math.fsum(r["scores"]) / len(r["scores"]),
        }
        | {k: _json_value(v) for k, v in r.get("extra", {}).items()}
        for r in rows
    ]


def track_columns(names: Sequence[str], extra: Sequence[str] = ()) -> list[str]:
    """CSV header of ``tracks.csv``: per-joint ``x, y, score`` then the rows' extra fields."""
    return (
        ["sequence", "frame", "image_path", "image_id"]
        + [f"{name}_{c}" for name in names for c in ("x", "y", "score")]
        + list(extra)
    )


def _tracks(rows: Sequence[dict]) -> dict[str, list[dict]]:
    """Rows with a sequence, grouped and sorted by frame; one (highest mean score) row per frame."""
    best: dict[tuple[str, int], dict] = {}
    for r in rows:
        if r["sequence"] is None:
            continue
        key = (r["sequence"], r["frame"])
        if key not in best or sum(r["scores"]) > sum(best[key]["scores"]):
            best[key] = r
    out: dict[str, list[dict]] = {}
    for seq, frame in sorted(best):
        out.setdefault(seq, []).append(best[(seq, frame)])
    return out


def _safe_name(sequence: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", sequence).strip("._") or "sequence"


def write_predictions(
    directory: str | Path,
    rows: Sequence[dict],
    *,
    keypoint_names: Sequence[str] = COCO17.names,
    category_id: int = 1,
    results_name: str = "coco_results.json",
    tracks_name: str = "tracks",
    suffix: str = "",
) -> list[Path]:
    """The COCO results file and, for rows with a sequence, ``tracks.csv`` and one NPZ per sequence.

    Rows are :func:`prediction_rows`' dicts; an optional ``extra`` dict of per-row scalars (the same keys on
    every row) becomes extra result fields, CSV columns and NPZ arrays, and an optional ``keypoints_raw``
    (K, 2) (the unsmoothed prediction) is kept in the NPZ next to ``keypoints``. Returns the paths written.
    """
    if rows and len(rows[0]["keypoints"]) != len(keypoint_names):
        raise ValueError(
            f"PredictionWriter: predictions have K={len(rows[0]['keypoints'])} joints but "
            f"keypoint_names has {len(keypoint_names)}"
        )
    out = Path(directory)
    stem, ext = Path(results_name).stem, Path(results_name).suffix or ".json"
    written = [
        atomic_write_file(
            out / f"{stem}{suffix}{ext}", json.dumps(coco_results(rows, category_id), allow_nan=False)
        )
    ]
    tracks = _tracks(rows)
    if not tracks:
        return written
    extra = list(rows[0].get("extra", {}))
    csv_path = out / f"{tracks_name}{suffix}.csv"
    with atomic_write(csv_path, "w") as f:
        writer = csv.writer(f)
        writer.writerow(track_columns(keypoint_names, extra))
        for seq, seq_rows in tracks.items():
            for r in seq_rows:
                values = [v for (x, y), s in zip(r["keypoints"], r["scores"], strict=True) for v in (x, y, s)]
                flags = [_json_value(r["extra"][k]) for k in extra]
                writer.writerow([seq, r["frame"], r["image_path"], r["image_id"], *values, *flags])
    written.append(csv_path)
    folder = out / f"{tracks_name}{suffix}"
    folder.mkdir(parents=True, exist_ok=True)
    names: dict[str, str] = {}
    for seq, seq_rows in tracks.items():
        name = _safe_name(seq)
        if names.setdefault(name, seq) != seq:
            raise ValueError(f"PredictionWriter: sequences {names[name]!r} and {seq!r} share file {name}.npz")
        arrays = {
            "sequence": np.array(seq),
            "keypoints": np.array([r["keypoints"] for r in seq_rows], dtype=np.float64),
            "scores": np.array([r["scores"] for r in seq_rows], dtype=np.float64),
            "frames": np.array([r["frame"] for r in seq_rows], dtype=np.int64),
            "bboxes": np.array([r["bbox"] for r in seq_rows], dtype=np.float64),
            "image_paths": np.array([r["image_path"] for r in seq_rows]),
        }
        if "keypoints_raw" in seq_rows[0]:
            arrays["keypoints_raw"] = np.array([r["keypoints_raw"] for r in seq_rows], dtype=np.float64)
        arrays |= {k: np.array([r["extra"][k] for r in seq_rows]) for k in extra}
        with atomic_write(folder / f"{name}.npz", "wb") as f:
            np.savez(f, **arrays)
        written.append(folder / f"{name}.npz")
    return written
