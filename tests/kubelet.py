"""Test helper: lay out a directory the way the kubelet projects a ConfigMap/Secret volume.

The kubelet never edits files in place. Each version of the payload lives in its own hidden,
timestamped directory; one symlink (``..data``) says which version is current, and every top-level
key the user sees is a symlink that goes *through* ``..data``::

    volume/
    ├── ..2026_11_25_09_14_03.3021554817/    real files of the current version (dir 0755)
    │   ├── app.yaml                         (file 0644)
    │   └── conf.d/                          nested keys get real sub-directories
    │       └── a.conf
    ├── ..data -> ..2026_11_25_09_14_03.3021554817
    ├── app.yaml -> ..data/app.yaml          one link per top-level name
    └── conf.d -> ..data/conf.d

An update runs in this order, which is the order a watcher of the volume observes:

1. make ``..<UTC YYYY_MM_DD_HH_MM_SS>.<random uint32>`` and write the whole payload into it;
2. create ``..data_tmp`` -> that directory's name (a relative link);
3. ``rename(..data_tmp, ..data)`` -- the single atomic step that switches every visible key at once;
4. add ``name -> ..data/name`` for top-level names that have no link yet;
5. remove top-level links of names that are no longer in the payload;
6. delete the previous timestamped directory.

If the payload equals what ``..data`` already holds (same paths, same bytes) nothing is touched and
:func:`project` returns ``False``, exactly like the kubelet's "no update required" path.
"""

from __future__ import annotations

import os
import posixpath
import secrets
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path

__all__ = ["DATA_LINK", "DATA_TMP_LINK", "project"]

DATA_LINK = "..data"
DATA_TMP_LINK = "..data_tmp"
_DIR_MODE = 0o755


def _clean_key(key: str) -> str:
    """Validate a payload path as the kubelet does and return it normalised."""
    if not key:
        raise ValueError("payload path must not be empty")
    if key.startswith("/"):
        raise ValueError(f"payload path must be relative: {key!r}")
    parts = key.split("/")
    if ".." in parts:
        raise ValueError(f"payload path must not contain '..': {key!r}")
    if parts[0].startswith(".."):
        raise ValueError(f"payload path must not start with '..': {key!r}")
    clean = posixpath.normpath(key)
    if clean in (".", "") or clean.startswith("../"):
        raise ValueError(f"invalid payload path: {key!r}")
    return clean


def _with_parents(keys: set[str]) -> set[str]:
    """Every key plus each of its ancestor directories, as relative posix paths."""
    out: set[str] = set()
    for key in keys:
        while key:
            out.add(key)
            key = posixpath.dirname(key)
    return out


def _current_tree(version_dir: Path) -> set[str]:
    """Relative paths (files and directories) under the current version's directory."""
    if not version_dir.is_dir():
        return set()
    return {p.relative_to(version_dir).as_posix() for p in version_dir.rglob("*")}


def _unchanged(version_dir: Path, payload: Mapping[str, bytes]) -> bool:
    for key, data in payload.items():
        path = version_dir / key
        if path.is_symlink() or not path.is_file() or path.read_bytes() != data:
            return False
    return True


def _new_version_dir(volume: Path) -> Path:
    stamp = time.strftime("..%Y_%m_%d_%H_%M_%S.", time.gmtime())
    while True:
        candidate = volume / f"{stamp}{secrets.randbits(32)}"
        try:
            candidate.mkdir(mode=0o700)
        except FileExistsError:
            continue
        candidate.chmod(_DIR_MODE)  # explicit chmod: independent of the umask
        return candidate


def _write_payload(version_dir: Path, payload: Mapping[str, bytes], mode: int) -> None:
    for key, data in payload.items():
        target = version_dir / key
        parent = target.parent
        missing: list[Path] = []
        while parent != version_dir and not parent.exists():
            missing.append(parent)
            parent = parent.parent
        for directory in reversed(missing):
            directory.mkdir()
            directory.chmod(_DIR_MODE)
        target.write_bytes(data)
        target.chmod(mode)


def project(
    volume: Path,
    files: Mapping[str, bytes | str],
    mode: int = 0o644,
    extra: Callable[[Path], None] | None = None,
) -> bool:
    """Project ``files`` into ``volume`` as the kubelet's AtomicWriter would.

    ``files`` maps payload paths (``"app.yaml"``, ``"conf.d/a.conf"``) to contents; ``str`` values are
    encoded as UTF-8. ``mode`` is applied to every file with an explicit chmod. ``volume`` is created if
    missing. Returns ``True`` when a new version was written, ``False`` when the payload equals what is
    already current (then nothing on disk changes). ``extra``, if given, is called with the new version
    dir after the payload is written and before the swap: tests use it to plant entries the kubelet
    never makes (a FIFO, a symlink leaving the volume) and still get a real ``..data`` swap.
    """
    payload: dict[str, bytes] = {}
    for key, value in files.items():
        payload[_clean_key(key)] = value.encode("utf-8") if isinstance(value, str) else bytes(value)

    volume = Path(volume)
    volume.mkdir(parents=True, exist_ok=True)
    data_link = volume / DATA_LINK

    old_name = os.readlink(data_link) if data_link.is_symlink() else ""
    stale: set[str] = set()
    if old_name:
        old_dir = volume / old_name
        stale = _current_tree(old_dir) - _with_parents(set(payload))
        if not stale and extra is None and _unchanged(old_dir, payload):
            return False

    # 1. the new version, complete, before anything visible changes
    new_dir = _new_version_dir(volume)
    _write_payload(new_dir, payload, mode)
    if extra is not None:
        extra(new_dir)

    # 2. + 3. switch ..data atomically
    tmp_link = volume / DATA_TMP_LINK
    try:
        os.symlink(new_dir.name, tmp_link)
        os.rename(tmp_link, data_link)
    except OSError:
        if tmp_link.is_symlink():
            tmp_link.unlink()
        shutil.rmtree(new_dir, ignore_errors=True)
        raise

    # 4. links for top-level names that have none yet
    for top in sorted({key.split("/", 1)[0] for key in payload}):
        link = volume / top
        if not link.is_symlink() and not link.exists():
            os.symlink(f"{DATA_LINK}/{top}", link)

    # 5. top-level names that left the payload
    for path in sorted(stale):
        if "/" not in path:
            (volume / path).unlink(missing_ok=True)

    # 6. the previous version
    if old_name:
        shutil.rmtree(volume / old_name)
    return True
