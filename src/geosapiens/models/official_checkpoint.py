"""Reading Meta's official Sapiens checkpoints safely and mapping them onto timm names.

Every container Sapiens v1 ships is read here (``../shared/reference/sapiens.md`` §2):

* pretrain ``sapiens_<size>_epoch_<N>_clean.pth``: a flat backbone state dict (no prefix) with a ``cls_token``
  and a 4097-row sin-cos ``pos_embed`` (cls row first);
* task ``.pth`` files: ``{'state_dict': ..., 'meta': ...}`` with ``backbone.*`` plus ``head.*`` (pose) or
  ``decode_head.*`` (depth / normal); ``meta`` may hold numpy arrays;
* ``*_torchscript.pt2``: a traced model whose ``state_dict()`` carries the same names;
* safetensors, either written by ``geosapiens convert`` (timm names, metadata) or holding official names.

Pickles are only ever read with ``torch.load(weights_only=True)``; when a file needs numpy globals (pose
``meta.dataset_meta``), the retry allow-lists numpy's array/dtype/scalar reconstructors and nothing else.
Loading into a model is strict: a mismatch raises :class:`~geosapiens.errors.CheckpointError` naming the
missing, unexpected and wrongly shaped keys and the likely cause (wrong size, wrong family, padding).
"""

from __future__ import annotations

import json
import math
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from geosapiens.errors import CheckpointError
from geosapiens.models.sapiens_archs import FAMILIES, preset_for_shape

__all__ = [
    "METADATA_KEY",
    "SapiensCheckpoint",
    "detect_family",
    "load_backbone_state",
    "load_checkpoint",
    "load_head_state",
    "load_torchscript",
    "official_to_timm",
    "read_state_dict",
    "resize_pos_embed",
    "save_converted",
]

METADATA_KEY = "geosapiens"  # safetensors header entry holding the json written by `geosapiens convert`
TASK_GRID = (64, 48)  # every finetuned Sapiens model: 1024 x 768 input, 3072 pos-embed rows





# (official mmpretrain name, timm name); applied in order, anchored at the start of the key.
_BACKBONE_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^patch_embed\.projection\.", "patch_embed.proj."),
    (r"^layers\.(\d+)\.ln1\.", r"blocks.\1.norm1."),
    (r"^layers\.(\d+)\.attn\.qkv\.", r"blocks.\1.attn.qkv."),
    (r"^layers\.(\d+)\.attn\.proj\.", r"blocks.\1.attn.proj."),
    (r"^layers\.(\d+)\.ln2\.", r"blocks.\1.norm2."),
    (r"^layers\.(\d+)\.ffn\.layers\.0\.0\.", r"blocks.\1.mlp.fc1."),
    (r"^layers\.(\d+)\.ffn\.layers\.1\.", r"blocks.\1.mlp.fc2."),
    (r"^ln1\.", "norm."),  # the top-level ln1 is the final norm (layers.i.ln1 is matched above)
)
# Prefixes with no weights the model uses: the MAE decoder of non-clean pretrain files, preprocessor buffers.
_IGNORED_PREFIXES = ("neck.", "data_preprocessor.")


@dataclass
class SapiensCheckpoint:
    """An official (or converted) checkpoint split into timm-named backbone and head weights.

    Attributes:
        path: the file it came from.
        family: one of :data:`FAMILIES`.
        backbone: timm ``VisionTransformer`` names; class-token free, ``pos_embed`` (1, h*w, D).
        head: head weights under the official head-local names (``deconv_layers.0.weight``...);
            {} for pretrain.
        pos_embed_grid: (h, w) of ``backbone['pos_embed']``, None when the row count alone cannot tell.
        meta: the container's metadata (``meta`` of task files, the json of converted files).
    """

    path: str
    family: str
    backbone: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor] = field(default_factory=dict)
    pos_embed_grid: tuple[int, int] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def padding(self) -> int:
        return FAMILIES[self.family].padding

    @property
    def embed_dim(self) -> int:
        return int(self.backbone["patch_embed.proj.weight"].shape[0])

    @property
    def depth(self) -> int:
        return _num_blocks(self.backbone)

    @property
    def num_outputs(self) -> int | None:
        """Keypoints (pose) or output channels (depth 1, normal 3) of the head; None without a head."""
        for key in ("final_layer.weight", "conv_seg.weight"):
            if key in self.head:
                return int(self.head[key].shape[0])
        return None

    @property
    def preset(self) -> str | None:
        """The backbone preset with this embedding width and depth, if any."""
        return preset_for_shape(self.embed_dim, self.depth)


