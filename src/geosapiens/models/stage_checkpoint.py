"""Our own checkpoints: the Lightning ``.ckpt`` files a training stage writes, read without Lightning.

A Lightning checkpoint is a plain torch pickle of a dict (``hyper_parameters``, ``state_dict``, loop and
optimiser state), so ``torch.load(weights_only=True)`` reads it safely and deployment, the CLI and the frozen
networks a stage loads (pose prior, small critic, geometry and distillation teachers) need neither Lightning
nor the stage classes. Every reader here names the file in a one-line
:class:`~geosapiens.errors.CheckpointError`.

Meta's official Sapiens files are another format, read by :mod:`geosapiens.models.official_checkpoint`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from geosapiens.errors import CheckpointError
from geosapiens.models.heads import DeconvHead

if TYPE_CHECKING:
    from geosapiens.models.pose_model import PoseModel

__all__ = [
    "VALIDATION_CONFIDENCE",
    "build_pose_model",
    "evaluated_weights",
    "GeometryTeacher",
    "load_geometry_teacher",
    "load_model_weights",
    "pose_model_from_checkpoint",
    "prefixed_weights",
    "read_checkpoint",
]


# checkpoint key of a pose stage's last validation confidence (the mean over images of their joints' heatmap
# peaks; :class:`~geosapiens.stages.base.PoseStage`)
VALIDATION_CONFIDENCE = "validation_confidence"


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint's dict (``hyper_parameters``, ``state_dict``...), read without unpickling code.

    Raises:
        CheckpointError: the file is missing, is no safe torch pickle, or holds no ``state_dict``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for truncated/unsafe files
        raise CheckpointError(f"{path}: cannot be read as a checkpoint ({err})") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: not a Lightning checkpoint (no state_dict)")
    return ckpt


def prefixed_weights(ckpt: dict[str, Any], path: str | Path, prefix: str) -> dict[str, torch.Tensor]:
    """The checkpoint's ``prefix*`` weights (``model.``, ``teacher.``, ``vae.``, ``net.``), prefix removed."""
    weights = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    if not weights:
        raise CheckpointError(f"{path}: no '{prefix}*' weights in this checkpoint")
    return weights


