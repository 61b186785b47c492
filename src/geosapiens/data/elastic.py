"""Elastic scale augmentation: a skeleton-driven thin-plate-spline warp that changes body proportions.

Synthetic infants have one set of proportions; real infants vary (a big head, short limbs). This warp
enlarges the head about the neck and rescales each limb segment along the COCO-17 kinematic chain, so the
model does not learn a fixed head-to-body ratio. It runs in the crop frame, after the view's affine:

1. the *forward* rule moves the labelled keypoints (:func:`skeleton_targets`): head points radially about
   the neck (shoulder midpoint), and for each (parent, child) segment the child and everything below it;
2. control points = labelled keypoints, points around the head (moved by the same rule), a fixed neck and
   mid-hip, and fixed anchors on a frame around the crop (:func:`control_points`);
3. the *backward* map (output pixel -> pre-warp pixel) is the TPS fitted from target to source points,
   evaluated on a coarse node grid (:class:`ElasticWarp`). Composed with the inverse crop affine on the
   nodes and upsampled with ``cv2.resize``, it gives the ONE ``cv2.remap`` that makes the labelled view.

Keypoints are control points, so the TPS sends them exactly to their targets. The map actually applied is
the TPS sampled on the nodes and interpolated bilinearly between them, which near control points (where the
TPS bends most) differs from the TPS by up to a few pixels at a 16 px step. So the returned keypoints are
the exact preimages of the source keypoints under the *applied* map (:func:`invert_node_map`, Newton on the
piecewise-bilinear map, starting at the targets): labels sit where the image content went, to remap's 1/32 px
precision, and the body proportions follow the requested factors to within that interpolation error.

The applied map is piecewise bilinear over the grid cells, and a cell's bilinear map is orientation-preserving
everywhere iff its Jacobian determinant is positive at the four corners, which :func:`fold_free` checks; a
warp that folds, or stretches any cell more than ``max_stretch``, is shrunk towards identity (factors ** 0.5,
** 0.25), then dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from geosapiens.affine import apply_affine
from geosapiens.skeleton import COCO17, COCO17_CHAIN, COCO17_HEAD

__all__ = [
    "ElasticScale",
    "ElasticWarp",
    "ThinPlateSpline",
    "skeleton_targets",
    "control_points",
    "fold_free",
    "invert_node_map",
    "node_grid",
    "upsample_map",
]

_LEFT_SHOULDER, _RIGHT_SHOULDER = COCO17.index("left_shoulder"), COCO17.index("right_shoulder")
_LEFT_HIP, _RIGHT_HIP = COCO17.index("left_hip"), COCO17.index("right_hip")


class ThinPlateSpline:
    """2D thin-plate spline ``f`` with ``f(src_i) = dst_i`` exactly (no smoothing).

    Kernel ``U(r) = r^2 log r^2``; coordinates are normalised by ``norm`` for conditioning.

    Args:
        src: (N, 2) control points in the domain.
        dst: (N, 2) their images.
        norm: length used to normalise coordinates (e.g. the crop size).
    """

    def __init__(self, src: np.ndarray, dst: np.ndarray, norm: float = 1.0) -> None:
        self.norm = float(norm)
        self.src = np.asarray(src, dtype=np.float64) / self.norm
        dst = np.asarray(dst, dtype=np.float64) / self.norm
        n = len(self.src)
        system = np.zeros((n + 3, n + 3))
        system[:n, :n] = self._kernel(self.src, self.src)
        system[:n, n] = 1.0
        system[:n, n + 1 :] = self.src
        system[n, :n] = 1.0
        system[n + 1 :, :n] = self.src.T
        rhs = np.zeros((n + 3, 2))
        rhs[:n] = dst
        try:
            self.coef = np.linalg.solve(system, rhs)
        except np.linalg.LinAlgError:  # collinear or repeated control points: least-norm solution
            self.coef = np.linalg.lstsq(system, rhs, rcond=None)[0]

    @staticmethod
    def _kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """(M, N) ``U(|a_i - b_j|)`` for a (M, 2), b (N, 2); ``U(0) = 0``."""
        dx = a[:, 0:1] - b[:, 0]
        dy = a[:, 1:2] - b[:, 1]
        r2 = dx * dx + dy * dy
        return r2 * np.log(np.maximum(r2, np.finfo(r2.dtype).tiny))

    def __call__(self, points: np.ndarray, dtype: type = np.float64) -> np.ndarray:
        """Evaluate at (..., 2) points; returns (..., 2) in ``dtype``.

        ``dtype=np.float32`` halves the cost of dense evaluation (the kernel's log dominates) at ~1e-4 px
        error for a 1024 px crop; the system is always solved in float64.
        """
        points = np.asarray(points)
        flat = (points.reshape(-1, 2) / self.norm).astype(dtype)
        n = len(self.src)
        coef = self.coef.astype(dtype)
        out = self._kernel(flat, self.src.astype(dtype)) @ coef[:n] + coef[n] + flat @ coef[n + 1 :]
        return (out.astype(np.float64) * self.norm).reshape(points.shape)


def _segment_mirrors() -> tuple[int, ...]:
    """For each COCO17_CHAIN segment, the index of its left/right mirror segment."""
    flip = COCO17.flip_indices
    index = {seg: i for i, seg in enumerate(COCO17_CHAIN)}
    return tuple(index[(flip[p], flip[c])] for p, c in COCO17_CHAIN)


_SEGMENT_MIRRORS = _segment_mirrors()


def skeleton_targets(
    keypoints: np.ndarray, labelled: np.ndarray, head_factor: float, segment_factors: np.ndarray
) -> np.ndarray:
    """Where the warp sends each keypoint (the forward rule).

    Head points move radially about the neck (shoulder midpoint) by ``head_factor``. Along COCO17_CHAIN
    (parents before children), a child lands at ``new parent + factor * (child - parent)``, which carries
    everything below it with the segment. A segment with an unlabelled end is not scaled (its child only
    follows the parent); unlabelled joints keep their position (they are not control points).

    Args:
        keypoints: (K, 2) crop px.
        labelled: (K,) bool.
        head_factor: head enlargement about the neck.
        segment_factors: (len(COCO17_CHAIN),) length factor of each segment.

    Returns:
        (K, 2) float64 target positions.
    """
    src = np.asarray(keypoints, dtype=np.float64)
    out = src.copy()
    if labelled[_LEFT_SHOULDER] and labelled[_RIGHT_SHOULDER]:
        neck = 0.5 * (src[_LEFT_SHOULDER] + src[_RIGHT_SHOULDER])
        for k in COCO17_HEAD:
            if labelled[k]:
                out[k] = neck + head_factor * (src[k] - neck)
    moved = np.zeros_like(src)  # displacement of each joint so far, inherited by its children
    for (parent, child), factor in zip(COCO17_CHAIN, segment_factors, strict=True):
        if labelled[parent] and labelled[child]:
            out[child] = out[parent] + factor * (src[child] - src[parent])
        elif labelled[child]:
            out[child] = src[child] + moved[parent]
        moved[child] = out[child] - src[child]
    return out


def control_points(
    keypoints: np.ndarray,
    labelled: np.ndarray,
    head_factor: float,
    segment_factors: np.ndarray,
    output_size_hw: tuple[int, int],
    anchors_per_side: int = 5,
    limb_points: int = 0,
    head_ring: int = 8,
    head_ring_radius: float = 1.0,
    anchor_margin: float = 0.25,
) -> tuple[np.ndarray, np.ndarray]:
    """Source and target control points of the warp (labelled keypoints first).

    Extras: a fixed neck and mid-hip (the torso does not move); ``head_ring`` points on a circle around the
    head (``head_ring_radius`` x its extent), on its far side from the neck, moved with the head (the whole
    skull scales, not only the face); ``anchors_per_side`` fixed points along each edge of a frame
    ``anchor_margin`` x the crop size outside the crop (the background stays put); optionally
    ``limb_points`` points inside each scaled segment (keeps limbs straight).

    The defaults are measured (SyRIP sample, 160 random 1024 views, random factors, share of warps applied
    with full / shrunk / no factors): anchors *on* the crop border pin the background next to a head or limb
    that the padding-1.25 crop leaves near the border (68 / 31 / 2%); the 0.25 frame gives 84 / 15 / 1%.
    Two limb points per segment add conflicts where limbs cross, frequent for infants (76 / 21 / 3%).
    Points whose target coincides with an earlier one (within 1e-3 px) are dropped, so the TPS is solvable.

    Returns:
        src (N, 2), dst (N, 2) float64, crop px.
    """
    src = np.asarray(keypoints, dtype=np.float64)
    dst = skeleton_targets(src, labelled, head_factor, segment_factors)
    srcs, dsts = [src[labelled]], [dst[labelled]]

    ts = np.arange(1, limb_points + 1) / (limb_points + 1)
    for parent, child in COCO17_CHAIN:
        if labelled[parent] and labelled[child]:
            srcs.append(src[parent] + ts[:, None] * (src[child] - src[parent]))
            dsts.append(dst[parent] + ts[:, None] * (dst[child] - dst[parent]))

    if labelled[_LEFT_SHOULDER] and labelled[_RIGHT_SHOULDER]:
        neck = 0.5 * (src[_LEFT_SHOULDER] + src[_RIGHT_SHOULDER])
        fixed = [neck]
        if labelled[_LEFT_HIP] and labelled[_RIGHT_HIP]:
            fixed.append(0.5 * (src[_LEFT_HIP] + src[_RIGHT_HIP]))
        srcs.append(np.array(fixed))
        dsts.append(np.array(fixed))
        head = [k for k in COCO17_HEAD if labelled[k]]
        if head_ring and head:
            centre = src[head].mean(0)
            shoulder_width = np.linalg.norm(src[_LEFT_SHOULDER] - src[_RIGHT_SHOULDER])
            radius = max(np.linalg.norm(src[head] - centre, axis=1).max(), 0.4 * shoulder_width)
            radius *= head_ring_radius
            angles = np.arange(head_ring) * (2 * np.pi / head_ring)
            ring = centre + radius * np.stack([np.cos(angles), np.sin(angles)], 1)
            far = (ring - centre) @ (centre - neck) > 0
            srcs.append(ring[far])
            dsts.append(neck + head_factor * (ring[far] - neck))

    h, w = output_size_hw
    pad = anchor_margin * max(h, w)
    x0, y0, x1, y1 = -pad, -pad, w - 1 + pad, h - 1 + pad
    edge = np.linspace(0.0, 1.0, anchors_per_side + 1, endpoint=False)
    border = np.concatenate(
        [
            np.stack([x0 + edge * (x1 - x0), np.full_like(edge, y0)], 1),
            np.stack([np.full_like(edge, x1), y0 + edge * (y1 - y0)], 1),
            np.stack([x1 - edge * (x1 - x0), np.full_like(edge, y1)], 1),
            np.stack([np.full_like(edge, x0), y1 - edge * (y1 - y0)], 1),
        ]
    )
    srcs.append(border)
    dsts.append(border)

    src_all, dst_all = np.concatenate(srcs), np.concatenate(dsts)
    keep = []
    for i, point in enumerate(dst_all):
        if not keep or np.min(np.abs(dst_all[keep] - point).max(1)) > 1e-3:
            keep.append(i)
    return src_all[keep], dst_all[keep]


def node_grid(output_size_hw: tuple[int, int], step: int) -> np.ndarray:
    """Coarse nodes, in output px, that :func:`upsample_map` interpolates exactly.

    ``cv2.resize`` samples node ``j`` at output pixel ``(j + 0.5) * step - 0.5``; one extra node on every side
    keeps the interpolation linear (not clamped) up to the image border.

    Returns:
        (gh, gw, 2) float64 x, y with gh = ceil(H / step) + 2, gw = ceil(W / step) + 2.
    """
    h, w = output_size_hw
    xs = (np.arange(-1, -(-w // step) + 1) + 0.5) * step - 0.5
    ys = (np.arange(-1, -(-h // step) + 1) + 0.5) * step - 0.5
    gx, gy = np.meshgrid(xs, ys)
    return np.stack([gx, gy], -1)


def upsample_map(nodes_map: np.ndarray, output_size_hw: tuple[int, int], step: int) -> np.ndarray:
    """Bilinear upsampling of a node map (from :func:`node_grid`) to a dense ``cv2.remap`` map.

    Args:
        nodes_map: (gh, gw, 2) values at the nodes (source x, y).

    Returns:
        (H, W, 2) float32, ready for ``cv2.remap(image, map, None, ...)``.
    """
    h, w = output_size_hw
    gh, gw = nodes_map.shape[:2]
    dense = cv2.resize(nodes_map.astype(np.float32), (gw * step, gh * step), interpolation=cv2.INTER_LINEAR)
    return dense[step : step + h, step : step + w]


def fold_free(nodes_map: np.ndarray, step: float = 1.0, max_stretch: float = float("inf")) -> bool:
    """True when the piecewise-bilinear map through these nodes never folds (det J > 0 everywhere).

    A bilinear cell map has a Jacobian determinant affine in each cell coordinate, so it is positive on the
    whole cell iff it is positive at the cell's four corners. With ``max_stretch`` the corner Jacobians'
    singular values must also lie in [1 / max_stretch, max_stretch]: a near-fold (a joint smeared into a
    streak where crossed limbs pull apart) is rejected too.

    Args:
        nodes_map: (gh, gw, 2) mapped node positions on a regular grid.
        step: grid spacing, so that an identity map has unit Jacobian.
        max_stretch: largest allowed local stretch or squeeze factor.
    """
    dx_top = (nodes_map[:-1, 1:] - nodes_map[:-1, :-1]) / step
    dx_bot = (nodes_map[1:, 1:] - nodes_map[1:, :-1]) / step
    dy_left = (nodes_map[1:, :-1] - nodes_map[:-1, :-1]) / step
    dy_right = (nodes_map[1:, 1:] - nodes_map[:-1, 1:]) / step
    lo2, hi2 = max_stretch**-2, max_stretch**2
    for dx, dy in ((dx_top, dy_left), (dx_top, dy_right), (dx_bot, dy_left), (dx_bot, dy_right)):
        det = dx[..., 0] * dy[..., 1] - dx[..., 1] * dy[..., 0]
        if not (det > 0).all():
            return False
        if np.isfinite(max_stretch):
            frob2 = (dx**2).sum(-1) + (dy**2).sum(-1)
            root = np.sqrt(np.maximum(frob2**2 - 4 * det**2, 0.0))
            if ((frob2 + root) / 2 > hi2).any() or ((frob2 - root) / 2 < lo2).any():
                return False
    return True


def invert_node_map(
    nodes_map: np.ndarray, step: int, targets: np.ndarray, initial: np.ndarray, iterations: int = 10
) -> np.ndarray:
    """Points ``p`` with ``map(p) = targets``, ``map`` being the piecewise-bilinear upsampled node map.

    Newton's method on the exact bilinear cell maps that :func:`upsample_map` produces (a fold-free map is
    locally invertible, and ``initial`` is within a few pixels). Points that leave the node grid keep
    ``initial`` (they are outside the view, where no pixel exists).

    Args:
        nodes_map: (gh, gw, 2) values at :func:`node_grid` nodes.
        step: node spacing in px.
        targets: (N, 2) wanted map values.
        initial: (N, 2) starting points in output px.

    Returns:
        (N, 2) float64 output px.
    """
    gh, gw = nodes_map.shape[:2]
    points = np.asarray(initial, dtype=np.float64).copy()
    targets = np.asarray(targets, dtype=np.float64)
    for _ in range(iterations):
        u = (points + 0.5) / step + 0.5  # continuous node index (node 0 is the extra one before pixel 0)
        cell = np.floor(u).astype(int)
        valid = (cell[:, 0] >= 0) & (cell[:, 0] < gw - 1) & (cell[:, 1] >= 0) & (cell[:, 1] < gh - 1)
        if not valid.any():
            break
        cx, cy = cell[valid, 0], cell[valid, 1]
        fx, fy = (u[valid, 0] - cx)[:, None], (u[valid, 1] - cy)[:, None]
        n00, n01 = nodes_map[cy, cx], nodes_map[cy, cx + 1]
        n10, n11 = nodes_map[cy + 1, cx], nodes_map[cy + 1, cx + 1]
        value = (1 - fy) * ((1 - fx) * n00 + fx * n01) + fy * ((1 - fx) * n10 + fx * n11)
        d_dx = ((1 - fy) * (n01 - n00) + fy * (n11 - n10)) / step
        d_dy = ((1 - fx) * (n10 - n00) + fx * (n11 - n01)) / step
        jac = np.stack([d_dx, d_dy], axis=-1)  # (n, 2 out, 2 in)
        delta = np.linalg.solve(jac, (value - targets[valid])[..., None])[..., 0]
        points[valid] -= delta
        if np.abs(delta).max() < 1e-6:
            break
    return points


@dataclass
class ElasticWarp:
    """One sampled elastic warp in the crop frame.

    Attributes:
        keypoints: (K, 2) float64 output keypoints: where the applied map sends the input keypoints (labelled
            ones; unlabelled ones unchanged).
        nodes_map: (gh, gw, 2) float64 backward map at :func:`node_grid` nodes: output crop px -> pre-warp
            crop px.
        step: node spacing in px.
        head_factor, segment_factors: the factors actually applied (after any shrinking).
    """

    keypoints: np.ndarray
    nodes_map: np.ndarray
    step: int
    head_factor: float
    segment_factors: np.ndarray

    def dense_map(self, output_size_hw: tuple[int, int], then: np.ndarray | None = None) -> np.ndarray:
        """Dense backward map (H, W, 2) float32, optionally followed by a (2, 3) affine (e.g. crop -> image).

        Composing on the nodes is exact (the affine is linear, the upsampling is linear), and keeps the full
        size work to one resize.
        """
        nodes = self.nodes_map
        if then is not None:
            nodes = apply_affine(nodes, then)
        return upsample_map(nodes, output_size_hw, self.step)


@dataclass
class ElasticScale:
    """Random skeleton-driven proportion changes (source data only; see the module docstring).

    Args:
        prob: probability that a sample is warped at all (used by the datasets).
        head_scale: range of the head enlargement about the neck.
        limb_scale: range of the per-segment length factor.
        symmetric_limbs: left and right segments of a kind share one factor, so left/right bone lengths stay
            equal (what the depth loss's symmetry prior assumes).
        grid_cells: node cells along the crop's longer side (node spacing ``max(H, W) / grid_cells`` px, 16
            px at 1024): cost and fidelity are the same at every input size.
        anchors_per_side, limb_points, head_ring: extra control points, see :func:`control_points`.
        max_stretch: largest local stretch/squeeze the warp may have (see :func:`fold_free`).
        shrink: exponents tried on the factors, in order, until the warp passes :func:`fold_free`; identity
            after.
    """

    prob: float = 0.5
    head_scale: tuple[float, float] = (1.0, 1.5)
    limb_scale: tuple[float, float] = (0.7, 1.1)
    symmetric_limbs: bool = True
    grid_cells: int = 64
    anchors_per_side: int = 5
    limb_points: int = 0
    head_ring: int = 8
    head_ring_radius: float = 1.0
    anchor_margin: float = 0.25
    max_stretch: float = 3.0
    shrink: tuple[float, ...] = (1.0, 0.5, 0.25)

    def grid_step(self, output_size_hw: tuple[int, int]) -> int:
        """Node spacing in px for a crop size."""
        return max(2, round(max(output_size_hw) / self.grid_cells))

    def sample_factors(self, rng: np.random.Generator) -> tuple[float, np.ndarray]:
        """Draw (head_factor, segment_factors (len(COCO17_CHAIN),))."""
        head = float(rng.uniform(*self.head_scale))
        segments = rng.uniform(*self.limb_scale, size=len(COCO17_CHAIN))
        if self.symmetric_limbs:
            segments = segments[[min(i, m) for i, m in enumerate(_SEGMENT_MIRRORS)]]
        return head, segments

    def warp(
        self,
        keypoints: np.ndarray,
        labelled: np.ndarray,
        output_size_hw: tuple[int, int],
        head_factor: float,
        segment_factors: np.ndarray,
    ) -> ElasticWarp:
        """The fold-free warp for given factors (shrunk towards identity when they would fold).

        Args:
            keypoints: (K, 2) crop px (after the view affine, channels already flip-swapped).
            labelled: (K,) bool; unlabelled joints are not control points.
        """
        keypoints = np.asarray(keypoints, dtype=np.float64)
        labelled = np.asarray(labelled, dtype=bool)
        step = self.grid_step(output_size_hw)
        nodes = node_grid(output_size_hw, step)
        norm = float(max(output_size_hw))
        segment_factors = np.asarray(segment_factors, dtype=np.float64)
        for power in self.shrink:
            head_p, seg_p = float(head_factor) ** power, segment_factors**power
            src, dst = control_points(
                keypoints,
                labelled,
                head_p,
                seg_p,
                output_size_hw,
                self.anchors_per_side,
                self.limb_points,
                self.head_ring,
                self.head_ring_radius,
                self.anchor_margin,
            )
            nodes_map = ThinPlateSpline(dst, src, norm)(nodes, np.float32)
            if fold_free(nodes_map, step, self.max_stretch):
                out = skeleton_targets(keypoints, labelled, head_p, seg_p)
                out[labelled] = invert_node_map(nodes_map, step, keypoints[labelled], out[labelled])
                return ElasticWarp(out, nodes_map, step, head_p, seg_p)
        return ElasticWarp(keypoints.copy(), nodes, step, 1.0, np.ones_like(segment_factors))

    def __call__(
        self,
        keypoints: np.ndarray,
        labelled: np.ndarray,
        output_size_hw: tuple[int, int],
        rng: np.random.Generator,
    ) -> ElasticWarp:
        """Sample factors and build the warp; see :meth:`warp`."""
        head, segments = self.sample_factors(rng)
        return self.warp(keypoints, labelled, output_size_hw, head, segments)
