"""Source dir -> `Snapshot`: the files of one version as bytes, with a content hash and any problems found.

A kubelet volume is read through `..data` (resolved once, so a swap during the read cannot mix two
versions); a plain directory is read as it is. Hidden `..*` entries are the kubelet's own and skipped.
Nothing here ever blocks on a FIFO or follows a symlink out of the volume, and hostile entries (symlink
loops, names that are not UTF-8, paths too long or too deep, unreadable files) are problems of the
snapshot, named in them, never exceptions.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .settings import Settings

__all__ = ["Snapshot", "SourceError", "read_configured", "read_snapshot", "snapshot_of"]

_DATA = "..data"
_MAX_DEPTH = 32
_MAX_FILES = 10_000
_SMALL_FILES, _SMALL_BYTES = 8, 16 * 1024


class SourceError(OSError):
    """The source directory itself cannot be read (missing, not a directory, permission)."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One version of the source: relative posix path -> bytes, plus problems that make it unusable."""

    files: dict[str, bytes]
    version: str
    problems: tuple[str, ...] = ()
    sizes: dict[str, int] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(len(b) for b in self.files.values())

    @property
    def small(self) -> bool:
        """Small enough to read, parse and write on the event loop (well under a millisecond of work)."""
        return len(self.files) <= _SMALL_FILES and self.total_bytes <= _SMALL_BYTES


def read_snapshot(
    source: Path,
    *,
    include: tuple[str, ...] = ("*",),
    exclude: tuple[str, ...] = (),
    max_file_bytes: int = 1 << 20,
    max_total_bytes: int = 4 << 20,
) -> Snapshot:
    """Read every wanted regular file under `source`; problems are collected, never raised.

    Raises `SourceError` only when the directory itself is unusable. A kubelet swap that removes the
    version being read is retried (the new `..data` is read instead).
    """
    for _ in range(5):
        try:
            root = _resolve_root(source)
            snap = _read(root, source, include, exclude, max_file_bytes, max_total_bytes)
            # The kubelet deletes a version dir only after swapping `..data` away from it: if `..data` still
            # points here, nothing was deleted under the reader. Otherwise the listing may have missed files
            # already removed, with no error to show for it: read the new version instead.
            if _resolve_root(source) != root:
                continue
            return snap
        except _Vanished:
            continue
    raise SourceError(f"{source}: the volume kept changing while being read, or ..data points to nothing")


def read_configured(source: Path, settings: Settings) -> Snapshot:
    """`read_snapshot` with the include/exclude globs and size limits the settings give."""
    return read_snapshot(
        source,
        include=settings.include,
        exclude=settings.exclude,
        max_file_bytes=settings.max_file_bytes,
        max_total_bytes=settings.max_total_bytes,
    )


def snapshot_of(
    files: Mapping[str, bytes], *, max_file_bytes: int = 1 << 20, max_total_bytes: int = 4 << 20
) -> Snapshot:
    """A `Snapshot` of files already in memory (a ConfigMap in an AdmissionReview), in name order.

    Same size limits, problem wording and content hash as `read_snapshot`, so a version refused here is
    the one the sidecar would refuse. Names are taken as given: the caller checks they are safe paths.
    """
    found = _Found(max_file_bytes, max_total_bytes)
    for rel in sorted(files):
        if found.full():
            break
        if found.fits(rel, len(files[rel])) and not found.add(rel, files[rel]):
            break
    return found.snapshot()


