"""Cost of the Sapiens pose network per preset and input size: parameters, FLOPs, time, memory, MFU.

The network is the training one: a Sapiens backbone plus the light ``DeconvHead`` (17 keypoints). For each
configuration it prints the backbone and head parameter counts, the forward FLOPs per image
(``torch.utils.flop_counter.FlopCounterMode`` on the meta device, where attention is counted as its two
matmuls; FLOPs = 2 x multiply-adds), the time and peak memory of one training step (forward + backward),
and the achieved FLOP/s as a fraction of this device's own measured GEMM rate (MFU; fp32 on CPU, bf16 on
CUDA). MFU uses model FLOPs: recomputation under activation checkpointing is not counted as useful work.

Every configuration runs in a fresh process so that peak memory is its own: CUDA ``max_memory_allocated``,
or on CPU the process's peak resident set (which includes ~0.5 GB of imported libraries; the RSS before
the model is built is printed beside it).

    python benchmarks/model_cost.py                  # CPU: small presets and sapiens_0.3b at 256x192
    python benchmarks/model_cost.py --device cuda    # 0.3b / 0.6b at 1024x1024, bf16, with/without ckpt
    python benchmarks/model_cost.py --presets sapiens_tiny --sizes 512x384 --batch 2 --forward-only

(with the package installed, as ``make bench`` does; otherwise prefix ``PYTHONPATH=src``).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import time
from dataclasses import dataclass, replace

import torch
from torch.utils.flop_counter import FlopCounterMode

from geosapiens.models.backbone import create_backbone
from geosapiens.models.heads import DeconvHead
from geosapiens.models.pose_model import PoseModel
from geosapiens.models.sapiens_archs import SAPIENS_ARCHS

OFFICIAL = ("sapiens_0.3b", "sapiens_0.6b", "sapiens_1b", "sapiens_2b")


@dataclass(frozen=True)
class Config:
    preset: str
    size: tuple[int, int]
    batch: int
    device: str
    bf16: bool
    grad_ckpt: bool = False
    backward: bool = True


def build(cfg: Config, device: str | torch.device) -> PoseModel:
    with torch.device(device):
        backbone = create_backbone(cfg.preset, img_size=cfg.size, family="pose")
        return PoseModel(backbone, DeconvHead(backbone.out_channels, 17, in_stride=backbone.stride))


def count_flops(cfg: Config) -> tuple[float, float, float]:
    """(forward, forward + backward, backbone forward) FLOPs of one image, on the meta device."""
    model = build(cfg, "meta")
    x = torch.randn(1, 3, *cfg.size, device="meta")
    counter = FlopCounterMode(display=False)
    with counter:
        model.backbone(x)
    backbone = counter.get_total_flops()
    with counter:
        model(x)
    forward = counter.get_total_flops()
    with counter:
        model(x).square().mean().backward()
    return float(forward), float(counter.get_total_flops()), float(backbone)


def matmul_rate(device: str) -> float:
    """Best achieved FLOP/s of an n x n x n GEMM: fp32 n=2048 on CPU, bf16 n=8192 on CUDA.

    On CPU the GEMM runs both as ``torch.mm`` (MKL) and as a 1x1 convolution (oneDNN) and the faster counts:
    MKL is slow on AMD CPUs while the model's linear layers and convolutions also reach oneDNN's speed.
    """
    cuda = device.startswith("cuda")
    n, reps = (8192, 20) if cuda else (2048, 5)
    dtype = torch.bfloat16 if cuda else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    kernels = [lambda: a @ b]
    if not cuda:
        image, weight = a.reshape(1, n, 64, n // 64), b.reshape(n, n, 1, 1)
        kernels.append(lambda: torch.nn.functional.conv2d(image, weight))
    best = float("inf")
    for kernel in kernels:
        for _ in range(reps + 1):
            _sync(device)
            t = time.perf_counter()
            kernel()
            _sync(device)
            best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def measure(cfg: Config, iters: int) -> dict:
    """Runs in its own process: time and peak memory of training steps (or forwards) of one config."""
    torch.manual_seed(0)
    rss_before = _rss_mb()
    model = build(cfg, cfg.device)
    model.set_grad_checkpointing(cfg.grad_ckpt)
    model.train(cfg.backward)
    x = torch.randn(cfg.batch, 3, *cfg.size, device=cfg.device)
    autocast = torch.autocast(torch.device(cfg.device).type, dtype=torch.bfloat16, enabled=cfg.bf16)

    def step() -> None:
        with torch.set_grad_enabled(cfg.backward), autocast:
            loss = model(x).float().square().mean()
        if cfg.backward:
            loss.backward()
            model.zero_grad(set_to_none=True)

    step()  # warm-up (allocator, kernels selection)
    _sync(cfg.device)
    if cfg.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    _sync(cfg.device)
    seconds = (time.perf_counter() - start) / iters
    peak = torch.cuda.max_memory_allocated() / 2**20 if cfg.device.startswith("cuda") else _rss_mb()
    return {
        "seconds": seconds,
        "peak_mb": peak,
        "rss_before_mb": rss_before,
        "backbone_params": sum(p.numel() for p in model.backbone.parameters()),
        "head_params": sum(p.numel() for p in model.head.parameters()),
        "embed_dim": model.backbone.out_channels,
        "pos_rows": model.backbone.pos_embed.shape[1],
    }


def _in_subprocess(fn, *args):
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def default_configs(device: str) -> list[Config]:
    if device.startswith("cuda"):
        return [
            Config(p, (1024, 1024), 4, device, bf16=True, grad_ckpt=c)
            for p in ("sapiens_0.3b", "sapiens_0.6b")
            for c in (False, True)
        ]
    small = [Config(p, (256, 192), 8, device, bf16=False) for p in ("sapiens_nano", "sapiens_tiny")]
    return small + [
        Config("sapiens_small", (256, 192), 4, device, bf16=False),
        Config("sapiens_0.3b", (256, 192), 1, device, bf16=False),
        Config("sapiens_0.3b", (256, 192), 1, device, bf16=False, grad_ckpt=True),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--presets", nargs="+", choices=sorted(SAPIENS_ARCHS))
    parser.add_argument("--sizes", nargs="+", default=None, help="HxW, e.g. 1024x1024 256x192")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--iters", type=int, default=None, help="timed steps (default 3 CPU, 10 CUDA)")
    parser.add_argument("--grad-ckpt", choices=("off", "on", "both"), default=None)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast on CPU too (default: CUDA only)")
    parser.add_argument("--forward-only", action="store_true", help="time inference forwards only")
    args = parser.parse_args(argv)

    cuda = args.device.startswith("cuda")
    if args.presets or args.sizes:
        sizes = [tuple(int(v) for v in s.lower().split("x")) for s in (args.sizes or ["256x192"])]
        ckpts = {"off": (False,), "on": (True,), "both": (False, True), None: (False,)}[args.grad_ckpt]
        configs = [
            Config(p, s, args.batch or 1, args.device, bf16=cuda or args.bf16, grad_ckpt=c)
            for p in (args.presets or ["sapiens_tiny"])
            for s in sizes
            for c in ckpts
        ]
    else:
        configs = default_configs(args.device)
    configs = [
        replace(c, batch=args.batch or c.batch, backward=not args.forward_only, bf16=c.bf16 or args.bf16)
        for c in configs
    ]
    iters = args.iters or (10 if cuda else 3)

    rate = _in_subprocess(matmul_rate, args.device)
    name = torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(
        f"device: {name}; torch {torch.__version__}; measured GEMM rate ({'bf16' if cuda else 'fp32'}): "
        f"{rate / 1e12:.3f} TFLOP/s"
    )
    step = "forward" if args.forward_only else "fwd+bwd"
    print(
        f"| preset | input | batch | dtype | act. ckpt | backbone params | (pretrain layout) | head params "
        f"| fwd GFLOP/img (backbone) | {step} ms | peak MB | RSS before MB | TFLOP/s | MFU |"
    )
    print("|" + "---|" * 14)
    for cfg in configs:
        fwd, fwd_bwd, backbone_fwd = count_flops(cfg)
        res = _in_subprocess(measure, cfg, iters)
        work = (fwd_bwd if cfg.backward else fwd) * cfg.batch
        achieved = work / res["seconds"]
        layout = "-"
        if cfg.preset in OFFICIAL:  # + cls token and the 4097-row pretrain pos_embed, as sapiens.md counts
            d = res["embed_dim"]
            layout = f"{(res['backbone_params'] + (4097 - res['pos_rows']) * d + d) / 1e6:.2f} M"
        print(
            f"| {cfg.preset} | {cfg.size[0]}x{cfg.size[1]} | {cfg.batch} | {'bf16' if cfg.bf16 else 'fp32'} "
            f"| {'on' if cfg.grad_ckpt else 'off'} | {res['backbone_params'] / 1e6:.2f} M | {layout} "
            f"| {res['head_params'] / 1e6:.2f} M | {fwd / 1e9:.1f} ({backbone_fwd / 1e9:.1f}) "
            f"| {res['seconds'] * 1e3:.0f} "
            f"| {res['peak_mb']:.0f} | {'-' if cuda else round(res['rss_before_mb'])} "
            f"| {achieved / 1e12:.3f} | {achieved / rate:.1%} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
