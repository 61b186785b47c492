"""Appearance of a scene in the two visual domains, and the shading that turns geometry into RGB.

``"synthetic"`` imitates MINI-RGBD / SyRIP-Synth renders: Lambertian shading under a light near the camera,
uniform skin, plain or two-tone clothing, plain or simple backgrounds, no sensor effects.

``"real-like"`` carries the nuisances a detector trained on the first domain has never seen: patterned
clothing with folds, blankets with stripes and shaded bars the width and colour of infant limbs, pasted
patches of other patterns (crops), fold shading, coloured light from any direction with cast shadows and
contact darkening, props and an adult hand that occlude the infant, and camera effects (defocus, motion
blur, noise, white balance, vignetting, JPEG artefacts, resampling).

Procedural patterns are functions of coordinates that move with the surface (rest-pose body coordinates
on the infant, floor coordinates on the blanket), so they stay attached to what they decorate.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import cv2
import numpy as np

__all__ = [
    "STYLES",
    "ARM_REGIONS",
    "Pattern",
    "Light",
    "Appearance",
    "sample_appearance",
    "paint_floor",
    "shade",
    "finish",
]

STYLES = ("synthetic", "real-like")

# Infant skin tones (sRGB, 0-1), light to dark.
_SKIN = np.array(
    [
        [0.96, 0.80, 0.70],
        [0.93, 0.74, 0.62],
        [0.88, 0.67, 0.55],
        [0.80, 0.58, 0.45],
        [0.68, 0.47, 0.35],
        [0.55, 0.37, 0.27],
        [0.42, 0.28, 0.20],
    ]
)
_PASTELS = np.array(
    [
        [0.95, 0.95, 0.95],
        [0.85, 0.90, 0.97],
        [0.97, 0.85, 0.88],
        [0.88, 0.95, 0.86],
        [0.98, 0.95, 0.80],
        [0.80, 0.80, 0.85],
        [0.60, 0.75, 0.90],
        [0.95, 0.70, 0.75],
        [0.70, 0.85, 0.70],
        [0.55, 0.55, 0.60],
    ]
)
_SATURATED = np.array(
    [
        [0.85, 0.20, 0.20],
        [0.20, 0.45, 0.85],
        [0.95, 0.75, 0.15],
        [0.25, 0.65, 0.35],
        [0.55, 0.30, 0.70],
        [0.95, 0.50, 0.15],
        [0.10, 0.15, 0.30],
        [0.15, 0.60, 0.65],
        [0.40, 0.25, 0.15],
        [0.90, 0.45, 0.65],
    ]
)
# Regions of the body that each outfit covers.
_OUTFITS = {
    "diaper": frozenset({"pelvis"}),
    "bodysuit": frozenset({"pelvis", "belly", "chest", "shoulder"}),
    "t-shirt": frozenset({"pelvis", "belly", "chest", "shoulder", "upper_arm"}),
    "sleepsuit": frozenset(
        {
            "pelvis",
            "belly",
            "chest",
            "shoulder",
            "upper_arm",
            "elbow",
            "forearm",
            "thigh",
            "knee",
            "shin",
            "ankle",
            "foot",
        }
    ),
    "leggings": frozenset({"pelvis", "belly", "chest", "shoulder", "thigh", "knee", "shin"}),
}
# Body regions where clothing stripes run across the limb: arms lie along x in the rest pose, the rest along y.
ARM_REGIONS = frozenset({"shoulder", "upper_arm", "elbow", "forearm", "hand"})


def _pick(rng: np.random.Generator, table: np.ndarray, jitter: float = 0.04) -> np.ndarray:
    return np.clip(table[rng.integers(len(table))] + rng.normal(0, jitter, 3), 0.0, 1.0)


@dataclass
class Pattern:
    """A procedural colour field over 2D or 3D coordinates (metres).

    Attributes:
        kind: ``plain``, ``stripes``, ``checks``, ``dots`` or ``noise``.
        colours: (C, 3) colours; stripes cycle through them.
        period: feature size in metres.
        direction: (D,) stripe direction (unit); checks use it and its perpendicular.
        waves: (6, D + 2) random plane waves (direction, relative frequency, phase) for ``noise`` and folds.
        folds: fold-shading strength (0 = none).
    """

    kind: str
    colours: np.ndarray
    period: float = 0.03
    direction: np.ndarray = field(default_factory=lambda: np.array([0.0, 1.0, 0.0]))
    waves: np.ndarray | None = None
    folds: float = 0.0

    @classmethod
    def sample(
        cls,
        rng: np.random.Generator,
        dim: int,
        palette: str,
        kinds: tuple[str, ...],
        folds: float = 0.0,
        period: tuple[float, float] = (0.01, 0.04),
    ) -> Pattern:
        kind = str(rng.choice(kinds))
        n = 1 if kind == "plain" else int(rng.integers(2, 4))
        tables = {"pastel": (_PASTELS,), "saturated": (_SATURATED,), "mixed": (_PASTELS, _SATURATED)}[palette]
        colours = np.stack([_pick(rng, tables[rng.integers(len(tables))]) for _ in range(n)])
        direction = rng.normal(size=dim)
        direction /= np.linalg.norm(direction)
        dirs = rng.normal(size=(6, dim))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        waves = np.concatenate(
            [dirs, rng.uniform(0.5, 1.5, (6, 1)), rng.uniform(0, 2 * np.pi, (6, 1))], axis=1
        )
        return cls(kind, colours, float(np.exp(rng.uniform(*np.log(period)))), direction, waves, folds)

    @property
    def dim(self) -> int:
        return len(self.direction)

    def field(self, q: np.ndarray, scale: float) -> np.ndarray:
        """Smooth random field, roughly in [-1, 1], at coordinates ``q`` (..., D); features ~``scale`` metres."""
        out = np.zeros(q.shape[:-1], np.float32)
        for *d, freq, phase in self.waves:
            arg = _dot(q, np.asarray(d) * (2 * np.pi * freq / scale))
            out += np.sin(arg + np.float32(phase))
        return out * np.float32(np.sqrt(2.0 / len(self.waves)))

    def colour(self, q: np.ndarray, across: np.ndarray | None = None, folds: bool = True) -> np.ndarray:
        """Colours (..., 3) float32 at coordinates ``q`` (..., D).

        Args:
            q: coordinates in metres.
            across: (...) replaces the stripe coordinate (clothing stripes run around limbs).
            folds: apply the fold shading here (callers on dense grids apply :meth:`fold_shading` at
                lower resolution instead).
        """
        c = self.colours.astype(np.float32)
        if self.kind == "plain" or len(c) == 1:
            out = np.broadcast_to(c[0], (*q.shape[:-1], 3)).copy()
        elif self.kind in ("stripes", "checks"):
            s = _dot(q, self.direction) if across is None else across
            idx = np.floor(s * np.float32(1.0 / self.period)).astype(np.int32)
            if self.kind == "checks":
                perp = np.zeros_like(self.direction)
                perp[:2] = -self.direction[1], self.direction[0]
                idx += np.floor(_dot(q, perp) * np.float32(1.0 / self.period)).astype(np.int32)
            out = np.take(c, idx, axis=0, mode="wrap")
        elif self.kind == "dots":
            cell = q * np.float32(1.0 / self.period)
            frac = cell - np.floor(cell) - np.float32(0.5)
            out = np.where(((frac * frac).sum(-1) < 0.09)[..., None], c[1], c[0])
        else:
            w = np.clip(0.5 + 0.5 * self.field(q, self.period * 6), 0, 1)[..., None]
            out = c[0] * (1 - w) + c[1] * w
        if folds and self.folds > 0:
            out *= self.fold_shading(q)[..., None]
        return out

    def fold_shading(self, q: np.ndarray) -> np.ndarray:
        """Multiplicative shading (...) of thin dark creases along random smooth ridges (cloth folds)."""
        ridge = np.clip(1.0 - np.abs(self.field(q, self.period * 8)), 0.0, 1.0)
        ridge *= ridge
        return 1.0 - np.float32(self.folds) * ridge * ridge * ridge


def _dot(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``q @ v`` for coordinates (..., D) as float32, without a matmul over a strided last axis."""
    out = q[..., 0] * np.float32(v[0])
    for k in range(1, len(v)):
        out = out + q[..., k] * np.float32(v[k])
    return out


