"""Augmented views on the real SyRIP sample: labels follow the image exactly, flips swap channels,
weak_to_strong links the two views, photometric ops and CutMix do what they say."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest
import torch

from geosapiens.affine import apply_affine, invert_affine, is_mirror
from geosapiens.data.augment import (
    PairCollate,
    Photometric,
    ViewAugment,
    cutmix_batch,
    flip_channels,
)
from geosapiens.data.crop import canonical_affine
from geosapiens.data.datasets import PairDataset, PoseDataset
from geosapiens.data.elastic import ElasticScale
from geosapiens.data.formats.syrip import read_syrip
from geosapiens.models.preprocess import SAPIENS_MEAN, SAPIENS_STD
from geosapiens.skeleton import COCO17

TRAIN = "annotations/200R/person_keypoints_train_infant.json"
FLIP = np.asarray(COCO17.flip_indices)


@pytest.fixture(scope="module")
def records(syrip_sample):
    return read_syrip(syrip_sample, TRAIN)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) normalised -> (H, W, 3) float 0-255."""
    return (image.permute(1, 2, 0).numpy() * np.array(SAPIENS_STD) + np.array(SAPIENS_MEAN)).clip(0, 255)


def test_flip_channels_swaps_left_and_right():
    values = np.arange(17)
    (swapped,) = flip_channels(True, values)
    assert swapped[COCO17.index("left_wrist")] == COCO17.index("right_wrist")
    assert swapped[COCO17.index("nose")] == COCO17.index("nose")
    assert flip_channels(False, values)[0] is values


@pytest.mark.slow
def test_labels_are_the_stored_affine_of_the_annotation(records):
    """Many random views incl. flips: keypoints = affine(annotation) with channels swapped on flips, and the
    inverse maps them back to the annotation within 1e-3 px."""
    torch.manual_seed(0)
    dataset = PoseDataset(records, (128, 96), geometry=ViewAugment(rotation_deg=180, rotation_prob=1.0))
    flips = 0
    for index in list(range(len(records))) * 3:
        sample = dataset[index]
        record = records[index]
        affine = sample["affine"].numpy().astype(np.float64)
        expected = apply_affine(record.keypoints.astype(np.float64), affine)
        labelled = record.labelled
        if is_mirror(affine):
            flips += 1
            expected, labelled = expected[FLIP], labelled[FLIP]
            # the left wrist channel sits on the mirrored image's right wrist
            lw, rw = COCO17.index("left_wrist"), COCO17.index("right_wrist")
            if record.labelled[rw]:
                np.testing.assert_allclose(
                    sample["keypoints"][lw].numpy(), apply_affine(record.keypoints[rw], affine), atol=1e-3
                )
        np.testing.assert_array_equal(sample["weights"].numpy(), labelled.astype(np.float32))
        np.testing.assert_allclose(sample["keypoints"].numpy()[labelled], expected[labelled], atol=1e-3)
        back = apply_affine(sample["keypoints"].numpy().astype(np.float64), invert_affine(affine))
        if is_mirror(affine):
            back = back[FLIP]
        assert np.abs(back - record.keypoints)[record.labelled].max() < 1e-3
    assert 0.3 * 3 * len(records) < flips < 0.7 * 3 * len(records)


COLOURS = np.array([c for c in itertools.product([0, 128, 255], repeat=3) if max(c) == 255][:17], float)


def dot_centroids(image: np.ndarray, flipped: bool) -> dict[int, tuple[np.ndarray, int]]:
    """Per output channel, the brightness-weighted centroid of its dot: (centroid, joint drawn there).

    Each dot is one connected blob of a single colour; blobs whose colour matches no dot colour (two dots
    blended together) or a colour seen twice are ignored.
    """
    weight = image.max(-1)
    count, blobs = cv2.connectedComponents((weight > 20).astype(np.uint8), connectivity=8)
    directions = COLOURS / np.linalg.norm(COLOURS, axis=1, keepdims=True)
    found: dict[int, list[np.ndarray]] = {}
    for blob in range(1, count):
        ys, xs = np.nonzero(blobs == blob)
        w = weight[ys, xs]
        colour = (image[ys, xs] * w[:, None]).sum(0)
        similarity = directions @ (colour / np.linalg.norm(colour))
        if similarity.max() > 0.99:
            found.setdefault(int(similarity.argmax()), []).append(
                np.array([np.average(xs, weights=w), np.average(ys, weights=w)])
            )
    out = {}
    for channel in range(17):
        joint = int(FLIP[channel]) if flipped else channel  # mirrored: channel k shows joint flip[k]'s dot
        if len(found.get(joint, [])) == 1:
            out[channel] = (found[joint][0], joint)
    return out


