"""Equivalence with the official Sapiens architecture, through the official containers only.

The reference below is written from ``../shared/reference/sapiens.md`` (§1-§4): the mmpretrain encoder
with its module names (``patch_embed.projection``,
``layers.i.{ln1,attn.qkv,attn.proj,ln2,ffn.layers.0.0,ffn.layers.1}``, final ``ln1``), explicit qkv
reshape / softmax attention, and heads whose forward is plain functional code (ConvTranspose ->
InstanceNorm without affine -> SiLU). Its random weights are written as the official files are (flat
``*_clean.pth``; ``{'state_dict', 'meta'}`` task ``.pth`` with numpy in ``meta``; traced TorchScript), read
back through our loader, and the outputs are compared.

Other test modules import the reference from here.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from geosapiens.models.backbone import create_backbone
from geosapiens.models.official_checkpoint import load_checkpoint
from geosapiens.models.pose_model import PoseModel

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")

DIM, DEPTH, HEADS = 64, 2, 2  # the sapiens_nano preset
GRID = (8, 6)  # a 128 x 96 input, the tiny stand-in for 64 x 48 at 1024 x 768
IMG = (GRID[0] * 16, GRID[1] * 16)
HEAD_CH = 32  # official heads use 768 (pose/normal) and 384 (depth); the layout is the same


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).norm() / ref.norm()).item()


def bicubic(pos: torch.Tensor, old: tuple[int, int], new: tuple[int, int]) -> torch.Tensor:
    """(1, h*w, D) -> (1, h'*w', D): bicubic, align_corners=False, no antialias (the official resize)."""
    d = pos.shape[-1]
    img = pos.reshape(1, old[0], old[1], d).permute(0, 3, 1, 2)
    img = F.interpolate(img, size=new, mode="bicubic", align_corners=False)
    return img.permute(0, 2, 3, 1).reshape(1, new[0] * new[1], d)


class _PatchEmbed(nn.Module):
    def __init__(self, dim: int, padding: int) -> None:
        super().__init__()
        self.projection = nn.Conv2d(3, dim, 16, 16, padding=padding)


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        hd = c // self.heads
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, hd).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(hd), dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(b, n, c))


class _FFN(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU()), nn.Linear(4 * dim, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class _Layer(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Attention(dim, heads)
        self.ln2 = nn.LayerNorm(dim, eps=1e-6)
        self.ffn = _FFN(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.ffn(self.ln2(x))


class OfficialViT(nn.Module):
    """The Sapiens encoder (featmap output after the final norm ``ln1``), official parameter names."""

    def __init__(self, dim=DIM, depth=DEPTH, heads=HEADS, grid=GRID, padding=0, cls_token=False) -> None:
        super().__init__()
        self.grid = grid
        self.patch_embed = _PatchEmbed(dim, padding)
        if cls_token:  # pretrain files only; the finetuned models never run with it
            self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, grid[0] * grid[1] + int(cls_token), dim) * 0.5)
        self.layers = nn.ModuleList(_Layer(dim, heads) for _ in range(depth))
        self.ln1 = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed.projection(x)
        b, c, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)
        pos = self.pos_embed
        if (h, w) != self.grid:
            pos = bicubic(pos, self.grid, (h, w))
        x = x + pos
        for layer in self.layers:
            x = layer(x)
        return self.ln1(x).transpose(1, 2).reshape(b, c, h, w)


def _official_stack(in_channels: int, channels, deconv: bool) -> nn.Sequential:
    """Official indices 0/3/6/9: the norm and activation slots hold no parameters."""
    layers = []
    for c in channels:
        layer = (
            nn.ConvTranspose2d(in_channels, c, 4, 2, 1, bias=False)
            if deconv
            else nn.Conv2d(in_channels, c, 1)
        )
        layers += [layer, nn.Identity(), nn.Identity()]
        in_channels = c
    return nn.Sequential(*layers)


def _run_stack(x: torch.Tensor, stack: nn.Sequential, deconv: bool) -> torch.Tensor:
    for i in range(0, len(stack), 3):
        layer = stack[i]
        if deconv:
            x = F.conv_transpose2d(x, layer.weight, stride=2, padding=1)
        else:
            x = F.conv2d(x, layer.weight, layer.bias)
        x = F.silu(F.instance_norm(x, eps=1e-5))
    return x


class OfficialHead(nn.Module):
    """Pose ``HeatmapHead`` (``final_layer``) or dense ``Vit*Head`` (``conv_seg``), official names."""

    def __init__(self, in_channels: int, out: int, deconvs, convs, final: str) -> None:
        super().__init__()
        self.final = final
        self.deconv_layers = _official_stack(in_channels, deconvs, deconv=True)
        self.conv_layers = _official_stack(deconvs[-1], convs, deconv=False)
        setattr(self, final, nn.Conv2d(convs[-1], out, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _run_stack(_run_stack(x, self.deconv_layers, True), self.conv_layers, False)
        final = getattr(self, self.final)
        return F.conv2d(x, final.weight, final.bias)


class OfficialTopdown(nn.Module):
    """mmpose ``TopdownPoseEstimator`` in tensor mode: ``backbone.*`` + ``head.*``."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class OfficialDense(nn.Module):
    """mmseg ``EncoderDecoder`` / ``DepthEstimator`` in tensor mode: ``backbone.*`` + ``decode_head.*``."""

    def __init__(self, backbone: nn.Module, decode_head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.decode_head = backbone, decode_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode_head(self.backbone(x))


def _randomise(module: nn.Module, seed: int) -> nn.Module:
    """Non-trivial norms and biases (defaults are 1 / 0) so every parameter matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 1 and ("ln" in name or "norm" in name) and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
            elif p.ndim == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return module.eval()


def official_model(family: str, seed: int = 0, keypoints: int = 308, dim: int = DIM, depth: int = DEPTH):
    """A randomly initialised official-architecture model of one family at the tiny size."""
    torch.manual_seed(seed)
    padding = 2 if family in ("pose", "normal") else 0
    if family == "pretrain":
        return _randomise(OfficialViT(dim, depth, padding=0, grid=(8, 8), cls_token=True), seed)
    vit = OfficialViT(dim, depth, padding=padding)
    if family == "pose":
        return _randomise(
            OfficialTopdown(vit, OfficialHead(dim, keypoints, [HEAD_CH] * 2, [HEAD_CH] * 2, "final_layer")),
            seed,
        )
    deconvs, convs, out = ([16] * 4, [16] * 2, 1) if family == "depth" else ([HEAD_CH] * 3, [HEAD_CH] * 3, 3)
    return _randomise(OfficialDense(vit, OfficialHead(dim, out, deconvs, convs, "conv_seg")), seed)


OFFICIAL_META = {
    "cfg": "model = dict(backbone=dict(type='mmpretrain.VisionTransformer', patch_cfg=dict(padding=2)))",
    "dataset_meta": {
        "dataset_name": "goliath",
        "sigmas": np.full(308, 0.025, np.float32),
        "flip_indices": [0, 2, 1],
    },
    "epoch": 210,
    "seed": np.int64(0),
}


def save_official(model: nn.Module, path: Path, container: str = "pth") -> Path:
    """Write as Meta ships it: 'clean' flat dict, '{state_dict, meta}' .pth, or traced 'torchscript'."""
    if container == "clean":
        torch.save(OrderedDict(model.state_dict()), path)
    elif container == "pth":
        torch.save({"state_dict": model.state_dict(), "meta": OFFICIAL_META}, path)
    else:
        torch.jit.trace(model, torch.randn(1, 3, *IMG)).save(str(path))
    return path


def images(batch: int = 2, size=IMG, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------------------


def test_pretrain_clean_drops_cls_and_resizes_pos_embed_like_the_finetunes(tmp_path):
    official = official_model("pretrain")
    path = save_official(official, tmp_path / "sapiens_nano_epoch_1600_clean.pth", "clean")
    assert set(torch.load(path, weights_only=True)) >= {
        "cls_token",
        "pos_embed",
        "ln1.weight",
        "layers.1.ffn.layers.0.0.weight",
    }

    ours = create_backbone("sapiens_nano", img_size=IMG, checkpoint=path).eval()
    # What the official finetune builds from this file: no cls token, cls row dropped, 8x8 -> 8x6 bicubic.
    ref = OfficialViT(grid=GRID, padding=0).eval()
    state = {k: v for k, v in official.state_dict().items() if k != "cls_token"}
    state["pos_embed"] = bicubic(state["pos_embed"][:, 1:], (8, 8), GRID)
    ref.load_state_dict(state)
    x = images()
    with torch.no_grad():
        assert rel_err(ours(x), ref(x)) < 1e-5
    assert ours.pos_embed.shape == (1, GRID[0] * GRID[1], DIM)


@pytest.mark.slow
@pytest.mark.parametrize("container", ["pth", "torchscript"])
def test_pose_checkpoint_matches_official_forward(tmp_path, container):
    official = official_model("pose")
    path = save_official(
        official, tmp_path / f"sapiens_nano_goliath.{'pt2' if container != 'pth' else 'pth'}", container
    )
    model = PoseModel.from_checkpoint(path, img_size=IMG).eval()
    assert model.backbone.patch_padding == 2 and model.num_keypoints == 308
    x = images()
    with torch.no_grad():
        ours, ref = model(x), official(x)
        traced = torch.jit.load(str(path))(x) if container == "torchscript" else ref
    assert ours.shape == (2, 308, IMG[0] // 4, IMG[1] // 4)
    assert rel_err(ours, ref) < 1e-5
    assert rel_err(ours, traced) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("family", ["depth", "normal"])
def test_dense_checkpoints_match_official_forward(tmp_path, family):
    from geosapiens.models.heads import SapiensDepthHead, SapiensNormalHead
    from geosapiens.models.official_checkpoint import load_head_state

    official = official_model(family, seed=3)
    path = save_official(official, tmp_path / f"{family}.pth")
    ckpt = load_checkpoint(path)
    assert ckpt.family == family and ckpt.padding == (2 if family == "normal" else 0)
    head = (SapiensDepthHead if family == "depth" else SapiensNormalHead).from_state_dict(ckpt.head)
    load_head_state(head, ckpt)
    model = nn.Sequential(create_backbone("sapiens_nano", img_size=IMG, checkpoint=ckpt), head).eval()
    x = images()
    with torch.no_grad():
        ours, ref = model(x), official(x)
    assert (
        ours.shape
        == ref.shape
        == (2, 1 if family == "depth" else 3, *(s * (16 if family == "depth" else 8) // 16 for s in IMG))
    )
    assert rel_err(ours, ref) < 1e-5


@pytest.mark.slow
def test_task_pos_embed_resizes_to_other_input_sizes(tmp_path):
    """A 64x48-grid task file run at the paper's 1024x1024 (here 8x6 -> 8x8), resized at load/forward."""
    official = official_model("depth", seed=4)
    path = save_official(official, tmp_path / "depth.pth")
    square = (GRID[0] * 16, GRID[0] * 16)
    x = images(size=square)
    at_load = create_backbone(
        "sapiens_nano", img_size=square, checkpoint=load_checkpoint(path, source_grid=GRID)
    )
    at_forward = create_backbone("sapiens_nano", img_size=IMG, checkpoint=path)
    with torch.no_grad():
        ref = official.backbone(x)  # the official forward-time resize: bicubic, no antialias
        assert rel_err(at_load(x), ref) < 1e-5
        assert rel_err(at_forward(x), ref) < 1e-5

        # and back down: the 8x8 model run on an 8x6 grid
        ref_square = OfficialViT(grid=(8, 8)).eval()
        ref_square.load_state_dict(
            official.backbone.state_dict() | {"pos_embed": at_load.pos_embed.detach().clone()}
        )
        assert rel_err(at_load(images()), ref_square(images())) < 1e-5


def test_grid_inference_for_official_row_counts():
    from geosapiens.models.official_checkpoint import _grid_for, resize_pos_embed

    assert _grid_for(4096) == (64, 64) and _grid_for(3072) == (64, 48) and _grid_for(48) is None
    pos = torch.randn(1, 3072, 8)
    out = resize_pos_embed(pos, (64, 64), (64, 48))
    assert out.shape == (1, 4096, 8)
    torch.testing.assert_close(out, bicubic(pos, (64, 48), (64, 64)))
    # a prefix row (the cls token) is carried through untouched
    with_cls = resize_pos_embed(
        torch.cat([torch.ones(1, 1, 8), pos], 1), (64, 64), (64, 48), num_prefix_tokens=1
    )
    torch.testing.assert_close(with_cls[:, 1:], out)
    assert torch.equal(with_cls[:, :1], torch.ones(1, 1, 8))


def test_full_size_official_key_table_maps_onto_timm():
    """sapiens.md §2.2: the 5 + 12 L official backbone keys map one-to-one onto timm's, same shapes."""
    from geosapiens.models.official_checkpoint import official_to_timm

    d, depth = 1024, 24
    official = {"patch_embed.projection.weight": (d, 3, 16, 16), "patch_embed.projection.bias": (d,)}
    official["pos_embed"] = (1, 3072, d)
    for i in range(depth):
        for name, shape in [
            ("ln1.weight", (d,)),
            ("ln1.bias", (d,)),
            ("attn.qkv.weight", (3 * d, d)),
            ("attn.qkv.bias", (3 * d,)),
            ("attn.proj.weight", (d, d)),
            ("attn.proj.bias", (d,)),
            ("ln2.weight", (d,)),
            ("ln2.bias", (d,)),
            ("ffn.layers.0.0.weight", (4 * d, d)),
            ("ffn.layers.0.0.bias", (4 * d,)),
            ("ffn.layers.1.weight", (d, 4 * d)),
            ("ffn.layers.1.bias", (d,)),
        ]:
            official[f"layers.{i}.{name}"] = shape
    official |= {"ln1.weight": (d,), "ln1.bias": (d,)}
    assert len(official) == 5 + 12 * depth
    mapped = official_to_timm({k: torch.empty(s, device="meta") for k, s in official.items()})
    with torch.device("meta"):
        ours = create_backbone("sapiens_0.3b", family="pose").state_dict()
    assert {k: tuple(v.shape) for k, v in mapped.items()} == {k: tuple(v.shape) for k, v in ours.items()}