# ------------------------------------------------------------------------------------------------------------
# Reading containers


def _numpy_safe_globals() -> list[Any]:
    """numpy's array, dtype and scalar reconstructors, under both numpy 1.x and 2.x module names.

    Official files were pickled with numpy 1.x (``numpy.core.multiarray``); numpy 2 moved it to
    ``numpy._core``. Nothing here can run code beyond rebuilding numeric arrays.
    """
    import numpy as np
    import numpy.dtypes

    multiarray = np._core.multiarray
    allowed: list[Any] = [np.ndarray, np.dtype]
    for name in ("_reconstruct", "scalar"):
        fn = getattr(multiarray, name)
        allowed += [(fn, f"numpy._core.multiarray.{name}"), (fn, f"numpy.core.multiarray.{name}")]
    allowed += [getattr(numpy.dtypes, n) for n in numpy.dtypes.__all__ if n.endswith("DType")]
    return allowed


def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)``, retried with the numpy allow-list; never full unpickling."""
    kwargs = {"map_location": "cpu", "weights_only": True, "mmap": zipfile.is_zipfile(path)}
    try:
        return torch.load(path, **kwargs)
    except pickle.UnpicklingError:
        pass
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({err})") from err
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, **kwargs)
    except pickle.UnpicklingError as err:
        try:
            needed = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # noqa: BLE001 - legacy (non-zip) pickles cannot be scanned
            needed = []
        needed = [g for g in needed if not g.startswith("numpy.")] or ["(see below)"]
        raise CheckpointError(
            f"{path}: refused to unpickle: the file needs {', '.join(needed)}, which safe loading "
            "(torch.load weights_only=True, plus numpy arrays) does not allow. Full unpickling could run "
            "arbitrary code, so it is never done; re-save the weights as safetensors where you trust the "
            f"file. [{str(err).splitlines()[-1] if str(err) else type(err).__name__}]"
        ) from err
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({err})") from err


def _zip_names(path: Path) -> list[str]:
    if not zipfile.is_zipfile(path):
        return []
    with zipfile.ZipFile(path) as zf:
        return zf.namelist()


def load_torchscript(path: str | Path) -> torch.jit.ScriptModule:
    """``torch.jit.load`` on CPU; TorchScript runs no Python, unlike a pickle (its deprecation is known)."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit")
            return torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot load the TorchScript archive ({err})") from err


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read any supported container into (flat state dict, metadata) without interpreting the keys.

    The container is told by its content, not its name: safetensors header, TorchScript archive
    (``constants.pkl`` / ``code/``), ``torch.export`` archive (refused: tied to the exporting PyTorch), or a
    ``torch.save`` pickle (flat dict or ``{'state_dict', 'meta'}``).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{path}: no such checkpoint file (Sapiens: README, Checkpoints; a run's: <run>/checkpoints/)"
        )
    with open(path, "rb") as fh:
        head = fh.read(16)
    if path.suffix == ".safetensors" or (len(head) >= 9 and head[8:9] == b"{"):
        return _read_safetensors(path)
    names = _zip_names(path)
    if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
        module = load_torchscript(path)
        return {k: v.detach() for k, v in module.state_dict().items()}, {}
    if any("serialized_exported_program" in n or n.endswith("archive_format") for n in names):
        raise CheckpointError(
            f"{path}: a torch.export (bfloat16 .pt2) archive, tied to the PyTorch that exported it; "
            "use the *_torchscript.pt2 or the original .pth of the same model"
        )
    obj = _torch_load(path)
    if isinstance(obj, Mapping) and "state_dict" in obj:
        state_dict, meta = obj["state_dict"], dict(obj.get("meta") or {})
    else:
        state_dict, meta = obj, {}
    if not isinstance(state_dict, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state_dict.values()
    ):
        raise CheckpointError(
            f"{path}: not a state dict (expected a dict of tensors or {{'state_dict': ...}})"
        )
    return dict(state_dict), meta


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
            header = f.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: cannot read the safetensors file ({err})") from err
    meta: dict[str, Any] = dict(header)
    if METADATA_KEY in header:
        try:
            meta = json.loads(header[METADATA_KEY])
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{path}: malformed '{METADATA_KEY}' metadata ({err})") from err
    return tensors, meta


# ------------------------------------------------------------------------------------------------------------
# Key maps, family detection, pos-embed


