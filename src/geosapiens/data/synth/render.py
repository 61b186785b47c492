"""Pinhole camera and a vectorised NumPy ray caster for ellipsoids on a ground plane.

Each ellipsoid is intersected analytically with the pixel rays inside its projected bounding box (one
quadratic per pixel, z-buffer minimum); the support plane is intersected in closed form over the whole
image. Normals are analytic (``A^-T u`` for the unit-sphere point ``u``), so depth and normals are exact at
every pixel centre. Pixel centres sit at integer coordinates, the project-wide convention: pixel ``(u, v)``
looks along ``((u - cx) / fx, (v - cy) / fy, 1)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["MINI_RGBD_K", "Camera", "Fragments", "rasterise", "ray_hits"]

# MINI-RGBD's generation intrinsics for 640x480 (reference/datasets.md §1.4).
MINI_RGBD_K = np.array(
    [
        [588.67905803875317, 0.0, 322.22048191353628],
        [0.0, 590.25690113005601, 237.46785983766890],
        [0.0, 0.0, 1.0],
    ]
)
_NEAR = 0.05  # metres


@dataclass
class Camera:
    """A pinhole camera without distortion.

    Attributes:
        K: (3, 3) intrinsics.
        width, height: image size in pixels.
        R: (3, 3) world -> camera rotation (camera frame: x right, y down, z forward).
        position: (3,) camera centre in world coordinates.
    """

    K: np.ndarray
    width: int
    height: int
    R: np.ndarray
    position: np.ndarray

    @classmethod
    def mini_rgbd(cls, R: np.ndarray, position: np.ndarray, width: int = 640, height: int = 480) -> Camera:
        """MINI-RGBD intrinsics, scaled when the image is not 640x480 (same field of view)."""
        K = MINI_RGBD_K.copy()
        K[0] *= width / 640.0
        K[1] *= height / 480.0
        return cls(
            K=K, width=width, height=height, R=np.asarray(R, float), position=np.asarray(position, float)
        )

    @staticmethod
    def orbit(target: np.ndarray, distance: float, azimuth: float, elevation: float, roll: float = 0.0):
        """(R, position) of a camera looking at ``target`` from ``distance`` (world z up, angles in radians).

        ``elevation`` = pi/2 looks straight down; image right is always horizontal before ``roll``, so the
        frame stays defined at the zenith.
        """
        ce, se = np.cos(elevation), np.sin(elevation)
        position = np.asarray(target, float) + distance * np.array(
            [ce * np.cos(azimuth), ce * np.sin(azimuth), se]
        )
        z = np.asarray(target, float) - position
        z /= np.linalg.norm(z)
        x = np.array([-np.sin(azimuth), np.cos(azimuth), 0.0])
        x -= z * (x @ z)
        x /= np.linalg.norm(x)
        y = np.cross(z, x)
        cr, sr = np.cos(roll), np.sin(roll)
        x, y = cr * x + sr * y, -sr * x + cr * y
        return np.stack([x, y, z]), position

    def to_camera(self, points: np.ndarray) -> np.ndarray:
        """World points (..., 3) -> camera frame (..., 3)."""
        return (np.asarray(points) - self.position) @ self.R.T

    def project(self, points_cam: np.ndarray) -> np.ndarray:
        """Camera-frame points (..., 3) -> pixel coordinates (..., 2)."""
        p = np.asarray(points_cam)
        z = p[..., 2:3]
        return (p[..., :2] / z) * np.array([self.K[0, 0], self.K[1, 1]]) + np.array(
            [self.K[0, 2], self.K[1, 2]]
        )

    def rays(self) -> tuple[np.ndarray, np.ndarray]:
        """Normalised image coordinates of pixel centres: x (W,), y (H,); the ray of (u, v) is (x[u], y[v], 1)."""
        xs = (np.arange(self.width) - self.K[0, 2]) / self.K[0, 0]
        ys = (np.arange(self.height) - self.K[1, 2]) / self.K[1, 1]
        return xs, ys


@dataclass
class Fragments:
    """What the ray caster saw at each pixel.

    Attributes:
        depth: (H, W) float32 camera z in metres of the nearest ellipsoid (inf where none).
        prim: (H, W) int16 index of that ellipsoid, -1 where none.
        normals: (H, W, 3) float32 camera-frame unit normals on ellipsoids, 0 elsewhere.
        unit: (H, W, 3) float32 the hit point on the ellipsoid's unit sphere (for texturing), 0 elsewhere.
        plane_depth: (H, W) float32 camera z of the ground plane (inf where the ray misses it).
    """

    depth: np.ndarray
    prim: np.ndarray
    normals: np.ndarray
    unit: np.ndarray
    plane_depth: np.ndarray


def _quadratic(inv: np.ndarray, centre: np.ndarray, xs: np.ndarray, ys: np.ndarray):
    """Ray/unit-sphere terms for one ellipsoid: rays t * (x, y, 1), unit-sphere point u = o + t m."""
    o = -inv @ centre
    m = [inv[k, 0] * xs + inv[k, 1] * ys + inv[k, 2] for k in range(3)]
    mm = m[0] * m[0] + m[1] * m[1] + m[2] * m[2]
    om = o[0] * m[0] + o[1] * m[1] + o[2] * m[2]
    disc = om * om - mm * (o @ o - 1.0)
    return o, m, mm, om, disc


def _screen_box(camera: Camera, centre: np.ndarray, axes: np.ndarray) -> tuple[int, int, int, int] | None:
    """Pixel box (c0, c1, r0, r1), end-exclusive, holding the projection of an ellipsoid; None when off screen."""
    ext = np.sqrt((axes**2).sum(axis=1))
    if centre[2] - ext[2] <= _NEAR:
        return 0, camera.width, 0, camera.height
    corners = (
        centre + np.stack(np.meshgrid([-1, 1], [-1, 1], [-1, 1], indexing="ij"), -1).reshape(-1, 3) * ext
    )
    uv = camera.project(corners)
    c0, r0 = np.floor(uv.min(axis=0)).astype(int)
    c1, r1 = np.ceil(uv.max(axis=0)).astype(int) + 1
    c0, r0 = max(c0, 0), max(r0, 0)
    c1, r1 = min(c1, camera.width), min(r1, camera.height)
    if c0 >= c1 or r0 >= r1:
        return None
    return c0, c1, r0, r1


def rasterise(
    camera: Camera, centres: np.ndarray, axes: np.ndarray, plane: tuple[np.ndarray, float] | None
) -> Fragments:
    """Ray-cast ellipsoids (camera frame) and an optional plane ``n . p = d`` (camera frame, n unit).

    Args:
        camera: intrinsics and image size (its pose is not used: inputs are already in the camera frame).
        centres: (P, 3) ellipsoid centres.
        axes: (P, 3, 3) ellipsoid matrices A (p = centre + A u for unit u).
        plane: (normal (3,), offset) of the support plane, or None.
    """
    H, W = camera.height, camera.width
    xs, ys = camera.rays()
    depth = np.full((H, W), np.inf, np.float32)
    prim = np.full((H, W), -1, np.int16)
    invs = np.linalg.inv(axes)
    boxes = []
    for p in range(len(centres)):
        box = _screen_box(camera, centres[p], axes[p])
        boxes.append(box)
        if box is None:
            continue
        c0, c1, r0, r1 = box
        _, _, mm, om, disc = _quadratic(invs[p], centres[p], xs[None, c0:c1], ys[r0:r1, None])
        hit = disc > 0.0
        t = np.where(hit, (-om - np.sqrt(np.where(hit, disc, 0.0))) / mm, np.inf)
        t = np.where(t > _NEAR, t, np.inf).astype(np.float32)
        view = depth[r0:r1, c0:c1]
        closer = t < view
        view[closer] = t[closer]
        prim[r0:r1, c0:c1][closer] = p
    normals = np.zeros((H, W, 3), np.float32)
    unit = np.zeros((H, W, 3), np.float32)
    for p, box in enumerate(boxes):
        if box is None:
            continue
        c0, c1, r0, r1 = box
        rr, cc = np.nonzero(prim[r0:r1, c0:c1] == p)
        if rr.size == 0:
            continue
        rr, cc = rr + r0, cc + c0
        t = depth[rr, cc].astype(np.float64)
        inv = invs[p]
        o = -inv @ centres[p]
        ray = np.stack([xs[cc], ys[rr], np.ones_like(t)], axis=1)
        u = o + t[:, None] * (ray @ inv.T)
        n = u @ inv  # = (A^-T u)^T
        n /= np.linalg.norm(n, axis=1, keepdims=True)
        normals[rr, cc] = n
        unit[rr, cc] = u
    if plane is None:
        plane_depth = np.full((H, W), np.inf, np.float32)
    else:
        n, d = plane
        denom = n[0] * xs[None, :] + n[1] * ys[:, None] + n[2]
        with np.errstate(divide="ignore"):
            t = d / denom
        plane_depth = np.where((denom != 0) & (t > _NEAR), t, np.inf).astype(np.float32)
    return Fragments(depth=depth, prim=prim, normals=normals, unit=unit, plane_depth=plane_depth)


def ray_hits(points_cam: np.ndarray, centres: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """Entry depth (camera z) of the ray through each point into each ellipsoid.

    Args:
        points_cam: (N, 3) camera-frame points (z > 0); the ray is the one through each point's projection.
        centres, axes: (P, 3), (P, 3, 3) ellipsoids in the camera frame.

    Returns:
        (N, P) entry depth, inf where the ray misses the ellipsoid.
    """
    rays = points_cam / points_cam[:, 2:3]
    invs = np.linalg.inv(axes)
    m = np.einsum("pij,nj->npi", invs, rays)
    o = -np.einsum("pij,pj->pi", invs, centres)
    mm = (m * m).sum(-1)
    om = (m * o[None]).sum(-1)
    disc = om**2 - mm * ((o * o).sum(-1)[None] - 1.0)
    with np.errstate(invalid="ignore"):
        t = (-om - np.sqrt(disc)) / mm
    return np.where((disc > 0) & (t > _NEAR), t, np.inf)
