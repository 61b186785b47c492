"""Adult zero-shot baseline: an official Sapiens pose checkpoint read out as COCO-17 heatmaps.

Sapiens pose checkpoints predict Goliath-308, COCO-WholeBody-133 or COCO-17 keypoints. The head's last
layer is a 1x1 convolution, so selecting output channels is the same as selecting rows of its weight: the
model keeps only the 17 rows COCO-17 needs (``GOLIATH308_TO_COCO17`` for Goliath; the first 17 for
COCO-WholeBody, whose body block is COCO-17), which gives identical heatmaps and skips 291 of 308 maps.
"""

from __future__ import annotations

from pathlib import Path

from geosapiens.errors import CheckpointError
from geosapiens.models.backbone import create_backbone
from geosapiens.models.heads import SapiensHeatmapHead
from geosapiens.models.official_checkpoint import SapiensCheckpoint, load_checkpoint, load_head_state
from geosapiens.models.pose_model import PoseModel
from geosapiens.skeleton import GOLIATH308_TO_COCO17

__all__ = ["ZeroShotPoseModel", "coco17_channels"]


def coco17_channels(num_keypoints: int) -> tuple[int, ...]:
    """Output channels of a Sapiens pose head, in COCO-17 order, for its keypoint set (308, 133 or 17)."""
    if num_keypoints == 308:
        return tuple(GOLIATH308_TO_COCO17)
    if num_keypoints in (133, 17):
        return tuple(range(17))
    raise ValueError(f"no COCO-17 mapping for a {num_keypoints}-keypoint head (known: 308, 133, 17)")


class ZeroShotPoseModel(PoseModel):
    """A :class:`PoseModel` built from an official Sapiens pose checkpoint, predicting COCO-17.

    Args:
        checkpoint: an official pose ``.pth`` / ``*_torchscript.pt2`` / converted ``.safetensors`` (or a read
            :class:`SapiensCheckpoint`); its size is recognised from the weights.
        img_size: (H, W) input; 1024x768 is native, other sizes resize the position embeddings.

    Output: (B, 17, H/4, W/4) heatmaps in ``geosapiens.skeleton.COCO17`` order.
    """

    def __init__(
        self, checkpoint: str | Path | SapiensCheckpoint, img_size: tuple[int, int] = (1024, 768)
    ) -> None:
        ckpt = (
            checkpoint
            if isinstance(checkpoint, SapiensCheckpoint)
            else load_checkpoint(checkpoint, family="pose")
        )
        if ckpt.family != "pose":
            raise CheckpointError(
                f"{ckpt.path}: a {ckpt.family} checkpoint, the zero-shot model needs a pose one"
            )
        if ckpt.preset is None:
            raise CheckpointError(
                f"{ckpt.path}: no backbone preset with embed dim {ckpt.embed_dim} and depth {ckpt.depth}"
            )
        try:
            channels = list(coco17_channels(ckpt.num_outputs))
        except ValueError as err:
            raise CheckpointError(f"{ckpt.path}: {err}") from err
        backbone = create_backbone(ckpt.preset, img_size=img_size, checkpoint=ckpt)
        state = dict(ckpt.head)
        state["final_layer.weight"] = state["final_layer.weight"][channels]
        state["final_layer.bias"] = state["final_layer.bias"][channels]
        head = SapiensHeatmapHead.from_state_dict(state)
        load_head_state(head, ckpt, state)
        super().__init__(backbone, head)
        self.source_keypoints = ckpt.num_outputs
