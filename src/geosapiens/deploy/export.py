"""ONNX export of a trained pose network, with a dynamic batch axis and the facts a runner needs inside it.

The exporter is torch's ``torch.export``-based one (``torch.onnx.export(..., dynamo=True)``, which needs
``onnxscript``). On torch 2.14.1 both exporters give outputs equal to PyTorch's on our timm CNNs and the
Sapiens ViT, but the TorchScript one (``dynamo=False``) warns that it will be removed, and on the ViT it
traces Python numbers taken from tensor shapes (the position-embedding resize), warning that the trace may
be wrong, and leaves the heatmap height/width symbolic. ``torch.export`` captures the graph without
tracing through Python values, checks the batch axis really is free (it refuses a model that specialises
it) and records static heatmap sizes. Its cost is a slower export (tens of seconds on 2 busy cores).

The file is one protobuf (no external data), so a model must stay under protobuf's 2 GiB (every Sapiens up to
0.6b in fp32). What a runner needs besides the graph lives in the model's ``metadata_props`` (JSON values
under ``geosapiens.*`` keys): crop size, normalisation, heatmap stride, keypoint names, source checkpoint.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from geosapiens.models.pose_model import PoseModel

__all__ = ["DEFAULT_OPSET", "TOLERANCE", "check_onnx", "export_onnx"]

DEFAULT_OPSET = 18  # the opset onnxscript's torch library is written in: no version conversion
TOLERANCE = 1e-4  # max abs heatmap difference ONNX Runtime vs PyTorch accepted in fp32 (issue #8)
INPUT_NAME, OUTPUT_NAME = "images", "heatmaps"


def export_onnx(
    model: PoseModel,
    input_size: tuple[int, int],
    path: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` as an ONNX graph ``images (B, 3, H, W) -> heatmaps (B, K, H/4, W/4)``, B dynamic.

    Args:
        model: the pose network (exported in eval mode; its mode is restored afterwards).
        input_size: the crop size (H, W) the graph is fixed to (a ViT's position embeddings are laid out
            for it; a CNN's kernels do not care, but the runner crops to it).
        path: the ``.onnx`` file, written atomically.
        opset: ONNX opset of the graph.
        metadata: extra facts to record (``source_checkpoint``, ``weights``...), JSON-encoded.

    Returns:
        ``path``.
    """
    # torch, the model and the runtime are imported by the functions that use them: ``--help`` stays fast.
    import torch

    from geosapiens.deploy.runtime import METADATA_PREFIX
    from geosapiens.io import atomic_write_file
    from geosapiens.models.codec import HEATMAP_STRIDE
    from geosapiens.models.preprocess import SAPIENS_MEAN, SAPIENS_STD
    from geosapiens.skeleton import COCO17

    path = Path(path)
    h, w = (int(v) for v in input_size)
    facts = {
        "input_size": [h, w],
        "mean": list(SAPIENS_MEAN),
        "std": list(SAPIENS_STD),
        "heatmap_stride": HEATMAP_STRIDE,
        "num_keypoints": int(model.num_keypoints),
        "keypoint_names": list(COCO17.names) if model.num_keypoints == COCO17.num_keypoints else None,
        **dict(metadata or {}),
    }
    was_training = model.training
    model.eval()
    example = torch.randn(2, 3, h, w)  # batch 2: an example batch of 1 could be specialised away
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=FutureWarning)
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes={"images": {0: torch.export.Dim("batch")}},
                external_data=False,
                verbose=False,
            )
    finally:
        model.train(was_training)
    proto = program.model_proto
    for key, value in facts.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_PREFIX + key, json.dumps(value)
    return atomic_write_file(path, proto.SerializeToString())


def check_onnx(model: PoseModel, path: str | Path, images: torch.Tensor) -> float:
    """Max abs difference between ONNX Runtime's heatmaps for ``images`` and the model's (eval, fp32)."""
    import torch

    from geosapiens.deploy.runtime import OnnxRunner

    runner = OnnxRunner(path)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            expected = model(images.float())
    finally:
        model.train(was_training)
    return float((runner(images) - expected).abs().max())
