"""`Snapshot` -> target dir, the way the kubelet projects a volume, so the app never sees a torn version.

    target/
      ..v-1f2e3d4c5b6a7980/      one complete version (written to ..tmp-*, fsynced, then renamed)
      ..v-0a1b2c3d4e5f6789/      older versions kept for rollback (RELOAD_HISTORY)
      ..data -> ..v-1f2e3d4c5b6a7980   swapped with one rename(2) of ..data_tmp
      nginx.conf -> ..data/nginx.conf  one link per top-level name

Every step is a rename or a symlink, so a SIGKILL at any instant leaves `..data` on a complete version;
leftovers (`..tmp-*`, `..del-*`, `..check-*`, `..data_tmp`) are removed by `clean_leftovers` at start-up,
and a promotion that fails removes its own partial `..tmp-*` at once. Staging checks the free space
first (`NoSpaceError`), so a full target is refused with a clear reason before anything is written.

The invariant that makes sharing safe: a version dir is never edited in place. Its files are created
once, in `..tmp-*`, and from then on only read, renamed with the dir, or deleted with it; the app
mounts the target read-only. So a file whose bytes are the same as in the version it replaces is a
hard link to that version's file (same inode: no copy, no fsync, no space), a changed file is always
a new inode, and deleting an old version only removes its links. "The same" is decided on the bytes
themselves, held in memory for rollback anyway (`base`): never on a name, an mtime or a size alone.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
from collections.abc import Iterable, Set
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .snapshot import Snapshot

__all__ = [
    "NoSpaceError",
    "PromoteError",
    "activate",
    "check_space",
    "clean_leftovers",
    "current_version",
    "discard",
    "fsync_dir",
    "inspect",
    "promote",
    "prune",
    "restore",
    "space_needed",
    "top_level",
    "version_dir",
]

DATA = "..data"
_DATA_TMP = "..data_tmp"
_PREFIX = "..v-"
_FSYNC_BATCH = 64  # files kept open for one parallel fsync round
_LEFTOVERS = ("..tmp-", "..del-", "..check-", "..link-")
# Kept free beyond a version's own blocks: the state file (bounded, tens of KB), links, a rename's new entries.
SPACE_MARGIN = 64 * 1024
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_MODE = 0o644  # every file of a version, as the kubelet writes them


class PromoteError(OSError):
    """The target dir could not be updated; `..data` still points at the previous version."""


class NoSpaceError(PromoteError):
    """The target has no room for the version: the target's fault, not the content's (retried later)."""


def version_dir(target: Path, version: str) -> Path:
    return target / f"{_PREFIX}{version}"


def current_version(target: Path) -> str | None:
    """The version `..data` points at, or None when nothing was promoted yet."""
    try:
        link = os.readlink(target / DATA)
    except OSError:
        return None
    return link[len(_PREFIX) :] if link.startswith(_PREFIX) else None


def promote(snapshot: Snapshot, target: Path, *, fsync: bool = True, base: Snapshot | None = None) -> bool:
    """Make `snapshot` the live version; False when it already was.

    `base` is a version whose dir we wrote earlier (the last good one): each file with the same bytes
    is linked from it instead of written again. A link that cannot be made (the base dir is gone, EXDEV,
    EMLINK, a filesystem without hard links) falls back to a copy.

    Raises `NoSpaceError` when the target lacks room (nothing changed), `PromoteError` otherwise. If the
    error comes after the `..data` swap (a top-level link), `..data` already points at the new version:
    `current_version` tells the caller which one is live.
    """
    final = version_dir(target, snapshot.version)
    names = top_level(snapshot)
    wrote = False
    try:
        if current_version(target) == snapshot.version and final.is_dir():
            _sync_top_links(target, names)
            return False
        _check_top_links(target, names)
        if not final.is_dir():
            links = _unchanged(target, snapshot, base)
            check_space(target, snapshot, set(links))
            _write_version(target, snapshot, fsync, links)
            wrote = True
        else:  # only ever created by a rename of a complete, synced dir: reuse it
            os.utime(final)
        _swap(target, f"{_PREFIX}{snapshot.version}", DATA)
        wrote = False  # live now: from here on it is the caller's to keep or roll back
        _sync_top_links(target, names)
        # The target dir itself is fsynced later, off the reload's path, by the state write that commits
        # the version: until then a power cut can only leave ..data on the previous complete version.
        return True
    except NoSpaceError:
        raise
    except OSError as e:
        if wrote:  # written but never made live: nobody needs it, and it holds the space of a whole version
            with contextlib.suppress(OSError):
                discard(target, snapshot.version)
        if e.errno in _NO_SPACE:
            raise NoSpaceError(f"promotion into {target} failed: target is full: {e}") from e
        raise PromoteError(f"promotion into {target} failed: {e}") from e


def space_needed(snapshot: Snapshot, block: int, linked: Set[str] = frozenset(), ndirs: int | None = None) -> int:
    """Bytes a version takes on a filesystem with `block`-byte blocks: each file and dir rounded up, plus
    `SPACE_MARGIN` for the state file and links. A `linked` file shares its blocks with the base version.
    `ndirs`: the version's number of dirs, when the caller has counted them already."""
    data = sum(-(-len(b) // block) * block for name, b in snapshot.files.items() if name not in linked)
    ndirs = len(_dirs(snapshot)) if ndirs is None else ndirs
    return data + ndirs * block + SPACE_MARGIN


def _dirs(snapshot: Snapshot) -> set[str]:
    """The directories a version dir holds, itself included (as ""), parents before children."""
    dirs = {""}
    for name in snapshot.files:
        _add_parents(name, dirs)
    return dirs


def _add_parents(name: str, dirs: set[str]) -> list[str]:
    """Add the dirs above `name` (a relative posix path) to `dirs`; returns the new ones, outermost first.

    Strings, not `Path`s: with a thousand files, pathlib's parsing costs more than the links themselves.
    """
    new: list[str] = []
    parent = name.rpartition("/")[0]
    while parent not in dirs:
        new.append(parent)
        parent = parent.rpartition("/")[0]
    dirs.update(new)
    return new[::-1]


def check_space(target: Path, snapshot: Snapshot, linked: Set[str] = frozenset()) -> None:
    """Raise `NoSpaceError` when `target` has too few free bytes (or inodes) for `snapshot`, whose
    `linked` files take neither."""
    try:
        st = os.statvfs(target)
    except OSError:
        return  # cannot tell: let the write itself find out
    block = st.f_frsize or st.f_bsize or 4096
    ndirs = len(_dirs(snapshot))
    free, needed = st.f_bavail * block, space_needed(snapshot, block, linked, ndirs)
    if free < needed:
        raise NoSpaceError(f"target {target} has {free} bytes free, version {snapshot.version} needs {needed}")
    inodes = len(snapshot.files) - len(linked) + ndirs + 16
    if st.f_files and st.f_favail < inodes:  # f_files == 0: the filesystem has no inode limit
        raise NoSpaceError(f"target {target} has {st.f_favail} inodes free, version {snapshot.version} needs {inodes}")


def activate(target: Path, version: str) -> None:
    """Point `..data` back at a version still on disk (rollback, repair); raises `PromoteError` if it is
    gone. Whatever stands in the way of its layout is cleared first (`_clear`)."""
    vdir = version_dir(target, version)
    try:
        if not stat.S_ISDIR(os.lstat(vdir).st_mode):
            raise NotADirectoryError(errno.ENOTDIR, f"{vdir.name} is not a directory")
        names = {entry.name for entry in os.scandir(vdir)}
        _clear(target, None, names)
        _swap(target, f"{_PREFIX}{version}", DATA)
        _sync_top_links(target, names)
        fsync_dir(target)
    except OSError as e:
        raise PromoteError(f"rollback into {target} failed: {e}") from e


def _unchanged(target: Path, snapshot: Snapshot, base: Snapshot | None) -> dict[str, str]:
    """Name -> the base version's file to link, for each file whose bytes are the base's.

    The base's file on disk must still look as written (a regular file of that size and mode): a
    damaged or missing one is copied instead.
    """
    if base is None or base.version == snapshot.version:
        return {}
    base_dir = os.fspath(version_dir(target, base.version))
    links: dict[str, str] = {}
    for name, data in snapshot.files.items():
        if base.files.get(name) != data:
            continue
        source = f"{base_dir}/{name}"
        try:
            st = os.lstat(source)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_size == len(data) and stat.S_IMODE(st.st_mode) == _MODE:
            links[name] = source
    return links


def _write_version(target: Path, snapshot: Snapshot, fsync: bool, links: dict[str, str]) -> None:
    """Write the version into `..tmp-*` and rename it into place; on any error the partial dir is removed."""
    tmp = target / f"..tmp-{snapshot.version}-{secrets.token_hex(4)}"
    _mkdir(tmp)
    try:
        _fill(tmp, snapshot, fsync, links)
        os.rename(tmp, version_dir(target, snapshot.version))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fill(tmp: Path, snapshot: Snapshot, fsync: bool, links: dict[str, str]) -> None:
    root = os.fspath(tmp)
    made = {""}
    dirs: list[str] = [root]
    pending: list[int] = []
    for name, data in snapshot.files.items():
        path = f"{root}/{name}"
        for parent in _add_parents(name, made):
            _mkdir(f"{root}/{parent}")
            dirs.append(f"{root}/{parent}")
        # A linked file's data is already durable: only its new dir entry needs the dir fsync below.
        if name in links and _link(links[name], path):
            continue
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _MODE)
        try:
            os.fchmod(fd, _MODE)  # explicit, like the kubelet: the umask must not hide files from the app
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


def _link(source: str, path: str) -> bool:
    """Hard-link `source` as `path`; False when it cannot be (then the file is written instead)."""
    try:
        os.link(source, path, follow_symlinks=False)
    except OSError:  # EMLINK, EXDEV, EPERM (no hard links here), ENOENT (base dir deleted): all copy
        return False
    return True


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


def _mkdir(path: str | Path) -> None:
    os.mkdir(path)
    os.chmod(path, 0o755)  # noqa: S103  # explicit, like the files: the app (another UID) reads the dir


def _swap(target: Path, link_to: str, name: str) -> None:
    tmp = target / (_DATA_TMP if name == DATA else f"..link-{secrets.token_hex(4)}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    os.symlink(link_to, tmp)
    os.replace(tmp, target / name)


def top_level(snapshot: Snapshot) -> set[str]:
    """The names the app sees at the top of the target (one link each)."""
    return {name.split("/", 1)[0] for name in snapshot.files}


def _check_top_links(target: Path, top_level: set[str], entries: dict[str, os.DirEntry[str]] | None = None) -> None:
    """Refuse before anything changes if a top-level link would have to replace something not ours."""
    entries = _top_entries(target) if entries is None else entries
    for name in top_level:
        entry = entries.get(name)
        if entry is not None and not entry.is_symlink():
            raise PromoteError(f"{target / name} exists and is not our symlink; refusing to replace it")


def _top_entries(target: Path) -> dict[str, os.DirEntry[str]]:
    """The target's entries but its own `..` ones, from one listing (a thousand links: one scandir, not
    a thousand `lstat`s)."""
    with os.scandir(target) as listing:
        return {entry.name: entry for entry in listing if not entry.name.startswith("..")}


def _sync_top_links(target: Path, top_level: set[str]) -> None:
    """Make `name -> ..data/name` for each top-level name; drop our links for names that are gone.

    A link of one of the version's names that points anywhere else (`app.conf -> /etc/passwd`) is
    pointed back: the app reads that name, so whatever it points at is what the app gets.
    """
    entries = _top_entries(target)
    for name, entry in list(entries.items()):
        if name not in top_level and entry.is_symlink() and os.readlink(entry.path).startswith(f"{DATA}/"):
            os.unlink(entry.path)
            del entries[name]
    _check_top_links(target, top_level, entries)
    for name in top_level:
        link = entries.get(name)  # present means a symlink (checked above)
        if link is None or os.readlink(link.path) != f"{DATA}/{name}":
            _swap(target, f"{DATA}/{name}", name)


def fsync_dir(path: str | Path) -> None:
    """Make the entries of `path` (new files, renames) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def inspect(target: Path, version: str, names: Iterable[str]) -> str | None:
    """What is wrong with `target` showing `version` through the top-level `names`, or None when it does.

    Cheap enough for every resync: one readlink and one lstat, then one lstat and one readlink per name;
    file contents are never read, so damage below the top level of the version dir is not seen.
    """
    try:
        link = os.readlink(target / DATA)
    except FileNotFoundError:
        return f"{DATA} is missing"
    except OSError as e:
        return f"{DATA} is not a symlink ({e.strerror})"
    if link != f"{_PREFIX}{version}":
        return f"{DATA} points at {link!r}, not {_PREFIX}{version}"
    vdir = version_dir(target, version)
    try:
        if not stat.S_ISDIR(os.lstat(vdir).st_mode):
            return f"{vdir.name} is not a directory"
    except FileNotFoundError:
        return f"{vdir.name} is missing"
    for name in sorted(names):
        if not os.path.lexists(vdir / name):
            return f"{name} is missing from {vdir.name}"
        try:
            if os.readlink(target / name) != f"{DATA}/{name}":
                return f"link {name} does not point at {DATA}/{name}"
        except FileNotFoundError:
            return f"link {name} is missing"
        except OSError:
            return f"{name} is not our symlink"
    return None


def restore(snapshot: Snapshot, target: Path) -> None:
    """Make `snapshot` live again after the target was damaged; raises `PromoteError`.

    A version dir missing any of its top-level entries is replaced by a fresh copy; an intact one is
    reused, so a deleted `..data` or link costs a symlink, not a rewrite. Whatever stands in the way of
    the version's layout is cleared first (`_clear`).
    """
    vdir = version_dir(target, snapshot.version)
    names = top_level(snapshot)
    try:
        _clear(target, snapshot.version, names)
        if vdir.is_dir() and not all(os.path.lexists(vdir / name) for name in names):
            _remove(target, snapshot.version)
    except OSError as e:
        raise PromoteError(f"cannot clear the damage in {target}: {e}") from e
    promote(snapshot, target)


def _clear(target: Path, version: str | None, names: Iterable[str]) -> None:
    """Delete what stands where a version being put back needs its own entries: `..data` or one of its
    top-level names that is not a symlink, its version dir (with `version`) that is not a directory.

    Only for putting back a version that was live (a rollback, a repair): the sidecar made every one of
    those entries when it promoted it, so anything else there is damage, never someone's data. A new
    version's promotion does not clear (`_check_top_links` refuses instead).
    """
    doomed = [target / DATA, *(target / name for name in names)]
    for path in doomed:
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISLNK(os.lstat(path).st_mode):
                _delete(target, path)
    if version is not None:
        vdir = version_dir(target, version)
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISDIR(os.lstat(vdir).st_mode):
                os.unlink(vdir)


def _delete(target: Path, path: Path) -> None:
    """Delete a file or a whole dir; a dir is renamed to a `..del-*` leftover first, so a crash midway
    leaves nothing half-deleted under the name."""
    if not stat.S_ISDIR(os.lstat(path).st_mode):
        os.unlink(path)
        return
    doomed = target / f"..del-{secrets.token_hex(4)}"
    os.rename(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def discard(target: Path, version: str) -> bool:
    """Delete one version dir that is not live (a failed or abandoned version); False when there was none."""
    if current_version(target) == version:
        raise PromoteError(f"refusing to delete {_PREFIX}{version}: it is live")
    try:
        return _remove(target, version)
    except OSError as e:
        raise PromoteError(f"cannot delete {_PREFIX}{version}: {e}") from e


def _remove(target: Path, version: str) -> bool:
    doomed = target / f"..del-{version}-{secrets.token_hex(4)}"
    try:
        # Renamed first: a crash mid-rmtree must never leave a partial dir under a version name.
        os.rename(version_dir(target, version), doomed)
    except FileNotFoundError:
        return False
    shutil.rmtree(doomed, ignore_errors=True)
    return True


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
        if _remove(target, version):
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
