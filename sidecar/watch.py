"""Source dir -> a stream of "change" / "resync" ticks, debounced.

On Linux the kernel's inotify is read straight from the event loop: a change is seen within a
millisecond and an idle sidecar makes no wake-ups at all. (watchfiles polls its Rust notifier every
`step` ms from a thread: 50 ms of latency by default, and a small step costs idle CPU in every pod.)
watchfiles is the fallback where inotify is unavailable or out of watches (`fs.inotify.max_user_watches`).

Kubelet volumes change by renaming `..data`; the per-version `..<timestamp>` dirs, `..data_tmp` and
other `..*` names are the kubelet's bookkeeping and ignored. A plain directory edited in place is
watched recursively.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Literal

import structlog

__all__ = ["Tick", "changes"]

Tick = Literal["change", "resync"]
log = structlog.get_logger("watch")

_IN_MODIFY, _IN_ATTRIB, _IN_CLOSE_WRITE = 0x2, 0x4, 0x8
_IN_MOVED_FROM, _IN_MOVED_TO, _IN_CREATE, _IN_DELETE = 0x40, 0x80, 0x100, 0x200
_IN_DELETE_SELF, _IN_MOVE_SELF, _IN_Q_OVERFLOW, _IN_IGNORED, _IN_ISDIR = 0x400, 0x800, 0x4000, 0x8000, 0x40000000
_MASK = (
    _IN_MODIFY
    | _IN_ATTRIB
    | _IN_CLOSE_WRITE
    | _IN_MOVED_FROM
    | _IN_MOVED_TO
    | _IN_CREATE
    | _IN_DELETE
    | _IN_DELETE_SELF
    | _IN_MOVE_SELF
)
_HEADER = struct.Struct("iIII")
_MAX_WAIT_FACTOR, _MAX_WAIT_MIN_S = 10, 2.0


def _relevant(name: str) -> bool:
    return not name.startswith("..") or name == "..data"


class _Inotify:
    """A non-blocking inotify fd with recursive watches on the non-hidden directories of `root`."""

    def __init__(self, root: Path, dirty: asyncio.Event) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1: " + os.strerror(ctypes.get_errno()))
        self.fd, self._dirty = fd, dirty
        self._dirs: dict[int, Path] = {}
        self._add_tree(root, root=True)

    def _add(self, path: Path) -> None:
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(path), _MASK)
        if wd < 0:
            err = ctypes.get_errno()
            if err in (errno.ENOSPC, errno.ENOMEM):
                raise OSError(err, f"inotify watch on {path}: {os.strerror(err)} (fs.inotify.max_user_watches)")
            return  # vanished or unreadable: the next event or resync covers it
        self._dirs[wd] = path

    def _add_tree(self, path: Path, root: bool = False) -> None:
        self._add(path)
        if root and (path / "..data").exists():
            return  # kubelet volume: only the top dir's ..data rename matters
        with contextlib.suppress(OSError):
            for entry in os.scandir(path):
                if not entry.name.startswith("..") and entry.is_dir(follow_symlinks=False):
                    self._add_tree(Path(entry.path))

    def on_readable(self) -> None:
        try:
            buf = os.read(self.fd, 64 * 1024)
        except BlockingIOError:
            return
        offset, changed = 0, False
        while offset < len(buf):
            wd, mask, _cookie, length = _HEADER.unpack_from(buf, offset)
            raw = buf[offset + _HEADER.size : offset + _HEADER.size + length]
            offset += _HEADER.size + length
            name = raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            if mask & _IN_Q_OVERFLOW:
                changed = True
            elif mask & _IN_IGNORED:
                self._dirs.pop(wd, None)
            elif not name or _relevant(name):
                changed = True
                if name and mask & _IN_ISDIR and mask & (_IN_CREATE | _IN_MOVED_TO) and wd in self._dirs:
                    with contextlib.suppress(OSError):
                        self._add_tree(self._dirs[wd] / name)
        if changed:
            self._dirty.set()

    def close(self) -> None:
        os.close(self.fd)


async def _watchfiles_fallback(source: Path, dirty: asyncio.Event, stop: asyncio.Event) -> None:
    import watchfiles

    async for batch in watchfiles.awatch(
        source,
        stop_event=stop,
        debounce=50,
        step=50,
        force_polling=None,
        watch_filter=lambda _c, p: _relevant(Path(p).name),
    ):
        if batch:
            dirty.set()


async def _wait(event: asyncio.Event, stop: asyncio.Event, seconds: float | None) -> None:
    waiters = {asyncio.ensure_future(event.wait()), asyncio.ensure_future(stop.wait())}
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


async def changes(source: Path, *, debounce_ms: int, resync_s: float, stop: asyncio.Event) -> AsyncIterator[Tick]:
    """Yield "change" once a burst of changes has been quiet for `debounce_ms` (but at most
    max(2 s, 10 x debounce) after its first event, so a never-ending stream still gets through), and
    "resync" every `resync_s` seconds without changes (0 = never)."""
    loop = asyncio.get_running_loop()
    dirty = asyncio.Event()
    notify: _Inotify | None = None
    fallback: asyncio.Task[None] | None = None
    try:
        notify = _Inotify(source, dirty)
        loop.add_reader(notify.fd, notify.on_readable)
        log.debug("watching", source=str(source), backend="inotify")
    except (OSError, AttributeError) as e:
        log.warning("inotify_unavailable", source=str(source), error=str(e), backend="watchfiles")
        notify = None
        fallback = asyncio.create_task(_watchfiles_fallback(source, dirty, stop))
    debounce_s = debounce_ms / 1000
    max_wait = max(_MAX_WAIT_MIN_S, _MAX_WAIT_FACTOR * debounce_s)
    try:
        while not stop.is_set():
            await _wait(dirty, stop, resync_s or None)
            if stop.is_set():
                return
            if not dirty.is_set():
                yield "resync"
                continue
            first = loop.time()
            while debounce_s > 0:
                dirty.clear()
                left = first + max_wait - loop.time()
                if left <= 0:
                    break
                await _wait(dirty, stop, min(debounce_s, left))
                if not dirty.is_set() or stop.is_set():
                    break
            dirty.clear()
            yield "change"
    finally:
        if notify is not None:
            loop.remove_reader(notify.fd)
            notify.close()
        if fallback is not None:
            fallback.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await fallback
