"""Does a label-free objective point to the true pose? Judge it before training with it.

For every label-free objective of Geo-Sapiens (each geometric term, the manifold prior, and the configured
geometric objective: the weighted sum a stage config trains with), on labelled target images whose labels
only score the test:

(a) **signal**: Spearman correlation of the objective with keypoint error over realistic perturbations of the
    ground truth (iid noise, a left/right limb swap, a joint pushed off the body, a joint slid along its limb)
    and over a trained network's own predictions; a useful objective rises with error (Spearman > 0);
(b) **descent**: Adam on the keypoint coordinates on the objective alone, from the network's predictions and
    from 5% / 10% noise: mean keypoint error before and after (negative relative change = toward the truth);
(c) **gradient scale** (with ``--network`` and ``--config``): each term's gradient norm on the network's head,
    relative to ``L_sup`` and ``L_cons``, on one real adaptation batch of the stage.

Everything happens in the canonical crop frame of each image, where critic caches store their maps; errors
are in % of the box's longer side. Maps can be degraded (``--degrade blur=8,normals=15,nomask``, blur in crop
pixels: :mod:`geosapiens.data.degraded_critic`, ``geosapiens critics degrade`` writes a degraded cache to
train with) to see how the signal falls as the critic errs. ``--quick`` generates tiny-preset data with the
oracle critic, a tiny geometry teacher and the normal priors in a temporary folder, and runs everything on it
(a test runs it).

    python benchmarks/geometry_signal.py --data demo_data/SyRIP --cache demo_data/critic_cache/oracle_96x96 \
        --config configs/demo/uda.yaml \
        --network runs/demo/warmup/checkpoints/best.ckpt \
        --normal-priors runs/demo/priors/normal_priors.json \
        --pose-prior runs/demo/pose_vae/checkpoints/last.ckpt \
        --geometry-teacher runs/demo/geometry_teacher/checkpoints/best.ckpt --json geometry_signal.json

``--json PATH`` writes ``{"configured": NAME, "objectives": {NAME: {"spearman": S, "descent_rel_change": C,
...}}}``: ``configured`` names the configured geometric objective; ``spearman`` is over all perturbations and
predictions pooled; ``descent_rel_change`` is the relative change of mean keypoint error under descent from
the network's predictions (from 5% noise without a network).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from geosapiens.affine import apply_affine
from geosapiens.data.critic_cache import CriticCache
from geosapiens.data.crop import canonical_affine, warp_image
from geosapiens.data.degraded_critic import CriticDegradation
from geosapiens.data.formats.syrip import read_syrip
from geosapiens.data.images import read_image
from geosapiens.losses import objectives
from geosapiens.models.codec import HEATMAP_STRIDE, UDPHeatmapCodec
from geosapiens.models.critics import GeometryMaps
from geosapiens.models.preprocess import to_tensor

GEOMETRIC = ("geo_body", "geo_depth", "geo_norm", *objectives.TEACHER_TERMS)  # what "configured" sums
LIMB_CHAINS = ((5, 7, 9), (6, 8, 10), (11, 13, 15), (12, 14, 16))  # shoulder-elbow-wrist, hip-knee-ankle
PARENT = {7: 5, 9: 7, 8: 6, 10: 8, 13: 11, 15: 13, 14: 12, 16: 14, 5: 11, 6: 12, 11: 5, 12: 6}


@dataclass
class Targets:
    """Canonical crops of the evaluation images and everything the objectives read."""

    images: torch.Tensor  # (N, 3, H, W) RGB crops, normalised
    keypoints: torch.Tensor  # (N, K, 2) ground truth, crop px
    labelled: torch.Tensor  # (N, K) bool
    box: torch.Tensor  # (N,) the box's longer side in crop px
    maps: GeometryMaps  # canonical frame, crop size
    paths: list[str]


def load_targets(root: Path, annotation: str, cache: CriticCache, count: int, padding: float) -> Targets:
    records = read_syrip(root, annotation)
    records = records[:count] if count > 0 else records
    size = cache.input_size
    crops, kps, lab, box, paths = [], [], [], [], []
    for r in records:
        affine = canonical_affine(r.bbox, size, padding)
        crops.append(to_tensor(warp_image(read_image(r.image_path, r.image_id), affine, size)))
        kps.append(apply_affine(np.asarray(r.keypoints, np.float64), affine))
        lab.append(np.asarray(r.labelled, bool))
        box.append(max(r.bbox[2], r.bbox[3]) * abs(affine[0, 0]))  # image px -> crop px (isotropic scale)
        paths.append(str(r.image_path))
    maps = cache.load(paths)  # canonical frame at the cache stride: the objective reads any resolution
    maps = GeometryMaps(maps.depth.float(), maps.normals.float(), maps.valid, maps.body_distance.float())
    return Targets(
        torch.stack(crops),
        torch.tensor(np.stack(kps), dtype=torch.float32),
        torch.tensor(np.stack(lab)),
        torch.tensor(box, dtype=torch.float32),
        maps,
        paths,
    )


# -- objectives ------------------------------------------------------------------------------------------


Objective = Callable[[torch.Tensor, slice], torch.Tensor]


def build_objectives(
    t: Targets,
    args: argparse.Namespace,
    weights: dict[str, float],
    options: objectives.ObjectiveOptions,
    cache: CriticCache,
) -> dict:
    """name -> f(keypoints (n, K, 2) crop px, rows) -> () objective of those rows of the targets.

    Every term is the stage's own (:func:`~geosapiens.losses.objectives.label_free_objective`), scoring
    the given keypoints (the heatmap a term reads is their rendered target Gaussian), with the stage config's
    options.
    """
    h, w = t.images.shape[-2:]
    codec = UDPHeatmapCodec((h, w), (h // HEATMAP_STRIDE, w // HEATMAP_STRIDE))
    if args.geo_pose_threshold is not None:
        options = options.override(geo_pose_threshold=args.geo_pose_threshold)
    normal_prior = vae = None
    extras: dict[str, torch.Tensor] = {}
    if args.normal_priors:
        from geosapiens.models.normal_prior import load_normal_priors

        normal_prior = tuple(x.float() for x in load_normal_priors(args.normal_priors).tensors())
    if args.pose_prior:
        from geosapiens.models.pose_vae import PoseVAE

        vae = PoseVAE.load(args.pose_prior)
    if args.geometry_teacher:
        from geosapiens.models.stage_checkpoint import load_geometry_teacher

        net = load_geometry_teacher(args.geometry_teacher, codec.input_size)
        parts = [
            objectives.geometry_pseudo_labels(
                *objectives.geometry_teacher_keypoints(net, t.maps.rows(slice(i, i + 64)), codec, options),
                None,
                codec,
                options,
            )
            for i in range(0, len(t.paths), 64)
        ]
        extras = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        decoded = extras["geo_keypoints"]
        pck = ((decoded - t.keypoints).norm(dim=-1) <= 0.1 * t.box[:, None])[t.labelled].float().mean()
        kept = (extras["geo_keep"] & t.labelled).sum() / t.labelled.sum()
        print(
            f"geometry teacher on these maps: mean error {float(pose_error(decoded, t).mean()):.2f}% of the "
            f"box, PCK@0.1 {100 * float(pck):.1f}, pseudo-labels {100 * float(kept):.0f}% of the joints"
        )
    available = {"geo_body", "geo_depth"} | ({"geo_norm"} if normal_prior else set())
    available |= {"manifold"} if vae is not None else set()
    available |= set(objectives.TEACHER_TERMS) if extras else set()

    def term(names: dict[str, float]) -> Objective:
        def f(kp: torch.Tensor, rows: slice) -> torch.Tensor:
            rendered, _ = codec.encode(kp, torch.ones(kp.shape[:2]))
            inputs = objectives.prepare_inputs(
                rendered,
                codec,
                maps=t.maps.rows(rows),
                lambda_z=cache.lambda_z,
                normal_prior=normal_prior,
                vae=vae,
                extras={k: v[rows] for k, v in extras.items()},
                options=options,
                keypoints=kp,
            )
            return objectives.weighted_sum(objectives.label_free_objective(inputs, names), names)

        return f

    out: dict[str, Objective] = {name: term({name: 1.0}) for name in sorted(available)}
    configured = {k: v for k, v in weights.items() if k in available and k in GEOMETRIC and v > 0}
    if configured:
        out["configured"] = term(configured)
    return out


# -- perturbations, error --------------------------------------------------------------------------------


def pose_error(kp: torch.Tensor, t: Targets, rows: slice = slice(None)) -> torch.Tensor:
    """(n,) mean distance over labelled joints, in % of the box's longer side."""
    d = (kp - t.keypoints[rows]).norm(dim=-1) / t.box[rows, None] * 100
    lab = t.labelled[rows].float()
    return (d * lab).sum(-1) / lab.sum(-1).clamp_min(1)