def official_to_timm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename mmpretrain backbone keys (no prefix) to timm ``VisionTransformer`` keys (sapiens.md §2.2).

    Keys already in timm naming pass through unchanged, so the map is idempotent.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new = key
        for pattern, repl in _BACKBONE_RENAMES:
            new, n = re.subn(pattern, repl, new)
            if n:
                break
        out[new] = value
    return out


def _num_blocks(backbone: Mapping[str, torch.Tensor]) -> int:
    ids = {int(m.group(1)) for k in backbone if (m := re.match(r"blocks\.(\d+)\.", k))}
    return max(ids) + 1 if ids else 0


def detect_family(head: Mapping[str, torch.Tensor], has_head: bool) -> str:
    """Family from the head's keys: pose has ``final_layer``; depth/normal a ``conv_seg`` with 1/3 outputs."""
    if not has_head:
        return "pretrain"
    if "final_layer.weight" in head:
        return "pose"
    if "conv_seg.weight" in head:
        outputs = int(head["conv_seg.weight"].shape[0])
        for name, fam in FAMILIES.items():
            if fam.outputs == outputs:
                return name
        raise CheckpointError(
            f"decode_head.conv_seg has {outputs} outputs: a segmentation checkpoint, which is not supported "
            "(depth has 1 output, normal 3)"
        )
    raise CheckpointError(f"unrecognised head keys: {sorted(head)[:6]} (expected final_layer or conv_seg)")


def _split(state_dict: Mapping[str, torch.Tensor], path: Path) -> tuple[dict, dict, str]:
    """(backbone, head-local, head prefix) from a container's flat state dict."""
    keys = list(state_dict)
    if any(k.startswith("backbone.") for k in keys):
        backbone, head, unknown = {}, {}, []
        prefix = ""
        for k in keys:
            if k.startswith("backbone."):
                backbone[k[len("backbone.") :]] = state_dict[k]
            elif k.startswith(("head.", "decode_head.")):
                p, _, rest = k.partition(".")
                prefix = p + "."
                head[rest] = state_dict[k]
            elif not k.startswith(_IGNORED_PREFIXES):
                unknown.append(k)
        if unknown:
            raise CheckpointError(f"{path}: unexpected keys outside backbone/head: {unknown[:8]}")
        return backbone, head, prefix
    return {k: v for k, v in state_dict.items() if not k.startswith(_IGNORED_PREFIXES)}, {}, ""


def _grid_for(num_rows: int) -> tuple[int, int] | None:
    """The pos-embed grid a row count implies: square (pretrain) or 64 x 48 (every task model)."""
    side = math.isqrt(num_rows)
    if side * side == num_rows:
        return side, side
    if num_rows == TASK_GRID[0] * TASK_GRID[1]:
        return TASK_GRID
    return None


def resize_pos_embed(
    pos_embed: torch.Tensor,
    new_grid: tuple[int, int],
    old_grid: tuple[int, int],
    num_prefix_tokens: int = 0,
) -> torch.Tensor:
    """Bicubic resize of (1, prefix + h*w, D) position embeddings, as Sapiens does it.

    ``align_corners=False`` and **no antialias**: timm's ``resample_abs_pos_embed`` antialiases by
    default, which also switches bicubic to a different kernel, so it differs from the official numerics.
    Prefix rows are kept as they are.
    """
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    if grid.shape[1] != old_grid[0] * old_grid[1]:
        raise ValueError(f"pos_embed has {grid.shape[1]} grid rows, not {old_grid[0]}x{old_grid[1]}")
    dim = grid.shape[-1]
    img = grid.float().reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)
    img = F.interpolate(img, size=tuple(new_grid), mode="bicubic", align_corners=False, antialias=False)
    grid = img.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)


def _family_signature(family: str) -> str:
    fam = FAMILIES[family]
    if not fam.head_prefix:
        return "backbone only, no head"
    if fam.outputs is None:
        return f"{fam.head_prefix}final_layer.*"
    return f"{fam.head_prefix}conv_seg.* with {fam.outputs} output{'s' if fam.outputs > 1 else ''}"


def _head_signature(head: Mapping[str, torch.Tensor], prefix: str) -> str:
    for key in ("final_layer.weight", "conv_seg.weight"):
        if key in head:
            return f"{prefix}{key} {tuple(head[key].shape)}"
    return "no head keys"


