"""Atomic file writing: a crash, a kill or a full disk never leaves a half-written file where a good one was.

Every writer here writes a temporary file in the target's own directory, flushes and fsyncs it, then
``os.replace``s it over the target (atomic within one filesystem, POSIX and Windows) and fsyncs the directory
so that the rename survives a power cut. Until the replace the previous file is untouched; after it the new
file is complete. On an error the temporary file is removed; only a process killed outright (SIGKILL, power
loss) can leave one behind, named ``.<target name>.<random>.tmp`` beside the target, never the target itself.
Lightning checkpoints are written so by :class:`~geosapiens.callbacks.checkpoint_io.AtomicCheckpointIO`.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch

__all__ = [
    "expand_path",
    "atomic_write",
    "atomic_write_file",
    "atomic_torch_save",
    "atomic_write_json",
]

# Errors that mean "no room": the message tells the user to free space.
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def expand_path(path: str) -> str:
    """``path`` as a run reads it: ``$VARS`` and a leading ``~`` expanded (an unset variable stays as written,
    for the reader to name). Configs say ``$GEOSAPIENS_DATA/SyRIP`` so that one environment variable points
    every config at the user's datasets."""
    if "$" not in path and not path.startswith("~"):
        return path
    return os.path.expanduser(os.path.expandvars(path))


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", *, encoding: str | None = None) -> Iterator[IO]:
    """Open ``path`` for writing so that it ends up either complete or as it was before.

    Writes go to a temporary file beside ``path``; when the ``with`` block ends without an error the file is
    fsynced and renamed over ``path``. The new file keeps the permissions of the one it replaces (a new file
    gets the usual ``0o666 & ~umask``). A symlink at ``path`` is replaced by the file, not followed.

    Args:
        path: the file to (re)write; its folder must exist.
        mode: ``"wb"`` (binary) or ``"w"`` (text).
        encoding: text encoding for ``mode="w"`` (default UTF-8).

    Raises:
        OSError: when writing fails (same errno), with a message naming ``path`` and saying that the previous
            file was kept; on a full disk or quota it says so and asks to free space.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write replaces the whole file: mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    existed = path.exists()
    tmp: Path | None = None
    try:
        tmp, fd = _create_temp(path)
        text = {} if "b" in mode else {"encoding": encoding or "utf-8"}
        with open(fd, mode, **text) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except BaseException as e:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        kept = "the previous file was kept unchanged" if existed else "no file was created"
        if isinstance(e, OSError) and e.errno is not None:
            hint = " Free some space (or raise the quota) and save again." if e.errno in _NO_SPACE else ""
            raise OSError(e.errno, f"{e.strerror or e} while writing {path}: {kept}.{hint}") from e
        e.add_note(f"{path} was not written: {kept}.")
        raise
    _fsync_directory(path.parent)


def atomic_write_file(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write text (UTF-8) or bytes to ``path`` with :func:`atomic_write`, creating its folder; returns it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)
    return path


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` through :func:`atomic_write`, streamed (no second copy in memory)."""
    with atomic_write(path, "wb") as f:
        guard = _WriteGuard(f)
        try:
            torch.save(obj, guard)
        except RuntimeError:
            # torch's C++ writer turns the OSError of a failed write (ENOSPC) into "unexpected pos ...";
            # give atomic_write the real error so the user reads "No space left on device".
            if guard.error is not None:
                raise guard.error from None
            raise


def atomic_write_json(obj: Any, path: str | os.PathLike, *, indent: int | None = 2, **kwargs: Any) -> None:
    """``json.dump(obj)`` to ``path`` (UTF-8, newline-terminated) through :func:`atomic_write`.

    ``kwargs`` go to :func:`json.dump` (``sort_keys``, ``allow_nan``, ``default``...). An object that cannot
    be serialised leaves ``path`` as it was.
    """
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=indent, **kwargs)
        f.write("\n")


class _WriteGuard:
    """A file-like ``write`` that keeps the OSError it raised (torch.save hides it behind a RuntimeError)."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self._f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        try:
            self._f.flush()
        except OSError as e:
            self.error = e
            raise


def _create_temp(path: Path) -> tuple[Path, int]:
    """A new, empty, exclusively created temporary file beside ``path``: (its path, an open descriptor)."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        mode = None  # no previous file: os.open's 0o666 with the process umask, as open() would give
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    while True:
        tmp = path.with_name(f".{path.name[:200]}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
        if mode is not None:
            try:
                os.chmod(tmp, mode)
            except BaseException:
                os.close(fd)
                tmp.unlink(missing_ok=True)
                raise
        return tmp, fd


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable; a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems (and all of Windows) refuse fsync on a directory: the data itself is synced
    finally:
        os.close(fd)
