"""DARK refinement: keep or drop a Newton step longer than one heatmap pixel?

``UDPHeatmapCodec.decode`` refines the argmax with one Newton step on the blurred log-heatmap. mmpose applies
the step whatever its length; ours used to drop steps longer than 1 heatmap px per axis. Three rules on the
same heatmaps: ``drop`` (argmax when |step| > 1), ``apply`` (mmpose) and ``clamp`` (each axis to [-1, 1]):

1. noisy Gaussians: sigma-2 targets at random sub-pixel positions (64x48 heatmaps) plus white noise of
   each level, error to the true peak in heatmap px;
2. real-like predictions: a trained stage checkpoint (``--checkpoint``, e.g. the demo's ``uda`` best, with
   ``--syrip`` its data) or one trained here for ``--steps`` on the tiny preset, decoded on the generated
   real-like test images (validate100), error to the ground truth in input px.

    python benchmarks/dark_refinement.py [--checkpoint RUN/checkpoints/best.ckpt --syrip DATA/SyRIP]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RULES = ("drop", "apply", "clamp")


def _decode(codec, heatmaps: torch.Tensor, rule: str) -> torch.Tensor:
    from geosapiens.models.codec import UDPHeatmapCodec

    same = UDPHeatmapCodec(codec.input_size, codec.heatmap_size, sigma=codec.sigma, long_step=rule)
    return same.decode(heatmaps)[0]


def noisy_gaussians(seed: int) -> None:
    from geosapiens.models.codec import UDPHeatmapCodec

    g = torch.Generator().manual_seed(seed)
    codec = UDPHeatmapCodec((256, 192), (64, 48), sigma=2.0)
    n = 4000
    xy = torch.rand(n, 2, generator=g) * torch.tensor([47.0 - 8, 63.0 - 8]) + 4  # heatmap px, off the border
    keypoints = codec.to_input(xy)[:, None]
    clean, _ = codec.encode(keypoints, torch.ones(n, 1))
    print("noisy Gaussians (sigma 2, 64x48): mean / p95 error to the true peak, heatmap px")
    for level in (0.0, 0.01, 0.03, 0.1):
        heatmaps = clean + level * torch.randn(clean.shape, generator=g)
        row = []
        for rule in RULES:
            err = (codec.to_heatmap(_decode(codec, heatmaps, rule))[:, 0] - xy).norm(dim=-1)
            row.append(f"{rule} {err.mean():.3f} / {err.quantile(0.95):.3f}")
        print(f"  noise {level:<5} " + "   ".join(row))


def _train(tmp: Path, steps: int, seed: int) -> tuple[Path, Path]:
    """The demo oracle config at 64 px on the tiny preset for ``steps`` steps: (checkpoint, SyRIP root)."""
    from geosapiens.cli.main import main

    assert (
        main(
            ["data", "synth", "--out", str(tmp / "data"), "--preset", "tiny", "--seed", str(seed), "--quiet"]
        )
        == 0
    )
    syrip, run = tmp / "data" / "SyRIP", tmp / "run"
    args = [
        "fit",
        "--config",
        str(REPO / "configs/demo/oracle.yaml"),
        "--data.init_args.root",
        str(syrip),
        "--model.init_args.input_size",  # the DataModule crops at the stage's size
        "[64, 64]",
        "--data.init_args.batch_size",
        "8",
        "--data.init_args.num_workers",
        "0",
        "--trainer.max_steps",
        str(steps),
        "--trainer.val_check_interval",
        str(steps),
        "--trainer.check_val_every_n_epoch",
        "null",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.default_root_dir",
        str(run),
        "--trainer.logger.init_args.save_dir",
        str(run),
        f"--seed_everything={seed}",
    ]
    assert main(args) == 0
    return run / "checkpoints" / "last.ckpt", syrip


def real_like(checkpoint: Path, syrip: Path) -> None:
    from geosapiens.data.datamodules import SyRIPRealDataModule
    from geosapiens.models.codec import UDPHeatmapCodec
    from geosapiens.models.stage_checkpoint import pose_model_from_checkpoint

    # The pose network alone (``model.*``, the student), whatever stage trained it.
    network, size, hp = pose_model_from_checkpoint(checkpoint, "model")
    codec = UDPHeatmapCodec(size, (size[0] // 4, size[1] // 4), sigma=hp.get("sigma", 2.0))
    dm = SyRIPRealDataModule(syrip, input_size=size, batch_size=50, num_workers=0, pin_memory=False)
    dm.setup("test")
    errors = {rule: [] for rule in RULES}
    for batch in dm.test_dataloader():
        with torch.no_grad():
            heatmaps = network(batch["image"])
        labelled = batch["weights"] > 0
        for rule in RULES:
            err = (_decode(codec, heatmaps, rule) - batch["keypoints"][..., :2]).norm(dim=-1)
            errors[rule].append(err[labelled])
    n = sum(len(e) for e in errors["drop"])
    print(
        f"real-like predictions ({checkpoint}, {n} labelled joints of {syrip} validate100, {size[0]} px "
        "crops): error to the GT, input px"
    )
    for rule in RULES:
        err = torch.cat(errors[rule])
        print(f"  {rule:<6} mean {err.mean():.4f}  median {err.median():.4f}  p95 {err.quantile(0.95):.4f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, help="a trained stage checkpoint (default: train one)")
    p.add_argument("--syrip", type=Path, help="its SyRIP-layout data root (with validate100)")
    p.add_argument("--steps", type=int, default=60, help="training steps when no checkpoint is given")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    noisy_gaussians(args.seed)
    if args.checkpoint is not None:
        real_like(args.checkpoint, args.syrip)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        real_like(*_train(Path(tmp), args.steps, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