def load_checkpoint(
    path: str | Path,
    family: str | None = None,
    source_grid: tuple[int, int] | None = None,
) -> SapiensCheckpoint:
    """Read a Sapiens checkpoint of any container and family into timm-named parts.

    Args:
        path: ``*_clean.pth``, task ``.pth``, ``*_torchscript.pt2`` or ``.safetensors``.
        family: the family the caller expects; a file of another family raises :class:`CheckpointError`.
            None = detected from the head keys.
        source_grid: (h, w) of the file's pos-embed grid when its row count does not tell (not square,
            not 3072).

    The class token of pretrain files is dropped with its pos-embed row, as the official finetunes do
    (``with_cls_token=False``); the remaining grid is resized to the model's when it is loaded.
    """
    path = Path(path)
    state_dict, meta = read_state_dict(path)
    raw_backbone, head, prefix = _split(state_dict, path)
    backbone = official_to_timm(raw_backbone)
    if "patch_embed.proj.weight" not in backbone or "pos_embed" not in backbone:
        raise CheckpointError(
            f"{path}: no Sapiens backbone found (no patch_embed.projection.weight / pos_embed; keys start "
            f"{sorted(state_dict)[:5]})"
        )
    converted = meta.get("format") == METADATA_KEY
    try:
        found = meta["family"] if converted else detect_family(head, has_head=bool(head))
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from err
    if found not in FAMILIES:
        raise CheckpointError(f"{path}: unknown family {found!r} (known: {', '.join(FAMILIES)})")
    if not converted and head and prefix != FAMILIES[found].head_prefix:
        raise CheckpointError(
            f"{path}: a {found} head stored under {prefix!r}, expected {FAMILIES[found].head_prefix!r}"
        )
    if family is not None and family != found:
        if family not in FAMILIES:
            raise CheckpointError(f"{path}: unknown family {family!r} (known: {', '.join(FAMILIES)})")
        raise CheckpointError(
            f"{path}: wrong family: expected a {family} checkpoint ({_family_signature(family)}), "
            f"but the file is a {found} checkpoint ({_head_signature(head, prefix)})"
        )

    pos = backbone["pos_embed"]
    if "cls_token" in backbone:
        backbone.pop("cls_token")
        pos = pos[:, 1:]
    backbone["pos_embed"] = pos
    if source_grid is not None:
        grid = tuple(source_grid)
    elif converted:
        grid = tuple(meta["pos_embed_grid"])
    else:
        grid = _grid_for(pos.shape[1])
    if grid is not None and grid[0] * grid[1] != pos.shape[1]:
        raise CheckpointError(f"{path}: pos_embed has {pos.shape[1]} rows, not a {grid[0]}x{grid[1]} grid")
    return SapiensCheckpoint(str(path), found, backbone, head, grid, meta)


# ------------------------------------------------------------------------------------------------------------
# Strict loading with explanations


def _describe(sd: Mapping[str, torch.Tensor]) -> str:
    if "patch_embed.proj.weight" not in sd:
        return "no patch embedding"
    dim, depth = int(sd["patch_embed.proj.weight"].shape[0]), _num_blocks(sd)
    preset = preset_for_shape(dim, depth)
    return f"embed dim {dim}, depth {depth}" + (f" = {preset}" if preset else "")


def _mismatch(
    ours: Mapping[str, torch.Tensor], theirs: Mapping[str, torch.Tensor]
) -> tuple[list[str], list[str], list[str]]:
    missing = [k for k in ours if k not in theirs]
    unexpected = [k for k in theirs if k not in ours]
    shapes = [
        f"{k} {tuple(theirs[k].shape)} vs {tuple(ours[k].shape)}"
        for k in ours
        if k in theirs and theirs[k].shape != ours[k].shape
    ]
    return missing, unexpected, shapes


def _mismatch_error(path: str, what: str, missing, unexpected, shapes, causes: list[str]) -> CheckpointError:
    def some(items: list[str]) -> str:
        return ", ".join(items[:6]) + (f" (+{len(items) - 6} more)" if len(items) > 6 else "")

    parts = [f"{path}: the weights do not fit the {what}"]
    if missing:
        parts.append(f"missing keys: {some(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {some(unexpected)}")
    if shapes:
        parts.append(f"wrong shapes (file vs model): {some(shapes)}")
    parts += [f"likely cause: {c}" for c in causes]
    return CheckpointError("; ".join(parts))


