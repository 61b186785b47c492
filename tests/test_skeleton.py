import numpy as np
import pytest

from geosapiens.skeleton import (
    COCO17,
    GOLIATH308,
    GOLIATH308_TO_COCO17,
    SMIL25,
    SMIL25_TO_COCO17,
    SYMMETRIC_BONES,
    UNLABELLED_JOINTS,
    map_keypoints,
)


@pytest.mark.parametrize("kset", [COCO17, SMIL25, GOLIATH308], ids=lambda k: k.name)
def test_flip_is_an_involution_within_range(kset):
    flips = np.asarray(kset.flip_indices)
    assert flips.min() >= 0 and flips.max() < kset.num_keypoints
    np.testing.assert_array_equal(flips[flips], np.arange(kset.num_keypoints))


@pytest.mark.parametrize("kset", [COCO17, SMIL25, GOLIATH308], ids=lambda k: k.name)
def test_flip_pairs_swap_sides(kset):
    def is_left(name: str) -> bool:
        name = name.lower()
        return "left" in name or name.startswith("l_") or "_of_l_" in name

    def sided(name: str) -> bool:
        name = name.lower()
        return is_left(name) or "right" in name or name.startswith("r_") or "_of_r_" in name

    for i, j in enumerate(kset.flip_indices):
        if sided(kset.names[i]):  # unsided face points (lip midpoints) may swap with each other
            assert is_left(kset.names[i]) != is_left(kset.names[j]), (kset.names[i], kset.names[j])


def test_mappings_name_the_same_joints():
    for coco_idx, gol_idx in enumerate(GOLIATH308_TO_COCO17):
        assert GOLIATH308.names[gol_idx] == COCO17.names[coco_idx]
    # MINI-RGBD's misleading names: shoulders are the *UpperArm joints, hips the *Thigh joints.
    smil = {COCO17.names[c]: SMIL25.names[s] for c, s in enumerate(SMIL25_TO_COCO17) if s >= 0}
    assert smil["left_shoulder"] == "leftUpperArm" and smil["right_hip"] == "rightThigh"
    assert smil["nose"] == "noseVertex" and smil["left_ankle"] == "leftFoot"
    assert [c for c, s in enumerate(SMIL25_TO_COCO17) if s < 0] == list(UNLABELLED_JOINTS["mini-rgbd"])


def test_mapping_is_flip_equivariant():
    """Flipping then mapping equals mapping then flipping, for every labelled joint."""
    for src, mapping in ((SMIL25, SMIL25_TO_COCO17), (GOLIATH308, GOLIATH308_TO_COCO17)):
        for c, s in enumerate(mapping):
            if s >= 0:
                assert mapping[COCO17.flip_indices[c]] == src.flip_indices[s]


def test_map_keypoints_marks_missing_joints():
    src = np.random.default_rng(0).normal(size=(3, 25, 2)).astype(np.float32)
    out, labelled = map_keypoints(src, SMIL25_TO_COCO17)
    assert out.shape == (3, 17, 2) and labelled.sum() == 13
    np.testing.assert_array_equal(out[:, 5], src[:, 16])
    assert not out[:, 1:5].any()


def test_symmetric_bones_are_mirror_images():
    for left, right in SYMMETRIC_BONES:
        assert tuple(COCO17.flip_indices[i] for i in left) == right