@dataclass
class Light:
    """Directional light plus ambient term; ``direction`` points from the scene to the light (world frame)."""

    direction: np.ndarray
    colour: np.ndarray
    ambient: np.ndarray
    shadow: float = 0.0
    contact: float = 0.0


@dataclass
class Appearance:
    """Everything about how a scene looks, fixed per still or per sequence."""

    style: str
    skin: np.ndarray
    clothed: frozenset[str]
    cloth: Pattern
    hair: np.ndarray | None
    eyes_open: bool
    floor: Pattern
    wall: Pattern
    bars: np.ndarray  # (B, 9): x0, y0, x1, y1, width, r, g, b, unused; limb-like bars on the blanket
    patches: list[tuple[np.ndarray, Pattern]]  # (2, 3) affine floor -> patch frame, patch pattern
    light: Light
    effects: dict = field(default_factory=dict)


def sample_appearance(style: str, rng: np.random.Generator, headlight: np.ndarray) -> Appearance:
    """Draw the look of one scene.

    Args:
        style: one of :data:`STYLES`.
        rng: the scene's appearance stream.
        headlight: (3,) world direction from the scene to the camera (the synthetic light sits near it).
    """
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    real = style == "real-like"
    skin = _pick(rng, _SKIN, 0.03)
    clothed = _OUTFITS[str(rng.choice(list(_OUTFITS)))]
    if real:
        cloth = Pattern.sample(
            rng,
            3,
            "mixed",
            ("plain", "stripes", "stripes", "checks", "dots", "noise"),
            folds=float(rng.uniform(0.1, 0.4)),
            period=(0.008, 0.035),
        )
        floor = Pattern.sample(
            rng,
            2,
            "mixed",
            ("stripes", "stripes", "checks", "dots", "noise", "plain"),
            folds=float(rng.uniform(0.1, 0.45)),
            period=(0.02, 0.10),
        )
        wall = Pattern.sample(rng, 2, "mixed", ("noise", "stripes", "plain"), period=(0.02, 0.2))
        nbars = int(rng.integers(0, 7))
        bars = np.zeros((nbars, 9))
        for b in range(nbars):
            centre = rng.uniform(-0.6, 0.6, 2)
            ang, length = rng.uniform(0, np.pi), rng.uniform(0.08, 0.25)
            half = 0.5 * length * np.array([np.cos(ang), np.sin(ang)])
            colour = _pick(rng, _SKIN if rng.random() < 0.6 else _SATURATED, 0.05)
            bars[b] = [*(centre - half), *(centre + half), rng.uniform(0.012, 0.028), *colour, 0.0]
        patches = []
        for _ in range(int(rng.integers(0, 5))):
            ang, size = rng.uniform(0, np.pi), rng.uniform(0.05, 0.3, 2)
            centre = rng.uniform(-0.7, 0.7, 2)
            rot = np.array([[np.cos(ang), np.sin(ang)], [-np.sin(ang), np.cos(ang)]]) / size[:, None]
            A = np.concatenate([rot, -(rot @ centre)[:, None]], axis=1)
            patches.append(
                (
                    A,
                    Pattern.sample(
                        rng, 2, "mixed", ("stripes", "checks", "dots", "noise"), period=(0.005, 0.04)
                    ),
                )
            )
        elev, azim = rng.uniform(np.deg2rad(25), np.deg2rad(85)), rng.uniform(-np.pi, np.pi)
        direction = np.array([np.cos(elev) * np.cos(azim), np.cos(elev) * np.sin(azim), np.sin(elev)])
        warm = rng.uniform(-1, 1)
        tint = np.array([1.0 + 0.15 * warm, 1.0, 1.0 - 0.25 * warm])
        light = Light(
            direction,
            tint * rng.uniform(0.55, 1.1),
            rng.uniform(0.15, 0.45) * (2.0 - tint) / 1.0,
            shadow=float(rng.uniform(0.3, 0.7)),
            contact=float(rng.uniform(0.15, 0.4)),
        )
        effects = {
            "blur": float(rng.uniform(0.0, 1.3)),
            "motion": float(rng.uniform(3, 13)) if rng.random() < 0.3 else 0.0,
            "motion_angle": float(rng.uniform(0, 180)),
            "noise": float(rng.uniform(0.008, 0.045)),
            "wb": rng.uniform(0.85, 1.15, 3),
            "gamma": float(rng.uniform(0.8, 1.25)),
            "saturation": float(rng.uniform(0.6, 1.3)),
            "vignette": float(rng.uniform(0.0, 0.45)),
            "jpeg": int(rng.integers(18, 70)) if rng.random() < 0.8 else 0,
            "resample": float(rng.uniform(0.35, 0.75)) if rng.random() < 0.3 else 1.0,
        }
        hair = _pick(rng, np.array([[0.25, 0.17, 0.10], [0.08, 0.06, 0.05], [0.55, 0.40, 0.22]]), 0.03)
        hair = hair if rng.random() < 0.6 else None
    else:
        cloth = Pattern.sample(rng, 3, "mixed", ("plain", "plain", "plain", "stripes"), period=(0.02, 0.04))
        floor = Pattern.sample(
            rng, 2, "pastel", ("plain", "plain", "plain", "noise", "checks"), period=(0.15, 0.4)
        )
        wall = Pattern.sample(rng, 2, "pastel", ("plain",))
        bars, patches = np.zeros((0, 9)), []
        jitter = rng.normal(0, 0.25, 3)
        direction = headlight / np.linalg.norm(headlight) + jitter
        light = Light(
            direction / np.linalg.norm(direction),
            np.full(3, rng.uniform(0.6, 0.75)),
            np.full(3, rng.uniform(0.3, 0.4)),
        )
        effects = {"blur": 0.5}
        hair = None
    return Appearance(
        style,
        skin,
        clothed,
        cloth,
        hair,
        bool(rng.random() < 0.7),
        floor,
        wall,
        bars,
        patches,
        light,
        effects,
    )