def perturb(t: Targets, family: str, level: float, rng: np.random.Generator) -> torch.Tensor:
    """Ground truth moved by one kind of realistic error; ``level`` in [0, 1]."""
    kp = t.keypoints.clone()
    n = kp.shape[0]
    box = t.box[:, None]
    if family == "iid":
        return kp + torch.from_numpy(rng.normal(0, 1, kp.shape)).float() * (0.25 * level) * box[..., None]
    for i in range(n):
        if family == "swap":
            a, b = (
                (LIMB_CHAINS[0], LIMB_CHAINS[1]) if rng.random() < 0.5 else (LIMB_CHAINS[2], LIMB_CHAINS[3])
            )
            keep = int(rng.integers(1, 3))  # swap the last 1 or 2 joints of the chain (wrist / elbow+wrist)
            ia, ib = list(a[-keep:]), list(b[-keep:])
            kp[i, ia], kp[i, ib] = t.keypoints[i, ib], t.keypoints[i, ia]
            kp[i] += torch.from_numpy(rng.normal(0, 0.02 * level, (17, 2))).float() * box[i]
        elif family == "off_body":
            j = int(rng.choice(np.flatnonzero(t.labelled[i].numpy())))
            centre = t.keypoints[i, [5, 6, 11, 12]].mean(0)
            direction = kp[i, j] - centre
            direction = direction / direction.norm().clamp_min(1e-6)
            kp[i, j] += direction * (0.3 * level) * box[i]
        elif family == "slide":
            j = int(rng.choice([k for k in PARENT if t.labelled[i, k]]))
            p = PARENT[j]
            kp[i, j] += (t.keypoints[i, j] - t.keypoints[i, p]) * float(rng.choice([-1, 1]) * 0.6 * level)
        else:
            raise ValueError(family)
    return kp


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import spearmanr

    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.ptp(x[ok]) == 0:
        return float("nan")
    return float(spearmanr(x[ok], y[ok]).statistic)