def load_backbone_state(model: nn.Module, checkpoint: SapiensCheckpoint) -> None:
    """Load a checkpoint's backbone into a ``SapiensViT`` strictly, ``pos_embed`` resized to its grid.

    Raises:
        CheckpointError: keys or shapes differ (naming them and the likely cause: another model size),
            or a task family trained with a patch padding other than the model's.
    """
    fam = FAMILIES[checkpoint.family]
    padding = getattr(model, "patch_padding", 0)
    if checkpoint.family != "pretrain" and padding != fam.padding:
        raise CheckpointError(
            f"{checkpoint.path}: {checkpoint.family} weights were trained with {fam.padding}-px patch "
            f"padding, but the backbone uses {padding} px (build it with patch_padding={fam.padding} or "
            f"family='{checkpoint.family}')"
        )
    state = dict(checkpoint.backbone)
    ours = model.state_dict()
    grid = tuple(model.patch_embed.grid_size)
    pos = state.get("pos_embed")
    if pos is not None and "pos_embed" in ours and pos.shape[-1] == ours["pos_embed"].shape[-1]:
        src = checkpoint.pos_embed_grid or (grid if pos.shape[1] == grid[0] * grid[1] else None)
        if src is None:
            raise CheckpointError(
                f"{checkpoint.path}: cannot tell the grid of a {pos.shape[1]}-row pos_embed (not square, not "
                f"{TASK_GRID[0]}x{TASK_GRID[1]}); pass source_grid=(h, w) to load_checkpoint"
            )
        state["pos_embed"] = resize_pos_embed(pos, grid, src)
    missing, unexpected, shapes = _mismatch(ours, state)
    if missing or unexpected or shapes:
        causes = []
        if _describe(state) != _describe(ours):
            causes.append(f"wrong model size: the file has {_describe(state)}, the model {_describe(ours)}")
        raise _mismatch_error(checkpoint.path, "backbone", missing, unexpected, shapes, causes)
    model.load_state_dict(state, strict=True)


def load_head_state(head: nn.Module, checkpoint: SapiensCheckpoint, state: Mapping | None = None) -> None:
    """Load a checkpoint's head weights (or ``state``, derived from them) strictly into an official head.

    Raises:
        CheckpointError: naming missing/unexpected keys and the likely cause (pose ``head.final_layer`` vs
            depth/normal ``decode_head.conv_seg``, another keypoint count, another width).
    """
    state = dict(checkpoint.head if state is None else state)
    ours = head.state_dict()
    missing, unexpected, shapes = _mismatch(ours, state)
    if not (missing or unexpected or shapes):
        head.load_state_dict(state, strict=True)
        return
    causes = []
    if ("final_layer.weight" in ours) != ("final_layer.weight" in state) or not state:
        kind = (
            "pose heatmap head (head.final_layer)"
            if "final_layer.weight" in ours
            else "dense head (decode_head.conv_seg)"
        )
        causes.append(f"wrong family: the file is a {checkpoint.family} checkpoint, the module a {kind}")
    for key in ("final_layer.weight", "conv_seg.weight"):
        if key in ours and key in state and ours[key].shape[0] != state[key].shape[0]:
            causes.append(f"the file has {state[key].shape[0]} outputs, the head {ours[key].shape[0]}")
    first = next((k for k in ours if k.endswith("0.weight")), None)
    if first and first in state and ours[first].shape[0] != state[first].shape[0]:
        causes.append(
            f"the head input width differs: file {state[first].shape[0]}, head {ours[first].shape[0]}"
        )
    raise _mismatch_error(checkpoint.path, f"{type(head).__name__}", missing, unexpected, shapes, causes)


def save_converted(ckpt: SapiensCheckpoint, out: str | Path) -> dict:
    """Write ``ckpt`` as safetensors with the metadata header; returns that metadata."""
    from safetensors.torch import save_file

    if ckpt.pos_embed_grid is None:
        raise CheckpointError(f"{ckpt.path}: unknown pos_embed grid; pass --grid H W")
    meta = {
        "format": METADATA_KEY,
        "preset": ckpt.preset,
        "family": ckpt.family,
        "patch_padding": ckpt.padding,
        "pos_embed_grid": list(ckpt.pos_embed_grid),
        "num_outputs": ckpt.num_outputs,
        "source": Path(ckpt.path).name,
    }
    prefix = FAMILIES[ckpt.family].head_prefix
    tensors = {f"backbone.{k}": v.contiguous() for k, v in ckpt.backbone.items()}
    tensors.update({f"{prefix}{k}": v.contiguous() for k, v in ckpt.head.items()})
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out), metadata={METADATA_KEY: json.dumps(meta)})
    return meta