@pytest.mark.slow
def test_drawn_dots_land_on_the_output_keypoints(records, tmp_path):
    """Each joint drawn as a coloured dot; after affine + elastic (one remap) the dot centroids are the
    output keypoints."""
    torch.manual_seed(1)
    errors = []
    for record in records[:10]:
        image = np.zeros((record.height, record.width, 3), np.uint8)
        for j in np.flatnonzero(record.labelled):
            centre = tuple(int(v) for v in np.rint(record.keypoints[j] * 16))
            cv2.circle(image, centre, 2 * 16, COLOURS[j].tolist(), -1, lineType=cv2.LINE_AA, shift=4)
        path = tmp_path / f"dots_{record.image_id}.png"
        cv2.imwrite(str(path), image[..., ::-1])
        dots = record.__class__(**{**record.__dict__, "image_path": path})
        dataset = PoseDataset([dots], (384, 384), geometry=ViewAugment(), elastic=ElasticScale(prob=1.0))
        # joints whose dots touch another dot in the source image cannot be told apart: skip those
        gaps = np.linalg.norm(record.keypoints[:, None] - record.keypoints[None], axis=-1)
        gaps[~record.labelled] = gaps[:, ~record.labelled] = np.inf
        np.fill_diagonal(gaps, np.inf)
        for _ in range(3):
            sample = dataset[0]
            keypoints = sample["keypoints"].numpy()
            for channel, (centroid, joint) in dot_centroids(to_uint8(sample["image"]),
                                                            is_mirror(sample["affine"])).items():
                inside = (keypoints[channel] > 6).all() and (keypoints[channel] < 378).all()
                if record.labelled[joint] and gaps[joint].min() > 10 and inside:
                    errors.append(np.linalg.norm(centroid - keypoints[channel]))
    errors = np.array(errors)
    assert len(errors) > 200
    assert np.median(errors) < 0.15 and np.percentile(errors, 95) < 0.6 and errors.max() < 1.5


def view_shift(weak: np.ndarray, strong: np.ndarray, affine: np.ndarray, valid: np.ndarray) -> float:
    """Sub-pixel shift (px, phase correlation) between ``weak`` warped by ``affine`` and ``strong``."""
    moved = cv2.warpAffine(weak, affine, strong.shape[::-1])
    a, b = (cv2.GaussianBlur(x, (0, 0), 1.0) * valid for x in (moved, strong))
    a, b = a - a[valid > 0].mean() * valid, b - b[valid > 0].mean() * valid
    return float(np.hypot(*cv2.phaseCorrelate(a, b)[0]))