def per_pose(objective: Objective, kp: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return np.array([float(objective(kp[i : i + 1], slice(i, i + 1))) for i in range(kp.shape[0])])


def descend(objective: Objective, start: torch.Tensor, lr: float, steps: int) -> torch.Tensor:
    """Adam on the coordinates (crop px) of every image at once, on the batch objective.

    Each image's coordinates are their own parameters and Adam normalises each coordinate's step, so the
    batch mean moves every image as its own objective would (up to how its terms are gated).
    """
    kp = start.clone().requires_grad_(True)
    opt = torch.optim.Adam([kp], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = objective(kp, slice(None))
        if not loss.requires_grad:
            break
        loss.backward()
        opt.step()
    return kp.detach()


def network_predictions(path: str, t: Targets) -> torch.Tensor:
    from geosapiens.models.stage_checkpoint import pose_model_from_checkpoint

    net, size, _ = pose_model_from_checkpoint(path)
    if tuple(size) != tuple(t.images.shape[-2:]):
        raise SystemExit(f"{path}: trained on {size} crops, the cache holds {tuple(t.images.shape[-2:])}")
    codec = UDPHeatmapCodec(size, (size[0] // HEATMAP_STRIDE, size[1] // HEATMAP_STRIDE))
    with torch.no_grad():
        heatmaps = torch.cat([net(x) for x in t.images.split(64)])
    return codec.decode(heatmaps)[0].float()


# -- the measurement -------------------------------------------------------------------------------------


def stage_from_configs(args: argparse.Namespace, work: Path):
    """The stage and DataModule the stacked ``--config`` files describe, exactly as ``geosapiens fit`` builds
    them (later files win; a stacked ``loss_terms`` replaces the whole mapping), with this run's files."""
    from geosapiens.cli.main import trainer_cli

    overrides = {
        "model.init_args.init_checkpoint": args.network or "null",
        "model.init_args.pose_prior": args.pose_prior,
        "model.init_args.normal_priors": args.normal_priors,
        "model.init_args.geometry_teacher": args.geometry_teacher,
        "data.init_args.source.init_args.root": args.data,
        "data.init_args.target.init_args.root": args.data,
        "data.init_args.target.init_args.critic_cache": args.cache,
    }
    cli_args = [x for c in args.config for x in ("--config", c)]
    cli_args += [f"--{k}={v}" for k, v in overrides.items() if v]
    for side in ("source", "target"):
        cli_args += [f"--data.init_args.{side}.init_args.num_workers=0"]
        cli_args += [f"--data.init_args.{side}.init_args.persistent_workers=false"]
    cli_args += ["--trainer.logger=false", f"--trainer.default_root_dir={work}", "--trainer.accelerator=cpu"]
    cli = trainer_cli(cli_args, run=False)
    return cli.model, cli.datamodule


DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo" / "uda.yaml"


def demo_weights() -> dict[str, float]:
    """The label-free weights of ``configs/demo/uda.yaml`` (the configured objective without ``--config``)."""
    terms = yaml.safe_load(DEMO_CONFIG.read_text())["model"]["init_args"]["loss_terms"]
    return {name: float(term["weight"]) for name, term in terms.items()}


def measure(args: argparse.Namespace, stage=None) -> dict:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    cache = CriticCache(args.cache)
    t = load_targets(Path(args.data), args.annotation, cache, args.images, args.padding)
    stride = float(cache.manifest["crop"]["stride"])  # --degrade's blur is in crop px, the maps at the stride
    clean = t.maps.valid.bool()
    t.maps = CriticDegradation.parse(args.degrade)(t.maps, np.random.default_rng(0), crop_px=stride)
    iou = (clean & t.maps.valid).flatten(1).sum(1) / (clean | t.maps.valid).flatten(1).sum(1).clamp_min(1)
    if args.degrade:
        median = float(iou.median())
        print(f"maps degraded ({args.degrade}): body-mask IoU with the cache's {median:.2f} (median)")
    if stage is None:
        weights, options = demo_weights(), objectives.ObjectiveOptions()
    else:
        weights = {name: float(term.weight) for name, term in stage.schedule.terms.items()}
        options = stage.options
    terms = build_objectives(t, args, weights, options, cache)
    print(
        f"{len(t.paths)} images, {t.images.shape[-2]}x{t.images.shape[-1]} crops, objectives: {list(terms)}"
    )

    perturbed = {
        f: [perturb(t, f, lvl, rng) for lvl in np.linspace(0.05, 1, args.levels)]
        for f in ("iid", "swap", "off_body", "slide")
    }
    perturbed["iid"].insert(0, t.keypoints.clone())  # the ground truth itself
    starts = {"noise5": perturb(t, "iid", 0.2, rng), "noise10": perturb(t, "iid", 0.4, rng)}
    if args.network:
        starts = {"network": network_predictions(args.network, t), **starts}
        perturbed["network"] = [starts["network"]]

    errors = {f: np.concatenate([pose_error(kp, t).numpy() for kp in kps]) for f, kps in perturbed.items()}
    result: dict = {
        "configured": "configured" if "configured" in terms else None,
        "objectives": {},
        "images": len(t.paths),
        "degrade": args.degrade,
        "degraded_mask_iou": float(iou.median()),
        "weights": weights,
    }
    for name, objective in terms.items():
        t0 = time.perf_counter()
        values = {f: np.concatenate([per_pose(objective, kp) for kp in kps]) for f, kps in perturbed.items()}
        row: dict = {
            "spearman": spearman(
                np.concatenate(list(values.values())), np.concatenate(list(errors.values()))
            ),
            "spearman_by_family": {f: spearman(values[f], errors[f]) for f in values},
            "zero_fraction": float(np.mean(np.concatenate(list(values.values())) == 0)),
        }
        descent = {}
        for start_name, start in starts.items():
            before = float(pose_error(start, t).mean())
            after = float(pose_error(descend(objective, start, args.lr, args.steps), t).mean())
            descent[start_name] = {"before": before, "after": after, "rel_change": (after - before) / before}
        row["descent"] = descent
        row["descent_start"] = next(iter(starts))
        row["descent_rel_change"] = descent[row["descent_start"]]["rel_change"]
        row["seconds"] = time.perf_counter() - t0
        result["objectives"][name] = row
    return result


def gradient_scale(args: argparse.Namespace, stage, dm) -> dict:
    """(c) each term's gradient norm on the head, relative to ``L_sup`` and ``L_cons``, on real adaptation
    batches of the stage (student = teacher = ``--network``, as at the start of adaptation; every term at
    weight 1), and the weight that would match ``L_cons``'s norm."""
    weights = {"sup": 1.0, "cons": 1.0} | {name: 1.0 for name in stage.label_free}
    weights = {n: v for n, v in weights.items() if n in ("sup", "cons") or _usable(stage, n)}
    dm.setup("fit")
    stage.train()
    head = [p for p in stage.model.head.parameters() if p.requires_grad]
    grads: dict[str, list[torch.Tensor]] = {}
    for i, batch in enumerate(dm.train_dataloader()):
        if i >= args.gradients:
            break
        terms, _ = stage.step_terms(batch[0] if isinstance(batch, tuple) else batch, weights)
        for name, value in terms.items():
            g = torch.autograd.grad(value, head, retain_graph=True, allow_unused=True)
            parts = [torch.zeros_like(p) if x is None else x for x, p in zip(g, head, strict=True)]
            flat = torch.cat([x.flatten() for x in parts])
            grads.setdefault(name, []).append(flat)
    norm = {n: float(np.mean([float(g.norm()) for g in v])) for n, v in grads.items()}
    out = {}
    for name, values in grads.items():
        pairs = zip(values, grads["cons"], strict=True)
        cosine = [float(torch.nn.functional.cosine_similarity(a, b, dim=0)) for a, b in pairs]
        out[name] = {
            "head_grad_norm": norm[name],
            "relative_to_sup": norm[name] / max(norm["sup"], 1e-12),
            "relative_to_cons": norm[name] / max(norm["cons"], 1e-12),
            "weight_matching_cons": norm["cons"] / max(norm[name], 1e-12),
            "cosine_to_cons": float(np.mean(cosine)),
        }
    return {"batches": args.gradients, "terms": out}


def _usable(stage, name: str) -> bool:
    """Whether the stage has what the label-free term ``name`` reads (its prior, priors file, teacher)."""
    needs = {"manifold": stage.vae, "geo_norm": stage.prior_mean}
    needs |= {name: stage.geometry_teacher for name in objectives.TEACHER_TERMS}
    return name != "temporal" and (name not in needs or needs[name] is not None)


def print_gradients(section: dict) -> None:
    print(f"gradient scale on the head ({section['batches']} adaptation batches, every term at weight 1):")
    print("| term | head grad norm | / L_sup | / L_cons | weight matching L_cons | cosine to L_cons |")
    print("|---|---|---|---|---|---|")
    for name, r in section["terms"].items():
        cells = (
            f"{r['head_grad_norm']:.4g}",
            f"{r['relative_to_sup']:.3g}",
            f"{r['relative_to_cons']:.3g}",
            f"{r['weight_matching_cons']:.3g}",
            f"{r['cosine_to_cons']:+.3f}",
        )
        print(f"| {name} | " + " | ".join(cells) + " |")


def print_table(result: dict) -> None:
    names = list(result["objectives"])
    families = list(next(iter(result["objectives"].values()))["spearman_by_family"]) if names else []
    starts = list(next(iter(result["objectives"].values()))["descent"]) if names else []
    head = [
        "objective",
        "spearman",
        *[f"rho {f}" for f in families],
        "zeros",
        *[f"descent {s}" for s in starts],
    ]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name in names:
        r = result["objectives"][name]
        cells = [
            name,
            f"{r['spearman']:+.2f}",
            *[f"{r['spearman_by_family'][f]:+.2f}" for f in families],
            f"{100 * r['zero_fraction']:.0f}%",
        ]
        cells += [
            f"{d['before']:.2f}->{d['after']:.2f} ({100 * d['rel_change']:+.0f}%)"
            for d in r["descent"].values()
        ]
        print("| " + " | ".join(cells) + " |")
    print("errors in % of the box's longer side; descent: mean keypoint error before -> after")


def quick_inputs(work: Path) -> list[str]:
    """Tiny-preset data, the oracle cache, normal priors and a 20-step geometry teacher, in ``work``."""
    cli = [sys.executable, "-m", "geosapiens.cli.main"]
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", WANDB_MODE="offline")
    data, cache, priors = work / "data", work / "cache", work / "normal_priors.json"
    ann = "annotations/200R_1000S/person_keypoints_train_infant.json"
    configs = DEMO_CONFIG.parents[1]
    steps = [
        ["data", "synth", "--out", str(data), "--preset", "tiny", "--seed", "0"],
        [
            "critics",
            "cache",
            "--critic",
            "oracle",
            "--data",
            str(data / "SyRIP"),
            "--annotation",
            ann,
            "--out",
            str(cache),
            "--input-size",
            "96",
            "96",
        ],
        [
            "priors",
            "fit",
            "--cache",
            str(cache),
            "--data",
            str(data / "SyRIP"),
            "--annotation",
            "annotations/1000S/person_keypoints_train_infant.json",
            "--out",
            str(priors),
        ],
        [
            "fit",
            "--config",
            str(configs / "demo" / "geometry_teacher.yaml"),
            f"--data.init_args.critic_cache={cache}",
            f"--data.init_args.data.init_args.root={data / 'SyRIP'}",
            "--data.init_args.data.init_args.batch_size=8",
            "--data.init_args.data.init_args.num_workers=0",
            "--trainer.max_steps=20",
            "--trainer.val_check_interval=10",
            f"--trainer.default_root_dir={work / 'gt'}",
            f"--trainer.logger.init_args.save_dir={work / 'gt'}",
            "--trainer.enable_progress_bar=false",
        ],
    ]
    for step in steps:
        done = subprocess.run([*cli, *step], env=env, cwd=work, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"--quick: `geosapiens {' '.join(step[:2])}` failed:\n{done.stderr[-2000:]}")
    return [
        "--data",
        str(data / "SyRIP"),
        "--cache",
        str(cache),
        "--normal-priors",
        str(priors),
        "--geometry-teacher",
        str(work / "gt" / "checkpoints" / "best.ckpt"),
        "--annotation",
        "annotations/200R/person_keypoints_train_infant.json",
        "--geo-pose-threshold",
        "0",
    ]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="SyRIP-layout root of the target images")
    p.add_argument("--cache", help="critic cache holding those images (canonical crop frame)")
    p.add_argument(
        "--annotation",
        default="annotations/200R/person_keypoints_train_infant.json",
        help="labelled target images to measure on (their labels only score)",
    )
    p.add_argument(
        "--config", action="append", help="stage config(s) whose loss weights make the configured objective"
    )
    p.add_argument("--network", help="pose checkpoint whose predictions are a perturbation and a start")
    p.add_argument("--normal-priors", help="normal priors file (geo_norm)")
    p.add_argument("--pose-prior", help="pose VAE checkpoint (manifold)")
    p.add_argument("--geometry-teacher", help="geometry teacher checkpoint (geo_heatmap, geo_pose)")
    p.add_argument("--geo-pose-threshold", type=float, help="geometry-teacher confidence cut (the config's)")
    p.add_argument("--images", type=int, default=100, help="images to use (0 = all)")
    p.add_argument("--levels", type=int, default=5, help="perturbation levels per family")
    p.add_argument("--steps", type=int, default=100, help="descent steps")
    p.add_argument("--lr", type=float, default=0.5, help="descent step size (Adam, crop px)")
    p.add_argument("--padding", type=float, default=1.25, help="crop padding (the cache's)")
    p.add_argument(
        "--degrade",
        default="",
        help="critic-map degradation: blur=PX (crop pixels),normals=DEG,depth=STD,nomask",
    )
    p.add_argument(
        "--gradients",
        type=int,
        default=4,
        help="adaptation batches for (c), with --network and --config (0: skip)",
    )
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--quick", action="store_true", help="generate tiny data and run on it (< 3 min)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    with tempfile.TemporaryDirectory() as tmp:
        if args.quick:
            extra = quick_inputs(Path(tmp))
            args = parser().parse_args([*(argv if argv is not None else sys.argv[1:]), *extra])
            args.images, args.levels, args.steps = min(args.images, 8), 2, 20
        if not args.data or not args.cache:
            raise SystemExit("geometry_signal: --data and --cache are required (or --quick)")
        stage, dm = stage_from_configs(args, Path(tmp)) if args.config else (None, None)
        result = measure(args, stage)
        print_table(result)
        write(result, args.json)
        if args.gradients and args.network and stage is not None:
            result["gradients"] = gradient_scale(args, stage, dm)
            print_gradients(result["gradients"])
            write(result, args.json)
    return 0


def write(result: dict, path: Path | None) -> None:
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2))
        print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
