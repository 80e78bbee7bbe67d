"""`promote`, `activate`, `prune`, `clean_leftovers`: the target dir always shows one complete version.

target/
  ..v-<new>/              one complete version
  ..v-<old>/              kept for rollback
  ..data -> ..v-<new>     swapped with one rename(2)
  app.yaml -> ..data/app.yaml
  conf.d -> ..data/conf.d
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.promote import (
    DATA,
    SPACE_MARGIN,
    NoSpaceError,
    PromoteError,
    activate,
    clean_leftovers,
    current_version,
    discard,
    inspect,
    promote,
    prune,
    restore,
    space_needed,
    version_dir,
)
from sidecar.snapshot import Snapshot


def _snap(files: dict[str, bytes | str]) -> Snapshot:
    data = {n: v.encode() if isinstance(v, str) else v for n, v in sorted(files.items())}
    h = hashlib.sha256(repr(sorted(data.items())).encode()).hexdigest()[:16]
    return Snapshot(files=data, version=h, sizes={n: len(b) for n, b in data.items()})


@pytest.fixture
def target(tmp_path: Path) -> Path:
    path = tmp_path / "target"
    path.mkdir()
    return path


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _live(target: Path) -> dict[str, bytes]:
    """What the app sees: every file reachable through the top-level names, relative path -> bytes."""
    out = {}
    for top in sorted(p for p in target.iterdir() if not p.name.startswith("..")):
        paths = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        for path in paths:
            out[path.relative_to(target).as_posix()] = path.read_bytes()
    return out


def test_first_promotion_creates_the_layout(target: Path) -> None:
    """The first promotion makes `..v-<ver>`, `..data` -> it, and one `name -> ..data/name` link per top name."""
    snap = _snap({"app.yaml": "a: 1\n", "conf.d/x.conf": "x", "conf.d/y.conf": "y"})
    assert current_version(target) is None
    assert promote(snap, target) is True
    assert version_dir(target, snap.version) == target / f"..v-{snap.version}"
    assert (target / f"..v-{snap.version}").is_dir()
    assert os.readlink(target / DATA) == f"..v-{snap.version}"
    assert os.readlink(target / "app.yaml") == "..data/app.yaml"
    assert os.readlink(target / "conf.d") == "..data/conf.d"
    assert current_version(target) == snap.version
    assert _live(target) == {"app.yaml": b"a: 1\n", "conf.d/x.conf": b"x", "conf.d/y.conf": b"y"}
    assert sorted(p.name for p in target.iterdir()) == sorted(["..data", f"..v-{snap.version}", "app.yaml", "conf.d"])


def test_second_version_swaps_data(target: Path) -> None:
    """A new version gets its own dir and `..data` moves to it; the old dir stays for rollback."""
    v1, v2 = _snap({"app.yaml": "v: 1\n"}), _snap({"app.yaml": "v: 2\n"})
    promote(v1, target)
    link_before = os.readlink(target / "app.yaml")
    assert promote(v2, target) is True
    assert current_version(target) == v2.version
    assert (target / "app.yaml").read_bytes() == b"v: 2\n"
    assert os.readlink(target / "app.yaml") == link_before  # top-level links never change, only ..data
    assert version_dir(target, v1.version).is_dir()
    assert not (target / "..data_tmp").exists()


def test_unchanged_version_returns_false(target: Path) -> None:
    """Promoting the live version again changes nothing and returns False."""
    snap = _snap({"a": "1"})
    promote(snap, target)
    inode = os.lstat(target / DATA).st_ino
    assert promote(snap, target) is False
    assert os.lstat(target / DATA).st_ino == inode


def test_unchanged_version_restores_a_missing_link(target: Path) -> None:
    """Re-promoting the live version puts back a top-level link someone deleted."""
    snap = _snap({"a": "1", "b": "2"})
    promote(snap, target)
    (target / "b").unlink()
    assert promote(snap, target) is False
    assert _live(target) == {"a": b"1", "b": b"2"}


def test_stale_top_level_links_are_removed(target: Path) -> None:
    """Names that left the payload lose their links; nested files follow the new version."""
    promote(_snap({"a.yaml": "a", "b.yaml": "b", "conf.d/old.conf": "o"}), target)
    promote(_snap({"a.yaml": "a2", "conf.d/new.conf": "n", "conf.d/sub/deep.conf": "d"}), target)
    assert not os.path.lexists(target / "b.yaml")
    assert _live(target) == {"a.yaml": b"a2", "conf.d/new.conf": b"n", "conf.d/sub/deep.conf": b"d"}


def test_foreign_files_are_left_alone(target: Path) -> None:
    """Files and links the sidecar did not make, with names outside the payload, are not removed."""
    (target / "README").write_text("mine")
    os.symlink("/etc/hostname", target / "host")
    promote(_snap({"a": "1"}), target)
    promote(_snap({"b": "2"}), target)
    assert (target / "README").read_text() == "mine"
    assert os.readlink(target / "host") == "/etc/hostname"


def test_file_in_the_way_of_a_link_raises(target: Path) -> None:
    """A regular file where a top-level link must go is never overwritten: PromoteError names it."""
    (target / "app.yaml").write_text("someone else's")
    with pytest.raises(PromoteError, match="app.yaml exists and is not our symlink"):
        promote(_snap({"app.yaml": "a: 1"}), target)
    assert (target / "app.yaml").read_text() == "someone else's"


def test_failed_promotion_keeps_the_previous_version(target: Path) -> None:
    """When promotion fails (a file in the way of a new link), `..data` still points at the previous version."""
    v1 = _snap({"a": "1"})
    promote(v1, target)
    (target / "b").write_text("in the way")
    with pytest.raises(PromoteError):
        promote(_snap({"a": "2", "b": "2"}), target)
    assert current_version(target) == v1.version


def test_file_modes_are_0644(target: Path, umask_022: None) -> None:
    """Promoted files are 0644 and version dirs 0755, so an app with another UID can read them."""
    snap = _snap({"a.yaml": "a", "conf.d/x": "x"})
    promote(snap, target)
    vdir = version_dir(target, snap.version)
    assert os.stat(vdir / "a.yaml").st_mode & 0o777 == 0o644
    assert os.stat(vdir / "conf.d" / "x").st_mode & 0o777 == 0o644
    assert os.stat(vdir).st_mode & 0o777 == 0o755
    assert os.stat(vdir / "conf.d").st_mode & 0o777 == 0o755


def test_file_modes_do_not_depend_on_the_umask(target: Path) -> None:
    """Even under a strict umask the app (another UID) can read the promoted files."""
    old = os.umask(0o077)
    try:
        snap = _snap({"a.yaml": "a", "conf.d/x": "x"})
        promote(snap, target)
    finally:
        os.umask(old)
    vdir = version_dir(target, snap.version)
    assert os.stat(vdir / "a.yaml").st_mode & 0o777 == 0o644
    assert os.stat(vdir).st_mode & 0o777 == 0o755


def test_missing_target_raises_promote_error(tmp_path: Path) -> None:
    """A target dir that does not exist gives PromoteError, not a bare OSError from deep inside."""
    with pytest.raises(PromoteError, match="promotion into"):
        promote(_snap({"a": "1"}), tmp_path / "missing")


def _promote_many(target: Path, n: int) -> list[str]:
    versions = []
    for i in range(n):
        snap = _snap({"a": f"{i}"})
        promote(snap, target, fsync=False)
        os.utime(version_dir(target, snap.version), (1_000_000 + i, 1_000_000 + i))  # explicit age order
        versions.append(snap.version)
    return versions


def test_prune_keeps_history_and_never_current_or_protected(target: Path) -> None:
    """prune keeps the newest `keep` old versions, the current one and protected ones; removes the rest."""
    v = _promote_many(target, 6)  # v[5] is current
    removed = prune(target, keep=2, protect={v[0]})
    assert sorted(removed) == sorted([v[1], v[2]])
    left = sorted(p.name for p in target.iterdir() if p.name.startswith("..v-"))
    assert left == sorted(f"..v-{x}" for x in (v[0], v[3], v[4], v[5]))
    assert not any(p.name.startswith("..del-") for p in target.iterdir())
    assert current_version(target) == v[5]


def test_prune_keep_zero_leaves_only_current_and_protected(target: Path) -> None:
    """With keep=0 only the live version and protected ones survive."""
    v = _promote_many(target, 4)
    assert sorted(prune(target, keep=0, protect={v[1]})) == sorted([v[0], v[2]])
    assert sorted(p.name for p in target.iterdir() if p.name.startswith("..v-")) == sorted(
        [f"..v-{v[1]}", f"..v-{v[3]}"]
    )
    assert prune(target, keep=0, protect={v[1]}) == []


def test_clean_leftovers(target: Path) -> None:
    """clean_leftovers removes `..tmp-*`, `..del-*`, `..check-*`, `..link-*` and `..data_tmp`, nothing else."""
    live = _snap({"a": "1"})
    promote(live, target)
    (target / "..tmp-abc-1234").mkdir()
    (target / "..tmp-abc-1234" / "half.yaml").write_text("x")
    (target / "..del-old-99").mkdir()
    (target / "..check-xyz").mkdir()
    (target / "..check-xyz" / "f").write_text("x")
    (target / "..tmp-state-12").write_text("{}")
    os.symlink("..v-gone", target / "..data_tmp")
    os.symlink("..data/a", target / "..link-1234")
    removed = clean_leftovers(target)
    assert sorted(removed) == sorted(
        ["..tmp-abc-1234", "..del-old-99", "..check-xyz", "..tmp-state-12", "..data_tmp", "..link-1234"]
    )
    assert sorted(p.name for p in target.iterdir()) == sorted(["..data", f"..v-{live.version}", "a"])
    assert clean_leftovers(target) == []


def test_clean_leftovers_creates_the_target(tmp_path: Path) -> None:
    """clean_leftovers on a fresh pod creates the target dir."""
    assert clean_leftovers(tmp_path / "new" / "target") == []
    assert (tmp_path / "new" / "target").is_dir()


def test_activate_points_back_at_an_older_version(target: Path) -> None:
    """activate() swaps `..data` back to a kept version and restores its top-level links."""
    v1 = _snap({"a.yaml": "v1", "only-in-v1": "x"})
    v2 = _snap({"a.yaml": "v2", "only-in-v2": "y"})
    promote(v1, target)
    promote(v2, target)
    activate(target, v1.version)
    assert current_version(target) == v1.version
    assert _live(target) == {"a.yaml": b"v1", "only-in-v1": b"x"}


def test_activate_a_missing_version_raises_and_keeps_data(target: Path) -> None:
    """Rolling back to a version no longer on disk raises PromoteError and leaves `..data` alone."""
    v1 = _snap({"a": "1"})
    promote(v1, target)
    with pytest.raises(PromoteError, match="rollback into"):
        activate(target, "0000000000000000")
    assert current_version(target) == v1.version


def test_reused_version_dir_is_not_rewritten(target: Path) -> None:
    """Promoting back to a version whose dir is still on disk reuses it (same inode) instead of copying again."""
    v1, v2 = _snap({"a": "1"}), _snap({"a": "2"})
    promote(v1, target)
    inode = os.stat(version_dir(target, v1.version)).st_ino
    promote(v2, target)
    assert promote(v1, target) is True
    assert os.stat(version_dir(target, v1.version)).st_ino == inode
    assert (target / "a").read_bytes() == b"1"


def _entries(target: Path) -> list[str]:
    return sorted(p.name for p in target.iterdir())


def test_failed_write_removes_its_partial_dir(target: Path) -> None:
    """A write that fails half-way (here: `a` is a file, so `a/b` cannot be made) leaves no `..tmp-*` behind."""
    v1 = _snap({"x": "1"})
    promote(v1, target)
    before = _entries(target)
    broken = Snapshot(files={"a": b"file", "a/b": b"under a file"}, version="badbadbadbadbad0", sizes={})
    with pytest.raises(PromoteError):
        promote(broken, target)
    assert _entries(target) == before
    assert current_version(target) == v1.version


def test_space_needed_rounds_every_file_and_dir_up_to_a_block() -> None:
    """Two small files in a sub-dir take 2 file blocks and 2 dir blocks (the version dir, the sub-dir)."""
    snap = _snap({"conf.d/a": "x" * 10, "conf.d/b": "y" * 5000})
    assert space_needed(snap, 4096) == (1 + 2) * 4096 + 2 * 4096 + SPACE_MARGIN


class _Statvfs:
    """What os.statvfs reports for a filesystem with `blocks` free 4 KiB blocks (the OS edge, faked)."""

    def __init__(self, blocks: int, inodes: int = 1000) -> None:
        self.f_frsize = self.f_bsize = 4096
        self.f_bavail, self.f_favail, self.f_files = blocks, inodes, 10_000


def test_no_space_is_refused_before_anything_is_written(target: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Too few free blocks: NoSpaceError saying how many bytes are free and needed; the target is untouched."""
    v1 = _snap({"a": "1"})
    promote(v1, target)
    before = _entries(target)
    big = _snap({"a": b"x" * 100_000})
    monkeypatch.setattr(os, "statvfs", lambda path: _Statvfs(blocks=10))
    with pytest.raises(NoSpaceError, match=rf"target {target} has 40960 bytes free, version {big.version} needs "):
        promote(big, target)
    assert _entries(target) == before and current_version(target) == v1.version


