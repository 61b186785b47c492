"""Cut-occlude: patches over joints, labels kept, covered joints invisible; the texture bank."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geosapiens.affine import apply_affine
from geosapiens.data.crop import canonical_affine, warp_image
from geosapiens.data.datasets import PoseDataset
from geosapiens.data.formats.syrip import read_syrip
from geosapiens.data.images import read_image
from geosapiens.data.occlude import CutOcclude, TextureBank, procedural_texture

TRAIN = "annotations/200R/person_keypoints_train_infant.json"


@pytest.fixture(scope="module")
def records(syrip_sample):
    return read_syrip(syrip_sample, TRAIN)


def test_covered_joints_become_invisible_and_labels_stay(records):
    rng = np.random.default_rng(0)
    bank = TextureBank()
    occlude = CutOcclude(prob=1.0, max_patches=3)
    covered_total = 0
    for record in records[:8]:
        image = read_image(record.image_path)
        bank.add_background(image, record.bbox, rng, source=str(record.image_path))
        affine = canonical_affine(record.bbox, (256, 192))
        crop = warp_image(image, affine, (256, 192))
        keypoints = apply_affine(record.keypoints.astype(np.float64), affine)
        before_keypoints, before_crop = keypoints.copy(), crop.copy()
        visible = record.visible.copy()
        out, new_visible, mask = occlude(crop, keypoints, record.labelled, visible, rng, bank,
                                         str(record.image_path))
        np.testing.assert_array_equal(keypoints, before_keypoints)  # labels are never moved
        assert mask.any()
        np.testing.assert_array_equal(out[~mask], before_crop[~mask])  # only patch pixels change
        pixel = np.rint(keypoints).astype(int)
        inside = record.labelled & (pixel >= 0).all(1) & (pixel[:, 0] < 192) & (pixel[:, 1] < 256)
        under = np.zeros(17, bool)
        under[inside] = mask[pixel[inside, 1], pixel[inside, 0]]
        assert under.any()  # patches are placed on joints
        np.testing.assert_array_equal(new_visible, record.visible & ~under)
        covered_total += under.sum()
    assert covered_total >= 8


def test_no_occlusion_when_unlucky_or_no_joint_in_view():
    rng = np.random.default_rng(1)
    image = np.zeros((64, 64, 3), np.uint8)
    keypoints = np.full((17, 2), 30.0)
    visible = np.ones(17, bool)
    out, vis, mask = CutOcclude(prob=0.0)(image, keypoints, np.ones(17, bool), visible, rng, TextureBank())
    assert not mask.any() and vis.all()
    outside = np.full((17, 2), -50.0)
    _, vis, mask = CutOcclude(prob=1.0)(image, outside, np.ones(17, bool), visible, rng, TextureBank())
    assert not mask.any() and vis.all()


def test_background_crops_avoid_the_body_box():
    rng = np.random.default_rng(2)
    image = np.zeros((400, 600, 3), np.uint8)
    bbox = np.array([200.0, 100.0, 150.0, 200.0])
    image[100:300, 200:350] = 255  # the body
    bank = TextureBank(crop_size=80, margin=0.1)
    stored = sum(bank.add_background(image, bbox, rng, source="a") for _ in range(30))
    assert stored >= 20 and len(bank) == stored
    assert all(crop.shape == (80, 80, 3) and crop.max() == 0 for _, crop in bank.crops)
    full = np.array([0.0, 0.0, 600.0, 400.0])
    assert not TextureBank().add_background(image, full, rng)  # no free region: nothing stored


def test_bank_never_pastes_an_image_on_itself():
    rng = np.random.default_rng(3)
    bank = TextureBank(procedural_prob=0.0)
    bank.crops.append(("self.jpg", np.full((50, 50, 3), 7, np.uint8)))
    bank.crops.append(("other.jpg", np.full((50, 50, 3), 200, np.uint8)))
    for _ in range(20):
        assert (bank.sample((20, 30), rng, exclude="self.jpg") == 200).all()


def test_procedural_textures_are_textured():
    rng = np.random.default_rng(4)
    for _ in range(12):
        texture = procedural_texture((40, 70), rng)
        assert texture.shape == (40, 70, 3) and texture.dtype == np.uint8
        assert texture.astype(float).std() > 2.0


def test_dataset_marks_occluded_joints_invisible(records):
    torch.manual_seed(0)
    plain = PoseDataset(records[:6], (128, 96))
    occluded = PoseDataset(records[:6], (128, 96), occlude=CutOcclude(prob=1.0, max_patches=4))
    hidden = 0
    for index in range(6):
        a, b = plain[index], occluded[index]
        np.testing.assert_array_equal(a["keypoints"], b["keypoints"])
        assert not (b["visible"] & ~a["visible"]).any()  # occlusion only ever hides joints
        hidden += int((a["visible"] & ~b["visible"]).sum())
    assert hidden >= 6
