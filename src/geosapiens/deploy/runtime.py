"""Runners: one call from normalised crops to heatmaps, on PyTorch or on ONNX Runtime (CPU).

The predictor sees only :class:`PoseRunner`; which engine computes the heatmaps is a command-line choice
(``--runtime torch|onnx``). Everything around the network (crop warp, normalisation, decoding) stays in
PyTorch/OpenCV code shared by both, so the two runtimes differ in the network alone, which is what
:func:`geosapiens.deploy.export.check_onnx` compares.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from geosapiens.errors import GeoSapiensError
from geosapiens.models.codec import HEATMAP_STRIDE

if TYPE_CHECKING:
    from geosapiens.models.pose_model import PoseModel

__all__ = [
    "METADATA_PREFIX",
    "ModelFileError",
    "OnnxRunner",
    "PoseRunner",
    "TorchRunner",
    "open_runner",
    "read_metadata",
]

METADATA_PREFIX = "geosapiens."
RUNTIMES = {"torch": ".ckpt", "onnx": ".onnx"}


class ModelFileError(GeoSapiensError, ValueError):
    """A model file is missing, of the wrong kind for the runtime, unreadable, or not a pose network."""


class PoseRunner(Protocol):
    """The pose network as the predictor calls it."""

    input_size: tuple[int, int]  # (H, W) crop the network takes
    num_keypoints: int

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float32 crops normalised with SAPIENS_MEAN/STD, CPU -> (B, K, H/4, W/4) float32
        heatmaps, CPU."""
        ...


def _check_images(images: torch.Tensor, input_size: tuple[int, int], source: str) -> None:
    if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != tuple(input_size):
        h, w = input_size
        raise ValueError(
            f"{source}: takes (B, 3, {h}, {w}) crops, got {tuple(images.shape)}; crop to {h}x{w} first"
        )


class TorchRunner:
    """A :class:`PoseModel` in eval mode, run without autograd.

    Args:
        model: the network (put in eval mode here).
        input_size: its crop size (H, W).
        source: what to name in errors (the checkpoint).
        hparams: the hyper-parameters of the stage that trained it (test-time adaptation weighs its terms as
            a mean teacher did: :meth:`~geosapiens.stages.tta.HeadAdaptation.weigh_as`).
    """

    def __init__(
        self,
        model: PoseModel,
        input_size: tuple[int, int],
        source: str = "PoseModel",
        hparams: dict[str, Any] | None = None,
    ) -> None:
        self.model = model.eval()
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.num_keypoints = int(model.num_keypoints)
        self.source = source
        self.hparams = dict(hparams or {})

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        _check_images(images, self.input_size, self.source)
        with torch.inference_mode():
            return self.model(images.float())


