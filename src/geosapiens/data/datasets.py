"""Torch datasets over :class:`~geosapiens.data.records.PoseRecord` lists: labelled crops, unlabelled pairs.

Every sample is made with ONE warp of the original image per view (affine, or affine + elastic as one
remap), carries the 2x3 affine image -> crop, and is normalised with Sapiens' mean/std. All randomness of a
sample comes from one numpy generator keyed by its :class:`~geosapiens.data.sampling.SampleKey` (index, pass,
seed), so a sample is the same whichever worker makes it, however many workers there are, and after a resume.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from geosapiens.affine import apply_affine, invert_affine
from geosapiens.data.augment import Photometric, ViewAugment, flip_channels
from geosapiens.data.critic_cache import CriticCache
from geosapiens.data.crop import canonical_affine, crop_to_crop, view_affine, warp_image
from geosapiens.data.elastic import ElasticScale
from geosapiens.data.images import read_mask, read_record_image
from geosapiens.data.occlude import CutOcclude, TextureBank
from geosapiens.data.records import PoseRecord
from geosapiens.data.sampling import SampleKey, key_rng
from geosapiens.models.preprocess import to_tensor

__all__ = [
    "PoseDataset",
    "PairDataset",
]








def _visible_in_view(keypoints: np.ndarray, visible: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """A joint outside the crop is not visible in it."""
    h, w = size_hw
    x, y = keypoints[:, 0], keypoints[:, 1]
    return visible & (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)


class PoseDataset(Dataset):
    """Labelled top-down samples (source training, and validation/test without augmentation).

    Sample dict (API.md): ``image`` (3, H, W) float normalised, ``keypoints`` (K, 2) float32 crop px,
    ``weights`` (K,) float32 (0 for unlabelled joints), ``visible`` (K,) bool (False when occluded by a
    cut-occlude patch or outside the crop), ``affine`` (2, 3) float32 image -> crop, ``bbox`` (4,) float32
    x, y, w, h, ``image_path`` str, ``index`` int; plus ``mask`` (H, W) uint8 when ``with_mask``.
    With elastic augmentation, ``affine`` is the view's affine before the (non-affine) elastic warp.

    Args:
        records: the samples (one person each).
        input_size: crop size (H, W).
        padding: box padding factor of the crop.
        geometry: random view geometry; None = the canonical crop (evaluation).
        elastic: elastic scale augmentation (source only), applied with ``elastic.prob``.
        occlude: cut-occlude augmentation; its textures are procedural or the background of another record
            of this dataset (see :meth:`textures`).
        photometric: pixel augmentation of the crop.
        with_mask: also return the record's infant mask, warped like the image (nearest neighbour).
    """

    def __init__(
        self,
        records: Sequence[PoseRecord],
        input_size: tuple[int, int] = (256, 192),
        padding: float = 1.25,
        geometry: ViewAugment | None = None,
        elastic: ElasticScale | None = None,
        occlude: CutOcclude | None = None,
        photometric: Photometric | None = None,
        with_mask: bool = False,
    ) -> None:
        self.records = list(records)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.padding = padding
        self.geometry = geometry
        self.elastic = elastic
        self.occlude = occlude
        self.photometric = photometric
        self.with_mask = with_mask
        self.backgrounds: OrderedDict[int, tuple[str, np.ndarray]] = OrderedDict()

    def __len__(self) -> int:
        return len(self.records)

    def textures(self, index: int, rng: np.random.Generator) -> TextureBank:
        """A texture bank holding the background crop of one other record (the donor, drawn from ``rng``).

        A donor's crop depends on the donor alone, so it is cached (least recently used first out, at the
        bank's capacity) and a sample never depends on which images its worker happened to read before; a
        cache miss costs one more image read.
        """
        bank = TextureBank()
        if len(self.records) < 2:
            return bank
        donor = int(rng.integers(len(self.records) - 1))
        donor += donor >= index
        if donor not in self.backgrounds:
            record = self.records[donor]
            crop = TextureBank(capacity=1)
            crop.add_background(
                read_record_image(record),
                record.bbox,
                key_rng(donor, stream=2)[1],
                source=str(record.image_path),
            )
            self.backgrounds[donor] = crop.crops[0] if crop.crops else (str(record.image_path), None)
            while len(self.backgrounds) > bank.crops.maxlen:
                self.backgrounds.popitem(last=False)
        self.backgrounds.move_to_end(donor)
        source, background = self.backgrounds[donor]
        if background is not None:
            bank.crops.append((source, background))
        return bank

    def __getitem__(self, key: int | SampleKey) -> dict:
        index, rng = key_rng(key, stream=0)
        record = self.records[index]
        source = str(record.image_path)
        image = read_record_image(record)
        mask = read_mask(record) if self.with_mask else None
        bank = self.textures(index, rng) if self.occlude is not None else None

        params = self.geometry.sample(rng) if self.geometry is not None else None
        affine = view_affine(record.bbox, self.input_size, params, self.padding)
        keypoints = apply_affine(np.asarray(record.keypoints, dtype=np.float64), affine)
        keypoints, labelled, visible = flip_channels(
            params is not None and params.flip,
            keypoints,
            np.asarray(record.labelled, bool),
            np.asarray(record.visible, bool),
        )

        if self.elastic is not None and rng.random() < self.elastic.prob:
            warp = self.elastic(keypoints, labelled, self.input_size, rng)
            dense = warp.dense_map(self.input_size, then=invert_affine(affine))
            crop = cv2.remap(image, dense, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
            if mask is not None:
                mask = cv2.remap(mask, dense, None, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT)
            keypoints = warp.keypoints
        else:
            crop = warp_image(image, affine, self.input_size)
            if mask is not None:
                mask = warp_image(mask, affine, self.input_size, interpolation=cv2.INTER_NEAREST)
        visible = _visible_in_view(keypoints, visible, self.input_size)

        if self.occlude is not None:
            crop, visible, _ = self.occlude(crop, keypoints, labelled, visible, rng, bank, source)
        if self.photometric is not None:
            crop = self.photometric(crop, rng)

        sample = {
            "image": to_tensor(crop),
            "keypoints": torch.from_numpy(keypoints.astype(np.float32)),
            "weights": torch.from_numpy(labelled.astype(np.float32)),
            "visible": torch.from_numpy(visible),
            "affine": torch.from_numpy(affine.astype(np.float32)),
            "bbox": torch.from_numpy(np.asarray(record.bbox, dtype=np.float32)),
            "image_path": source,
            "image_id": record.image_id,
            "index": index,
        }
        if record.sequence is not None:
            sample["sequence"], sample["frame"] = record.sequence, record.frame
        if mask is not None:
            sample["mask"] = torch.from_numpy(mask)
        return sample


class PairDataset(Dataset):
    """Unlabelled target samples: a weak and a strong view of the same image (mean-teacher input).

    Sample dict (API.md): ``weak``, ``strong`` (3, H, W) float normalised; ``strong_affine`` (2, 3) float32
    image -> strong view; ``canonical_affine`` (2, 3) image -> unaugmented crop (the frame critic caches live
    in); ``weak_to_strong`` (2, 3) weak view px -> strong view px (:func:`~.crop.crop_to_crop`);
    ``cutmix_draw`` (5,) float64 uniforms for this sample's CutMix paste (:func:`~.augment.cutmix_batch`, so
    batch-level CutMix is keyed like the rest); ``image_path``, ``index``; with ``return_labels`` also
    ``keypoints`` (K, 2) and ``weights`` (K,) in the weak frame (validation only, never a training signal);
    with a ``critic_cache``, ``critic_maps`` (6, h, w) float16: the image's cached critic maps in the
    canonical frame, as stored (:data:`~geosapiens.data.critic_cache.CHANNELS`), read here in the worker so
    the training step never blocks on them, and ``critic_lambda_z`` () float32 when the cache measured it.

    Both views share one mirror state (drawn with ``weak.flip_prob``), so ``weak_to_strong`` has a positive
    determinant and heatmap channel k of one view is channel k of the other: warping the teacher's weak
    heatmaps with it needs no left/right swap. Flipped views have their channels swapped as in
    :class:`PoseDataset` (``strong_affine`` mirrors then: :func:`~geosapiens.affine.is_mirror`).

    Args:
        records: target images (labels ignored unless ``return_labels``).
        input_size: view size (H, W).
        padding: box padding factor.
        weak: geometry of the teacher's view.
        strong: geometry of the student's view.
        photometric: pixel augmentation of the strong view (CutMix is batch-level: :class:`PairCollate`).
        return_labels: also return the weak-frame keypoints/weights.
        critic_cache: a :class:`~geosapiens.data.critic_cache.CriticCache` of these images, built for this
            crop size and padding (the DataModule checks), or None.
    """

    def __init__(
        self,
        records: Sequence[PoseRecord],
        input_size: tuple[int, int] = (256, 192),
        padding: float = 1.25,
        weak: ViewAugment | None = None,
        strong: ViewAugment | None = None,
        photometric: Photometric | None = None,
        return_labels: bool = False,
        critic_cache: CriticCache | None = None,
    ) -> None:
        self.records = list(records)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.padding = padding
        self.weak = weak if weak is not None else ViewAugment(scale_range=(0.9, 1.1), rotation_prob=0.0)
        self.strong = strong if strong is not None else ViewAugment()
        self.photometric = photometric
        self.return_labels = return_labels
        self.critic_cache = critic_cache

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | SampleKey) -> dict:
        index, rng = key_rng(key, stream=1)
        record = self.records[index]
        image = read_record_image(record)
        flip = bool(rng.random() < self.weak.flip_prob)
        size, padding = self.input_size, self.padding
        weak_affine = view_affine(record.bbox, size, self.weak.sample(rng, flip=flip), padding)
        strong_affine = view_affine(record.bbox, size, self.strong.sample(rng, flip=flip), padding)
        canonical = canonical_affine(record.bbox, size, padding)
        strong = warp_image(image, strong_affine, self.input_size)
        if self.photometric is not None:
            strong = self.photometric(strong, rng)

        def f32(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.asarray(a, dtype=np.float32))

        sample = {
            "weak": to_tensor(warp_image(image, weak_affine, self.input_size)),
            "strong": to_tensor(strong),
            "strong_affine": f32(strong_affine),
            "canonical_affine": f32(canonical),
            "weak_to_strong": f32(crop_to_crop(weak_affine, strong_affine)),
            "cutmix_draw": torch.from_numpy(rng.random(5)),
            "image_path": str(record.image_path),
            "image_id": record.image_id,
            "index": index,
        }
        if self.critic_cache is not None:
            sample["critic_maps"] = self.critic_cache.read(record.image_path)
            if self.critic_cache.lambda_z is not None:
                sample["critic_lambda_z"] = torch.tensor(self.critic_cache.lambda_z, dtype=torch.float32)
        if self.return_labels:
            keypoints = apply_affine(np.asarray(record.keypoints, dtype=np.float64), weak_affine)
            keypoints, labelled = flip_channels(flip, keypoints, np.asarray(record.labelled, bool))
            sample["keypoints"] = f32(keypoints)
            sample["weights"] = f32(labelled)
        return sample
