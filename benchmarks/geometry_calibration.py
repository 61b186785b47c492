"""Calibrate the label-free objective on the demo setup: the numbers its defaults and weights rest on.

On real-like target crops of generated data, an oracle critic cache and a trained (warm-up) pose network:

    keypoints   how far the label-free keypoints lie from the decoded ones (argmax + DARK), per soft-argmax
                option (raw, peak-normalised, windowed), in input px, with the heatmaps' median peak
    occlusion   of the joints the generator marks occluded (depth test, v=1) and visible (v=2), the share each
                depth gate lets read depth: the discontinuity gate, the teacher's confidence, both
    body        the share of ground-truth joints off the critic's body mask, and their distance to it
    lambda_z    the cache manifest's metric units (oracle: mm) and the real-like images' own median

Each term's gradient scale on the head (the loss weights) is section (c) of ``benchmarks/geometry_signal.py``.

    python benchmarks/geometry_calibration.py --data demo_data/SyRIP \\
        --cache demo_data/critic_cache/oracle_96x96 --checkpoint runs/demo/warmup/checkpoints/best.ckpt \\
        [--pose-prior ... --normal-priors ...] --json out.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from geosapiens.data.critic_cache import CriticCache
from geosapiens.data.crop import canonical_affine
from geosapiens.data.datasets import PoseDataset
from geosapiens.data.formats.syrip import read_syrip
from geosapiens.data.oracle_critic import OracleCritic
from geosapiens.losses import functional as losses
from geosapiens.losses import objectives
from geosapiens.models.codec import UDPHeatmapCodec
from geosapiens.models.stage_checkpoint import pose_model_from_checkpoint

REAL = "annotations/200R/person_keypoints_train_infant.json"
SYNTH = "annotations/1000S/person_keypoints_train_infant.json"
OPTIONS = {
    "raw T=0.05": dict(temperature=0.05, normalize=False, window=None),
    "peak-normalised T=0.05": dict(temperature=0.05, normalize=True, window=None),
    "peak-normalised T=0.1": dict(temperature=0.1, normalize=True, window=None),
    "window 2, peak-normalised T=0.2": dict(temperature=0.2, normalize=True, window=2),
    "window 3, peak-normalised T=0.2": dict(temperature=0.2, normalize=True, window=3),
    "window 4, peak-normalised T=0.2": dict(temperature=0.2, normalize=True, window=4),
    "window 4, peak-normalised T=0.3": dict(temperature=0.3, normalize=True, window=4),
    "window 3, raw T=0.05": dict(temperature=0.05, normalize=False, window=3),
}


def pct(values: np.ndarray) -> dict[str, float]:
    return {"median": float(np.median(values)), "p90": float(np.quantile(values, 0.9)), "n": int(values.size)}


@torch.no_grad()
def real_like_heatmaps(model, records, input_size, batch: int = 64):
    """Canonical crops of the records -> heatmaps, crop keypoints, labelled and visible flags."""
    dataset = PoseDataset(records, input_size)
    out = {"heatmaps": [], "keypoints": [], "labelled": [], "visible": [], "paths": []}
    for start in range(0, len(dataset), batch):
        samples = [dataset[i] for i in range(start, min(len(dataset), start + batch))]
        out["heatmaps"].append(model(torch.stack([s["image"] for s in samples])))
        out["keypoints"].append(torch.stack([s["keypoints"] for s in samples]))
        out["labelled"].append(torch.stack([s["weights"] for s in samples]) > 0)
        out["visible"].append(torch.stack([s["visible"] for s in samples]))
        out["paths"] += [s["image_path"] for s in samples]
    return {k: v if k == "paths" else torch.cat(v) for k, v in out.items()}


def keypoint_report(heatmaps: torch.Tensor, codec: UDPHeatmapCodec) -> dict:
    decoded, peaks = codec.decode(heatmaps)
    report = {"median_peak": float(peaks.median())}
    B, K, h, w = heatmaps.shape
    index = heatmaps.reshape(B, K, -1).argmax(-1)
    integer = codec.to_input(torch.stack([index % w, index // w], dim=-1).float())
    report["integer argmax (reference)"] = pct((integer - decoded).norm(dim=-1).flatten().numpy())
    for name, opts in OPTIONS.items():
        options = objectives.ObjectiveOptions().override(**opts)
        found = objectives.label_free_keypoints(heatmaps, codec, options)
        report[name] = pct((found - decoded).norm(dim=-1).flatten().numpy())
    # gradient scale: d(sum of x) / d(heatmaps) on unit-peak targets, relative to the raw soft-argmax's
    targets, _ = codec.encode(decoded[:64], torch.ones(decoded[:64].shape[:2]))
    norms = {}
    for name, opts in OPTIONS.items():
        logits = targets.clone().requires_grad_(True)
        options = objectives.ObjectiveOptions().override(**opts)
        objectives.label_free_keypoints(logits, codec, options)[..., 0].sum().backward()
        norms[name] = float(logits.grad.norm())
    report["gradient_norm_vs_raw_on_unit_targets"] = {k: v / norms["raw T=0.05"] for k, v in norms.items()}
    return report


def occlusion_report(data: dict, maps, confidence: torch.Tensor, codec: UDPHeatmapCodec, edge: float) -> dict:
    h, w = codec.input_size
    uv = data["keypoints"] / torch.tensor([w - 1.0, h - 1.0])
    inside = ((uv >= 0) & (uv <= 1)).all(-1)
    depth = maps.depth.float()
    edge_ok = losses.sample_maps(losses._depth_gradient_magnitude(depth), uv)[..., 0] <= edge
    on_body = losses.sample_maps(maps.valid.float(), uv)[..., 0] >= 0.5
    distance = losses.sample_maps(maps.body_distance.float(), uv)[..., 0]
    known = data["labelled"] & inside
    occluded, visible = known & ~data["visible"], known & data["visible"]
    report = {
        "occluded_share": float(occluded.sum() / known.sum()),
        "pairs_with_an_occluded_joint": float(
            np.mean(
                [
                    bool((~data["visible"][b, [li, lj, ri, rj]]).any())
                    for b in range(len(uv))
                    for (li, lj), (ri, rj) in losses.SYMMETRIC_BONES
                    if known[b, [li, lj, ri, rj]].all()
                ]
            )
        ),
        "ground_truth_off_body_share": float((~on_body & known).sum() / known.sum()),
        "ground_truth_body_distance_px": pct((distance[known & ~on_body] * (max(h, w) - 1)).numpy()),
    }
    gates = {"edge gate": edge_ok & on_body}
    for t in (0.05, 0.1, 0.15, 0.2, 0.3):
        gates[f"teacher >= {t}"] = (confidence >= t) & on_body
        gates[f"edge gate + teacher >= {t}"] = edge_ok & (confidence >= t) & on_body
    for name, gate in gates.items():
        report[name] = {
            "occluded_passed": float((gate & occluded).sum() / occluded.sum().clamp_min(1)),
            "visible_passed": float((gate & visible).sum() / visible.sum().clamp_min(1)),
        }
    return report


def lambda_z_report(cache: CriticCache, records, input_size) -> dict:
    oracle = OracleCritic()
    affines = np.stack([canonical_affine(r.bbox, input_size, cache.padding) for r in records])
    _, units = oracle.maps_and_units(records, torch.from_numpy(affines), input_size)
    ok = np.isfinite(units).all(1)
    lam = (units[ok, 0] / units[ok, 1]) ** 2
    return {
        "manifest": cache.manifest.get("metric"),
        "real_like": {
            "depth_unit_mm": float(np.median(units[ok, 0])),
            "image_unit_mm": float(np.median(units[ok, 1])),
            "lambda_z_median": float(np.median(lam)),
            "lambda_z_p10_p90": [float(np.quantile(lam, 0.1)), float(np.quantile(lam, 0.9))],
            "images": int(ok.sum()),
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, type=Path, help="generated SyRIP-style root (demo preset)")
    p.add_argument("--cache", required=True, type=Path, help="oracle critic cache of it")
    p.add_argument("--checkpoint", required=True, type=Path, help="warm-up checkpoint (SupervisedPose)")
    p.add_argument("--val-file", default="annotations/val_real/person_keypoints_val_infant.json")
    p.add_argument("--pose-prior", default=None)
    p.add_argument("--normal-priors", default=None)
    p.add_argument("--manifold-margin", type=float, default=0.11)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--batches", type=int, default=4, help="adaptation batches averaged for the gradients")
    p.add_argument("--images", type=int, default=600, help="real-like crops for the keypoint/occlusion rows")
    p.add_argument("--objective", type=json.loads, default=None, help="ObjectiveOptions overrides (JSON)")
    p.add_argument("--skip", nargs="*", default=(), choices=("keypoints", "occlusion", "lambda_z"))
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.manual_seed(0)

    model, input_size, _ = pose_model_from_checkpoint(args.checkpoint, weights="model")
    h, w = input_size
    codec = UDPHeatmapCodec(input_size, (h // 4, w // 4))
    cache = CriticCache(args.cache, input_size=input_size)
    records = read_syrip(args.data, REAL, domain="real")[: args.images]
    data = real_like_heatmaps(model, records, input_size)
    maps = cache.load(data["paths"])
    confidence = data["heatmaps"].amax(dim=(-2, -1))
    sections = {
        "keypoints": lambda: keypoint_report(data["heatmaps"], codec),
        "occlusion": lambda: occlusion_report(
            data, maps, confidence, codec, objectives.ObjectiveOptions().edge_threshold
        ),
        "lambda_z": lambda: lambda_z_report(cache, records, input_size),
    }
    report = {"checkpoint": str(args.checkpoint), "objective": args.objective}
    report |= {name: run() for name, run in sections.items() if name not in args.skip}
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