def test_weak_to_strong_maps_weak_keypoints_and_pixels(records):
    torch.manual_seed(2)
    dataset = PairDataset(records, (256, 192), strong=ViewAugment(rotation_prob=1.0), return_labels=True)
    flips = 0
    for index in range(len(records)):
        sample = dataset[index]
        record = records[index]
        w2s = sample["weak_to_strong"].numpy().astype(np.float64)
        strong_affine = sample["strong_affine"].numpy().astype(np.float64)
        assert not is_mirror(w2s)  # both views share the mirror: no channel swap between them
        flipped = bool(is_mirror(strong_affine))
        flips += flipped
        strong_kp = apply_affine(record.keypoints.astype(np.float64), strong_affine)
        labelled = record.labelled
        if flipped:
            strong_kp, labelled = strong_kp[FLIP], labelled[FLIP]
        mapped = apply_affine(sample["keypoints"].numpy().astype(np.float64), w2s)
        np.testing.assert_allclose(mapped[labelled], strong_kp[labelled], atol=1e-3)
        np.testing.assert_allclose(
            sample["canonical_affine"].numpy(), canonical_affine(record.bbox, (256, 192)), rtol=1e-6,
            atol=1e-4,
        )
        # The weak image warped by weak_to_strong is the strong image (no photometric here): the sub-pixel
        # shift between them (phase correlation) is ~0, while a warp off by 1 px measures ~1 px.
        weak = to_uint8(sample["weak"]).astype(np.float32).mean(-1)
        strong = to_uint8(sample["strong"]).astype(np.float32).mean(-1)
        valid = cv2.warpAffine(np.ones((256, 192), np.float32), w2s, (192, 256)) > 0.999
        valid = cv2.erode(valid.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(np.float64)
        assert valid.sum() > 5000

        assert view_shift(weak, strong, w2s, valid) < 0.25
        if index == 0:
            assert 0.7 < view_shift(weak, strong, w2s + [[0, 0, 1.0], [0, 0, 0]], valid) < 1.3
    assert 0 < flips < len(records)


def test_photometric_is_reproducible_and_changes_pixels(records):
    image = cv2.imread(str(records[0].image_path))[:256, :256, ::-1].copy()
    photometric = Photometric(strength=1.0, jitter_prob=1.0, blur_prob=1.0, noise_prob=1.0, jpeg_prob=1.0)
    a = photometric(image, np.random.default_rng(5))
    b = photometric(image, np.random.default_rng(5))
    c = photometric(image, np.random.default_rng(6))
    np.testing.assert_array_equal(a, b)
    assert a.shape == image.shape and a.dtype == np.uint8
    assert np.abs(a.astype(int) - image).mean() > 3 and np.abs(a.astype(int) - c).mean() > 1
    assert Photometric(strength=0.0)(image, np.random.default_rng(0)) is image
    weak = Photometric(strength=0.2, jitter_prob=1.0, blur_prob=0, noise_prob=0, jpeg_prob=0)
    strong = Photometric(strength=2.0, jitter_prob=1.0, blur_prob=0, noise_prob=0, jpeg_prob=0)
    change = [
        np.mean([np.abs(p(image, np.random.default_rng(s)).astype(int) - image).mean() for s in range(8)])
        for p in (weak, strong)
    ]
    assert change[1] > 2 * change[0]


def test_cutmix_pastes_a_rectangle_from_the_next_image():
    draws = torch.rand(4, 5, generator=torch.Generator().manual_seed(0))
    images = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 3, 40, 50).clone()
    mixed = cutmix_batch(images, prob=1.0, area_range=(0.1, 0.3), draws=draws)
    mask = (mixed != torch.arange(4.0).view(4, 1, 1, 1)).any(dim=1)  # pixels that came from another image
    for i in range(4):
        area = mask[i].float().mean().item()
        assert 0.08 < area < 0.32
        ys, xs = torch.nonzero(mask[i], as_tuple=True)
        assert mask[i, ys.min():ys.max() + 1, xs.min():xs.max() + 1].all()  # one rectangle
        assert (mixed[i][:, mask[i]] == (i + 1) % 4).all()  # from the next image
        assert (mixed[i][:, ~mask[i]] == i).all()  # the rest untouched
    single = images[:1].clone()
    assert torch.equal(cutmix_batch(single, prob=1.0), images[:1])


def test_pair_collate_cutmixes_the_strong_views(records):
    torch.manual_seed(3)
    dataset = PairDataset(records[:3], (64, 48))
    samples = [dataset[i] for i in range(3)]
    strong = torch.stack([s["strong"] for s in samples])
    batch = PairCollate(cutmix_prob=1.0)(samples)
    pasted = (batch["strong"] != strong).any(dim=1)  # (B, H, W) pixels that came from another image
    assert batch["strong"].shape == (3, 3, 64, 48) and pasted.shape == (3, 64, 48)
    assert pasted.any(dim=(1, 2)).all()
    assert torch.equal(PairCollate(cutmix_prob=0.0)(samples)["strong"], strong)
