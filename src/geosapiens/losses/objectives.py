"""The label-free objective: every term that scores predicted heatmaps without labels, written once.

Two callers, one code path: the mean-teacher stage (student heatmaps on the strong view, critic maps of the
canonical crop from the DataLoader or from an online critic) and test-time adaptation
(:class:`~geosapiens.stages.tta.HeadAdaptation`: canonical test crops). Both call
:func:`label_free_objective`, which returns a dict of named, unweighted terms; the caller weights them.

Frames:
    - keypoints are read from the heatmaps in the VIEW frame (crop px of the view the network saw) with the
      label-free soft-argmax (:attr:`ObjectiveOptions.temperature`, ``normalize``, ``window``);
    - critic maps live in the MAP frame, the canonical crop (the unaugmented UDP crop of the record's box at
      the model's input size, where the cache stores them and the normal priors were fitted), at any
      UDP-aligned resolution: they are read at ``uv = x / (W - 1)`` with ``x`` in canonical crop px, so the
      cache's stride never matters;
    - ``view_to_maps`` (B, 2, 3) takes view px to canonical px. When it mirrors (det < 0), flip augmentation
      has relabelled the view's joints left <-> right, so the channels are swapped back
      (canonical joint k = view channel ``flip_indices[k]``) before any per-joint term reads the maps.

Terms (:data:`TERMS`, name -> pure function of :class:`ObjectiveInputs`; register a new one with
:func:`register_term`, put what it reads that is not here into ``ObjectiveInputs.extras``):

    geo_body   distance from each joint to the critic's body silhouette (0 on the body): pulls joints that
               left the body back, with a gradient (the depth/normal terms can only gate them off)
    geo_depth  left/right 2.5D bone-length symmetry (:func:`~.functional.bone_symmetry_loss`), depth
               read only at joints the teacher sees and off depth discontinuities; ``lambda_z`` in metric
               terms, from the critic
    geo_norm   per-joint normal priors (:func:`geosapiens.losses.functional.normal_prior_loss`)
    geo_pose   distance to the geometry teacher's confident keypoints on the critic maps (point pseudo-labels:
               :func:`geometry_pseudo_labels`; :mod:`geosapiens.data.geometry_inputs`)
    geo_heatmap heatmap MSE to Gaussians at those keypoints (the same pseudo-labels as heatmap targets, as
               ``L_sup`` is trained): the form that trains a heatmap network, where ``geo_pose``'s
               soft-argmax can only move mass within its window around the current peak
    manifold   pose-VAE reconstruction error beyond a margin (:func:`~.functional.manifold_loss`)
    temporal   bone-length consistency over consecutive video frames, in image px (TTA)

Measured signal (``benchmarks/geometry_signal.py``, ``docs/results/geometry_signal.md``: 50 real-like demo
images, oracle critic; Spearman with keypoint error over perturbed and predicted poses / change of a warm-up
network's mean error when the keypoints descend the term): geo_pose +0.43 / -50%, geo_body +0.53 / -10%,
manifold +0.57 / 0%, geo_norm +0.12 / 0%, geo_depth -0.42 / 0%; at the full protocol's 128 px geo_heatmap
+0.44 / -7% (its value saturates once the Gaussians stop overlapping, so descent on coordinates stalls; in
training it rebuilds the peak, which geo_pose cannot). ``configs/demo/uda.yaml`` trains with geo_body +
geo_heatmap (+0.44 / -27% at 128 px with the 600-step teacher, +0.71 / -43% with the 1200-step one that
the full protocol trains), the weight chosen in training on validation; the seed's geo_depth and
geo_norm are kept for ablations, geo_pose for the point-form ablation. With the small learned critic's maps
the geometry teacher finds 10% of the joints and the configured objective carries no signal (+0.07 / +6%):
trained on synthetic RGB, that critic inherits the style gap geometry is meant to bypass.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from geosapiens.affine import apply_affine, is_mirror, udp_rescale
from geosapiens.losses import functional as losses
from geosapiens.losses.functional import DEFAULT_LAMBDA_Z
from geosapiens.models.codec import UDPHeatmapCodec
from geosapiens.models.critics import GeometryMaps
from geosapiens.skeleton import COCO17

if TYPE_CHECKING:
    from geosapiens.models.stage_checkpoint import GeometryTeacher

__all__ = [
    "DEFAULT_LAMBDA_Z",
    "ObjectiveOptions",
    "ObjectiveInputs",
    "TERMS",
    "TEACHER_TERMS",
    "register_term",
    "label_free_keypoints",
    "prepare_inputs",
    "label_free_objective",
    "weighted_sum",
    "geometry_teacher_keypoints",
    "geometry_pseudo_labels",
]


@dataclass(frozen=True)
class ObjectiveOptions:
    """Every knob of the label-free objective, with its default stated here once.

    Attributes:
        temperature: soft-argmax temperature, a fraction of each heatmap's peak (``normalize``).
        normalize: divide each heatmap by its peak before the soft-argmax.
        window: soft-argmax window radius around the argmax, in heatmap px (None = whole heatmap).
        lambda_z: depth weight of the 2.5D bone length; None = the critic's (the cache manifest's metric
            value, per sample), else :data:`DEFAULT_LAMBDA_Z`.
        edge_threshold: depth-gradient magnitude (depth units per image unit) above which a joint sits on a
            depth discontinuity and reads no depth.
        visibility_threshold: teacher confidence (heatmap peak) below which a joint reads no depth: where
            the teacher does not see a joint, the map shows the surface in front of it, not the joint.
        manifold_margin: pose-prior reconstruction error that costs nothing (``losses.manifold_loss``).
        geo_pose_threshold: geometry-teacher joints whose heatmap peak is below this are no pseudo-label.
        geo_image_confidence: an image gives no pseudo-label at all when the geometry teacher's heatmap peaks
            on it average below this fraction of the teacher's validation confidence (its mean over the
            synthetic hold-out, kept in its checkpoint); 0 = off. The teacher's confidence on an image falls
            with the critic's maps (docs/results/critic_sweep/).
        flip_indices: left/right channel swap for mirrored views.

    Occlusion, measured (600 real-like demo crops, ground-truth joints, the generator's depth-test
    visibility; 33% of the joints are occluded, 64% of the bone pairs hold one): the discontinuity gate lets
    76% of the occluded joints read depth and 91% of the visible ones (stride-4 maps; 65% / 88% at full
    resolution); the warm-up teacher's confidence (step 400) barely tells them apart either: >= 0.1 passes
    76% / 92%, >= 0.15 66% / 80%, >= 0.2 50% / 55% (at step 200: 75 / 91, 60 / 71, 43 / 47). Neither a
    wider edge test (any discontinuity within 2-10% of the crop), nor a joint nearer than its own limb, nor a
    jump along the limb's depth profile did better (each rejects visible joints about as often as occluded
    ones). No gate tested here makes the map's depth the joint's; 0.1 only drops joints the teacher does not
    find at all.
    """

    temperature: float = 0.2
    normalize: bool = True
    window: int | None = 3
    lambda_z: float | None = None
    edge_threshold: float = 50.0
    visibility_threshold: float | None = 0.1
    manifold_margin: float = 0.0
    geo_pose_threshold: float = 0.2
    geo_image_confidence: float = 0.0
    flip_indices: tuple[int, ...] = COCO17.flip_indices

    def override(self, **values) -> ObjectiveOptions:
        """A copy with the given fields replaced (a config's ``objective:`` mapping); unknown names raise."""
        names = {f.name for f in fields(self)}
        unknown = set(values) - names
        if unknown:
            raise ValueError(f"ObjectiveOptions has no option {sorted(unknown)}; options: {sorted(names)}")
        return replace(self, **values)

    @classmethod
    def from_args(
        cls, objective: Mapping[str, Any] | None = None, manifold_margin: float | None = None
    ) -> ObjectiveOptions:
        """The options of a caller's ``objective`` overrides and ``manifold_margin`` argument (None: the
        default here), as the mean-teacher stage and test-time adaptation both take them."""
        margin = {} if manifold_margin is None else {"manifold_margin": manifold_margin}
        return cls().override(**(objective or {}), **margin)


@dataclass
class ObjectiveInputs:
    """What a term reads, built once per batch by :func:`prepare_inputs`.

    Attributes:
        heatmaps: (B, K, h, w) the prediction, view frame, view channel order.
        keypoints: (B, K, 2) label-free keypoints, view crop px, view channel order (manifold, temporal).
        crop_size: (H, W) of the view (and canonical) crop in input px.
        uv: (B, K, 2) the same keypoints in the map frame, normalised, canonical joint order; None without
            maps.
        maps: critic maps in the map frame (depth (B, 1, Hm, Wm), normals (B, 3, Hm, Wm), valid), or None.
        body_distance: (B, 1, Hm, Wm) distance to the body silhouette in isotropic image units (longer side
            of the canonical crop = 1), 0 on the body; None when the critic has no body mask.
        lambda_z: (B,) depth weight per sample.
        confidence: (B, K) the teacher's confidence per joint, canonical joint order, or None.
        normal_prior: (mean (K, 3), kappa (K,)) or None.
        vae: frozen pose VAE, or None.
        crop_to_image: (B, 2, 3) crop -> image px of consecutive video frames, or None (stills).
        options: the objective's options.
        extras: anything else a registered term needs (e.g. a geometry teacher's heatmaps).
    """

    heatmaps: torch.Tensor
    keypoints: torch.Tensor
    crop_size: tuple[int, int]
    uv: torch.Tensor | None
    maps: GeometryMaps | None
    body_distance: torch.Tensor | None
    lambda_z: torch.Tensor
    confidence: torch.Tensor | None
    normal_prior: tuple[torch.Tensor, torch.Tensor] | None
    vae: nn.Module | None
    crop_to_image: torch.Tensor | None
    options: ObjectiveOptions
    extras: Mapping[str, torch.Tensor] = field(default_factory=dict)


Term = Callable[[ObjectiveInputs], torch.Tensor]


@dataclass(frozen=True)
class _Registered:
    fn: Term
    needs: tuple[str, ...]

    @property
    def needs_maps(self) -> bool:
        """The term reads critic maps, or the geometry teacher's keypoints on them (the caller must provide
        them)."""
        return bool({"maps", "uv", "body_distance", "geo_keypoints", "geo_targets"} & set(self.needs))


TERMS: dict[str, _Registered] = {}
# the terms that read the geometry teacher's pseudo-labels (:func:`geometry_pseudo_labels`)
TEACHER_TERMS = ("geo_pose", "geo_heatmap")


def register_term(name: str, needs: Sequence[str] = ()) -> Callable[[Term], Term]:
    """Decorator: add ``fn(inputs) -> () tensor`` to :data:`TERMS` as ``name``.

    ``needs`` names the :class:`ObjectiveInputs` fields (or ``extras`` keys) that must be present when the
    term has weight; :func:`label_free_objective` raises naming the term and what is missing otherwise.
    """

    def add(fn: Term) -> Term:
        if name in TERMS:
            raise ValueError(f"label-free term {name!r} is registered twice")
        TERMS[name] = _Registered(fn, tuple(needs))
        return fn

    return add


def label_free_keypoints(
    heatmaps: torch.Tensor, codec: UDPHeatmapCodec, options: ObjectiveOptions = ObjectiveOptions()
) -> torch.Tensor:
    """(B, K, 2) differentiable keypoints in input px, as every label-free term sees them.

    The raw soft-argmax at T = 0.05 does not see the prediction on real-like crops. Measured on the demo
    warm-up network's heatmaps of 600 real-like training crops (96 px crops, 24 px heatmaps, median peak
    0.23; the warm-up at step 400 of 600; ``benchmarks/geometry_calibration.py``), distance to the decoded
    keypoints (argmax + DARK), median / 90th percentile in input px: raw T = 0.05 11.6 / 28.5 (pulled to
    the crop centre); peak-normalised T = 0.05 2.3 / 9.9; window 2 / 3 / 4, peak-normalised, T = 0.2
    1.7 / 3.0, 1.5 / 3.4 (the default), 0.9 / 4.7; the integer argmax itself is 1.9 / 4.0 from them (DARK's
    refinement), so the default reads the prediction as closely as its argmax does. On weak synthetic
    heatmaps (0.2 peak over a 0.03 background) it lies within 0.6 px of the true peak, window 4 within 0.9
    and T = 0.3 within 1.0-1.8. The gradient still flows to the (2r + 1)^2 pixels around the peak: on
    unit-peak targets it is 0.29x the raw soft-argmax's, 1 / peak larger on weak heatmaps (the loss weights
    of ``configs/*/uda.yaml`` are measured with it).
    """
    return codec.soft_argmax(
        heatmaps, options.temperature, normalize=options.normalize, window=options.window
    )


def _swap_mirrored(values: torch.Tensor, mirrored: torch.Tensor, flip_indices: Sequence[int]) -> torch.Tensor:
    """Channels (dim 1) swapped left <-> right where ``mirrored`` (B,) is True."""
    index = torch.as_tensor(list(flip_indices), device=values.device)
    if len(index) != values.shape[1]:
        raise ValueError(f"{len(index)} flip indices for {values.shape[1]} keypoint channels")
    shape = (-1,) + (1,) * (values.dim() - 1)
    return torch.where(mirrored.view(shape), values[:, index], values)


def prepare_inputs(
    heatmaps: torch.Tensor,
    codec: UDPHeatmapCodec,
    *,
    maps: GeometryMaps | None = None,
    view_to_maps: torch.Tensor | None = None,
    lambda_z: float | torch.Tensor | None = None,
    confidence: torch.Tensor | None = None,
    normal_prior: tuple[torch.Tensor, torch.Tensor] | None = None,
    vae: nn.Module | None = None,
    crop_to_image: torch.Tensor | None = None,
    extras: Mapping[str, torch.Tensor] | None = None,
    options: ObjectiveOptions = ObjectiveOptions(),
    keypoints: torch.Tensor | None = None,
) -> ObjectiveInputs:
    """Label-free keypoints of ``heatmaps`` and everything in the map frame the terms read.

    Args:
        heatmaps: (B, K, h, w) predicted heatmaps of the view.
        codec: the stage's codec (its input size is the view's and the canonical crop's size).
        maps: critic maps in the map frame (canonical crop), or None (no geometric term can run); their
            ``body_distance`` feeds ``geo_body``.
        view_to_maps: (B, 2, 3) view px -> canonical crop px; None = the view is the canonical crop.
        lambda_z: scalar or (B,) depth weight from the critic; ``options.lambda_z`` wins when set, and
            :data:`DEFAULT_LAMBDA_Z` applies when neither is.
        confidence: (B, K) teacher confidence in the VIEW's channel order (swapped like the keypoints).
        normal_prior, vae, crop_to_image, extras: see :class:`ObjectiveInputs`.
        options: the objective's options.
        keypoints: (B, K, 2) view px to score instead of the heatmaps' label-free keypoints (the signal
            benchmark scores perturbed poses, with ``heatmaps`` their rendered Gaussians).
    """
    if keypoints is None:
        keypoints = label_free_keypoints(heatmaps, codec, options)
    B = keypoints.shape[0]
    uv = None
    if maps is not None:
        canonical = keypoints if view_to_maps is None else apply_affine(keypoints, view_to_maps)
        if view_to_maps is not None:
            mirrored = is_mirror(view_to_maps)
            canonical = _swap_mirrored(canonical, mirrored, options.flip_indices)
            if confidence is not None:
                confidence = _swap_mirrored(confidence, mirrored, options.flip_indices)
        h, w = codec.input_size
        uv = canonical / canonical.new_tensor([w - 1, h - 1])
    value = options.lambda_z if options.lambda_z is not None else lambda_z
    value = DEFAULT_LAMBDA_Z if value is None else value
    lambda_z_t = torch.as_tensor(value, dtype=keypoints.dtype, device=keypoints.device).expand(B)
    return ObjectiveInputs(
        heatmaps=heatmaps,
        keypoints=keypoints,
        crop_size=tuple(codec.input_size),
        uv=uv,
        maps=maps,
        body_distance=None if maps is None else maps.body_distance,
        lambda_z=lambda_z_t,
        confidence=None if confidence is None else confidence.detach(),
        normal_prior=normal_prior,
        vae=vae,
        crop_to_image=crop_to_image,
        options=options,
        extras=dict(extras or {}),
    )


def _missing(inputs: ObjectiveInputs, needs: Sequence[str]) -> list[str]:
    return [n for n in needs if getattr(inputs, n, None) is None and n not in inputs.extras]


def label_free_objective(inputs: ObjectiveInputs, weights: Mapping[str, float]) -> dict[str, torch.Tensor]:
    """Every registered term with a positive weight, unweighted, by name.

    Raises:
        ValueError: a weighted term is not registered, or lacks an input it needs.
    """
    out: dict[str, torch.Tensor] = {}
    for name, weight in weights.items():
        if weight <= 0:
            continue
        if name not in TERMS:
            raise ValueError(f"no label-free term {name!r}; registered: {sorted(TERMS)}")
        missing = _missing(inputs, TERMS[name].needs)
        if missing:
            raise ValueError(f"label-free term {name!r} has weight {weight} but no {', '.join(missing)}")
        out[name] = TERMS[name].fn(inputs)
    return out


def weighted_sum(terms: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> torch.Tensor:
    """sum of ``weights[name] * term``; the terms must not be empty."""
    return sum(weights[name] * value for name, value in terms.items())


def depth_weights(inputs: ObjectiveInputs) -> torch.Tensor | None:
    """(B, K) joints that may read depth: those the teacher is confident of (None: no teacher, all)."""
    threshold = inputs.options.visibility_threshold
    if inputs.confidence is None or threshold is None:
        return None
    return (inputs.confidence >= threshold).to(inputs.uv.dtype)


@register_term("geo_body", needs=("uv", "body_distance"))
def _geo_body(inputs: ObjectiveInputs) -> torch.Tensor:
    return losses.silhouette_loss(inputs.uv, inputs.body_distance)


@register_term("geo_depth", needs=("uv", "maps"))
def _geo_depth(inputs: ObjectiveInputs) -> torch.Tensor:
    return losses.bone_symmetry_loss(
        inputs.uv,
        inputs.maps.depth,
        lambda_z=inputs.lambda_z,
        valid=inputs.maps.valid,
        joint_weights=depth_weights(inputs),
        edge_threshold=inputs.options.edge_threshold,
    )


@register_term("geo_norm", needs=("uv", "maps", "normal_prior"))
def _geo_norm(inputs: ObjectiveInputs) -> torch.Tensor:
    mean, kappa = (t.to(inputs.uv) for t in inputs.normal_prior)
    return losses.normal_prior_loss(inputs.uv, inputs.maps.normals, mean, kappa, valid=inputs.maps.valid)


@register_term("manifold", needs=("vae",))
def _manifold(inputs: ObjectiveInputs) -> torch.Tensor:
    keypoints = inputs.keypoints
    labelled = torch.ones(keypoints.shape[1], dtype=torch.bool, device=keypoints.device)
    return losses.manifold_loss(keypoints, inputs.vae, labelled, margin=inputs.options.manifold_margin)


@register_term("temporal", needs=("crop_to_image",))
def _temporal(inputs: ObjectiveInputs) -> torch.Tensor:
    keypoints = apply_affine(inputs.keypoints, inputs.crop_to_image.to(inputs.keypoints))
    return losses.bone_length_consistency(keypoints)


def geometry_teacher_keypoints(
    geometry_teacher: GeometryTeacher, maps: GeometryMaps, codec: UDPHeatmapCodec, options: ObjectiveOptions
) -> tuple[torch.Tensor, torch.Tensor]:
    """The geometry teacher on critic maps of the canonical crop: (B, K, 2) keypoints in canonical px
    (argmax + DARK) and (B, K) which of them are pseudo-labels (heatmap peak >= ``geo_pose_threshold``, in an
    image the teacher is sure enough of: ``geo_image_confidence``).

    Both depend on the maps alone, so callers compute them once per image (cached maps) or group (TTA) and
    move them into each view with :func:`geometry_pseudo_labels`.

    Args:
        geometry_teacher: a frozen pose network on :func:`~geosapiens.data.geometry_inputs.maps_to_input`,
            at its own crop size (the maps are resampled to it, its keypoints rescaled to the model's crop).
        maps: critic maps in the canonical crop frame, at any UDP-aligned resolution.
        codec: the stage's codec (input size = the crop size).
        options: the objective's options (``geo_pose_threshold``, ``geo_image_confidence``).
    """
    from geosapiens.data.geometry_inputs import maps_to_input
    from geosapiens.models.codec import resize_aligned

    size = geometry_teacher.input_size
    x = maps_to_input(maps)
    if tuple(x.shape[-2:]) != size:
        x = resize_aligned(x, size)
    with torch.no_grad():
        heatmaps = geometry_teacher(x).float()
    if size == tuple(codec.input_size):
        keypoints, _ = codec.decode(heatmaps)
    else:
        keypoints, _ = UDPHeatmapCodec(size, heatmaps.shape[-2:]).decode(heatmaps)
        to_crop = torch.from_numpy(udp_rescale(size, codec.input_size)).to(keypoints.device)
        keypoints = apply_affine(keypoints.double(), to_crop)
    peaks = heatmaps.amax(dim=(-2, -1))
    keep = peaks >= options.geo_pose_threshold
    if options.geo_image_confidence > 0:
        if geometry_teacher.confidence is None:
            raise ValueError(
                "objective.geo_image_confidence needs the geometry teacher's validation confidence, which "
                "its checkpoint does not record: retrain it (any validation records it) or set it to 0"
            )
        keep &= peaks.mean(dim=1, keepdim=True) >= options.geo_image_confidence * geometry_teacher.confidence
    return keypoints.to(heatmaps), keep


def geometry_pseudo_labels(
    keypoints: torch.Tensor,
    keep: torch.Tensor,
    maps_to_view: torch.Tensor | None,
    codec: UDPHeatmapCodec,
    options: ObjectiveOptions,
) -> dict[str, torch.Tensor]:
    """The geometry teacher's keypoints moved into the view: ``extras`` of :data:`TEACHER_TERMS`.

    Keypoints are taken into the view by ``maps_to_view`` and their channels swapped back on mirrored views
    (``options.flip_indices``). A joint is a pseudo-label where the teacher kept it and the point lies
    inside the view.

    Args:
        keypoints: (B, K, 2) canonical px, from :func:`geometry_teacher_keypoints`.
        keep: (B, K) its pseudo-label joints.
        maps_to_view: (B, 2, 3) canonical px -> view px; None = the view is the canonical crop (TTA).
        codec: the stage's codec (input size = the crop size).
        options: the objective's options.

    Returns:
        ``geo_keypoints`` (B, K, 2) view px, view channel order; ``geo_keep`` (B, K) bool; their codec
        targets ``geo_targets`` (B, K, h, w) and ``geo_target_weights`` (B, K) (``geo_heatmap``).
    """
    if maps_to_view is not None:
        keypoints = apply_affine(keypoints, maps_to_view.to(keypoints))
        mirrored = is_mirror(maps_to_view)
        keypoints = _swap_mirrored(keypoints, mirrored, options.flip_indices)
        keep = _swap_mirrored(keep, mirrored, options.flip_indices)
    h, w = codec.input_size
    inside = (keypoints >= 0).all(-1) & (keypoints[..., 0] <= w - 1) & (keypoints[..., 1] <= h - 1)
    keep = keep & inside
    targets, target_weights = codec.encode(keypoints.detach(), keep.to(keypoints.dtype))
    return {
        "geo_keypoints": keypoints.detach(),
        "geo_keep": keep,
        "geo_targets": targets,
        "geo_target_weights": target_weights,
    }


@register_term("geo_heatmap", needs=("geo_targets",))
def _geo_heatmap(inputs: ObjectiveInputs) -> torch.Tensor:
    extras = inputs.extras
    return losses.heatmap_mse(inputs.heatmaps, extras["geo_targets"], extras["geo_target_weights"])


@register_term("geo_pose", needs=("geo_keypoints",))
def _geo_pose(inputs: ObjectiveInputs) -> torch.Tensor:
    extras = inputs.extras
    return losses.keypoint_distance_loss(
        inputs.keypoints, extras["geo_keypoints"], extras["geo_keep"], scale=float(max(inputs.crop_size))
    )
