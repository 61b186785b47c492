"""UDP heatmap codec: the one place where keypoints become heatmaps and heatmaps become keypoints.

Like mmpose's ``UDPHeatmap`` codec, but batched torch: targets, argmax + DARK decoding, the differentiable
soft-argmax and the flip test all share one coordinate convention, so they cannot disagree.

Convention (unbiased data processing, UDP): keypoints are in input (crop) pixels with pixel centres at
integer coordinates; heatmap pixel ``j`` sits at input coordinate ``j * s`` with
``s = (input - 1) / (heatmap - 1)`` per axis, so heatmap pixel 0 and the last heatmap pixel land exactly on
the first and last input pixel centres. A horizontal flip ``x -> (W_in - 1) - x`` of the input is then exactly
``x_hm -> (w - 1) - x_hm`` on the heatmap: no half-pixel shift is needed in the flip test.

Note:
    B: batch size, K: keypoints, input size ``(H, W)``, heatmap size ``(h, w)``; points are ``(x, y)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

__all__ = [
    "HEATMAP_STRIDE",
    "UDPHeatmapCodec",
    "flip_heatmaps",
    "flip_test",
    "resize_aligned",
]

HEATMAP_STRIDE = 4  # project convention: a pose network's heatmaps are (B, K, H/4, W/4)


def resize_aligned(maps: torch.Tensor, size_hw: Sequence[int]) -> torch.Tensor:
    """Resample (B, C, H, W) crops or heatmaps to ``size_hw`` keeping the UDP pixel-centre convention.

    Under UDP the first and last pixel centres span the crop, so a crop resized to W' has ``x' = x (W' - 1) /
    (W - 1)``: exactly bilinear ``align_corners=True``. A crop at one size and its heatmaps resized this way
    agree with a crop taken at the other size directly (the student/teacher resolutions of distillation).
    Returns ``maps`` itself when it already has that size.
    """
    size = (int(size_hw[0]), int(size_hw[1]))
    if tuple(maps.shape[-2:]) == size:
        return maps
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=True)


def flip_heatmaps(heatmaps: torch.Tensor, flip_indices: Sequence[int]) -> torch.Tensor:
    """Heatmaps of a horizontally flipped input, brought back to the unflipped frame.

    Flips W and permutes channels (left <-> right). Under UDP the flipped heatmap column ``(w - 1) - x`` is
    exactly the flipped input column ``(W_in - 1) - x * s``, so no shift is applied (mmpose
    ``shift_heatmap=False``, as Sapiens' test config uses).

    Args:
        heatmaps: (B, K, h, w).
        flip_indices: K ints, channel ``i`` of the flipped model output is joint ``flip_indices[i]``.

    Returns:
        (B, K, h, w).
    """
    index = torch.as_tensor(list(flip_indices), device=heatmaps.device, dtype=torch.long)
    return heatmaps.flip(-1).index_select(1, index)


def flip_test(
    heatmaps: torch.Tensor, heatmaps_of_flipped_input: torch.Tensor, flip_indices: Sequence[int]
) -> torch.Tensor:
    """(B, K, h, w) flip-test average ``0.5 * (model(x) + unflip(model(flip_W(x))))``, to decode after.

    The one flip average: evaluation (``flip_test``), distillation's teacher and deployment all call it.
    """
    return 0.5 * (heatmaps + flip_heatmaps(heatmaps_of_flipped_input, flip_indices))


def _gaussian_kernel1d(size: int, sigma: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


class UDPHeatmapCodec:
    """Gaussian heatmap targets and their decoding under UDP.

    Args:
        input_size_hw: model input (crop) size ``(H, W)``.
        heatmap_size_hw: heatmap size ``(h, w)``, normally ``(H / 4, W / 4)``.
        sigma: Gaussian std in heatmap pixels (2 for 256x192 inputs; Sapiens uses 6 at 1024x768).
        blur_kernel_size: odd Gaussian kernel for DARK modulation (11, as Sapiens/mmpose DARK-UDP; its std is
            OpenCV's default for that size, ``0.3 * ((k - 1) / 2 - 1) + 0.8`` = 2.0 for 11).
        long_step: what :meth:`decode` does with a DARK step longer than 1 heatmap px on an axis: ``"apply"``
            it (default, as mmpose), ``"clamp"`` it to 1 px per axis, or ``"drop"`` it (keep the argmax).
            ``benchmarks/dark_refinement.py``: on sigma-2 Gaussians with white noise 0.1, mean / p95 error to
            the true peak apply 0.101 / 0.198, clamp 0.111 / 0.221, drop 0.209 / 1.211 heatmap px (all
            0.010 / 0.019 at noise 0.01); on a small network's predictions of the generated real-like test
            crops (64 px, 102 joints, 40 steps of the demo oracle config) apply 18.7, clamp 19.0, drop 20.1
            input px mean.

    Note:
        Targets are full-frame Gaussians ``exp(-d^2 / (2 sigma^2))`` centred at the exact sub-pixel heatmap
        position (no rounding, no 3-sigma truncation), so DARK's quadratic model of the log-heatmap holds.
    """

    def __init__(
        self,
        input_size_hw: Sequence[int],
        heatmap_size_hw: Sequence[int],
        sigma: float = 2.0,
        blur_kernel_size: int = 11,
        long_step: Literal["apply", "clamp", "drop"] = "apply",
    ) -> None:
        if len(input_size_hw) != 2 or len(heatmap_size_hw) != 2:
            raise ValueError(
                f"{type(self).__name__}: sizes are (H, W), got {input_size_hw}, {heatmap_size_hw}"
            )
        if min(heatmap_size_hw) < 2 or min(input_size_hw) < 2:
            raise ValueError(
                f"{type(self).__name__}: sizes must be at least 2 px, got {input_size_hw}, {heatmap_size_hw}"
            )
        if sigma <= 0:
            raise ValueError(f"{type(self).__name__}: sigma must be > 0, got {sigma}")
        if blur_kernel_size < 3 or blur_kernel_size % 2 == 0:
            raise ValueError(
                f"{type(self).__name__}: blur_kernel_size must be odd and >= 3, got {blur_kernel_size}"
            )
        if long_step not in ("drop", "apply", "clamp"):
            raise ValueError(f"{type(self).__name__}: long_step is drop, apply or clamp, not {long_step!r}")
        self.long_step = long_step
        self.input_size = (int(input_size_hw[0]), int(input_size_hw[1]))
        self.heatmap_size = (int(heatmap_size_hw[0]), int(heatmap_size_hw[1]))
        self.sigma = float(sigma)
        self.blur_kernel_size = int(blur_kernel_size)
        self.blur_sigma = 0.3 * ((blur_kernel_size - 1) * 0.5 - 1) + 0.8
        (H, W), (h, w) = self.input_size, self.heatmap_size
        # input px per heatmap px, (x, y)
        self.scale = ((W - 1) / (w - 1), (H - 1) / (h - 1))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(input_size_hw={self.input_size}, heatmap_size_hw={self.heatmap_size}, "
            f"sigma={self.sigma})"
        )

    def _scale(self, like: torch.Tensor) -> torch.Tensor:
        return torch.tensor(self.scale, device=like.device, dtype=like.dtype)

    def to_heatmap(self, keypoints: torch.Tensor) -> torch.Tensor:
        """(..., 2) input px -> heatmap px."""
        return keypoints / self._scale(keypoints)

    def to_input(self, keypoints_hm: torch.Tensor) -> torch.Tensor:
        """(..., 2) heatmap px -> input px."""
        return keypoints_hm * self._scale(keypoints_hm)

    def encode(self, keypoints: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gaussian targets.

        Args:
            keypoints: (B, K, 2) input px.
            weights: (B, K) labelled weight (0 = unlabelled).

        Returns:
            heatmaps: (B, K, h, w) float, all zero where the target weight is 0.
            target_weights: (B, K) ``weights`` with 0 for joints whose 3-sigma window misses the heatmap
                entirely (mmpose's rule: a joint just outside the crop still gets its partial Gaussian).
        """
        h, w = self.heatmap_size
        dtype = keypoints.dtype if keypoints.is_floating_point() else torch.float32
        mu = self.to_heatmap(keypoints.to(dtype))  # (B, K, 2)
        radius = 3 * self.sigma
        inside = (
            (mu[..., 0] + radius >= 0)
            & (mu[..., 0] - radius <= w - 1)
            & (mu[..., 1] + radius >= 0)
            & (mu[..., 1] - radius <= h - 1)
            & torch.isfinite(mu).all(-1)
        )
        target_weights = torch.where(
            inside, weights.to(dtype), torch.zeros((), dtype=dtype, device=mu.device)
        )
        xs = torch.arange(w, device=mu.device, dtype=dtype)
        ys = torch.arange(h, device=mu.device, dtype=dtype)
        mu = torch.nan_to_num(mu)
        gx = torch.exp(-((xs - mu[..., 0:1]) ** 2) / (2 * self.sigma**2))  # (B, K, w)
        gy = torch.exp(-((ys - mu[..., 1:2]) ** 2) / (2 * self.sigma**2))  # (B, K, h)
        heatmaps = gy[..., :, None] * gx[..., None, :]
        heatmaps = heatmaps * (target_weights > 0)[..., None, None].to(dtype)
        return heatmaps, target_weights

    def _blur(self, heatmaps: torch.Tensor) -> torch.Tensor:
        """DARK modulation: Gaussian blur with zero padding, then rescale each channel to its original max."""
        B, K, h, w = heatmaps.shape
        k = _gaussian_kernel1d(self.blur_kernel_size, self.blur_sigma, heatmaps.device, heatmaps.dtype)
        pad = self.blur_kernel_size // 2
        x = heatmaps.reshape(B * K, 1, h, w)
        x = F.conv2d(F.pad(x, (pad, pad, 0, 0)), k.view(1, 1, 1, -1))
        x = F.conv2d(F.pad(x, (0, 0, pad, pad)), k.view(1, 1, -1, 1))
        x = x.reshape(B, K, h, w)
        origin_max = heatmaps.amax(dim=(2, 3), keepdim=True)
        blurred_max = x.amax(dim=(2, 3), keepdim=True)
        return x * origin_max / blurred_max.clamp_min(1e-12)

    @torch.no_grad()
    def decode(self, heatmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Argmax + DARK-UDP refinement.

        The heatmap is blurred (kernel 11), clipped to [1e-3, 50] and logged; one Newton step with the
        finite-difference gradient and Hessian at the argmax moves to the sub-pixel maximum of the
        log-Gaussian.
        A step that is not finite (flat heatmaps) keeps the argmax; one longer than 1 heatmap px is applied
        (``long_step``: on noisy heatmaps it lands nearer the true peak than the argmax). The blur is
        zero-padded like mmpose's, which biases joints within about 1.5 sigma of the heatmap border
        (noise-free sigma=2 targets: < 0.01 heatmap px from 2 sigma inwards, up to ~0.2 px at 1 sigma, ~1 px
        on the border row).

        Args:
            heatmaps: (B, K, h, w).

        Returns:
            keypoints: (B, K, 2) input px.
            scores: (B, K) raw heatmap maximum (before blurring); <= 0 means no detection.
        """
        B, K, h, w = heatmaps.shape
        heatmaps = heatmaps.float()
        flat = heatmaps.reshape(B, K, -1)
        scores, index = flat.max(dim=-1)
        ix, iy = index % w, torch.div(index, w, rounding_mode="floor")

        logh = self._blur(heatmaps).clamp(1e-3, 50.0).log()
        logh = F.pad(logh.reshape(B * K, 1, h, w), (1, 1, 1, 1), mode="replicate").reshape(B, K, -1)
        wp = w + 2

        def at(dx: int, dy: int) -> torch.Tensor:
            return logh.gather(-1, ((iy + 1 + dy) * wp + (ix + 1 + dx))[..., None])[..., 0]

        c = at(0, 0)
        xp, xm, yp, ym = at(1, 0), at(-1, 0), at(0, 1), at(0, -1)
        dx = 0.5 * (xp - xm)
        dy = 0.5 * (yp - ym)
        dxx = xp - 2 * c + xm
        dyy = yp - 2 * c + ym
        dxy = 0.25 * (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1))
        det = dxx * dyy - dxy * dxy
        det = torch.where(det.abs() < 1e-12, torch.full_like(det, float("nan")), det)
        # step = -H^{-1} g with H^{-1} = [[dyy, -dxy], [-dxy, dxx]] / det
        step_x = -(dyy * dx - dxy * dy) / det
        step_y = -(dxx * dy - dxy * dx) / det
        step = torch.stack([step_x, step_y], dim=-1)
        ok = torch.isfinite(step).all(-1)
        if self.long_step == "drop":
            ok &= (step.abs() <= 1.0).all(-1)
        elif self.long_step == "clamp":
            step = step.clamp(-1.0, 1.0)
        step = torch.where(ok[..., None], step, torch.zeros_like(step))
        keypoints_hm = torch.stack([ix, iy], dim=-1).float() + step
        return self.to_input(keypoints_hm), scores

    def soft_argmax(
        self,
        heatmaps: torch.Tensor,
        temperature: float = 0.05,
        *,
        normalize: bool = False,
        window: int | None = None,
    ) -> torch.Tensor:
        """Differentiable keypoints: the expected position under the spatial softmax of ``heatmaps / T``.

        With unit-peak Gaussian heatmaps, ``temperature`` 0.05 makes the background's pull towards the centre
        negligible (the peak outweighs a 64x48 background by ~1e5). A trained network's heatmaps on a shifted
        domain peak far lower (real-like demo crops: median 0.19) over a small positive background, and the
        hundreds of background pixels then outweigh the peak and drag the estimate to the crop centre. Two
        options make the estimate see the prediction:

        - ``normalize``: divide each channel by its (detached) peak, so ``T`` is a fraction of the peak;
        - ``window``: only the ``(2 r + 1)^2`` heatmap pixels around the argmax take part, so the far
          background cannot pull at all; the estimate is the local centroid, and the gradient reaches those
          pixels only (the argmax itself is not differentiable; it moves when a step changes the peak).

        Args:
            heatmaps: (B, K, h, w).
            temperature: softmax temperature T (> 0), in heatmap units (a fraction of the peak when
                ``normalize``).
            normalize: divide each channel by its peak (clamped to >= 1e-3, detached) before the softmax.
            window: radius r in heatmap pixels of the window around each channel's argmax; None = the whole
                heatmap.

        Returns:
            (B, K, 2) input px.
        """
        if temperature <= 0:
            raise ValueError(f"{type(self).__name__}.soft_argmax: temperature must be > 0, got {temperature}")
        if window is not None and window < 0:
            raise ValueError(f"{type(self).__name__}.soft_argmax: window must be >= 0, got {window}")
        B, K, h, w = heatmaps.shape
        logits = heatmaps.reshape(B, K, -1).float()
        if normalize:
            logits = logits / logits.detach().amax(-1, keepdim=True).clamp_min(1e-3)
        logits = logits / temperature
        xs = torch.arange(w, device=heatmaps.device, dtype=logits.dtype)
        ys = torch.arange(h, device=heatmaps.device, dtype=logits.dtype)
        if window is not None:
            index = logits.detach().argmax(-1, keepdim=True)
            ix, iy = index % w, torch.div(index, w, rounding_mode="floor")
            near = ((xs.repeat(h) - ix).abs() <= window) & ((ys.repeat_interleave(w) - iy).abs() <= window)
            logits = logits.masked_fill(~near, float("-inf"))
        prob = torch.softmax(logits, dim=-1).reshape(B, K, h, w)
        x = (prob.sum(dim=2) * xs).sum(-1)
        y = (prob.sum(dim=3) * ys).sum(-1)
        return self.to_input(torch.stack([x, y], dim=-1))
