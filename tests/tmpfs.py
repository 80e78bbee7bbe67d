"""A size-limited tmpfs for a test's target dir, as an emptyDir with `sizeLimit` is (needs root).

    mount -t tmpfs -o size=<size>,mode=0755 tmpfs <dir>     umounted in `finally`

`fill` then takes every free block, the way another writer of a shared emptyDir could, so the next
write that needs a block fails with ENOSPC; deleting the filler gives the space back.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.root import needs_root

__all__ = ["FILLER", "fill", "free_bytes", "tmpfs"]

FILLER = "..filler"  # a `..` name: never one of the app's links, never one of the sidecar's leftovers


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """`path` with a fresh tmpfs of `size` (mount(8) syntax, e.g. "2m") mounted on it."""
    needs_root("mounts a tmpfs: CAP_SYS_ADMIN")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        check=True,
        capture_output=True,
        timeout=10,
    )
    try:
        yield path
    finally:
        done = subprocess.run(["umount", str(path)], capture_output=True, timeout=10)
        if done.returncode != 0:  # still busy (a process of the test not reaped yet): detach it
            subprocess.run(["umount", "--lazy", str(path)], capture_output=True, timeout=10)


def fill(directory: Path) -> Path:
    """Write `directory/..filler` until the filesystem has no free block left; returns its path."""
    path = directory / FILLER
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        for chunk in (1 << 20, 1 << 16, 1 << 12, 1):
            block = b"\0" * chunk
            try:
                while True:
                    os.write(fd, block)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
    finally:
        os.close(fd)
    return path


def free_bytes(directory: Path) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize
