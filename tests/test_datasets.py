"""Datasets: the API.md sample dicts, RGB + Sapiens normalisation, masks moving with the image, clear errors,
and worker-safe, reproducible randomness."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from fixtures_mini_rgbd import write_mini_rgbd
from geosapiens.affine import apply_affine
from geosapiens.data.augment import PairCollate, Photometric, ViewAugment
from geosapiens.data.crop import canonical_affine, warp_image
from geosapiens.data.datasets import PairDataset, PoseDataset
from geosapiens.data.elastic import ElasticScale
from geosapiens.data.formats.mini_rgbd import read_mini_rgbd
from geosapiens.data.formats.syrip import read_syrip
from geosapiens.data.images import read_image
from geosapiens.data.occlude import CutOcclude
from geosapiens.data.sampling import ResumableLoader
from geosapiens.errors import DataError
from geosapiens.models.preprocess import SAPIENS_MEAN, SAPIENS_STD

TRAIN = "annotations/200R/person_keypoints_train_infant.json"


@pytest.fixture(scope="module")
def records(syrip_sample):
    return read_syrip(syrip_sample, TRAIN)


def test_labelled_batch_matches_the_api(records):
    torch.manual_seed(0)
    dataset = PoseDataset(records[:4], (64, 48), geometry=ViewAugment(), elastic=ElasticScale(prob=1.0),
                          occlude=CutOcclude(), photometric=Photometric())
    batch = next(iter(DataLoader(dataset, batch_size=4)))
    assert batch["image"].shape == (4, 3, 64, 48) and batch["image"].dtype == torch.float32
    assert batch["keypoints"].shape == (4, 17, 2) and batch["keypoints"].dtype == torch.float32
    assert batch["weights"].shape == (4, 17) and batch["weights"].dtype == torch.float32
    assert batch["visible"].shape == (4, 17) and batch["visible"].dtype == torch.bool
    assert batch["affine"].shape == (4, 2, 3) and batch["bbox"].shape == (4, 4)
    assert batch["image_path"] == [str(r.image_path) for r in records[:4]]
    assert batch["index"].tolist() == [0, 1, 2, 3] and batch["index"].dtype == torch.int64


def test_pair_batch_matches_the_api(records):
    torch.manual_seed(0)
    dataset = PairDataset(records[:4], (64, 48), photometric=Photometric(), return_labels=True)
    batch = next(iter(DataLoader(dataset, batch_size=4, collate_fn=PairCollate())))
    for key in ("weak", "strong"):
        assert batch[key].shape == (4, 3, 64, 48) and batch[key].dtype == torch.float32
    for key in ("strong_affine", "canonical_affine", "weak_to_strong"):
        assert batch[key].shape == (4, 2, 3) and batch[key].dtype == torch.float32
    assert batch["keypoints"].shape == (4, 17, 2) and batch["weights"].shape == (4, 17)
    assert not {"weak_affine", "flipped", "cutmix_mask"} & batch.keys()  # nothing reads them
    assert len(batch["image_path"]) == 4 and batch["index"].tolist() == [0, 1, 2, 3]
    assert "keypoints" not in PairDataset(records[:1], (64, 48))[0]


def test_images_are_rgb_and_sapiens_normalised(records, tmp_path):
    path = tmp_path / "red.png"
    bgr = np.zeros((20, 30, 3), np.uint8)
    bgr[..., 2] = 255  # pure red in OpenCV's BGR order
    cv2.imwrite(str(path), bgr)
    assert read_image(path)[0, 0].tolist() == [255, 0, 0]

    record = records[0]
    sample = PoseDataset([record], (64, 48))[0]
    rgb = cv2.cvtColor(cv2.imread(str(record.image_path)), cv2.COLOR_BGR2RGB)
    crop = warp_image(rgb, canonical_affine(record.bbox, (64, 48)), (64, 48)).astype(np.float32)
    expected = (crop - np.array(SAPIENS_MEAN, np.float32)) / np.array(SAPIENS_STD, np.float32)
    np.testing.assert_allclose(sample["image"].permute(1, 2, 0).numpy(), expected, atol=1e-5)


def test_unreadable_images_raise_a_data_error_naming_the_file(records, tmp_path):
    missing = dataclasses.replace(records[0], image_path=tmp_path / "gone.jpg")
    with pytest.raises(DataError, match="gone.jpg.*does not exist"):
        PoseDataset([missing])[0]
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError, match="corrupt.jpg.*cannot be decoded"):
        PairDataset([dataclasses.replace(records[0], image_path=corrupt)])[0]


def test_mask_moves_with_the_image_under_elastic(tmp_path):
    """MINI-RGBD fixture: the body is drawn in its own colour exactly where the fg mask is."""
    write_mini_rgbd(tmp_path, sequences=("01",), frames=(0, 1), occlude=())
    torch.manual_seed(0)
    records = read_mini_rgbd(tmp_path)
    dataset = PoseDataset(records, (128, 128), geometry=ViewAugment(flip_prob=0.0),
                          elastic=ElasticScale(prob=1.0), with_mask=True)
    moved = 0
    for index in range(2):
        for _ in range(3):
            sample = dataset[index]
            affine_only = apply_affine(records[index].keypoints, sample["affine"].numpy())
            moved += np.abs(sample["keypoints"].numpy() - affine_only).max() > 2.0  # elastic did act
            mask = sample["mask"].numpy()
            assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1} and mask.sum() > 500
            rgb = (sample["image"].permute(1, 2, 0).numpy() * SAPIENS_STD + np.array(SAPIENS_MEAN))
            body = np.abs(rgb - [230, 180, 150]).max(-1) < 8  # the body colour, away from edges
            # away from the blended edge, body colour and mask agree
            interior = cv2.erode(mask, np.ones((3, 3), np.uint8)).astype(bool)
            exterior = ~cv2.dilate(mask, np.ones((3, 3), np.uint8)).astype(bool)
            assert body[interior].mean() > 0.97 and body[exterior].mean() < 0.01
    assert moved >= 4


def test_augmentations_are_keyed_by_seed_pass_and_index_whatever_the_workers(records):
    dataset = PoseDataset([records[0]] * 4, (32, 24), geometry=ViewAugment(rotation_prob=1.0))

    def two_passes(workers, seed=7):
        loader = ResumableLoader(dataset, batch_size=1, seed=seed, num_workers=workers)
        return [torch.cat([batch["affine"] for batch in loader]) for _ in range(2)]

    first, second = two_passes(workers=2)
    # the same record four times: every item gets its own view, in both workers and both passes
    views = torch.cat([first, second]).flatten(1)
    assert torch.cdist(views, views).add(torch.eye(8) * 1e9).min() > 1e-3
    for again in (two_passes(workers=0), two_passes(workers=1)):  # any worker count: the same batches
        torch.testing.assert_close(torch.cat(again), torch.cat([first, second]), rtol=0, atol=0)
    other = torch.cat(two_passes(workers=0, seed=8))
    assert not torch.allclose(other, torch.cat([first, second]))
