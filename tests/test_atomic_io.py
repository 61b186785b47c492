"""Atomic writes: a failure, a kill or a full disk during a save leaves the previous file whole, loadable."""

from __future__ import annotations

import errno
import io
import json
import multiprocessing
import os
import resource
import signal
import stat
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

import geosapiens.io as gio
from geosapiens.callbacks.checkpoint_io import AtomicCheckpointIO
from geosapiens.io import atomic_torch_save, atomic_write, atomic_write_json

# Children start with torch imported (no 5 s import). They must not start torch's OpenMP pool (which does not
# survive a fork): what they save is built here, before the fork.
FORK = multiprocessing.get_context("fork")


def leftovers(folder: Path) -> list[str]:
    """Temporary files left beside the targets."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def checkpoint(step: int, numel: int = 1000) -> dict:
    return {"step": step, "weights": torch.full((numel,), float(step))}


def assert_is_checkpoint(path: Path, step: int) -> None:
    loaded = torch.load(path, weights_only=True)
    assert loaded["step"] == step and bool((loaded["weights"] == step).all())


class FullDisk(io.FileIO):
    """A file on a disk with ``room`` bytes left: writes beyond it fail with ENOSPC, as the kernel's do."""

    room = 4096

    def write(self, data) -> int:
        if FullDisk.room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = min(len(data), FullDisk.room)
        FullDisk.room -= n
        return super().write(memoryview(data)[:n])


def open_on_full_disk(fd: int, mode: str, **kwargs):
    raw = FullDisk(fd, "wb")
    return io.BufferedWriter(raw) if mode == "wb" else io.TextIOWrapper(io.BufferedWriter(raw), **kwargs)


# --------------------------------------------------------------------------------------------- atomic_write


