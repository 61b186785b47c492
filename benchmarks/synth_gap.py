"""Is the domain gap of the procedural generator real? Train on "synthetic", test on both styles.

Generates (or reuses, ``--data``) a SyRIP-style folder, loads it through the SyRIP reader like real data,
trains a tiny CNN (heatmaps + soft-argmax, L1 on coordinates) on "synthetic" stills for a fixed time on
one CPU thread, and reports
PCK (threshold = alpha x bbox max side, over labelled keypoints) on held-out "synthetic" stills and on the
"real-like" test split. A real gap shows as clearly lower "real-like" PCK.

    python benchmarks/synth_gap.py            # ~4 min on one core: 40 s data, 150 s training, eval
    python benchmarks/synth_gap.py --minutes 1 --data /tmp/gapdata
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from geosapiens.affine import apply_affine  # noqa: E402
from geosapiens.data.formats.syrip import read_syrip  # noqa: E402
from geosapiens.data.synth.generate import STILL_SPLITS, generate, still_seed  # noqa: E402
from geosapiens.data.synth.presets import Preset  # noqa: E402
from geosapiens.data.synth.scene import render_frame, sample_still, stream  # noqa: E402
from geosapiens.data.synth.writers import coco_bbox, coco_keypoints  # noqa: E402
from geosapiens.skeleton import COCO17  # noqa: E402

SIZE = 64  # crop side (px)
STRIDE = 4  # heatmap stride
FLIP = np.asarray(COCO17.flip_indices)


def crop(
    image: np.ndarray, keypoints: np.ndarray, bbox, size: int = SIZE, padding: float = 1.25
) -> tuple[np.ndarray, np.ndarray, float]:
    """Square crop around the bbox centre; returns (image, keypoints in crop px, bbox max side in crop px)."""
    x, y, w, h = bbox
    side = max(w, h) * padding
    s = size / side
    A = np.array([[s, 0, size / 2 - s * (x + w / 2)], [0, s, size / 2 - s * (y + h / 2)]], np.float32)
    out = cv2.warpAffine(image, A, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    kp = apply_affine(keypoints, A)
    return out, kp.astype(np.float32), float(max(w, h) * s)


def _stack(crops: list, labelled: list) -> dict[str, np.ndarray]:
    return {
        "images": np.stack([c[0] for c in crops]),
        "keypoints": np.stack([c[1] for c in crops]),
        "weights": np.stack(labelled).astype(np.float32),
        "scale": np.array([c[2] for c in crops], np.float32),
    }


def load(root: Path, annotation: str, ids: range | None = None) -> dict[str, np.ndarray]:
    """Crops of a SyRIP-style split read through the real-format reader."""
    records = [r for r in read_syrip(root, annotation) if ids is None or r.image_id in ids]
    crops = [
        crop(cv2.cvtColor(cv2.imread(str(r.image_path)), cv2.COLOR_BGR2RGB), r.keypoints, r.bbox)
        for r in records
    ]
    return _stack(crops, [r.labelled for r in records])


def restyled_test(seed: int, count: int, size: tuple[int, int]) -> dict[str, np.ndarray]:
    """Control: the real-like test scenes (same infants, poses, cameras) rendered in the synthetic style."""
    crops, labelled = [], []
    for i in range(count):
        ss = still_seed(seed, STILL_SPLITS[3], i)
        frame = render_frame(
            sample_still(ss, "synthetic", size, camera_style="real-like"), stream(ss, "noise")
        )
        kp = coco_keypoints(frame)
        crops.append(crop(frame.rgb, kp[:, :2].astype(np.float32), coco_bbox(frame, kp)))
        labelled.append(kp[:, 2] > 0)
    return _stack(crops, labelled)


class TinyPose(nn.Module):
    """A ~0.4M-parameter encoder/decoder to 17 heatmaps at stride 4, decoded by soft-argmax."""

    def __init__(self, k: int = 17) -> None:
        super().__init__()

        def block(i: int, o: int, s: int = 1) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(i, o, 3, s, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True)
            )

        def up(i: int, o: int) -> nn.Sequential:
            return nn.Sequential(
                nn.ConvTranspose2d(i, o, 4, 2, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU(True)
            )

        self.net = nn.Sequential(
            block(3, 32, 2),
            block(32, 32),
            block(32, 64, 2),
            block(64, 64),
            block(64, 128, 2),
            block(128, 128),
            up(128, 64),
            block(64, 64),
            nn.Conv2d(64, k, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, SIZE, SIZE) -> keypoints (B, K, 2) in crop pixels (soft-argmax of the heatmaps)."""
        hm = self.net(x)
        b, k, h, w = hm.shape
        prob = hm.flatten(2).softmax(-1).view(b, k, h, w)
        centres_x = torch.arange(w, dtype=x.dtype) * STRIDE + (STRIDE - 1) / 2
        centres_y = torch.arange(h, dtype=x.dtype) * STRIDE + (STRIDE - 1) / 2
        return torch.stack([(prob.sum(2) * centres_x).sum(-1), (prob.sum(3) * centres_y).sum(-1)], -1)


def augment(images: np.ndarray, kp: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random rotation (+-30 deg), scale (0.8-1.2) and horizontal flip with left/right swap."""
    out_i, out_k = np.empty_like(images), np.empty_like(kp)
    for b in range(len(images)):
        A = cv2.getRotationMatrix2D(
            (SIZE / 2 - 0.5, SIZE / 2 - 0.5), rng.uniform(-30, 30), rng.uniform(0.8, 1.2)
        )
        img = cv2.warpAffine(images[b], A, (SIZE, SIZE), borderMode=cv2.BORDER_REFLECT)
        k = apply_affine(kp[b], A)
        if rng.random() < 0.5:
            img = img[:, ::-1]
            k = k[FLIP] * np.array([-1, 1]) + np.array([SIZE - 1, 0])
        out_i[b], out_k[b] = img, k
    return out_i, out_k


def to_tensor(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    mean = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def pck(model: nn.Module, data: dict[str, np.ndarray], alphas=(0.05, 0.1, 0.2)) -> dict[float, float]:
    model.eval()
    pred = np.concatenate(
        [model(to_tensor(data["images"][i : i + 128])).numpy() for i in range(0, len(data["images"]), 128)]
    )
    err = np.linalg.norm(pred - data["keypoints"], axis=-1) / data["scale"][:, None]
    lab = data["weights"] > 0
    return {a: float((err[lab] < a).mean() * 100) for a in alphas}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, help="generated folder to reuse/create (default: a temporary one)")
    p.add_argument("--minutes", type=float, default=2.5, help="training time budget")
    p.add_argument("--steps", type=int, help="train exactly this many steps (reproducible under any load)")
    p.add_argument("--train", type=int, default=1800, help="synthetic training stills")
    p.add_argument(
        "--test", type=int, default=300, help="stills per test set (synthetic held-out, real-like)"
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    with tempfile.TemporaryDirectory() as tmp:
        out = args.data or Path(tmp) / "gap"
        syn_split, test_split = STILL_SPLITS[0], STILL_SPLITS[3]
        if not (out / "SyRIP" / test_split.annotation).is_file():
            preset = Preset("gap", args.train + args.test, 0, 0, args.test, (320, 240), (), 0)
            t0 = time.perf_counter()
            generate(out, preset, seed=args.seed, workers=1, progress=False)
            print(f"generated {preset.num_stills} stills in {time.perf_counter() - t0:.0f} s")
        root = out / "SyRIP"
        first = syn_split.first_id
        train = load(root, syn_split.annotation, range(first, first + args.train))
        test_syn = load(root, syn_split.annotation, range(first + args.train, first + args.train + args.test))
        test_real = load(root, test_split.annotation)
    test_restyled = restyled_test(args.seed, args.test, (320, 240))

    model = TinyPose()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    n_params = sum(p.numel() for p in model.parameters())
    t0, step = time.perf_counter(), 0
    budget = args.minutes * 60

    def progress() -> float:
        return step / args.steps if args.steps else (time.perf_counter() - t0) / budget

    while progress() < 1.0:
        model.train()
        idx = rng.integers(0, len(train["images"]), 32)
        images, kp = augment(train["images"][idx], train["keypoints"][idx], rng)
        weights = torch.from_numpy(train["weights"][idx])[..., None]
        loss = ((model(to_tensor(images)) - torch.from_numpy(kp)).abs() * weights).sum() / weights.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        for g in opt.param_groups:  # cosine decay over the time budget
            g["lr"] = 2e-3 * 0.5 * (1 + np.cos(np.pi * min(1.0, progress())))
    print(
        f"TinyPose {n_params / 1e6:.2f}M params, {step} steps (batch 32, {SIZE}x{SIZE}) in "
        f"{time.perf_counter() - t0:.0f} s on 1 thread; final loss {loss.item():.3f}"
    )
    rows = (
        ("synthetic (held out)", test_syn),
        ("validate100 scenes, synthetic look", test_restyled),
        ("real-like (validate100)", test_real),
    )
    print(f"{'test set':<36}{'n':>5}  PCK@0.05  PCK@0.1  PCK@0.2")
    results = {}
    for name, data in rows:
        res = results[name] = pck(model, data)
        print(f"{name:<36}{len(data['images']):>5}  {res[0.05]:8.1f}  {res[0.1]:7.1f}  {res[0.2]:7.1f}")
    syn, same, real = (results[name][0.1] for name, _ in rows)
    print(
        f"gap at PCK@0.1: {syn - real:.1f} points in all ({same - real:.1f} from the real-like look alone, "
        f"same scenes)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
