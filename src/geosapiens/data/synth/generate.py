"""Writes a whole generated data set (stills, sequences) in the real formats, in parallel, deterministically.

Every image has its own seed, ``SeedSequence([seed, split code, index])`` (frames:
``[seed, sequence code, sequence, frame]``), so the bytes written do not depend on the number of worker
processes or on the order in which they finish.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from geosapiens.data.synth.motion import POSTURE_LABELS
from geosapiens.data.synth.presets import Preset
from geosapiens.data.synth.scene import Scene, render_frame, sample_sequence, sample_still, stream
from geosapiens.data.synth.writers import (
    coco_entries,
    maps_path,
    write_image,
    write_json,
    write_maps,
    write_mini_rgbd_frame,
)

__all__ = [
    "StillSplit",
    "STILL_SPLITS",
    "COMBINED_SPLIT",
    "FORMAT_VERSION",
    "LEGACY_DIRNAMES",
    "MINI_RGBD_DIRNAME",
    "SYRIP_DIRNAME",
    "generate",
    "still_seed",
    "frame_seed",
]

# The folder names of the distributed datasets, which the paper configs read under $GEOSAPIENS_DATA: the
# generated tree is a drop-in data root.
MINI_RGBD_DIRNAME = "MINI-RGBD_web"
SYRIP_DIRNAME = "SyRIP"
# The manifest's ``format_version``: 2 since the folders took those names; version 1 wrote these instead.
FORMAT_VERSION = 2
LEGACY_DIRNAMES = ("syrip", "mini_rgbd")

_SEQUENCE_CODE = 100
_FRAME_CODE = 101
_CHUNK_STILLS = 16
_CHUNK_FRAMES = 10


@dataclass(frozen=True)
class StillSplit:
    """One SyRIP-style split of stills: its style, annotation file, image folder and id/file naming."""

    name: str
    style: str
    annotation: str
    image_dir: str
    first_id: int
    file_pattern: str
    code: int
    count_field: str

    def file_name(self, image_id: int) -> str:
        return self.file_pattern.format(id=image_id)


STILL_SPLITS: tuple[StillSplit, ...] = (
    StillSplit(
        "1000S",
        "synthetic",
        "annotations/1000S/person_keypoints_train_infant.json",
        "images/train_infant",
        10000,
        "train{id:05d}.jpg",
        1,
        "synthetic_train",
    ),
    StillSplit(
        "200R",
        "real-like",
        "annotations/200R/person_keypoints_train_infant.json",
        "images/train_infant",
        1,
        "train{id:05d}.jpg",
        2,
        "real_train",
    ),
    StillSplit(
        "val_real",
        "real-like",
        "annotations/val_real/person_keypoints_val_infant.json",
        "images/val_infant",
        5000,
        "val{id:05d}.jpg",
        3,
        "real_val",
    ),
    StillSplit(
        "validate100",
        "real-like",
        "annotations/validate100/person_keypoints_validate_infant.json",
        "images/validate_infant",
        0,
        "test{id}.jpg",
        4,
        "real_test",
    ),
)
# The official mixed training file: 200R and 1000S together.
COMBINED_SPLIT = (
    "200R_1000S",
    "annotations/200R_1000S/person_keypoints_train_infant.json",
    ("200R", "1000S"),
)


def still_seed(seed: int, split: StillSplit, index: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([seed, split.code, index])


def frame_seed(seed: int, sequence: int, frame: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([seed, _FRAME_CODE, sequence, frame])


@functools.lru_cache(maxsize=2)
def _sequence_scenes(seed: int, sequence: int, style: str, num_frames: int) -> list[Scene]:
    return sample_sequence(np.random.SeedSequence([seed, _SEQUENCE_CODE, sequence]), style, num_frames)


def _render_stills(job: tuple[Path, int, str, int, int, tuple[int, int]]) -> list[tuple[str, dict, dict]]:
    """Render and write stills ``[start, stop)`` of one split; returns their COCO entries."""
    root, seed, split_name, start, stop, size = job
    split = next(s for s in STILL_SPLITS if s.name == split_name)
    out = []
    for index in range(start, stop):
        ss = still_seed(seed, split, index)
        scene = sample_still(ss, split.style, size)
        frame = render_frame(scene, stream(ss, "noise"))
        image_id = split.first_id + index
        name = split.file_name(image_id)
        path = root / split.image_dir / name
        write_image(path, frame.rgb, jpeg_quality=95 if split.style == "synthetic" else 90)
        write_maps(maps_path(root, path), frame)
        image, annotation = coco_entries(
            frame, image_id, name, split.style == "synthetic", POSTURE_LABELS[scene.pose.posture]
        )
        out.append((split_name, image, annotation))
    return out


def _render_frames(job: tuple[Path, int, int, str, int, int, int]) -> int:
    """Render and write frames ``[start, stop)`` of one MINI-RGBD sequence."""
    root, seed, sequence, style, num_frames, start, stop = job
    scenes = _sequence_scenes(seed, sequence, style, num_frames)
    for f in range(start, stop):
        frame = render_frame(scenes[f], np.random.default_rng(frame_seed(seed, sequence, f)))
        write_mini_rgbd_frame(root, f"{sequence:02d}", f, frame)
    return stop - start


def _run(job: tuple[str, tuple]) -> tuple[int, list]:
    kind, args = job
    if kind == "stills":
        stills = _render_stills(args)
        return len(stills), stills
    return _render_frames(args), []


def _init_worker() -> None:
    cv2.setNumThreads(1)


def _jobs(out: Path, preset: Preset, seed: int) -> Iterator[tuple[str, tuple]]:
    """Chunks of work, longest first: sequence frames, then stills split by split."""
    n = preset.sequence_frames
    for s, style in enumerate(preset.sequence_styles, start=1):
        for start in range(0, n, _CHUNK_FRAMES):
            yield "frames", (out / MINI_RGBD_DIRNAME, seed, s, style, n, start, min(start + _CHUNK_FRAMES, n))
    for split in STILL_SPLITS:
        count = getattr(preset, split.count_field)
        for start in range(0, count, _CHUNK_STILLS):
            yield (
                "stills",
                (
                    out / SYRIP_DIRNAME,
                    seed,
                    split.name,
                    start,
                    min(start + _CHUNK_STILLS, count),
                    preset.still_size,
                ),
            )


def manifest(preset: Preset, seed: int) -> dict:
    """What was generated, recorded next to the data (``DIR/manifest.json``)."""
    return {
        "generator": "geosapiens.data.synth",
        "format_version": FORMAT_VERSION,
        "preset": preset.name,
        "seed": seed,
        "mini_rgbd": {
            "root": MINI_RGBD_DIRNAME,
            "sequences": {f"{i:02d}": style for i, style in enumerate(preset.sequence_styles, start=1)},
            "frames_per_sequence": preset.sequence_frames,
            "image_size": [640, 480],
        },
        "syrip": {
            "root": SYRIP_DIRNAME,
            "still_size": list(preset.still_size),
            "splits": {
                s.name: {
                    "style": s.style,
                    "annotation": s.annotation,
                    "images": s.image_dir,
                    "count": getattr(preset, s.count_field),
                }
                for s in STILL_SPLITS
            }
            | {COMBINED_SPLIT[0]: {"annotation": COMBINED_SPLIT[1], "of": list(COMBINED_SPLIT[2])}},
            "bbox": "tight box of the infant mask grown to hold every in-image keypoint; area = w*h",
            "visibility": "v=2 visible, v=1 occluded (depth test), v=0 outside the image (x=y=0)",
        },
        "maps": "geosapiens_maps/<image path>.npz at each dataset root: depth float32 mm, normals float16, "
        "mask uint8",
    }


def generate(out: str | Path, preset: Preset, seed: int = 0, workers: int = 1, progress: bool = True) -> dict:
    """Write ``preset`` with ``seed`` under ``out`` (see the package docstring for the layout).

    Args:
        out: output folder (created).
        preset: counts and sizes.
        seed: master seed; the output is byte-identical for a seed whatever ``workers`` is.
        workers: processes to render with (1 = in this process).
        progress: show a tqdm progress bar over images.

    Returns:
        The manifest written to ``out/manifest.json``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = list(_jobs(out, preset, seed))
    entries: dict[str, list[tuple[dict, dict]]] = {s.name: [] for s in STILL_SPLITS}
    with tqdm(
        total=preset.num_stills + preset.num_frames,
        unit="img",
        disable=not progress,
        desc=f"synth {preset.name}",
    ) as bar:
        if workers <= 1:
            results = map(_run, jobs)
            pool = None
        else:
            pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_init_worker)
            results = pool.imap_unordered(_run, jobs)
        try:
            for done, stills in results:
                for split_name, image, annotation in stills:
                    entries[split_name].append((image, annotation))
                bar.update(done)
        finally:
            if pool is not None:
                pool.close()
                pool.join()
    syrip = out / SYRIP_DIRNAME
    for split in STILL_SPLITS:
        write_json(
            syrip / split.annotation, [e[0] for e in entries[split.name]], [e[1] for e in entries[split.name]]
        )
    name, annotation, parts = COMBINED_SPLIT
    combined = [e for p in parts for e in entries[p]]
    write_json(syrip / annotation, [e[0] for e in combined], [e[1] for e in combined])
    doc = manifest(preset, seed)
    (out / "manifest.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return doc
