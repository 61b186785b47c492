"""Per-frame quality flags: which predicted frames a clinician should not trust.

Two independent signals, each reported as a value and a flag so that a reviewer can sort or threshold:

- ``mean_score`` / ``low_confidence``: the mean heatmap peak over the joints (targets peak at 1, so it reads
  as a confidence); low when the infant is occluded, out of the box or blurred.
- ``pose_error`` / ``implausible``: the infant pose-manifold prior's reconstruction error of the normalised
  pose (the quantity ``L_manifold`` trains on); high for anatomically implausible configurations such as
  swapped limbs or a collapsed skeleton, even when every joint looks confident.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from geosapiens.models.pose_vae import PoseVAE, normalize_pose

__all__ = ["QualityCheck"]


@dataclass
class QualityCheck:
    """Flag frames.

    Args:
        min_mean_score: frames whose mean keypoint score is below this are ``low_confidence``.
        pose_prior: the pose VAE (``PoseVAE.load``); None leaves ``pose_error`` NaN and never flags.
        max_pose_error: frames whose prior reconstruction error exceeds this are ``implausible``. With the
            demo's prior, 0.3 flags 4% of the real-like test split's ground-truth poses (0% of the synthetic
            training poses) and 40% of those poses with a wrist and an ankle swapped, 69% with the joints
            shuffled; calibrate it on held-out ground truth for another prior (e.g. its 95th percentile).
    """

    min_mean_score: float = 0.3
    pose_prior: PoseVAE | None = None
    max_pose_error: float = 0.3

    @torch.no_grad()
    def __call__(self, keypoints: np.ndarray, scores: np.ndarray) -> dict[str, np.ndarray]:
        """Flags of N frames from (N, K, 2) keypoints (any pixel frame) and (N, K) scores.

        Returns ``mean_score``, ``pose_error`` (float64) and ``low_confidence``, ``implausible`` (bool), (N,).
        """
        keypoints, scores = np.asarray(keypoints, np.float64), np.asarray(scores, np.float64)
        mean_score = scores.mean(-1) if scores.size else np.zeros(len(scores))
        if self.pose_prior is not None and len(keypoints):
            kp = torch.as_tensor(keypoints, dtype=torch.float32)
            mask = torch.ones(kp.shape[:2], dtype=torch.bool)
            pose_error = self.pose_prior.reconstruction_error(normalize_pose(kp, mask), mask).double().numpy()
        else:
            pose_error = np.full(len(keypoints), np.nan)
        return {
            "mean_score": mean_score,
            "pose_error": pose_error,
            "low_confidence": mean_score < self.min_mean_score,
            "implausible": np.nan_to_num(pose_error, nan=0.0) > self.max_pose_error,
        }