def paint_floor(app: Appearance, xy: np.ndarray, box_of) -> np.ndarray:
    """Albedo (H, W, 3) of the blanket/floor at floor coordinates ``xy`` (H, W, 2) metres.

    ``box_of(points (K, 2)) -> (r0, r1, c0, c1)`` gives the image rectangle holding a floor region, so
    patches and bars are only evaluated where they can appear.
    """
    out = app.floor.colour(xy, folds=False)
    for A, pattern in app.patches:
        corners = np.linalg.solve(
            A[:, :2], (np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]]) - A[:, 2]).T
        ).T
        r0, r1, c0, c1 = box_of(corners)
        if r0 >= r1 or c0 >= c1:
            continue
        q = xy[r0:r1, c0:c1]
        local = np.stack([_dot(q, A[k, :2]) + np.float32(A[k, 2]) for k in range(2)], -1)
        inside = (np.abs(local) < 0.5).all(-1)
        if inside.any():
            out[r0:r1, c0:c1][inside] = pattern.colour(q[inside])
    for x0, y0, x1, y1, w, r, g, b, _ in app.bars:
        a, d = np.array([x0, y0]), np.array([x1 - x0, y1 - y0])
        ends = np.array([a, a + d])
        r0, r1, c0, c1 = box_of(
            np.concatenate([ends + w * np.array(s) for s in ((1, 1), (-1, 1), (1, -1), (-1, -1))])
        )
        if r0 >= r1 or c0 >= c1:
            continue
        q = xy[r0:r1, c0:c1] - a.astype(np.float32)
        t = np.clip(_dot(q, d / (d @ d)), 0.0, 1.0)
        ex, ey = q[..., 0] - t * np.float32(d[0]), q[..., 1] - t * np.float32(d[1])
        dist2 = (ex * ex + ey * ey) * np.float32(1.0 / (w * w))
        inside = dist2 < 1.0
        if inside.any():
            shading = 0.55 + 0.45 * np.sqrt(1.0 - dist2[inside])
            out[r0:r1, c0:c1][inside] = np.array([r, g, b], np.float32) * shading[:, None]
    if app.floor.folds > 0:  # smooth: evaluate at half resolution
        H, W = xy.shape[:2]
        folds = app.floor.fold_shading(np.ascontiguousarray(xy[::2, ::2]))
        out *= cv2.resize(folds, (W, H), interpolation=cv2.INTER_LINEAR)[..., None]
    return out


