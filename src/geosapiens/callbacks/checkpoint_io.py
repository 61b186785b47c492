"""Atomic Lightning checkpoints: a kill or a full disk during a save keeps the previous checkpoint loadable.

Lightning's default ``TorchCheckpointIO`` also calls its save atomic, but it serialises the whole checkpoint
into memory, writes it to the *system* temporary folder through an fsspec transaction and ``shutil.move``s it
into place, without fsync. When ``/tmp`` is another filesystem than the checkpoint folder (a tmpfs, a
node-local disk beside network storage: the usual cluster setup) that move is a copy into the target path, so
a kill or a full disk during it leaves a truncated checkpoint. :class:`AtomicCheckpointIO` writes in place
with :func:`~geosapiens.io.atomic_torch_save`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from geosapiens.io import atomic_torch_save

__all__ = ["AtomicCheckpointIO"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that saves atomically in place: ``Trainer(plugins=[AtomicCheckpointIO()])``.

    Local paths are written with :func:`atomic_torch_save`: a kill or a full disk during a save leaves the
    previous checkpoint loadable. Remote URLs (``s3://``, ``gs://`` ...) go through Lightning's own writer:
    an object store's upload is already all-or-nothing. Loading and removal are Lightning's.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint does not take storage_options")
        fs, local = fsspec.core.url_to_fs(str(path))
        if not isinstance(fs, LocalFileSystem):
            super().save_checkpoint(checkpoint, path)
            return
        Path(local).parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(checkpoint, local)
