"""Global RNG states travel with checkpoints, so randomness in a training step (dropout, drop-path) resumes.

Data randomness is keyed per sample (:mod:`geosapiens.data.sampling`) and needs nothing; what is left is the
global torch / numpy / Python RNG that modules draw from during training. ``seed_everything`` alone would
replay the stream from its start after a resume; with this callback a resumed run draws what the uninterrupted
run would have drawn.
"""

from __future__ import annotations

import random
from typing import Any

import lightning.pytorch as L
import numpy as np
import torch


def rng_states() -> dict[str, Any]:
    """The global torch (CPU and CUDA), numpy and Python RNG states, as tensors and plain values only (a
    checkpoint with them still loads with ``torch.load(weights_only=True)``)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": random.getstate(),
    }


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` returned."""
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    name, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, state, gauss = states["python"]
    random.setstate((version, tuple(state), gauss))


class RestoreRNG(L.Callback):
    """Save the global RNG states in the checkpoint; put them back when training (re)starts.

    They are restored in ``on_train_start``, after everything Lightning does before the first step, so the
    next draw is the one the step after the checkpoint made. The project's loaders draw their worker seeds
    from private generators, so a validation run or a new pass between checkpoint and step changes nothing.
    Under DDP a checkpoint holds rank 0's states and every rank gets them back: ``seed_everything`` gives all
    ranks one seed, so those are the states every rank had.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return rng_states()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict or None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending is not None:
            set_rng_states(self._pending)
            self._pending = None
