"""``geosapiens infer``: keypoint tracks of an infant from images, folders of images and video files.

Everything runs on the local machine (recordings never leave the site). Per frame: a box (:mod:`.boxes`),
the UDP crop affine, the network (PyTorch checkpoint or ONNX, :mod:`.runtime`), the heatmap codec, and the
inverse affine back to image pixels; per video, optionally, test-time adaptation of the head
(:class:`~geosapiens.stages.tta.HeadAdaptation`, reset between videos), One-Euro smoothing
(:mod:`.smoothing`) and quality flags (:mod:`.quality`). Outputs, in ``--out``:

- ``coco_results.json`` (COCO keypoint results, with the quality values per result) and ``images.json``
  (the COCO ``images`` those results refer to: id, file name, size, sequence, frame);
- for videos and frame folders: ``tracks.csv`` (one row per frame) and ``tracks/<video>.npz``, with the
  quality columns, and ``keypoints_raw`` next to the smoothed ``keypoints`` when smoothing is on;
- with ``--overlay``: ``overlays/<video>.mp4`` (or ``overlays/<image>.jpg`` for stills), flagged frames
  marked.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch
from tqdm import tqdm

from geosapiens.affine import apply_affine, invert_affine
from geosapiens.data.crop import canonical_affine, warp_image
from geosapiens.deploy.boxes import BoxSource, parse_box_source
from geosapiens.deploy.quality import QualityCheck
from geosapiens.deploy.smoothing import smooth_track
from geosapiens.deploy.sources import ArrayClip, Clip, Frame, open_clips
from geosapiens.errors import DataError
from geosapiens.io import atomic_write_file
from geosapiens.models.codec import HEATMAP_STRIDE, UDPHeatmapCodec, flip_test
from geosapiens.models.preprocess import to_tensor
from geosapiens.skeleton import COCO17

if TYPE_CHECKING:  # the ONNX path imports neither Lightning nor timm: TTA's caller brings them
    from geosapiens.stages.tta import HeadAdaptation

__all__ = ["ClipPrediction", "Predictor", "result_rows", "write_overlays"]

log = logging.getLogger(__name__)


@dataclass
class ClipPrediction:
    """A clip's predictions, frame by frame: ``keypoints`` (T, K, 2) image px (smoothed when asked),
    ``keypoints_raw`` (T, K, 2), ``scores`` (T, K), ``boxes`` (T, 4) xywh, frame ``paths``, ``sizes`` (T, 2)
    as (H, W), and ``quality`` (name -> (T,) values)."""

    clip: Clip
    keypoints: np.ndarray
    keypoints_raw: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray
    paths: list[str]
    sizes: np.ndarray
    quality: dict[str, np.ndarray]


class Predictor:
    """Frames -> keypoints in image pixels, batch by batch, clip by clip (the Python API of ``infer``).

    Example::

        from geosapiens.deploy.predict import Predictor

        predictor = Predictor.from_file("student.onnx", box="tracked")  # or a stage checkpoint (.ckpt)
        (video,) = predictor.predict("infant.mp4")          # images, folders of images, videos
        video.keypoints, video.scores                        # (T, 17, 2) image px, (T, 17)
        frames = predictor.predict_frames(rgb_arrays, fps=25)  # frames in memory, as one sequence

    Args:
        runner: the network (:func:`geosapiens.deploy.runtime.open_runner`): normalised crops -> heatmaps.
        boxes: where each frame's box comes from.
        batch_size: frames per network call (and per adaptation step group). With ``tracked`` boxes the box
            follows the last predicted frame, i.e. the previous frame only at batch size 1.
        flip: average with the mirrored crop's heatmaps (twice the compute, slightly better joints).
        adaptation: test-time adaptation of the head (PyTorch runtime only); reset at every clip.
        smoothing: One-Euro filter arguments for sequences (``min_cutoff``, ``beta``...), None = off.
        quality: per-frame flags.
        padding: box padding of the crop (the training crops' 1.25).
    """

    def __init__(
        self,
        runner,
        boxes: BoxSource,
        *,
        batch_size: int = 8,
        flip: bool = False,
        adaptation: HeadAdaptation | None = None,
        smoothing: dict | None = None,
        quality: QualityCheck | None = None,
        padding: float = 1.25,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.runner, self.boxes, self.batch_size, self.flip = runner, boxes, batch_size, flip
        self.input_size = tuple(runner.input_size)
        h, w = self.input_size
        self.codec = UDPHeatmapCodec(self.input_size, (h // HEATMAP_STRIDE, w // HEATMAP_STRIDE))
        self.adaptation = adaptation
        if adaptation is not None:
            model = getattr(runner, "model", None)
            if model is None:
                raise ValueError("test-time adaptation trains the head: use the PyTorch runtime (a .ckpt)")
            adaptation.remember(model.head, self.input_size)
        self.smoothing = smoothing
        self.quality = quality or QualityCheck()
        self.padding = padding

    @classmethod
    def from_file(
        cls,
        model: str | Path,
        *,
        box: str = "whole",
        initial_box: str | None = None,
        runtime: str | None = None,
        weights: str | None = None,
        threads: int | None = None,
        **kwargs,
    ) -> Predictor:
        """A predictor of a stage checkpoint (``.ckpt``, PyTorch) or an ONNX export (``.onnx``, ONNX Runtime).

        Args:
            model: the model file.
            box: ``whole`` | ``tracked`` | ``auto`` | ``x,y,w,h`` | a box file, as ``geosapiens infer --box``.
            initial_box: the tracker's starting box (``--initial_box``).
            runtime: ``torch`` or ``onnx``; by default from the file's suffix.
            weights: a checkpoint's network, ``model`` or ``teacher`` (None: the one its stage evaluated).
            threads: CPU threads of the runtime.
            **kwargs: :class:`Predictor` arguments (``batch_size``, ``flip``, ``smoothing``, ``quality``...).
        """
        from geosapiens.deploy.runtime import open_runner

        runtime = runtime or ("onnx" if str(model).endswith(".onnx") else "torch")
        runner = open_runner(model, runtime=runtime, weights=weights, threads=threads)
        return cls(runner, parse_box_source(box, initial_box), **kwargs)

    def predict(
        self, *inputs: str | Path, as_sequence: bool = False, fps: float | None = None
    ) -> list[ClipPrediction]:
        """Predictions of image files, folders of images (``as_sequence``: one track) and video files."""
        return [self.predict_clip(clip) for clip in open_clips(inputs, as_sequence=as_sequence, fps=fps)]

    def predict_frames(
        self, frames: Sequence[np.ndarray], fps: float | None = None, name: str = "frames"
    ) -> ClipPrediction:
        """Predictions of ``(H, W, 3)`` uint8 RGB frames in memory: one sequence (tracked boxes, smoothing)
        when ``fps`` is given, else independent stills."""
        return self.predict_clip(ArrayClip(frames, name, fps))

    def crop(self, frame: Frame, box: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """The normalised crop (3, H, W) of ``box`` and its image -> crop affine (2, 3)."""
        affine = canonical_affine(box, self.input_size, self.padding)
        return to_tensor(warp_image(frame.image, affine, self.input_size)), affine

    @torch.no_grad()
    def heatmaps(self, images: torch.Tensor) -> torch.Tensor:
        heatmaps = self.runner(images)
        if self.flip:
            heatmaps = flip_test(heatmaps, self.runner(images.flip(-1).contiguous()), COCO17.flip_indices)
        return heatmaps

    def _refined_box(self, frame: Frame, box: np.ndarray) -> np.ndarray:
        """A coarse pass in ``box``, then the box source's box of its prediction (``box`` if none)."""
        image, affine = self.crop(frame, box)
        kp_crop, sc = self.codec.decode(self.heatmaps(image[None]))
        kp = apply_affine(kp_crop[0].double().numpy(), invert_affine(affine))
        refined = self.boxes.refine(kp, sc[0].double().numpy(), frame.image.shape)
        return box if refined is None else refined

    def _batches(self, clip: Clip) -> Iterator[list[tuple[Frame, np.ndarray, torch.Tensor, np.ndarray]]]:
        """Boxed, cropped frames in batches; the box of a frame is asked for only once the previous batch
        was observed, so tracking sees every prediction before it boxes the next frame."""
        batch = []
        for frame in clip.frames():
            box = self.boxes.box(frame.image.shape, frame.index, frame.path)
            if self.boxes.coarse:
                box = self._refined_box(frame, box)
            batch.append((frame, box, *self.crop(frame, box)))
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    def predict_clip(self, clip: Clip, progress: tqdm | None = None) -> ClipPrediction:
        self.boxes.start(clip.sequence)
        model = getattr(self.runner, "model", None)
        keypoints, scores, boxes, paths, sizes = [], [], [], [], []
        for batch in self._batches(clip):
            images = torch.stack([b[2] for b in batch])
            to_image = torch.from_numpy(invert_affine(np.stack([b[3] for b in batch])))
            if self.adaptation is not None:
                if clip.sequence is None:  # stills: every batch starts from the trained head
                    self.adaptation.reset(model.head)
                self.adaptation.adapt(
                    model, self.codec, images, crop_to_image=to_image if clip.sequence else None
                )
            kp_crop, sc = self.codec.decode(self.heatmaps(images))
            kp = apply_affine(kp_crop.double(), to_image.double()).numpy()
            for i, (frame, box, _, _) in enumerate(batch):
                self.boxes.observe(kp[i], sc[i].double().numpy())
                keypoints.append(kp[i])
                scores.append(sc[i].double().numpy())
                boxes.append(box)
                paths.append(frame.path)
                sizes.append(frame.image.shape[:2])
            if progress is not None:
                progress.update(len(batch))
        if self.adaptation is not None:
            self.adaptation.reset(model.head)  # nothing learnt on this clip reaches the next
        raw = np.asarray(keypoints, np.float64)
        scores_arr = np.asarray(scores, np.float64)
        smoothed = raw
        if self.smoothing is not None and clip.sequence is not None:
            smoothed = smooth_track(raw, scores_arr, clip.fps, **self.smoothing)
        return ClipPrediction(
            clip,
            smoothed,
            raw,
            scores_arr,
            np.asarray(boxes, np.float64),
            paths,
            np.asarray(sizes, np.int64),
            self.quality(smoothed, scores_arr),
        )


# -- outputs -------------------------------------------------------------------------------------------------
def result_rows(
    predictions: list[ClipPrediction], image_ids: dict[str, int]
) -> tuple[list[dict], list[dict]]:
    """Writer rows and COCO ``images`` entries; ids from ``image_ids`` (by file name) or numbered from 1."""
    rows, images = [], []
    next_id = max(image_ids.values(), default=0) + 1
    for pred in predictions:
        for t, path in enumerate(pred.paths):
            name = Path(path).name
            if pred.clip.sequence is None and name in image_ids:
                image_id = image_ids[name]
            else:
                image_id, next_id = next_id, next_id + 1
            frame = t if pred.clip.sequence is not None else None
            h, w = (int(v) for v in pred.sizes[t])
            images.append(
                {"id": image_id, "file_name": path, "height": h, "width": w}
                | {"sequence": pred.clip.sequence, "frame": frame}
            )
            row = {
                "index": None,
                "image_id": image_id,
                "image_path": path,
                "bbox": pred.boxes[t].tolist(),
                "keypoints": pred.keypoints[t].tolist(),
                "scores": pred.scores[t].tolist(),
                "sequence": pred.clip.sequence,
                "frame": frame,
                "extra": {k: v[t] for k, v in pred.quality.items()},
            }
            if pred.keypoints is not pred.keypoints_raw:
                row["keypoints_raw"] = pred.keypoints_raw[t].tolist()
            rows.append(row)
    return rows, images


def _draw(
    image: np.ndarray, keypoints: np.ndarray, scores: np.ndarray, box: np.ndarray, flags: dict
) -> np.ndarray:
    from geosapiens.viz.draw import draw_skeleton

    canvas = draw_skeleton(image, keypoints, scores, threshold=0.3)
    x, y, w, h = (int(round(v)) for v in box)
    warn = [name.replace("_", " ") for name in ("low_confidence", "implausible") if flags[name]]
    color = (230, 40, 40) if warn else (40, 200, 40)
    cv2.rectangle(canvas, (x, y), (x + w, y + h), color, 1)
    if warn:
        cv2.putText(canvas, ", ".join(warn), (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, color, 1, cv2.LINE_AA)
    return canvas


# Overlay video codecs, best first: H.264 plays in browsers; mp4v (MPEG-4 part 2) is what every OpenCV
# build can write (pip's opencv-python-headless has no H.264 encoder).
VIDEO_CODECS = ("avc1", "mp4v")
MP4V_NOTE = "mp4v (this OpenCV has no H.264 encoder; browsers may not play it: ffmpeg -i IN -c:v libx264 OUT)"


def _video_writer(path: Path, fps: float, size: tuple[int, int]) -> tuple[cv2.VideoWriter, str]:
    """An open MP4 writer with the first codec of :data:`VIDEO_CODECS` this OpenCV encodes, and its name."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # a codec probe that fails is not an error
    for fourcc in VIDEO_CODECS:
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
        if writer.isOpened():
            return writer, fourcc
        writer.release()
    raise DataError(path, f"OpenCV can write none of the video codecs {VIDEO_CODECS} here")


def write_overlays(pred: ClipPrediction, folder: Path) -> tuple[list[Path], str | None]:
    """Overlay video (sequences; decoded a second time, so no frame is kept in memory) or images (stills);
    returns the files and the video codec (None for stills)."""
    folder.mkdir(parents=True, exist_ok=True)
    written, writer, codec = [], None, None
    target = folder / f"{pred.clip.sequence}.mp4" if pred.clip.sequence is not None else None
    partial = target.with_name(f".{target.name}.part.mp4") if target is not None else None
    try:
        for t, frame in enumerate(pred.clip.frames()):
            flags = {k: bool(v[t]) for k, v in pred.quality.items() if k in ("low_confidence", "implausible")}
            canvas = _draw(frame.image, pred.keypoints[t], pred.scores[t], pred.boxes[t], flags)
            bgr = cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR)
            if target is None:
                path = folder / f"{Path(frame.path).stem}.jpg"
                ok, data = cv2.imencode(".jpg", bgr)
                if not ok:
                    raise DataError(path, "JPEG encoding failed")
                written.append(atomic_write_file(path, data.tobytes()))
                continue
            if writer is None:
                h, w = bgr.shape[:2]
                writer, codec = _video_writer(partial, pred.clip.fps, (w, h))
            writer.write(bgr)
    finally:
        if writer is not None:
            writer.release()
    if target is not None and partial.exists():
        partial.replace(target)  # a killed run never leaves a half-written video under the real name
        written.append(target)
    return written, codec
