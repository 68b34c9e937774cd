"""Writes that either happen completely or not at all.

A file is written beside its target and renamed over it. A directory is built beside its target and
swapped in with one `renameat2(RENAME_EXCHANGE)` where Linux offers it, so a reader (or a crash) sees
the old complete directory or the new complete one, never a mixture.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import SlimformerError

_RENAME_EXCHANGE = 2


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path: str | Path, data: bytes) -> None:
    """Replace `path` with `data` atomically (temp file in the same directory + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode())


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directory entries (Linux renameat2). False where unsupported."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    if not hasattr(libc, "renameat2"):
        return False
    at_fdcwd = -100
    rc = libc.renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a fresh staging directory; on clean exit it replaces `target` in one step.

    On an exception the staging directory is removed and `target` is untouched. Staging names start
    with `.` and end in `.partial`, so nothing ever mistakes them for a finished model dir.
    """
    target = Path(target).absolute()
    cwd = Path.cwd()
    if target == cwd or target in cwd.parents or target == Path.home():
        # Swapping in a new dir would move the user's working (or home) directory away and delete it.
        raise SlimformerError(f"refusing to replace {target}: it is the current, a parent or the home "
                              "directory; write to a new directory instead")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        yield staging
        for f in staging.iterdir():
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        fsync_dir(staging)
        if target.exists():
            if not _exchange(staging, target):
                # Fallback (non-Linux): two renames; a crash in between leaves the old dir as *.old.
                old = target.with_name(f".{target.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.rename(target, old)
                os.rename(staging, target)
                staging = old
            shutil.rmtree(staging, ignore_errors=True)  # now holds the previous version
        else:
            os.rename(staging, target)
        fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