class _Found:
    """The files of a version as they are read, with the size and count limits every reader applies."""

    def __init__(self, max_file: int, max_total: int) -> None:
        self.max_file, self.max_total = max_file, max_total
        self.files: dict[str, bytes] = {}
        self.problems: list[str] = []
        self.total = 0

    def fits(self, rel: str, size: int) -> bool:
        """False, with the problem noted, when one file is over RELOAD_MAX_FILE_BYTES."""
        if size > self.max_file:
            self.problems.append(f"{rel}: {size} bytes exceeds RELOAD_MAX_FILE_BYTES={self.max_file}")
            return False
        return True

    def full(self) -> bool:
        if len(self.files) >= _MAX_FILES:
            self.problems.append(f"more than {_MAX_FILES} files; refusing the rest")
            return True
        return False

    def add(self, rel: str, data: bytes) -> bool:
        """Take a file; False (the version is over RELOAD_MAX_TOTAL_BYTES) means: stop reading."""
        self.total += len(data)
        if self.total > self.max_total:
            self.problems.append(f"total size exceeds RELOAD_MAX_TOTAL_BYTES={self.max_total} at {rel}")
            return False
        self.files[rel] = data
        return True

    def snapshot(self) -> Snapshot:
        files = dict(sorted(self.files.items()))
        sizes = {rel: len(data) for rel, data in files.items()}
        return Snapshot(files=files, version=_hash(files, self.problems), problems=tuple(self.problems), sizes=sizes)


class _Vanished(Exception):
    """The `..data` target disappeared mid-read: the kubelet swapped again."""


def _resolve_root(source: Path) -> Path:
    try:
        st = os.stat(source)
    except OSError as e:
        raise SourceError(f"{source}: {e.strerror}") from e
    if not stat.S_ISDIR(st.st_mode):
        raise SourceError(f"{source}: not a directory")
    data = source / _DATA
    try:
        link = os.readlink(data)
    except FileNotFoundError:
        return source
    except OSError as e:
        if e.errno == errno.EINVAL:  # `..data` is a real dir, not a link
            return data
        raise SourceError(f"{data}: {e.strerror}") from e
    # os.path.realpath, as Path.resolve() raises RuntimeError on a loop; a looping `..data` then fails
    # the stat of the root with ELOOP, a SourceError
    target = Path(os.path.realpath(source / link))
    if not _inside(target, Path(os.path.realpath(source))):
        raise SourceError(f"{data} points outside the volume ({_shown(link)})")
    return target


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _wanted(rel: str, include: tuple[str, ...], exclude: tuple[str, ...]) -> bool:
    if include == ("*",) and not exclude:  # the default: `*` matches every name, `/` included
        return True
    name = rel.rsplit("/", 1)[-1]

    def matches(glob: str) -> bool:
        return fnmatch.fnmatchcase(rel, glob) or fnmatch.fnmatchcase(name, glob)

    return any(matches(g) for g in include) and not any(matches(g) for g in exclude)


def _read(
    root: Path,
    source: Path,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    max_file: int,
    max_total: int,
) -> Snapshot:
    found = _Found(max_file, max_total)
    for rel, path in _walk(root, source.resolve(), found.problems):
        if not _wanted(rel, include, exclude):
            continue
        if not _utf8(rel):  # a key of the version must be text: in /status, the logs, the state file
            found.problems.append(f"{_shown(rel)}: file name is not valid UTF-8 (bytes shown escaped)")
            continue
        if found.full():
            break
        data = _read_file(path, rel, found)
        if data is not None and not found.add(rel, data):
            break
    return found.snapshot()


def _walk(root: Path, volume: Path, problems: list[str]) -> list[tuple[str, str]]:
    """(relative name, path) of every entry that should be a file; problems for what may not be read."""
    out: list[tuple[str, str]] = []
    root_st = _stat_root(root)
    # Each directory carries its ancestors' identities: a loop is a directory that is its own ancestor.
    # A second link to a sibling is no loop and is walked again; `_MAX_FILES` bounds the directories.
    todo: list[tuple[Path, str, frozenset[tuple[int, int]]]] = [
        (root, "", frozenset({(root_st.st_dev, root_st.st_ino)}))
    ]
    dirs = 0
    while todo:
        directory, prefix, ancestors = todo.pop()
        dirs += 1
        if dirs > _MAX_FILES:
            problems.append(f"more than {_MAX_FILES} directories; refusing the rest")
            break
        for entry in _listing(directory, prefix, problems):
            if entry.name.startswith(".."):
                continue
            rel = prefix + entry.name
            st = _stat_inside(entry, rel, volume, problems)
            if st is None:
                continue
            if stat.S_ISDIR(st.st_mode):
                ident = (st.st_dev, st.st_ino)
                if ident in ancestors:
                    problems.append(f"{_shown(rel)}: symlink loop")
                elif len(ancestors) > _MAX_DEPTH:
                    problems.append(f"{_shown(rel)}: directories nested deeper than {_MAX_DEPTH}; refused")
                else:
                    todo.append((Path(entry.path), rel + "/", ancestors | {ident}))
            elif stat.S_ISREG(st.st_mode):
                out.append((rel, entry.path))
            else:
                problems.append(f"{_shown(rel)}: {_kind(st.st_mode)}, not a regular file; refused")
    out.sort()
    return out