def _load_prefixed(model: nn.Module, ckpt: dict[str, Any], path: Path, prefix: str) -> None:
    """Load the checkpoint's ``prefix*`` weights into ``model``, all of them and nothing else."""
    missing, unexpected = model.load_state_dict(prefixed_weights(ckpt, path, prefix), strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: '{prefix}*' weights do not fit the model (missing {sorted(missing)[:8]}, "
            f"unexpected {sorted(unexpected)[:8]}); was it trained with another backbone or keypoint count?"
        )


def load_model_weights(model: nn.Module, path: str | Path, prefix: str = "model.") -> None:
    """Initialise ``model`` from the ``prefix`` weights of a Lightning checkpoint (e.g. the warm-up's)."""
    _load_prefixed(model, read_checkpoint(path), Path(path), prefix)


def build_pose_model(
    backbone: str,
    input_size: tuple[int, int],
    backbone_kwargs: dict | None = None,
    head_kwargs: dict | None = None,
    num_keypoints: int = 17,
) -> PoseModel:
    """Backbone by name (``sapiens_0.6b``, ``sapiens_tiny``, ``timm:resnet18``...) + a light deconv head."""
    # imported here (and below): the readers above serve the pose prior and the small critic, which need no
    # timm; pyproject's import-linter contract names these imports as the only way it enters ONNX prediction
    from geosapiens.models.backbone import create_backbone
    from geosapiens.models.pose_model import PoseModel

    kwargs = dict(backbone_kwargs or {})
    if not backbone.startswith("timm:"):
        kwargs.setdefault("img_size", tuple(input_size))
    net = create_backbone(backbone, **kwargs)
    head = DeconvHead(net.out_channels, num_keypoints, in_stride=net.stride, **(head_kwargs or {}))
    return PoseModel(net, head)


def evaluated_weights(hparams: dict[str, Any]) -> str:
    """The state-dict prefix of the network a stage validated and tested: ``teacher`` for a mean teacher
    evaluated by its EMA network, else ``model``."""
    return "teacher" if hparams.get("evaluate") == "teacher" else "model"


def pose_model_from_checkpoint(
    path: str | Path, weights: str | None = None, checkpoint: dict[str, Any] | None = None
) -> tuple[PoseModel, tuple[int, int], dict[str, Any]]:
    """The trained pose network of a stage checkpoint, rebuilt from its hyperparameters, in eval mode.

    Needs no file but ``path``: a Sapiens pretrained ``backbone_kwargs.checkpoint`` is not re-read (the
    trained weights replace it), only asked for its family when ``patch_padding`` is not recorded.

    Args:
        path: a Lightning checkpoint written by a pose stage (``best.ckpt``, ``last.ckpt``).
        weights: which network: ``model`` (the student) or ``teacher`` (the mean teacher's EMA network);
            None = the one the stage evaluated (:func:`evaluated_weights`).
        checkpoint: the file's contents (:func:`read_checkpoint`), when the caller has read them already.

    Returns:
        The model, its crop size (H, W) and the checkpoint's hyperparameters.
    """
    from geosapiens.models.official_checkpoint import load_checkpoint

    path = Path(path)
    ckpt = read_checkpoint(path) if checkpoint is None else checkpoint
    hparams = dict(ckpt.get("hyper_parameters") or {})
    if "backbone" not in hparams or "input_size" not in hparams:
        raise CheckpointError(
            f"{path}: no backbone/input_size hyperparameters; was it written by a geosapiens pose stage "
            "(the zero-shot model has no trained weights to load)?"
        )
    backbone_kwargs = dict(hparams.get("backbone_kwargs") or {})
    pretrained = backbone_kwargs.pop("checkpoint", None)
    if pretrained and "patch_padding" not in backbone_kwargs and "family" not in backbone_kwargs:
        if not Path(pretrained).is_file():
            raise CheckpointError(
                f"{path}: its backbone was initialised from {pretrained}, which is not here; set its "
                "family's patch padding (backbone_kwargs.patch_padding: 2 for pose/normal, 0 otherwise)"
            )
        backbone_kwargs["family"] = load_checkpoint(pretrained).family
    input_size = tuple(int(v) for v in hparams["input_size"])
    model = build_pose_model(hparams["backbone"], input_size, backbone_kwargs, hparams.get("head_kwargs"))
    _load_prefixed(model, ckpt, path, f"{weights or evaluated_weights(hparams)}.")
    return model.eval(), input_size, hparams


class GeometryTeacher(nn.Module):
    """A geometry teacher's frozen pose network, the crop size it was trained on (``input_size``) and how sure
    it was of its validation poses (``confidence``: the mean over images of their joints' heatmap peaks; None
    for a checkpoint that does not record it).

    The teacher's crop is the student's canonical crop of the box at its own resolution (same aspect ratio):
    critic maps are stored at a stride of the student's crop (256 px for Sapiens' 1024), so a teacher at the
    maps' resolution sees all there is, at a sixteenth of the pixels. Its keypoints are taken to the
    student's crop by :func:`~geosapiens.losses.objectives.geometry_teacher_keypoints`.
    """

    def __init__(self, net: nn.Module, input_size: Sequence[int], confidence: float | None = None) -> None:
        super().__init__()
        self.net = net
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.confidence = confidence

    def forward(self, maps_input: torch.Tensor) -> torch.Tensor:
        """(B, 5, H, W) critic maps at ``input_size`` -> (B, K, H/4, W/4) heatmaps."""
        return self.net(maps_input)


def load_geometry_teacher(path: str | Path, input_size: Sequence[int]) -> GeometryTeacher:
    """The frozen geometry teacher of a checkpoint, checked to see the model's crops (same aspect ratio).

    Raises:
        ValueError: the teacher was trained on crops of another aspect ratio (another crop of the box); a
            :class:`~geosapiens.errors.CheckpointError` for an unreadable file.
    """
    ckpt = read_checkpoint(path)
    net, size, _ = pose_model_from_checkpoint(path, checkpoint=ckpt)
    if size[0] * int(input_size[1]) != size[1] * int(input_size[0]):
        raise ValueError(
            f"{path}: geometry teacher trained on {size[0]}x{size[1]} crops, the model takes "
            f"{input_size[0]}x{input_size[1]}: not the same crop of the box (aspect ratio)"
        )
    return GeometryTeacher(net, size, ckpt.get(VALIDATION_CONFIDENCE)).requires_grad_(False).eval()