def test_replaces_the_file_whole_and_keeps_its_permissions(tmp_path):
    path = tmp_path / "results.json"
    atomic_write_json({"ap": 0.5}, path)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # as open() would have made it
    os.chmod(path, 0o640)
    atomic_write_json({"ap": 0.75, "name": "bébé"}, path)
    assert json.loads(path.read_text(encoding="utf-8")) == {"ap": 0.75, "name": "bébé"}
    assert path.read_text(encoding="utf-8").endswith("}\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    with atomic_write(path, "wb") as f:
        f.write(b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01" and leftovers(tmp_path) == []


def test_an_error_inside_the_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "last.ckpt"
    atomic_torch_save(checkpoint(1), path)
    with pytest.raises(RuntimeError, match="interrupted") as err:
        with atomic_write(path) as f:
            f.write(b"half a checkpoint")
            raise RuntimeError("interrupted")
    assert err.value.__notes__ == [f"{path} was not written: the previous file was kept unchanged."]
    assert_is_checkpoint(path, 1)
    assert leftovers(tmp_path) == []

    with pytest.raises(TypeError, match="not JSON serializable"):  # fails mid-way through json.dump
        atomic_write_json({"ok": 1, "bad": object()}, tmp_path / "new.json")
    assert not (tmp_path / "new.json").exists() and leftovers(tmp_path) == []


def test_only_whole_file_modes(tmp_path):
    for mode in ("a", "r+", "xb", "ab"):
        with pytest.raises(ValueError, match="mode must be 'wb' or 'w'"):
            with atomic_write(tmp_path / "x", mode):
                pass


def test_full_disk_is_a_clear_error_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    atomic_torch_save(checkpoint(1, numel=100_000), path)
    monkeypatch.setattr(gio, "open", open_on_full_disk, raising=False)
    FullDisk.room = 64 * 1024  # the disk fills up part-way through the 400 kB tensor
    with pytest.raises(OSError) as err:
        atomic_torch_save(checkpoint(2, numel=100_000), path)
    assert err.value.errno == errno.ENOSPC
    assert str(err.value) == (
        f"[Errno 28] No space left on device while writing {path}: the previous file was kept unchanged. "
        "Free some space (or raise the quota) and save again."
    )
    assert_is_checkpoint(path, 1)
    assert leftovers(tmp_path) == []

    FullDisk.room = 10
    with pytest.raises(OSError, match=r"while writing .*new\.json: no file was created\. Free some space"):
        atomic_write_json({"x": list(range(100))}, tmp_path / "new.json")
    assert not (tmp_path / "new.json").exists() and leftovers(tmp_path) == []


def test_full_disk_reported_at_fsync_keeps_the_previous_file(tmp_path, monkeypatch):
    """Filesystems with delayed allocation (ext4, XFS, NFS) report ENOSPC only at fsync or close."""
    path = tmp_path / "last.ckpt"
    atomic_torch_save(checkpoint(1), path)

    def fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(gio.os, "fsync", fsync)
    with pytest.raises(OSError, match="No space left on device while writing .*the previous file was kept"):
        atomic_torch_save(checkpoint(2), path)
    assert_is_checkpoint(path, 1)
    assert leftovers(tmp_path) == []


def test_missing_folder_names_the_file(tmp_path):
    path = tmp_path / "absent" / "x.pt"
    with pytest.raises(FileNotFoundError, match=f"while writing {path}: no file was created"):
        atomic_torch_save(checkpoint(1), path)


# ------------------------------------------------------------------------------------ real processes


def _slow_save(obj: dict, path: str) -> None:
    """Child: save ``obj`` to a slow disk (64 kB per write call, 3 ms each: 16 MB take 0.8 s)."""

    class SlowDisk(io.FileIO):
        def write(self, data) -> int:
            time.sleep(0.003)
            return super().write(memoryview(data)[: 64 * 1024])

    gio.open = lambda fd, mode, **kwargs: io.BufferedWriter(SlowDisk(fd, "wb"), buffer_size=64 * 1024)
    atomic_torch_save(obj, path)


def test_sigkill_during_a_save_leaves_the_previous_checkpoint_loadable(tmp_path):
    path = tmp_path / "last.ckpt"
    atomic_torch_save(checkpoint(1, numel=4_000_000), path)
    full_size = path.stat().st_size
    child = FORK.Process(target=_slow_save, args=(checkpoint(2, numel=4_000_000), str(path)))
    child.start()
    deadline = time.monotonic() + 60
    partial = 0
    while partial < 2**20 and child.is_alive() and time.monotonic() < deadline:  # 1 MiB written
        temps = [tmp_path / name for name in leftovers(tmp_path)]
        partial = temps[0].stat().st_size if temps else 0
        time.sleep(0.005)
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    assert child.exitcode == -signal.SIGKILL and partial >= 2**20, "the child never got 1 MiB into its save"
    (temp,) = leftovers(tmp_path)  # killed outright: its temporary file stays, half-written
    assert 2**20 <= (tmp_path / temp).stat().st_size < full_size
    assert_is_checkpoint(path, 1)
    atomic_torch_save(checkpoint(3), path)  # the next save works as usual
    assert_is_checkpoint(path, 3)


def _save_over_size_limit(obj: dict, path: str, out) -> None:
    """Child: a real write failure from the kernel (EFBIG past RLIMIT_FSIZE) under torch's C++ writer."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    try:
        atomic_torch_save(obj, path)
        out.send(None)
    except OSError as e:
        out.send((e.errno, str(e)))


def test_a_real_write_failure_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    atomic_torch_save(checkpoint(1), path)
    receive, send = FORK.Pipe(duplex=False)
    child = FORK.Process(target=_save_over_size_limit, args=(checkpoint(2, numel=1_000_000), str(path), send))
    child.start()
    result = receive.recv() if receive.poll(60) else "no answer within 60 s"
    child.kill()
    child.join()
    assert result == (
        errno.EFBIG,
        f"[Errno 27] File too large while writing {path}: the previous file was kept unchanged. "
        "Free some space (or raise the quota) and save again.",
    )
    assert_is_checkpoint(path, 1)
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------------ Lightning


class TinyRegression(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(tmp_path: Path, max_epochs: int) -> tuple[TinyRegression, L.Trainer]:
    x = torch.randn(32, 2)
    data = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)
    model = TinyRegression()
    trainer = L.Trainer(
        max_epochs=max_epochs,
        plugins=[AtomicCheckpointIO()],
        callbacks=[
            ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=-1, enable_version_counter=False)
        ],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(model, data)
    return model, trainer


def test_checkpoint_io_writes_lightning_checkpoints_that_load(tmp_path):
    model, trainer = _fit(tmp_path, max_epochs=2)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "epoch=0-step=4.ckpt",
        "epoch=1-step=8.ckpt",
        "last.ckpt",
    ]
    last = trainer.strategy.checkpoint_io.load_checkpoint(tmp_path / "last.ckpt")
    assert last["epoch"] == 1 and last["global_step"] == 8
    restored = TinyRegression.load_from_checkpoint(tmp_path / "last.ckpt")
    torch.testing.assert_close(restored.layer.weight, model.layer.weight)


def test_full_disk_during_training_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    _fit(tmp_path, max_epochs=1)
    before = (tmp_path / "last.ckpt").read_bytes()

    def fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(gio.os, "fsync", fsync)
    with pytest.raises(
        OSError, match=r"No space left on device while writing .*\.ckpt: the previous file was kept"
    ):
        _fit(tmp_path, max_epochs=1)  # the same file names again: the first save replaces a file, and fails
    assert (tmp_path / "last.ckpt").read_bytes() == before
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["epoch"] == 0
    assert leftovers(tmp_path) == []