class OnnxRunner:
    """An exported pose network on ONNX Runtime's CPU provider.

    Crop size and keypoint count come from the file: the ``geosapiens.*`` metadata that
    :func:`~geosapiens.deploy.export.export_onnx` writes, else the graph's static shapes (a file exported
    elsewhere), and must agree with the graph when both are there.

    Args:
        path: the ``.onnx`` file.
        threads: ONNX Runtime intra-op threads (None: its default, one per physical core).

    Raises:
        ModelFileError: the file is missing, not ONNX, or not an ``images (B, 3, H, W) -> heatmaps
            (B, K, H/4, W/4)`` graph.
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise ModelFileError(f"{self.path}: ONNX model not found")
        self.metadata = read_metadata(self.path)
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        options.log_severity_level = 3  # errors only: a valid graph's optimiser notes are not the user's
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - every failure gets the file named
            raise ModelFileError(f"{self.path}: ONNX Runtime cannot load it ({err})") from err
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1 or len(inputs[0].shape) != 4 or len(outputs[0].shape) != 4:
            raise ModelFileError(
                f"{self.path}: not a pose network: expected one (B, 3, H, W) input, one (B, K, h, w) output; "
                f"got inputs {[i.shape for i in inputs]}, outputs {[o.shape for o in outputs]}"
            )
        self.input_name = inputs[0].name
        in_shape, out_shape = inputs[0].shape, outputs[0].shape
        graph_size = tuple(in_shape[2:]) if all(isinstance(d, int) for d in in_shape[2:]) else None
        meta_size = self.metadata.get("input_size")
        if meta_size is not None and graph_size is not None and tuple(meta_size) != graph_size:
            raise ModelFileError(
                f"{self.path}: input shape mismatch: metadata says {tuple(meta_size)}, graph {graph_size}"
            )
        size = meta_size or graph_size
        if size is None:
            raise ModelFileError(
                f"{self.path}: input shape {in_shape} has no fixed height/width and no geosapiens.input_size "
                "metadata; export it with `geosapiens export`"
            )
        if isinstance(in_shape[1], int) and in_shape[1] != 3:
            raise ModelFileError(f"{self.path}: input shape mismatch: takes {in_shape[1]} channels, not 3")
        self.input_size = (int(size[0]), int(size[1]))
        keypoints = out_shape[1] if isinstance(out_shape[1], int) else self.metadata.get("num_keypoints")
        if keypoints is None:
            raise ModelFileError(f"{self.path}: output shape {out_shape} does not say the keypoint count")
        self.num_keypoints = int(keypoints)
        stride = int(self.metadata.get("heatmap_stride", HEATMAP_STRIDE))
        if stride != HEATMAP_STRIDE:
            raise ModelFileError(f"{self.path}: heatmap stride {stride}, the codec expects {HEATMAP_STRIDE}")

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        _check_images(images, self.input_size, str(self.path))
        array = np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``geosapiens.*`` facts recorded in an ONNX file (prefix removed, JSON decoded); {} for none."""
    import onnx

    path = Path(path)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # noqa: BLE001 - every failure gets the file named
        raise ModelFileError(f"{path}: cannot be read as an ONNX model ({err})") from err
    facts = {}
    for entry in proto.metadata_props:
        if entry.key.startswith(METADATA_PREFIX):
            try:
                facts[entry.key[len(METADATA_PREFIX) :]] = json.loads(entry.value)
            except json.JSONDecodeError as err:
                raise ModelFileError(f"{path}: metadata {entry.key!r} is not JSON ({err})") from err
    return facts


def open_runner(
    path: str | Path, runtime: str = "torch", weights: str | None = None, threads: int | None = None
) -> PoseRunner:
    """The runner of a model file: a stage checkpoint (``.ckpt``) on ``torch``, an export (``.onnx``) on onnx.

    Args:
        path: the model file.
        runtime: ``torch`` or ``onnx``.
        weights: the checkpoint's network, ``model`` or ``teacher``, None = the one the stage evaluated; for
            an ONNX file, if given, it must be the one it was exported from, when the file records it.
        threads: CPU threads: ONNX Runtime's intra-op threads, or torch's (``torch.set_num_threads``, which
            is process-wide); None leaves the default.

    Raises:
        ModelFileError, CheckpointError: the file is missing, of the wrong kind for ``runtime``, or unusable.
    """
    path = Path(path)
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}: choose one of {sorted(RUNTIMES)}")
    suffix = RUNTIMES[runtime]
    if path.suffix != suffix:
        hint = " (make one with `geosapiens export CKPT --out model.onnx`)" if runtime == "onnx" else ""
        raise ModelFileError(f"{path}: runtime {runtime!r} needs a {suffix} file{hint}")
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    if runtime == "torch":
        from geosapiens.models.stage_checkpoint import pose_model_from_checkpoint

        if threads is not None:
            torch.set_num_threads(int(threads))
        model, input_size, hparams = pose_model_from_checkpoint(path, weights)
        return TorchRunner(model, input_size, source=str(path), hparams=hparams)
    runner = OnnxRunner(path, threads=threads)
    recorded = runner.metadata.get("weights")
    if recorded is not None and weights is not None and recorded != weights:
        raise ModelFileError(f"{path}: holds the '{recorded}' network, '{weights}' was asked for")
    return runner