def test_too_few_inodes_is_refused(target: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Enough bytes but not enough inodes for the files: refused the same way."""
    monkeypatch.setattr(os, "statvfs", lambda path: _Statvfs(blocks=10_000, inodes=5))
    with pytest.raises(NoSpaceError, match="has 5 inodes free"):
        promote(_snap({f"f{i}": "x" for i in range(20)}), target)
    assert _entries(target) == []


def test_a_version_already_on_disk_needs_no_space(target: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Going back to a version still on disk writes nothing, so a full target does not stop it."""
    v1, v2 = _snap({"a": "1"}), _snap({"a": "2"})
    promote(v1, target)
    promote(v2, target)
    monkeypatch.setattr(os, "statvfs", lambda path: _Statvfs(blocks=0))
    assert promote(v1, target) is True and current_version(target) == v1.version


def test_discard_deletes_a_version_but_never_the_live_one(target: Path) -> None:
    """discard() removes a failed version's dir (renamed, then deleted); the live version is refused."""
    v1, v2 = _snap({"a": "1"}), _snap({"a": "2"})
    promote(v1, target)
    promote(v2, target)
    with pytest.raises(PromoteError, match="it is live"):
        discard(target, v2.version)
    assert discard(target, v1.version) is True
    assert discard(target, v1.version) is False
    assert _entries(target) == sorted([DATA, f"..v-{v2.version}", "a"])


def test_inspect_names_each_kind_of_damage(target: Path) -> None:
    """inspect() says what is wrong: ..data missing or elsewhere, the version dir or an entry gone, a link gone."""
    v1, v2 = _snap({"a": "1", "conf.d/x": "x"}), _snap({"a": "2"})
    promote(v2, target)
    promote(v1, target)
    names = {"a", "conf.d"}
    assert inspect(target, v1.version, names) is None
    (target / "a").unlink()
    assert inspect(target, v1.version, names) == "link a is missing"
    os.symlink("elsewhere", target / "a")
    assert inspect(target, v1.version, names) == "link a does not point at ..data/a"
    os.unlink(target / "a")
    os.symlink("..data/a", target / "a")
    (version_dir(target, v1.version) / "a").unlink()
    assert inspect(target, v1.version, names) == f"a is missing from ..v-{v1.version}"
    (target / DATA).unlink()
    assert inspect(target, v1.version, names) == "..data is missing"
    os.symlink(f"..v-{v2.version}", target / DATA)
    assert inspect(target, v1.version, names) == f"..data points at '..v-{v2.version}', not ..v-{v1.version}"
    (target / DATA).unlink()
    os.symlink(f"..v-{v1.version}", target / DATA)
    os.rename(version_dir(target, v1.version), target / "moved")
    assert inspect(target, v1.version, names) == f"..v-{v1.version} is missing"


def test_restore_rebuilds_a_wiped_target(target: Path) -> None:
    """restore() after everything in the target was deleted: the version, ..data and links are back."""
    snap = _snap({"app.yaml": "a: 1\n", "conf.d/x.conf": "x"})
    promote(snap, target)
    for entry in target.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    restore(snap, target)
    assert inspect(target, snap.version, {"app.yaml", "conf.d"}) is None
    assert _live(target) == {"app.yaml": b"a: 1\n", "conf.d/x.conf": b"x"}


def test_restore_replaces_a_damaged_version_dir(target: Path) -> None:
    """A version dir that lost a top-level entry is replaced by a fresh copy, not reused."""
    snap = _snap({"a": "1", "b": "2"})
    promote(snap, target)
    (version_dir(target, snap.version) / "b").unlink()
    restore(snap, target)
    assert _live(target) == {"a": b"1", "b": b"2"}
    assert not [n for n in _entries(target) if n.startswith(("..del-", "..tmp-"))]


def _leftovers(target: Path) -> list[str]:
    return [n for n in _entries(target) if n.startswith(("..del-", "..tmp-", "..link-", "..data_tmp"))]


def test_promotion_points_a_redirected_link_back(target: Path) -> None:
    """A link of one of the version's names redirected elsewhere is pointed back at `..data/name`, on
    re-promoting the live version (a repair) and on promoting a new one."""
    v1, v2 = _snap({"app.conf": "1"}), _snap({"app.conf": "2"})
    promote(v1, target)
    os.unlink(target / "app.conf")
    os.symlink("/etc/passwd", target / "app.conf")
    assert inspect(target, v1.version, {"app.conf"}) == "link app.conf does not point at ..data/app.conf"
    restore(v1, target)
    assert inspect(target, v1.version, {"app.conf"}) is None
    os.unlink(target / "app.conf")
    os.symlink("/etc/passwd", target / "app.conf")
    promote(v2, target)
    assert os.readlink(target / "app.conf") == "..data/app.conf"
    assert _live(target) == {"app.conf": b"2"}


@pytest.mark.parametrize("kind", ["dir", "file"])
def test_restore_replaces_a_data_that_is_not_a_symlink(target: Path, kind: str) -> None:
    """`..data` replaced by a directory (with a file the app would read through it) or a regular file:
    restore() deletes it and puts the link back."""
    snap = _snap({"app.conf": "good"})
    promote(snap, target)
    (target / DATA).unlink()
    if kind == "dir":
        (target / DATA).mkdir()
        (target / DATA / "app.conf").write_text("evil")
    else:
        (target / DATA).write_text("junk")
    assert inspect(target, snap.version, {"app.conf"}) is not None
    restore(snap, target)
    assert inspect(target, snap.version, {"app.conf"}) is None
    assert _live(target) == {"app.conf": b"good"}
    assert _leftovers(target) == []


@pytest.mark.parametrize("kind", ["dir", "file"])
def test_restore_and_activate_replace_a_top_level_name_that_is_not_a_symlink(target: Path, kind: str) -> None:
    """One of the version's names replaced by a file or a directory (it was our link): both ways of putting
    the version back (restore from memory, activate from its dir) delete it and make the link again."""
    snap = _snap({"app.conf": "good", "conf.d/x": "x"})
    promote(snap, target)
    for put_back in (lambda: restore(snap, target), lambda: activate(target, snap.version)):
        (target / "conf.d").unlink()
        if kind == "dir":
            (target / "conf.d").mkdir()
            (target / "conf.d" / "x").write_text("evil")
        else:
            (target / "conf.d").write_text("evil")
        assert inspect(target, snap.version, {"app.conf", "conf.d"}) == "conf.d is not our symlink"
        put_back()
        assert inspect(target, snap.version, {"app.conf", "conf.d"}) is None
        assert _live(target) == {"app.conf": b"good", "conf.d/x": b"x"}
        assert _leftovers(target) == []


@pytest.mark.parametrize("kind", ["file", "symlink"])
def test_restore_replaces_a_version_dir_that_is_not_a_directory(target: Path, kind: str, tmp_path: Path) -> None:
    """The version dir replaced by a file or by a symlink to a look-alike dir elsewhere: rebuilt from the
    snapshot; activate(), which has only the disk, says so instead of following the symlink."""
    snap = _snap({"app.conf": "good"})
    promote(snap, target)
    vdir = version_dir(target, snap.version)
    shutil.rmtree(vdir)
    if kind == "file":
        vdir.write_text("junk")
    else:
        (tmp_path / "elsewhere").mkdir()
        (tmp_path / "elsewhere" / "app.conf").write_text("evil")
        os.symlink(tmp_path / "elsewhere", vdir)
    assert inspect(target, snap.version, {"app.conf"}) == f"{vdir.name} is not a directory"
    with pytest.raises(PromoteError, match="is not a directory"):
        activate(target, snap.version)
    restore(snap, target)
    assert inspect(target, snap.version, {"app.conf"}) is None
    assert _live(target) == {"app.conf": b"good"}


def _ino(target: Path, version: str, name: str) -> int:
    return os.lstat(version_dir(target, version) / name).st_ino


def _dir_files(target: Path, version: str) -> dict[str, bytes]:
    vdir = version_dir(target, version)
    return {p.relative_to(vdir).as_posix(): p.read_bytes() for p in sorted(vdir.rglob("*")) if p.is_file()}


V1 = {"app.yaml": "a: 1\n", "conf.d/x.conf": "x " * 500, "conf.d/y.conf": "y", "big.bin": b"\x00" * 70_000}


def test_unchanged_files_are_hard_links_to_the_base_version(target: Path) -> None:
    """Files with the base's bytes share its inode; the changed one is a new inode; the old one is untouched."""
    v1 = _snap(V1)
    v2 = _snap({**V1, "conf.d/y.conf": "y changed"})
    promote(v1, target)
    assert promote(v2, target, base=v1) is True
    for name in ("app.yaml", "conf.d/x.conf", "big.bin"):
        assert _ino(target, v2.version, name) == _ino(target, v1.version, name), name
        assert os.lstat(version_dir(target, v2.version) / name).st_mode & 0o7777 == 0o644
    assert _ino(target, v2.version, "conf.d/y.conf") != _ino(target, v1.version, "conf.d/y.conf")
    assert _dir_files(target, v1.version) == v1.files, "promoting a change never alters an older version"
    assert _dir_files(target, v2.version) == _live(target) == v2.files


def test_a_changed_file_never_alters_any_older_version(target: Path) -> None:
    """Five versions, each changing one file and linking the rest: every version dir keeps its own bytes."""
    versions = [_snap(V1)]
    promote(versions[0], target)
    for i in range(4):
        files = {**versions[-1].files, ("app.yaml", "conf.d/y.conf")[i % 2]: f"edit {i}\n".encode()}
        versions.append(_snap(files))
        promote(versions[-1], target, base=versions[-2])
    for snap in versions:
        assert _dir_files(target, snap.version) == snap.files
    assert _ino(target, versions[-1].version, "big.bin") == _ino(target, versions[0].version, "big.bin")
    assert os.lstat(version_dir(target, versions[0].version) / "big.bin").st_nlink == 5


def test_rollback_after_linking_serves_the_old_bytes(target: Path) -> None:
    """Back on the base version (`activate`, as a rollback does): the app reads the base's bytes again."""
    v1 = _snap(V1)
    v2 = _snap({**V1, "app.yaml": "a: 2\n"})
    promote(v1, target)
    promote(v2, target, base=v1)
    activate(target, v1.version)
    assert _live(target) == v1.files
    assert promote(v2, target, base=v1) is True and _live(target) == v2.files


def test_pruning_the_base_version_keeps_the_shared_files(target: Path) -> None:
    """Deleting an old version removes only its links: the live version's shared files stay whole."""
    v1 = _snap(V1)
    v2 = _snap({**V1, "app.yaml": "a: 2\n"})
    promote(v1, target)
    promote(v2, target, base=v1)
    assert prune(target, keep=0, protect=set()) == [v1.version]
    assert not version_dir(target, v1.version).exists()
    assert _live(target) == _dir_files(target, v2.version) == v2.files
    assert os.lstat(version_dir(target, v2.version) / "big.bin").st_nlink == 1
    discard_me = _snap({**V1, "app.yaml": "a: 3\n"})
    promote(discard_me, target, base=v2)
    activate(target, v2.version)
    assert discard(target, discard_me.version) and _live(target) == v2.files


@pytest.mark.parametrize("err", [errno.EMLINK, errno.EXDEV, errno.EPERM], ids=["EMLINK", "EXDEV", "EPERM"])
def test_a_link_that_cannot_be_made_falls_back_to_a_copy(
    target: Path, monkeypatch: pytest.MonkeyPatch, err: int
) -> None:
    """EMLINK (too many links), EXDEV, EPERM (no hard links here): each file is written instead, whole."""
    v1 = _snap(V1)
    v2 = _snap({**V1, "app.yaml": "a: 2\n"})
    promote(v1, target)
    tried: list[str] = []

    def no_link(src: str, dst: str, *, follow_symlinks: bool = True) -> None:
        tried.append(dst)
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(os, "link", no_link)
    promote(v2, target, base=v1)
    assert len(tried) == 3, "the three unchanged files were tried as links"
    assert _ino(target, v2.version, "big.bin") != _ino(target, v1.version, "big.bin")
    assert _dir_files(target, v2.version) == _live(target) == v2.files
    assert os.lstat(version_dir(target, v2.version) / "big.bin").st_mode & 0o7777 == 0o644


def test_a_base_file_not_as_written_is_copied(target: Path) -> None:
    """The base's file on disk must still be a regular 0644 file of the right size, or it is not linked."""
    v1 = _snap(V1)
    v2 = _snap({**V1, "app.yaml": "a: 2\n"})
    promote(v1, target)
    (version_dir(target, v1.version) / "big.bin").chmod(0o600)
    os.truncate(version_dir(target, v1.version) / "conf.d/x.conf", 10)
    promote(v2, target, base=v1)
    assert _ino(target, v2.version, "big.bin") != _ino(target, v1.version, "big.bin")
    assert _ino(target, v2.version, "conf.d/x.conf") != _ino(target, v1.version, "conf.d/x.conf")
    assert _ino(target, v2.version, "conf.d/y.conf") == _ino(target, v1.version, "conf.d/y.conf")
    assert _dir_files(target, v2.version) == v2.files


def test_a_near_full_target_takes_a_one_file_change(target: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Linked files need no blocks or inodes: with room for one small file only, a one-file edit fits."""
    v1 = _snap({**{f"f{i}": f"{i}" * 40_000 for i in range(10)}, "small": "s"})
    v2 = _snap({**v1.files, "small": "changed"})
    promote(v1, target)
    room = space_needed(v2, 4096, linked=set(v2.files) - {"small"}) // 4096
    assert room < space_needed(v2, 4096) // 4096
    monkeypatch.setattr(os, "statvfs", lambda path: _Statvfs(blocks=room, inodes=20))
    with pytest.raises(NoSpaceError):  # a copy of the whole version does not fit
        promote(v2, target)
    assert promote(v2, target, base=v1) is True and _live(target) == v2.files


def test_sigkill_while_linking_never_tears_the_target(target: Path) -> None:
    """A child promotes versions that each change one of 200 files (the rest linked) and prune, and is
    SIGKILLed at random instants: `..data` always shows exactly one whole version, every version dir left
    on disk holds its own bytes, and the next life (after `clean_leftovers`) links from it again."""
    import random
    import signal
    import time

    rng = random.Random(14)
    files = {f"d{i % 4}/f{i:03}": f"{i}\n".encode() * 50 for i in range(200)}
    snaps = [_snap(files)]
    for n in range(1, 400):
        files = {**files, f"d{n % 4}/f{n % 200:03}": f"v{n}\n".encode() * 50}
        snaps.append(_snap(files))
    by_version = {s.version: s for s in snaps}
    promote(snaps[0], target)
    killed_mid_promotion = 0
    for _ in range(25):
        start = snaps.index(by_version[str(current_version(target))])
        pid = os.fork()
        if pid == 0:  # the child: promote onwards from the live version, as the sidecar would
            try:
                for prev, snap in zip(snaps[start:], snaps[start + 1 :], strict=False):
                    promote(snap, target, base=prev)
                    prune(target, 2, {snap.version})
            finally:
                os._exit(0)
        before, deadline = current_version(target), time.monotonic() + 30
        while current_version(target) == before and time.monotonic() < deadline:  # one promotion per life
            time.sleep(0.001)
        time.sleep(rng.uniform(0.0, 0.02))  # then a random instant of the next ones
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        live = by_version[str(current_version(target))]
        killed_mid_promotion += live is not snaps[-1]
        assert _live(target) == live.files, "..data shows one whole version"
        for entry in target.iterdir():
            if entry.name.startswith("..v-"):
                version = entry.name[len("..v-") :]
                assert _dir_files(target, version) == by_version[version].files, entry.name
        clean_leftovers(target)
    assert killed_mid_promotion >= 20, "the kills must land while versions are being promoted"
    live = by_version[str(current_version(target))]
    assert snaps.index(live) >= 25, "the lives must have promoted many versions"
    shared = [p for p in version_dir(target, live.version).rglob("f*") if p.stat().st_nlink > 1]
    assert len(shared) >= 150, "the versions on disk share their unchanged files"
