"""Data pipeline throughput at the paper input size (1024 x 1024).

Prints, for (a) labelled source samples with elastic + cut-occlude + photometric augmentation (elastic and
cut-occlude forced on every sample, the worst case) and (b) unlabelled weak/strong pairs (photometric on the
strong view, CutMix at collate):

- samples/s of one process with OpenCV and torch single-threaded (what one DataLoader worker, i.e. one CPU
  core, delivers; targets: >= 15 labelled samples/s and >= 10 pairs/s);
- samples/s of a DataLoader with N workers (N from argv, default 2);
- with ``--breakdown``, milliseconds per pipeline stage for one image.

Images are the SyRIP sample (``../shared/data/syrip_sample``, or ``--root``); when it is absent, generated
1280 x 720 JPEGs with plausible boxes and poses. Usage::

    python benchmarks/data_throughput.py [N] [--size 1024] [--samples 48] [--root PATH] [--breakdown]
"""

# ruff: noqa: E402  (albumentations reads NO_ALBUMENTATIONS_UPDATE at import time)
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader

from geosapiens.affine import apply_affine, invert_affine
from geosapiens.data.augment import PairCollate, Photometric, ViewAugment, flip_channels
from geosapiens.data.crop import view_affine, warp_image
from geosapiens.data.datamodules import _worker_init
from geosapiens.data.datasets import PairDataset, PoseDataset
from geosapiens.data.elastic import ElasticScale
from geosapiens.data.images import read_image
from geosapiens.data.occlude import CutOcclude, TextureBank
from geosapiens.data.records import PoseRecord
from geosapiens.models.preprocess import to_tensor
from geosapiens.skeleton import COCO17

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("GEOSAPIENS_SHARED_DATA", REPO.parent / "shared" / "data"))
SAMPLE = SHARED_DATA / "syrip_sample"
TRAIN = "annotations/200R/person_keypoints_train_infant.json"


def sample_records(root: Path) -> list[PoseRecord]:
    from geosapiens.data.formats.syrip import read_syrip

    return read_syrip(root, TRAIN)


def generated_records(folder: Path, count: int = 16) -> list[PoseRecord]:
    """Noisy 1280 x 720 JPEGs with a stick-figure pose: the same decode and warp costs as real photos."""
    rng = np.random.default_rng(0)
    template = np.array(
        [
            [0, -90],
            [-8, -98],
            [8, -98],
            [-18, -94],
            [18, -94],
            [-35, -60],
            [35, -60],
            [-50, -20],
            [50, -20],
            [-55, 20],
            [55, 20],
            [-22, 20],
            [22, 20],
            [-25, 75],
            [25, 75],
            [-28, 130],
            [28, 130],
        ],
        np.float32,
    )
    records = []
    for i in range(count):
        image = cv2.GaussianBlur(rng.integers(0, 255, (720, 1280, 3), dtype=np.uint8), (0, 0), 3)
        centre = rng.uniform([400, 250], [880, 470])
        keypoints = centre + template * rng.uniform(1.5, 2.5)
        for a, b in COCO17.limbs:
            cv2.line(image, tuple(map(int, keypoints[a])), tuple(map(int, keypoints[b])), (230, 180, 150), 12)
        path = folder / f"gen{i:03d}.jpg"
        cv2.imwrite(str(path), image)
        low, high = keypoints.min(0) - 20, keypoints.max(0) + 20
        records.append(
            PoseRecord(
                path,
                keypoints,
                np.ones(17, bool),
                np.ones(17, bool),
                np.concatenate([low, high - low]).astype(np.float32),
                1280,
                720,
                i,
            )
        )
    return records


def rate(fn, count: int) -> float:
    """Calls per second of ``fn(i)`` over ``count`` calls, after one warm-up call."""
    fn(0)
    start = time.perf_counter()
    for i in range(count):
        fn(i)
    return count / (time.perf_counter() - start)


def loader_rate(dataset, workers: int, batch_size: int, batches: int, collate_fn=None) -> float:
    """Samples per second through a DataLoader, after the first batch (worker start-up) is discarded."""
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        worker_init_fn=_worker_init if workers else None,
        collate_fn=collate_fn,
        persistent_workers=workers > 0,
    )
    iterator = iter(loader)
    next(iterator)
    start, seen = time.perf_counter(), 0
    while seen < batches * batch_size:
        try:
            batch = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            continue
        seen += len(batch["index"])
    return seen / (time.perf_counter() - start)