def _stat_root(root: Path) -> os.stat_result:
    try:
        return os.stat(root)
    except FileNotFoundError as e:  # the kubelet removed the version `..data` pointed at
        raise _Vanished from e
    except OSError as e:
        raise SourceError(f"{_shown(str(root))}: {_why(e)}") from e


def _listing(directory: Path, prefix: str, problems: list[str]) -> list[os.DirEntry[str]]:
    """The entries of `directory` by name; none, with a problem noted, when it cannot be listed."""
    try:
        with os.scandir(directory) as listing:
            return sorted(listing, key=lambda e: e.name)
    except FileNotFoundError as e:
        raise _Vanished from e
    except OSError as e:
        problems.append(f"{_shown(prefix.rstrip('/')) or '.'}: cannot list directory: {_why(e)}")
        return []


def _stat_inside(entry: os.DirEntry[str], rel: str, volume: Path, problems: list[str]) -> os.stat_result | None:
    """stat() of the entry (following a symlink only if it stays in the volume); None with a problem noted."""
    link = False
    try:
        link = entry.is_symlink()
        # realpath never raises (a loop resolves to some path); the stat below then fails with ELOOP
        if link and not _inside(Path(os.path.realpath(entry.path)), volume):
            problems.append(f"{_shown(rel)}: symlink points outside the volume; refused")
            return None
        return os.stat(entry.path)
    except FileNotFoundError as e:
        if not link:  # listed a moment ago: the kubelet (or an editor) replaced it; read the volume again
            raise _Vanished from e
        problems.append(f"{_shown(rel)}: dangling symlink")
    except OSError as e:
        problems.append(f"{_shown(rel)}: {_why(e)}")
    return None


def _why(e: OSError) -> str:
    return "symlink loop" if e.errno == errno.ELOOP else e.strerror or type(e).__name__


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # os.scandir gives undecodable bytes as lone surrogates
        return False
    return True


def _shown(name: str) -> str:
    """A name as problems show it: bytes that are not UTF-8 escaped (`caf\\xe9.yaml`), the rest as is."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    ):
        if test(mode):
            return name
    return "special file"


def _read_file(path: str, rel: str, found: _Found) -> bytes | None:
    # O_NONBLOCK: if the entry was swapped for a FIFO after the stat, open() must not hang on it.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError as e:
        raise _Vanished from e
    except OSError as e:
        found.problems.append(f"{rel}: cannot open: {_why(e)}")
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            found.problems.append(f"{rel}: {_kind(st.st_mode)}, not a regular file; refused")
            return None
        if not found.fits(rel, st.st_size):
            return None
        chunks: list[bytes] = []
        size = 0
        # One read of the size fstat gave (+1, to see a file that grew); a buffer of the whole limit
        # for every small file cost more than the copy.
        want = min(st.st_size, found.max_file) + 1
        while chunk := os.read(fd, want):
            chunks.append(chunk)
            size += len(chunk)
            want = 65536
            if size > found.max_file:
                found.problems.append(f"{rel}: grew past RELOAD_MAX_FILE_BYTES={found.max_file} while being read")
                return None
        return b"".join(chunks)
    except OSError as e:
        found.problems.append(f"{rel}: read error: {_why(e)}")
        return None
    finally:
        os.close(fd)


def _hash(files: dict[str, bytes], problems: list[str]) -> str:
    h = hashlib.sha256()
    for name in sorted(files):
        data = files[name]
        h.update(f"{len(name)}:{name}:{len(data)}:".encode())
        h.update(data)
    for problem in problems:
        h.update(b"!" + problem.encode())
    return h.hexdigest()[:16]