def shade(albedo: np.ndarray, ndl: np.ndarray, app: Appearance) -> np.ndarray:
    """Lambertian shading: albedo (..., 3) lit by ambient plus ``ndl`` (...) times the light colour."""
    return albedo * (
        app.light.ambient.astype(np.float32) + ndl[..., None] * app.light.colour.astype(np.float32)
    )


@functools.lru_cache(maxsize=8)
def _radius2(H: int, W: int) -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    return ((xx - W / 2) / (W / 2)) ** 2 + ((yy - H / 2) / (H / 2)) ** 2


def finish(image: np.ndarray, app: Appearance, rng: np.random.Generator, focal_scale: float) -> np.ndarray:
    """Camera effects on a float RGB image in [0, 1]; returns uint8 RGB.

    ``focal_scale`` (image width / 640) scales blur sizes so effects look alike at any resolution.
    """
    fx = app.effects
    img = image.astype(np.float32)
    H, W = img.shape[:2]
    if app.style == "real-like":
        gain = fx["wb"].astype(np.float32)
        if fx["vignette"] > 0:
            img *= (1.0 - np.float32(fx["vignette"] * 0.5) * _radius2(H, W))[..., None]
        grey = img.mean(axis=2, keepdims=True)
        img = (grey + (img - grey) * np.float32(fx["saturation"])) * gain
    if fx.get("motion", 0.0) > 0:
        n = max(3, int(round(fx["motion"] * focal_scale)) | 1)
        k = np.zeros((n, n), np.float32)
        k[n // 2] = 1.0
        rot = cv2.getRotationMatrix2D((n / 2 - 0.5, n / 2 - 0.5), fx["motion_angle"], 1.0)
        k = cv2.warpAffine(k, rot, (n, n))
        img = cv2.filter2D(img, -1, k / k.sum())
    sigma = fx.get("blur", 0.0) * focal_scale
    if sigma > 0.2:
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    out = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if app.style == "real-like":
        out = cv2.LUT(out, _gamma_lut(round(fx["gamma"], 3)))
        # Sensor noise, stronger in bright pixels; triangular from two uint8 draws (cheaper than Gaussian).
        noise = rng.integers(0, 256, out.shape, dtype=np.uint8).astype(np.int16)
        noise -= rng.integers(0, 256, out.shape, dtype=np.uint8)
        scale = _noise_lut(round(fx["noise"], 4))[out]
        out = np.clip(out + (noise * scale).astype(np.int16), 0, 255).astype(np.uint8)
        if fx["resample"] < 1.0:
            small = cv2.resize(
                out,
                (max(8, int(W * fx["resample"])), max(8, int(H * fx["resample"]))),
                interpolation=cv2.INTER_AREA,
            )
            out = cv2.resize(small, (W, H), interpolation=cv2.INTER_LINEAR)
    if fx.get("jpeg", 0):
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, fx["jpeg"]])
        out = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    return out


@functools.lru_cache(maxsize=64)
def _gamma_lut(gamma: float) -> np.ndarray:
    return np.clip(255.0 * (np.arange(256) / 255.0) ** gamma + 0.5, 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=64)
def _noise_lut(sigma: float) -> np.ndarray:
    """Noise scale per 8-bit level (signal-dependent, shot-noise like) for triangular noise in [-255, 255]."""
    return (sigma / 0.408 * np.sqrt(0.3 + np.arange(256) / 255.0)).astype(np.float32)