def breakdown(record: PoseRecord, size: tuple[int, int], repeats: int = 10) -> dict[str, float]:
    """Milliseconds per stage of the labelled pipeline for one record."""
    rng = np.random.default_rng(0)
    elastic, occlude, photometric = ElasticScale(prob=1.0), CutOcclude(prob=1.0), Photometric()
    bank = TextureBank()
    image = read_image(record.image_path)
    affine = view_affine(record.bbox, size, ViewAugment().sample(rng))
    keypoints = apply_affine(record.keypoints.astype(np.float64), affine)
    keypoints, labelled = flip_channels(False, keypoints, record.labelled)
    warp = elastic(keypoints, labelled, size, rng)
    crop = warp_image(image, affine, size)
    stages = {
        "decode (cv2.imread + RGB)": lambda: read_image(record.image_path),
        "affine warp (warpAffine)": lambda: warp_image(image, affine, size),
        "elastic: TPS fit + node map + fold check + Newton": lambda: elastic(keypoints, labelled, size, rng),
        "elastic: dense map (resize) + remap": lambda: cv2.remap(
            image, warp.dense_map(size, then=invert_affine(affine)), None, cv2.INTER_LINEAR
        ),
        "cut-occlude": lambda: occlude(crop.copy(), keypoints, labelled, record.visible.copy(), rng, bank),
        "photometric": lambda: photometric(crop, rng),
        "to_tensor (normalise)": lambda: to_tensor(crop),
    }
    out = {}
    for name, fn in stages.items():
        fn()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        out[name] = 1000 * (time.perf_counter() - start) / repeats
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workers", nargs="?", type=int, default=2, help="DataLoader workers (default 2)")
    parser.add_argument("--size", type=int, default=1024, help="square input size (default 1024)")
    parser.add_argument("--samples", type=int, default=48, help="samples per single-process measurement")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--root", type=Path, default=SAMPLE, help="a SyRIP root with the 200R train file")
    parser.add_argument("--breakdown", action="store_true", help="also time each pipeline stage")
    args = parser.parse_args(argv)
    size = (args.size, args.size)

    with tempfile.TemporaryDirectory() as tmp:
        if (args.root / TRAIN).exists():
            records, source = sample_records(args.root), f"SyRIP sample ({args.root})"
        else:
            records, source = generated_records(Path(tmp)), "generated 1280x720 JPEGs (SyRIP sample absent)"
        labelled = PoseDataset(
            records,
            size,
            geometry=ViewAugment(),
            elastic=ElasticScale(prob=1.0),
            occlude=CutOcclude(prob=1.0),
            photometric=Photometric(),
        )
        pairs = PairDataset(records, size, photometric=Photometric())
        n = len(records)
        print(f"images: {n} from {source}; input {size[0]}x{size[1]}; {os.cpu_count()} CPUs visible")

        cv2.setNumThreads(0)  # sequential, as in a DataLoader worker
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        torch.manual_seed(0)
        labelled_rate = rate(lambda i: labelled[i % n], args.samples)
        pair_collate = PairCollate()
        pair_rate = rate(lambda i: pair_collate([pairs[i % n]]), args.samples)
        print(
            f"one process, 1 thread (per worker / core): labelled {labelled_rate:6.1f} samples/s "
            f"(target >= 15), pairs {pair_rate:6.1f} pairs/s (target >= 10)"
        )
        if args.breakdown:
            for name, ms in breakdown(records[0], size).items():
                print(f"  {name:52s} {ms:7.1f} ms")
        cv2.setNumThreads(-1)
        torch.set_num_threads(threads)

        batches = max(2, args.samples // args.batch_size)
        if args.workers > 0:
            lab = loader_rate(labelled, args.workers, args.batch_size, batches)
            par = loader_rate(pairs, args.workers, args.batch_size, batches, collate_fn=PairCollate())
            print(
                f"DataLoader, {args.workers} workers, batch {args.batch_size}: labelled {lab:6.1f} "
                f"samples/s, pairs {par:6.1f} pairs/s"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
