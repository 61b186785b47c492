"""Adult zero-shot: official pose checkpoints (Goliath-308, WholeBody-133, COCO-17) read as COCO-17."""

from __future__ import annotations

import pytest
import torch

from geosapiens.errors import CheckpointError
from geosapiens.models.official_checkpoint import load_checkpoint
from geosapiens.models.pose_model import PoseModel
from geosapiens.models.zero_shot import ZeroShotPoseModel, coco17_channels
from geosapiens.skeleton import COCO17, GOLIATH308, GOLIATH308_TO_COCO17
from test_checkpoint_official import GRID, IMG, images, official_model, rel_err, save_official

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("keypoints", "container"), [(308, "pth"), (308, "torchscript"), (133, "pth"), (17, "pth")]
)
def test_zero_shot_heatmaps_are_the_official_coco_channels(tmp_path, keypoints, container):
    official = official_model("pose", seed=keypoints, keypoints=keypoints)
    path = save_official(
        official, tmp_path / f"pose_{keypoints}.{'pth' if container == 'pth' else 'pt2'}", container
    )
    model = ZeroShotPoseModel(path, img_size=IMG).eval()
    assert isinstance(model, PoseModel) and model.num_keypoints == 17 and model.source_keypoints == keypoints
    x = images()
    with torch.no_grad():
        ours, full = model(x), official(x)
    expected = full[:, list(GOLIATH308_TO_COCO17)] if keypoints == 308 else full[:, :17]
    assert ours.shape == (2, 17, IMG[0] // 4, IMG[1] // 4)
    assert rel_err(ours, expected) < 1e-5


def test_goliath_mapping_picks_the_coco_named_joints():
    channels = coco17_channels(308)
    assert [GOLIATH308.names[c] for c in channels] == list(COCO17.names)
    assert coco17_channels(133) == coco17_channels(17) == tuple(range(17))
    with pytest.raises(ValueError, match="no COCO-17 mapping for a 50-keypoint head"):
        coco17_channels(50)


def test_zero_shot_runs_at_the_paper_input_size(tmp_path):
    path = save_official(official_model("pose", keypoints=17), tmp_path / "coco.pth")
    model = ZeroShotPoseModel(load_checkpoint(path, source_grid=GRID), img_size=(128, 128)).eval()
    with torch.no_grad():
        assert model(images(1, size=(128, 128))).shape == (1, 17, 32, 32)


def test_zero_shot_needs_a_pose_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="wrong family"):
        ZeroShotPoseModel(save_official(official_model("depth"), tmp_path / "depth.pth"), img_size=IMG)
    with pytest.raises(CheckpointError, match="no COCO-17 mapping"):
        ZeroShotPoseModel(
            save_official(official_model("pose", keypoints=50), tmp_path / "k50.pth"), img_size=IMG
        )
