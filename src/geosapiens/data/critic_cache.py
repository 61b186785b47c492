"""Precomputed critic maps: run a frozen critic once per target image, warp its maps to each view in training.

Critics are frozen, so running Sapiens-1B depth and normal models on every augmented view of every step is
wasted work. ``geosapiens critics cache`` computes each image's maps once in its *canonical* crop (the
unaugmented UDP crop of the record's box, the frame ``canonical_affine`` of a dataset sample refers to) and
stores them at a stride of the crop (``--stride``; the default 4 is the heatmaps' resolution, 16x fewer
bytes than full resolution). Training reads an image's entry in the DataLoader worker
(:class:`~geosapiens.data.datasets.PairDataset`) and samples it at keypoints mapped to the canonical frame;
:meth:`CriticCache.lookup` warps entries into a view instead, with the view's affine
(:func:`~geosapiens.models.geometry.warp_maps`: normals rotate with the image, x flips with it).

Layout of a cache directory::

    manifest.json                  what produced it (critic identity, crop and stride, normalisation, dataset,
                                   count, and for the oracle the depth and image units in mm -> lambda_z)
    entries/<k[:2]>/<k>.npy        float16 (6, h, w): relative depth, normal x, y, z, valid (0/1), distance to
                                   the body (isotropic image units, 0 on it)

``k`` is the SHA-1 of the image path relative to the dataset root, so the cache follows the dataset when it
moves. One small file per image keeps random reads in DataLoader workers to one ``open`` + one read, makes
every write atomic (temp file + ``os.replace``) and lets an interrupted run resume by skipping finished
entries.
A cache from another critic, crop size, padding or dataset is refused with an error naming both.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geosapiens.affine import compose_affine, udp_rescale
from geosapiens.data.crop import canonical_affine
from geosapiens.data.oracle_critic import OracleCritic
from geosapiens.data.records import PoseRecord
from geosapiens.errors import DataError
from geosapiens.io import atomic_write, atomic_write_json
from geosapiens.models.critics import GeometricCritic, GeometryMaps
from geosapiens.models.geometry import body_distance, normalize_relative_depth, resample_maps, warp_maps

__all__ = [
    "CriticCache",
    "CacheStats",
    "DEFAULT_STRIDE",
    "maps_from_entries",
    "build_cache",
    "critic_identity",
    "load_critic",
    "parse_critic_spec",
]

MANIFEST = "manifest.json"
ENTRIES = "entries"
FORMAT = "geosapiens-critic-cache"
VERSION = 2  # v2: stride, body-distance channel, metric units
CHANNELS = ("depth", "normal_x", "normal_y", "normal_z", "valid", "body_distance")
DEFAULT_STRIDE = 4  # the heatmaps' stride: maps at heatmap resolution
NORMALISATION = (
    "normalize_relative_depth: (d - median(d[valid])) / (mean|d - median(d[valid])| + 1e-6) per canonical "
    "crop, 0 outside valid"
)
CRITIC_KINDS = ("oracle", "small", "sapiens", "torchscript")
_HASH_BYTES = 1 << 20
_F16_MAX = 65000.0  # stored depth stays finite in float16


def parse_critic_spec(spec: str) -> tuple[str, list[Path]]:
    """``oracle`` | ``small:PATH`` | ``sapiens:DEPTH,NORMAL`` | ``torchscript:PATH[,PATH]`` -> kind, paths."""
    kind, _, rest = spec.partition(":")
    if kind not in CRITIC_KINDS:
        raise ValueError(
            f"unknown critic {spec!r}: use one of oracle, small:PATH, sapiens:DEPTH.pth,NORMAL.pth, "
            "torchscript:PATH[,PATH]"
        )
    files = [Path(p).expanduser() for p in rest.split(",") if p] if rest else []
    counts = {"oracle": (0,), "small": (1,), "sapiens": (2,), "torchscript": (1, 2)}[kind]
    if len(files) not in counts:
        raise ValueError(
            f"critic {spec!r}: {kind} takes {' or '.join(map(str, counts))} file(s), got {len(files)}"
        )
    return kind, files


def _file_identity(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(path, "critic weights file not found")
    with path.open("rb") as f:
        digest = hashlib.sha256(f.read(_HASH_BYTES)).hexdigest()
    return {"path": str(path.resolve()), "size": path.stat().st_size, "sha256_first_mb": digest}


def critic_identity(spec: str) -> dict[str, Any]:
    """What makes two critics the same: kind, and per weights file its size and the SHA-256 of its first MiB.

    The file path is recorded for people, not compared: a moved copy of the same weights is the same critic.
    """
    kind, files = parse_critic_spec(spec)
    return {"kind": kind, "files": [_file_identity(p) for p in files]}


def _same_critic(a: dict[str, Any], b: dict[str, Any]) -> bool:
    key = [(f["size"], f["sha256_first_mb"]) for f in a.get("files", [])]
    same = a.get("kind") == b.get("kind") and key == [
        (f["size"], f["sha256_first_mb"]) for f in b.get("files", [])
    ]
    if a.get("kind") == "degraded":  # geosapiens.data.degraded_critic: the same corruption of the same critic
        same = same and (a["degradation"], a["seed"]) == (b.get("degradation"), b.get("seed"))
        same = same and _same_critic(a["of"], b.get("of", {}))
    return same


def _describe_critic(identity: dict[str, Any]) -> str:
    files = ", ".join(
        f"{f['path']} ({f['size']} B, sha256[:1MiB] {f['sha256_first_mb'][:12]})"
        for f in identity.get("files", [])
    )
    if identity.get("kind") == "degraded":
        how = f"{identity['degradation']}, seed {identity['seed']}"
        return f"{_describe_critic(identity['of'])} degraded ({how})"
    return identity.get("kind", "?") + (f" [{files}]" if files else "")


def load_critic(spec: str, intrinsics: np.ndarray | None = None) -> OracleCritic | GeometricCritic:
    """Build the critic a spec names; model critics come back frozen, in eval mode."""
    kind, files = parse_critic_spec(spec)
    if kind == "oracle":
        return OracleCritic(intrinsics)
    if kind == "small":
        from geosapiens.models.small_critic import SmallCritic

        return SmallCritic.from_file(files[0])
    from geosapiens.models.sapiens_critic import SapiensCritic, TorchScriptCritic

    if kind == "sapiens":
        return SapiensCritic(files[0], files[1])
    return TorchScriptCritic(files)


def _entry_key(image_path: str | Path, root: Path) -> str:
    path = Path(image_path).resolve()
    try:
        rel = path.relative_to(root).as_posix()
    except ValueError as err:
        raise DataError(path, f"image is not under the cache's dataset root {root}") from err
    return hashlib.sha1(rel.encode("utf-8")).hexdigest()


def _entry_path(cache_dir: Path, key: str) -> Path:
    return cache_dir / ENTRIES / key[:2] / f"{key}.npy"


def _units_path(entry: Path) -> Path:
    """Per-image (depth unit, image unit) in mm, next to the entry (critics that know millimetres)."""
    return entry.with_suffix(".units")  # npy format; not *.npy, which names entries


def _entry_ok(path: Path, shape: tuple[int, int, int]) -> bool:
    try:
        arr = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return False
    return arr.shape == shape and arr.dtype == np.float16


def map_size(input_size_hw: Sequence[int], stride: int) -> tuple[int, int]:
    """Stored map size of a crop at ``stride`` (the heatmaps' rule, ``H // stride``), UDP-aligned with it."""
    if stride < 1:
        raise ValueError(f"critic cache stride must be >= 1, got {stride}")
    return max(2, int(input_size_hw[0]) // stride), max(2, int(input_size_hw[1]) // stride)


def maps_from_entries(entries: torch.Tensor) -> GeometryMaps:
    """(B, 6, h, w) stacked cache entries (as stored, or as a batch collated them) -> GeometryMaps."""
    return GeometryMaps(
        depth=entries[:, 0:1],
        normals=entries[:, 1:4],
        valid=entries[:, 4:5] > 0.5,
        body_distance=entries[:, 5:6],
    )


class CriticCache:
    """Read side of a critic cache (picklable: safe to hold in a Dataset or a LightningModule).

    Args:
        cache_dir: directory written by ``geosapiens critics cache``.
        expected_critic: a critic spec (``"sapiens:DEPTH.pth,NORMAL.pth"``) or identity dict the cache must
            have been built with; None accepts any.
        input_size: (H, W) canonical crop size the cache must have; None accepts any.
        padding: box padding of the canonical crop the cache must have; None accepts any.
        data_root: dataset root to resolve image paths against, if the dataset moved since the cache was made.

    Raises:
        DataError: no manifest, an unfinished cache, or another critic / crop size / padding than expected.

    Attributes:
        input_size: (H, W) of the canonical crop; ``map_size`` (h, w) of the stored maps; ``padding``;
        lambda_z: the depth weight the critic's units call for (oracle caches measure it; else None).
    """

    def __init__(
        self,
        cache_dir: str | Path,
        expected_critic: str | dict[str, Any] | None = None,
        input_size: Sequence[int] | None = None,
        data_root: str | Path | None = None,
        padding: float | None = None,
    ) -> None:
        self.cache_dir = Path(cache_dir)
        manifest_path = self.cache_dir / MANIFEST
        if not manifest_path.is_file():
            raise DataError(
                self.cache_dir,
                f"not a critic cache (no {MANIFEST}); build one with `geosapiens critics cache`",
            )
        try:
            self.manifest = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise DataError(manifest_path, f"unreadable manifest: {err}") from err
        if self.manifest.get("format") != FORMAT:
            raise DataError(manifest_path, f"not a {FORMAT} manifest")
        if self.manifest.get("version") != VERSION:
            raise DataError(
                manifest_path,
                f"cache format v{self.manifest.get('version')}, this geosapiens reads v{VERSION}: rebuild it "
                "with `geosapiens critics cache` (another --out)",
            )
        if not self.manifest.get("complete", False):
            raise DataError(
                manifest_path,
                "the cache is incomplete (interrupted run): run the same "
                "`geosapiens critics cache` command again to finish it",
            )
        if expected_critic is not None:
            identity = (
                critic_identity(expected_critic) if isinstance(expected_critic, str) else expected_critic
            )
            _check_critic(manifest_path, self.manifest, identity)
        self.input_size: tuple[int, int] = tuple(self.manifest["crop"]["input_size_hw"])  # type: ignore[assignment]
        if input_size is not None:
            _check_input_size(manifest_path, self.manifest, tuple(int(v) for v in input_size))
        self.padding = float(self.manifest["crop"]["padding"])
        if padding is not None and abs(self.padding - float(padding)) > 1e-9:
            raise DataError(
                self.cache_dir,
                f"cache built with crop padding {self.padding}, not {padding}: the maps would be misaligned "
                "(rebuild it with --padding or use another cache)",
            )
        self.map_size: tuple[int, int] = tuple(self.manifest["crop"]["map_size_hw"])  # type: ignore[assignment]
        self.lambda_z: float | None = (self.manifest.get("metric") or {}).get("lambda_z")
        self.data_root = Path(
            data_root if data_root is not None else self.manifest["dataset"]["root"]
        ).resolve()

    def __len__(self) -> int:
        return int(self.manifest["count"])

    def __repr__(self) -> str:
        return (
            f"CriticCache({str(self.cache_dir)!r}, critic={_describe_critic(self.manifest['critic'])}, "
            f"input_size={self.input_size}, count={len(self)})"
        )

    def path_for(self, image_path: str | Path) -> Path:
        return _entry_path(self.cache_dir, _entry_key(image_path, self.data_root))

    def read(self, image_path: str | Path) -> torch.Tensor:
        """One image's canonical-frame entry as stored: float16 (6, h, w), channels :data:`CHANNELS` (one
        ``open`` and one read: what a DataLoader worker calls per sample)."""
        path = self.path_for(image_path)
        try:
            array = np.load(path)
        except (OSError, ValueError) as err:
            raise DataError(
                path,
                f"no usable cache entry for image {image_path} ({err}); was the cache built for this "
                "dataset?",
            ) from err
        if array.shape != (len(CHANNELS), *self.map_size):
            raise DataError(
                path,
                f"cache entry of shape {array.shape}, the manifest says {(len(CHANNELS), *self.map_size)}",
            )
        return torch.from_numpy(array)

    def load(self, image_paths: Sequence[str | Path]) -> GeometryMaps:
        """Canonical-frame maps of a batch as stored (float16, at the cache's stride): depth (B, 1, h, w),
        normals (B, 3, h, w), bool valid (B, 1, h, w), body distance (B, 1, h, w)."""
        return maps_from_entries(torch.stack([self.read(p) for p in image_paths]))

    def lookup(
        self,
        image_paths: Sequence[str | Path],
        affine_canonical_to_view: torch.Tensor,
        out_size_hw: Sequence[int] | None = None,
    ) -> GeometryMaps:
        """Maps of a batch of views, on ``affine_canonical_to_view.device``.

        Args:
            image_paths: B image paths (``batch["image_path"]``).
            affine_canonical_to_view: (B, 2, 3) canonical crop px -> view px
                (:func:`~geosapiens.data.crop.canonical_to_view`).
            out_size_hw: view (H, W); the canonical crop size by default.

        Returns:
            GeometryMaps in the view frame: float32 relative depth and unit normals (rotated/flipped with the
            view), bool valid (False outside the canonical crop).
        """
        maps = self.load(image_paths)
        device = affine_canonical_to_view.device
        maps = GeometryMaps(
            depth=maps.depth.to(device, non_blocking=True),
            normals=maps.normals.to(device, non_blocking=True),
            valid=maps.valid.to(device, non_blocking=True),
        )
        size = tuple(int(v) for v in (out_size_hw or self.input_size))
        stored_to_crop = torch.from_numpy(udp_rescale(self.map_size, self.input_size)).to(device)
        affine = compose_affine(affine_canonical_to_view.double(), stored_to_crop)
        return warp_maps(maps, affine, size)  # type: ignore[arg-type]


def _check_critic(where: Path, manifest: dict[str, Any], identity: dict[str, Any]) -> None:
    if not _same_critic(manifest["critic"], identity):
        raise DataError(
            where,
            f"cache built with critic {_describe_critic(manifest['critic'])}, not "
            f"{_describe_critic(identity)}: use another --out or delete this cache",
        )


def _check_input_size(where: Path, manifest: dict[str, Any], input_size: tuple[int, ...]) -> None:
    have = tuple(manifest["crop"]["input_size_hw"])
    if have != input_size:
        raise DataError(
            where,
            f"cache built for {have[0]}x{have[1]} crops, not {input_size[0]}x{input_size[1]}: "
            "use another --out or delete this cache",
        )


@dataclass
class CacheStats:
    """What one :func:`build_cache` run did."""

    written: int
    skipped: int
    total: int


class _CanonicalCrops(torch.utils.data.Dataset):
    """Canonical crops of records for model critics: (3, H, W) Sapiens-normalised image, (1, H, W) bool mask
    of the pixels inside the source image, record index."""

    def __init__(self, records: Sequence[PoseRecord], affines: np.ndarray, input_size_hw: tuple[int, int]):
        self.records, self.affines, self.input_size = records, affines, input_size_hw

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        from geosapiens.data.crop import warp_image
        from geosapiens.data.images import read_image
        from geosapiens.models.preprocess import to_tensor

        r = self.records[i]
        image = read_image(r.image_path, record=r.image_id)
        inside = warp_image(np.ones(image.shape[:2], np.uint8), self.affines[i], self.input_size) > 0
        return (
            to_tensor(warp_image(image, self.affines[i], self.input_size)),
            torch.from_numpy(inside)[None],
            i,
        )


def _unique_images(records: Sequence[PoseRecord], affines: np.ndarray) -> list[int]:
    """Indices of one record per image; two records of an image with different crops cannot share an entry."""
    first: dict[Path, int] = {}
    keep = []
    for i, r in enumerate(records):
        path = Path(r.image_path).resolve()
        j = first.setdefault(path, i)
        if j == i:
            keep.append(i)
        elif not np.allclose(affines[i], affines[j], atol=1e-6):
            raise DataError(
                path,
                "two records of this image have different boxes; the critic cache keys entries "
                "by image and needs one canonical crop per image",
                record=r.annotation_id,
            )
    return keep


def build_cache(
    records: Sequence[PoseRecord],
    critic: OracleCritic | GeometricCritic,
    cache_dir: str | Path,
    input_size_hw: tuple[int, int],
    critic_id: dict[str, Any],
    dataset: dict[str, Any],
    *,
    padding: float = 1.25,
    stride: int = DEFAULT_STRIDE,
    batch_size: int = 8,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> CacheStats:
    """Compute and store every record's canonical-crop maps; resumes an interrupted run in the same directory.

    Args:
        records: target records (one canonical crop per image).
        critic: :class:`OracleCritic` or a frozen :class:`GeometricCritic`.
        cache_dir: output directory (created).
        input_size_hw: canonical crop (H, W), the model input size of the training that will read the cache.
        critic_id: :func:`critic_identity` of ``critic``, stored in and compared with the manifest.
        dataset: ``{"root": ..., "annotation": ..., "format": ...}``; entry keys are relative to ``root``.
        padding: box padding of the canonical crop (the datasets' default 1.25).
        stride: maps are stored at ``input_size // stride`` (UDP-aligned, antialiased): 4 = the heatmaps'
            resolution. The critic runs, and the body distance is computed, at the full crop size first.
        batch_size, num_workers, device: how model critics are run.
        progress: show a tqdm bar.

    With the oracle critic, the manifest's ``metric`` records what the normalised units are in mm (median
    over images): the depth unit, the image unit and ``lambda_z = (depth unit / image unit)^2``, the depth
    weight of the 2.5D bone length (:data:`~geosapiens.losses.objectives.DEFAULT_LAMBDA_Z`
    for critics that cannot know it).

    Raises:
        DataError: the directory holds a cache from another critic, crop size, padding, stride or dataset.
    """
    from tqdm.auto import tqdm

    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    root = Path(dataset["root"]).resolve()
    dataset = {**dataset, "root": str(root)}
    size = map_size(input_size_hw, stride)
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "critic": critic_id,
        "crop": {
            "input_size_hw": [int(input_size_hw[0]), int(input_size_hw[1])],
            "padding": float(padding),
            "stride": int(stride),
            "map_size_hw": list(size),
            "frame": "canonical UDP crop of the record bbox (geosapiens.data.crop); maps UDP-aligned with it",
        },
        "normalisation": NORMALISATION,
        "layout": f"{ENTRIES}/<k[:2]>/<k>.npy, float16 ({len(CHANNELS)}, h, w) = {', '.join(CHANNELS)}; "
        "body_distance in isotropic image units (longer crop side = 1); "
        "k = sha1(image path relative to dataset root, posix)",
        "dataset": dataset,
        "count": 0,
        "complete": False,
    }
    manifest_path = cache_dir / MANIFEST
    if manifest_path.is_file():
        old = json.loads(manifest_path.read_text())
        _check_critic(manifest_path, old, critic_id)
        _check_input_size(manifest_path, old, tuple(input_size_hw))
        for what, a, b in (
            ("padding", old["crop"]["padding"], padding),
            ("stride", old["crop"].get("stride"), stride),
            ("dataset", old["dataset"], dataset),
        ):
            if a != b:
                raise DataError(manifest_path, f"cache built with {what} {a}, not {b}: use another --out")
    for stale in (cache_dir / ENTRIES).glob("*/.*.tmp"):  # leftovers of a killed run
        stale.unlink(missing_ok=True)
    atomic_write_json(manifest, manifest_path)

    affines = np.array([canonical_affine(r.bbox, input_size_hw, padding) for r in records]).reshape(-1, 2, 3)
    keep = _unique_images(records, affines)
    shape = (len(CHANNELS), *size)
    paths = {i: _entry_path(cache_dir, _entry_key(records[i].image_path, root)) for i in keep}
    todo = [i for i in keep if not _entry_ok(paths[i], shape)]
    bar = tqdm(
        total=len(keep), initial=len(keep) - len(todo), desc="critic cache", unit="img", disable=not progress
    )

    def store(
        indices: Sequence[int],
        maps: GeometryMaps,
        inside: torch.Tensor | None = None,
        units: np.ndarray | None = None,
    ) -> None:
        valid = torch.ones_like(maps.depth, dtype=torch.bool) if maps.valid is None else maps.valid.bool()
        if inside is not None:  # the crop's zero border is not image content, whatever the critic says
            valid = valid & inside.to(valid.device)
        depth = normalize_relative_depth(maps.depth.float(), valid).clamp(-_F16_MAX, _F16_MAX)
        small = resample_maps(GeometryMaps(depth, maps.normals.float() * valid, valid), size)
        distance = body_distance(valid, size)
        stacked = (
            torch.cat([small.depth, small.normals, small.valid.float(), distance.to(small.depth)], dim=1)
            .cpu()
            .numpy()
        )
        for j, i in enumerate(indices):
            array = stacked[j].astype(np.float16)
            paths[i].parent.mkdir(parents=True, exist_ok=True)
            if units is not None:  # before the entry: an entry on disk means its image is complete
                with atomic_write(_units_path(paths[i])) as f:
                    np.save(f, units[j])
            with atomic_write(paths[i]) as f:
                np.save(f, array)
        bar.update(len(indices))

    with torch.no_grad():
        if isinstance(critic, OracleCritic):
            for start in range(0, len(todo), batch_size):
                idx = todo[start : start + batch_size]
                maps, units = critic.maps_and_units(
                    [records[i] for i in idx], torch.from_numpy(affines[idx]), input_size_hw
                )
                store(idx, maps, units=units)
        else:
            critic = critic.to(device)
            loader = torch.utils.data.DataLoader(
                torch.utils.data.Subset(_CanonicalCrops(records, affines, input_size_hw), todo),
                batch_size=batch_size,
                num_workers=num_workers,
            )
            for images, inside, idx in loader:
                store(idx.tolist(), critic(images.to(device)), inside)
    bar.close()

    units = [np.load(_units_path(paths[i])) for i in keep if _units_path(paths[i]).is_file()]
    manifest["metric"] = _metric_summary(np.array(units).reshape(-1, 2))
    manifest["count"] = len(keep)
    manifest["complete"] = True
    atomic_write_json(manifest, manifest_path)
    return CacheStats(written=len(todo), skipped=len(keep) - len(todo), total=len(keep))


def _metric_summary(units: np.ndarray) -> dict[str, Any] | None:
    """Medians over images of the (depth unit, image unit) mm pairs, and of lambda_z; None when unknown."""
    ok = np.isfinite(units).all(axis=1) & (units > 0).all(axis=1)
    if not ok.any():
        return None
    depth_mm, image_mm = units[ok, 0], units[ok, 1]
    lam = (depth_mm / image_mm) ** 2
    return {
        "depth_unit_mm": float(np.median(depth_mm)),
        "image_unit_mm": float(np.median(image_mm)),
        "lambda_z": float(np.median(lam)),
        "lambda_z_p10_p90": [float(np.quantile(lam, 0.1)), float(np.quantile(lam, 0.9))],
        "images": int(ok.sum()),
        "how": "depth unit = mean |d - median(d)| of the body's depth in the canonical crop (the "
        "normalisation's unit); image unit = the crop's longer side at the body's median depth "
        "(focal length from the intrinsics); lambda_z = (depth unit / image unit)^2, median over images",
    }
