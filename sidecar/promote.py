"""`Snapshot` -> target dir, the way the kubelet projects a volume, so the app never sees a torn version.

    target/
      ..v-1f2e3d4c5b6a7980/      one complete version (written to ..tmp-*, fsynced, then renamed)
      ..v-0a1b2c3d4e5f6789/      older versions kept for rollback (RELOAD_HISTORY)
      ..data -> ..v-1f2e3d4c5b6a7980   swapped with one rename(2) of ..data_tmp
      nginx.conf -> ..data/nginx.conf  one link per top-level name

Every step is a rename or a symlink, so a SIGKILL at any instant leaves `..data` on a complete version;
leftovers (`..tmp-*`, `..del-*`, `..check-*`, `..data_tmp`) are removed by `clean_leftovers` at start-up.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .snapshot import Snapshot

__all__ = [
    "PromoteError",
    "activate",
    "clean_leftovers",
    "current_version",
    "fsync_dir",
    "promote",
    "prune",
    "version_dir",
]

DATA = "..data"
_DATA_TMP = "..data_tmp"
_PREFIX = "..v-"
_FSYNC_BATCH = 64  # files kept open for one parallel fsync round
_LEFTOVERS = ("..tmp-", "..del-", "..check-", "..link-")


class PromoteError(OSError):
    """The target dir could not be updated; `..data` still points at the previous version."""


def version_dir(target: Path, version: str) -> Path:
    return target / f"{_PREFIX}{version}"


def current_version(target: Path) -> str | None:
    """The version `..data` points at, or None when nothing was promoted yet."""
    try:
        link = os.readlink(target / DATA)
    except OSError:
        return None
    return link[len(_PREFIX) :] if link.startswith(_PREFIX) else None


def promote(snapshot: Snapshot, target: Path, *, fsync: bool = True) -> bool:
    """Make `snapshot` the live version; False when it already was. Raises `PromoteError`."""
    try:
        if current_version(target) == snapshot.version and version_dir(target, snapshot.version).is_dir():
            _sync_links(target, snapshot)
            return False
        _check_top_links(target, _top_level(snapshot))
        _write_version(target, snapshot, fsync)
        _swap(target, f"{_PREFIX}{snapshot.version}", DATA)
        _sync_links(target, snapshot)
        # The target dir itself is fsynced later, off the reload's path, by the state write that commits
        # the version: until then a power cut can only leave ..data on the previous complete version.
        return True
    except OSError as e:
        raise PromoteError(f"promotion into {target} failed: {e}") from e


def activate(target: Path, version: str) -> None:
    """Point `..data` back at a version still on disk (rollback); raises `PromoteError` if it is gone."""
    vdir = version_dir(target, version)
    try:
        top_level = {entry.name for entry in os.scandir(vdir)}
        _check_top_links(target, top_level)
        _swap(target, f"{_PREFIX}{version}", DATA)
        _sync_top_links(target, top_level)
        fsync_dir(target)
    except OSError as e:
        raise PromoteError(f"rollback into {target} failed: {e}") from e


def _write_version(target: Path, snapshot: Snapshot, fsync: bool) -> None:
    final = version_dir(target, snapshot.version)
    if final.is_dir():  # only ever created by a rename of a complete, synced dir: reuse it
        os.utime(final)
        return
    tmp = target / f"..tmp-{snapshot.version}-{secrets.token_hex(4)}"
    dirs, pending = [tmp], []
    _mkdir(tmp)
    for name, data in snapshot.files.items():
        path = tmp / name
        for parent in reversed(path.relative_to(tmp).parents[:-1]):
            if not (tmp / parent).is_dir():
                _mkdir(tmp / parent)
                dirs.append(tmp / parent)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            os.fchmod(fd, 0o644)  # explicit, like the kubelet: the umask must not hide files from the app
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except BaseException:
            os.close(fd)
            raise
        pending.append(fd)
        if len(pending) >= _FSYNC_BATCH:
            _sync_and_close(pending, fsync)
    _sync_and_close(pending, fsync)
    if fsync:
        for directory in reversed(dirs):
            fsync_dir(directory)
    os.rename(tmp, final)


def _sync_and_close(fds: list[int], fsync: bool) -> None:
    """fsync a batch of files, several at once (the filesystem's journal commits them together), then close."""
    try:
        if fsync and len(fds) >= 8:  # below that, starting threads costs more than it saves
            with ThreadPoolExecutor(8, thread_name_prefix="fsync") as pool:
                list(pool.map(os.fsync, fds))
        elif fsync:
            for fd in fds:
                os.fsync(fd)
    finally:
        for fd in fds:
            os.close(fd)
        fds.clear()


def _mkdir(path: Path) -> None:
    path.mkdir()
    path.chmod(0o755)


def _swap(target: Path, link_to: str, name: str) -> None:
    tmp = target / (_DATA_TMP if name == DATA else f"..link-{secrets.token_hex(4)}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    os.symlink(link_to, tmp)
    os.replace(tmp, target / name)


def _top_level(snapshot: Snapshot) -> set[str]:
    return {name.split("/", 1)[0] for name in snapshot.files}


def _sync_links(target: Path, snapshot: Snapshot) -> None:
    _sync_top_links(target, _top_level(snapshot))


def _check_top_links(target: Path, top_level: set[str]) -> None:
    """Refuse before anything changes if a top-level link would have to replace something not ours."""
    for name in top_level:
        link = target / name
        if not link.is_symlink() and os.path.lexists(link):
            raise PromoteError(f"{link} exists and is not our symlink; refusing to replace it")


def _sync_top_links(target: Path, top_level: set[str]) -> None:
    """Create `name -> ..data/name` for each top-level name; drop our links for names that are gone."""
    for entry in os.scandir(target):
        if entry.name.startswith(".."):
            continue
        ours = entry.is_symlink() and os.readlink(entry.path).startswith(f"{DATA}/")
        if entry.name not in top_level and ours:
            os.unlink(entry.path)
    _check_top_links(target, top_level)
    for name in top_level:
        if not (target / name).is_symlink():
            _swap(target, f"{DATA}/{name}", name)


def fsync_dir(path: Path) -> None:
    """Make the entries of `path` (new files, renames) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def prune(target: Path, keep: int, protect: set[str]) -> list[str]:
    """Delete version dirs beyond the newest `keep` old ones; never the current or a `protect`ed one."""
    current = current_version(target)
    versions = []
    for entry in os.scandir(target):
        if entry.name.startswith(_PREFIX) and entry.is_dir(follow_symlinks=False):
            version = entry.name[len(_PREFIX) :]
            if version != current and version not in protect:
                versions.append((entry.stat(follow_symlinks=False).st_mtime, version))
    versions.sort(reverse=True)
    removed = []
    for _, version in versions[keep:]:
        # Renamed first: a crash mid-rmtree must never leave a partial dir under a version name.
        doomed = target / f"..del-{version}-{secrets.token_hex(4)}"
        os.rename(version_dir(target, version), doomed)
        shutil.rmtree(doomed, ignore_errors=True)
        removed.append(version)
    return removed


def clean_leftovers(target: Path) -> list[str]:
    """Remove what an interrupted promotion or check left behind; returns the names removed."""
    target.mkdir(parents=True, exist_ok=True)
    removed = []
    for entry in os.scandir(target):
        if entry.name == _DATA_TMP or entry.name.startswith(_LEFTOVERS):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
            removed.append(entry.name)
    return removed
