"""`read_snapshot`: one version of the source as bytes, with limits, no escapes and no special files."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from sidecar import snapshot
from sidecar.snapshot import Snapshot, SourceError, read_snapshot
from tests.kubelet import project


def _write(root: Path, files: Mapping[str, bytes | str]) -> Path:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
    return root


def test_plain_directory(tmp_path: Path) -> None:
    """A plain directory is read as it is: relative names to exact bytes, sizes alongside, no problems."""
    _write(tmp_path, {"app.yaml": "a: 1\n", "nginx.conf": b"events {}\n"})
    snap = read_snapshot(tmp_path)
    assert snap.files == {"app.yaml": b"a: 1\n", "nginx.conf": b"events {}\n"}
    assert snap.sizes == {"app.yaml": 5, "nginx.conf": 10}
    assert snap.problems == ()
    assert snap.total_bytes == 15
    assert len(snap.version) == 16 and int(snap.version, 16) >= 0


def test_nested_paths_are_kept(tmp_path: Path) -> None:
    """Files in sub-directories keep their relative posix path as the key."""
    _write(tmp_path, {"conf.d/a.conf": "a", "conf.d/deep/b.conf": "b", "top.yaml": "t: 1"})
    assert sorted(read_snapshot(tmp_path).files) == ["conf.d/a.conf", "conf.d/deep/b.conf", "top.yaml"]


def test_kubelet_layout_is_read_through_data(tmp_path: Path) -> None:
    """A kubelet volume is read through `..data`; the version dir, `..data` and top-level links add nothing."""
    # volume/
    # ├── ..2026_11_25_09_14_03.3021554817/   app.yaml, conf.d/a.conf
    # ├── ..data -> ..2026_11_25_09_14_03.3021554817
    # ├── app.yaml -> ..data/app.yaml
    # └── conf.d -> ..data/conf.d
    volume = tmp_path / "volume"
    project(volume, {"app.yaml": "a: 1\n", "conf.d/a.conf": "x\n"})
    assert any(p.name.startswith("..20") for p in volume.iterdir())
    snap = read_snapshot(volume)
    assert snap.files == {"app.yaml": b"a: 1\n", "conf.d/a.conf": b"x\n"}
    assert snap.problems == ()


def test_kubelet_swap_gives_the_new_version(tmp_path: Path) -> None:
    """After a kubelet swap the snapshot holds only the new payload (removed keys are gone)."""
    volume = tmp_path / "volume"
    project(volume, {"a.yaml": "v: 1\n", "b.yaml": "v: 1\n"})
    first = read_snapshot(volume)
    project(volume, {"a.yaml": "v: 2\n"})
    second = read_snapshot(volume)
    assert second.files == {"a.yaml": b"v: 2\n"}
    assert second.version != first.version


def test_hidden_dotdot_entries_are_skipped(tmp_path: Path) -> None:
    """Entries named `..*` are the kubelet's own and never read; single-dot names are ordinary keys."""
    _write(tmp_path, {"..2026_01_01_00_00_00.1/old.yaml": "x", "..reload-state": "s", ".env": "E=1", "a": "1"})
    assert sorted(read_snapshot(tmp_path).files) == [".env", "a"]


def test_data_link_pointing_outside_the_volume_is_refused(tmp_path: Path) -> None:
    """A `..data` symlink that leaves the volume makes the whole source unusable."""
    outside = _write(tmp_path / "outside", {"a.yaml": "a: 1"})
    volume = tmp_path / "volume"
    volume.mkdir()
    os.symlink(outside, volume / "..data")
    with pytest.raises(SourceError, match="outside the volume"):
        read_snapshot(volume)


def test_include_and_exclude_globs(tmp_path: Path) -> None:
    """Include globs pick files by name or relative path; exclude globs win over include."""
    _write(tmp_path, {"a.yaml": "", "b.yml": "", "c.json": "", "secret.yaml": "", "conf.d/x.conf": "", "n.txt": ""})
    snap = read_snapshot(tmp_path, include=("*.yaml", "*.yml", "conf.d/*"), exclude=("secret*",))
    assert sorted(snap.files) == ["a.yaml", "b.yml", "conf.d/x.conf"]


def test_file_over_the_per_file_limit_is_refused_not_read(tmp_path: Path) -> None:
    """A file over max_file_bytes is a problem and none of its bytes are in the snapshot; one at the limit is fine."""
    _write(tmp_path, {"big.txt": "SECRET-BIG-" + "x" * 10, "ok.txt": "0123456789"})
    snap = read_snapshot(tmp_path, max_file_bytes=10)
    assert snap.problems == ("big.txt: 21 bytes exceeds RELOAD_MAX_FILE_BYTES=10",)
    assert snap.files == {"ok.txt": b"0123456789"}
    assert all(b"SECRET-BIG" not in data for data in snap.files.values())


def test_total_over_the_limit_is_refused(tmp_path: Path) -> None:
    """Files that together exceed max_total_bytes give a problem naming the file that crossed it."""
    _write(tmp_path, {"a.txt": "aaaaaa", "b.txt": "SECRT!", "c.txt": "cccccc"})
    snap = read_snapshot(tmp_path, max_total_bytes=10)
    assert snap.problems == ("total size exceeds RELOAD_MAX_TOTAL_BYTES=10 at b.txt",)
    assert "b.txt" not in snap.files and "c.txt" not in snap.files
    assert all(b"SECRT" not in data for data in snap.files.values())


def test_symlink_escaping_the_volume_is_refused(tmp_path: Path) -> None:
    """A symlink to a file outside the volume is a problem and its target is never read."""
    (tmp_path / "host-secret").write_text("root:password")
    volume = _write(tmp_path / "volume", {"app.yaml": "a: 1"})
    os.symlink(tmp_path / "host-secret", volume / "passwd")
    os.symlink("../host-secret", volume / "relative")
    snap = read_snapshot(volume)
    assert sorted(snap.problems) == [
        "passwd: symlink points outside the volume; refused",
        "relative: symlink points outside the volume; refused",
    ]
    assert snap.files == {"app.yaml": b"a: 1"}


def test_symlink_to_a_directory_outside_is_refused(tmp_path: Path) -> None:
    """A symlinked directory outside the volume is not walked."""
    _write(tmp_path / "etc", {"shadow": "x"})
    volume = _write(tmp_path / "volume", {"a": "1"})
    os.symlink(tmp_path / "etc", volume / "etc")
    snap = read_snapshot(volume)
    assert snap.problems == ("etc: symlink points outside the volume; refused",)
    assert snap.files == {"a": b"1"}


def test_symlink_to_a_file_inside_the_volume_is_followed(tmp_path: Path) -> None:
    """A symlink to a file inside the volume is read like its target."""
    volume = _write(tmp_path / "volume", {"real.yaml": "r: 1", "dir/x.conf": "x"})
    os.symlink("real.yaml", volume / "alias.yaml")
    os.symlink("../real.yaml", volume / "dir" / "up.yaml")
    snap = read_snapshot(volume)
    assert snap.problems == ()
    assert snap.files == {"alias.yaml": b"r: 1", "dir/up.yaml": b"r: 1", "dir/x.conf": b"x", "real.yaml": b"r: 1"}


def test_symlink_to_a_directory_inside_the_volume_is_followed(tmp_path: Path) -> None:
    """A symlink to a sibling directory inside the volume is walked like the directory (it is no loop)."""
    volume = _write(tmp_path / "volume", {"dir/x.conf": "x"})
    os.symlink("dir", volume / "linked")
    snap = read_snapshot(volume)
    assert snap.problems == ()
    assert snap.files == {"dir/x.conf": b"x", "linked/x.conf": b"x"}


@pytest.mark.timeout(5)
def test_symlink_loop_is_refused(tmp_path: Path) -> None:
    """A directory symlink back to its own parent ends the walk with a problem instead of looping."""
    volume = _write(tmp_path / "volume", {"a": "1"})
    os.symlink(".", volume / "loop")
    snap = read_snapshot(volume)
    assert snap.problems == ("loop: symlink loop",)
    assert snap.files == {"a": b"1"}


@pytest.mark.timeout(5)
def test_symlinks_pointing_at_each_other_are_a_problem_not_an_exception(tmp_path: Path) -> None:
    """Two links that point at each other (ELOOP) are each a `symlink loop` problem; the rest is read."""
    volume = _write(tmp_path / "volume", {"a.yaml": "a: 1"})
    os.symlink("ping", volume / "pong")
    os.symlink("pong", volume / "ping")
    snap = read_snapshot(volume)
    assert snap.problems == ("ping: symlink loop", "pong: symlink loop")
    assert snap.files == {"a.yaml": b"a: 1"}


def test_file_name_that_is_not_utf8_is_a_problem_shown_escaped(tmp_path: Path) -> None:
    """A file or directory name that is not UTF-8 is a problem with its bytes escaped; the rest is read."""
    volume = _write(tmp_path / "volume", {"ok.yaml": "a: 1"})
    (volume / os.fsdecode(b"caf\xe9.yaml")).write_bytes(b"b: 2")
    (volume / os.fsdecode(b"d\xff")).mkdir()
    (volume / os.fsdecode(b"d\xff") / "x.yaml").write_bytes(b"c: 3")
    snap = read_snapshot(volume)
    assert snap.problems == (
        "caf\\xe9.yaml: file name is not valid UTF-8 (bytes shown escaped)",
        "d\\xff/x.yaml: file name is not valid UTF-8 (bytes shown escaped)",
    )
    assert snap.files == {"ok.yaml": b"a: 1"}
    assert snap.version == read_snapshot(volume).version  # a stable version, so it is refused once


def test_excluded_name_that_is_not_utf8_is_ignored(tmp_path: Path) -> None:
    """Include/exclude globs apply first: a name nobody asked for is not a problem."""
    volume = _write(tmp_path / "volume", {"ok.yaml": "a: 1"})
    (volume / os.fsdecode(b"caf\xe9.bak")).write_bytes(b"b: 2")
    assert read_snapshot(volume, exclude=("*.bak",)).problems == ()


def test_directories_nested_too_deep_are_a_problem(tmp_path: Path) -> None:
    """Directories nested past the depth limit are a problem at the first one too deep."""
    volume = _write(tmp_path / "volume", {"a": "1"})
    deep = volume.joinpath(*["d"] * 40)
    deep.mkdir(parents=True)
    (deep / "x").write_text("x")
    snap = read_snapshot(volume)
    assert snap.problems == ("/".join(["d"] * 33) + ": directories nested deeper than 32; refused",)
    assert snap.files == {"a": b"1"}


def test_path_longer_than_the_system_allows_is_a_problem(tmp_path: Path) -> None:
    """A path past PATH_MAX (ENAMETOOLONG) is a problem naming where, not an exception."""
    volume = _write(tmp_path / "volume", {"a": "1"})
    fd = os.open(volume, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(20):  # 20 x 250 bytes: past PATH_MAX (4096), created relative to a directory fd
            os.mkdir("n" * 250, dir_fd=fd)
            fd, old = os.open("n" * 250, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd), fd
            os.close(old)
    finally:
        os.close(fd)
    snap = read_snapshot(volume)
    assert len(snap.problems) == 1 and snap.problems[0].endswith(": File name too long"), snap.problems
    assert snap.files == {"a": b"1"}


def test_data_link_loop_or_to_nothing_is_a_source_error(tmp_path: Path) -> None:
    """`..data` pointing at itself or at a missing version is a SourceError, not a RuntimeError."""
    volume = tmp_path / "volume"
    volume.mkdir()
    os.symlink("..data", volume / "..data")
    with pytest.raises(SourceError, match="symlink loop"):
        read_snapshot(volume)
    os.unlink(volume / "..data")
    os.symlink("..2026_01_01_00_00_00.1", volume / "..data")
    with pytest.raises(SourceError, match="points to nothing"):
        read_snapshot(volume)


def test_a_swap_before_the_first_stat_gives_the_new_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kubelet deleting the version being read between listing and stat re-reads `..data`, instead of
    a snapshot that silently lacks the files (an empty version refused for nothing)."""
    volume = tmp_path / "volume"
    project(volume, {"a.yaml": "v: 1\n"})
    real_stat, swapped = os.stat, []

    def stat(path: str, *args: object, **kwargs: object) -> os.stat_result:
        if not swapped and str(path).endswith("a.yaml"):
            swapped.append(path)
            project(volume, {"a.yaml": "v: 2\n"})  # deletes the version dir being listed
        return real_stat(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "stat", stat)
    snap = read_snapshot(volume)
    assert swapped
    assert (snap.files, snap.problems) == ({"a.yaml": b"v: 2\n"}, ())


def test_unlistable_directory_is_a_problem(tmp_path: Path) -> None:
    """A directory that cannot be listed is a problem naming it; the rest of the volume is read."""
    volume = _write(tmp_path / "volume", {"a": "1", "sub/x": "x"})
    (volume / "sub").chmod(0)
    drop = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
    code = f"import pathlib, sidecar.snapshot as s; print(s.read_snapshot(pathlib.Path({str(volume)!r})).problems)"
    out = subprocess.run([*drop, sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    (volume / "sub").chmod(0o755)
    assert out.stdout.strip() == "('sub: cannot list directory: Permission denied',)", out.stderr


@pytest.mark.timeout(30)  # a read that blocks on the FIFO never returns: this timeout is the failure
def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    """A FIFO (directly or behind a symlink) is a problem, and reading the volume never blocks on it."""
    volume = _write(tmp_path / "volume", {"a.yaml": "a: 1"})
    os.mkfifo(volume / "pipe")
    os.symlink("pipe", volume / "cfg.yaml")
    start = time.monotonic()
    snap = read_snapshot(volume)
    assert time.monotonic() - start < 10
    assert sorted(snap.problems) == [
        "cfg.yaml: FIFO, not a regular file; refused",
        "pipe: FIFO, not a regular file; refused",
    ]
    assert snap.files == {"a.yaml": b"a: 1"}


def test_unix_socket_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Unix socket in the volume is a problem, not a file."""
    volume = _write(tmp_path / "volume", {"a": "1"})
    monkeypatch.chdir(volume)  # a relative bind keeps the socket path under the 108-byte limit
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind("app.sock")
        snap = read_snapshot(volume)
    assert snap.problems == ("app.sock: socket, not a regular file; refused",)
    assert snap.files == {"a": b"1"}


def test_dangling_symlink_is_reported(tmp_path: Path) -> None:
    """A symlink to nothing is reported by name."""
    volume = _write(tmp_path / "volume", {"a": "1"})
    os.symlink("missing.yaml", volume / "app.yaml")
    snap = read_snapshot(volume)
    assert snap.problems == ("app.yaml: dangling symlink",)
    assert snap.files == {"a": b"1"}


def test_unreadable_file_is_a_problem(tmp_path: Path) -> None:
    """A file that cannot be opened is a problem naming it, not an exception."""
    volume = _write(tmp_path / "volume", {"a": "1", "locked": "x"})
    (volume / "locked").chmod(0)
    # Root reads files whatever their mode: as root, read in a child without the capabilities that allow it.
    drop = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
    code = f"import pathlib, sidecar.snapshot as s; print(s.read_snapshot(pathlib.Path({str(volume)!r})).problems)"
    out = subprocess.run([*drop, sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "('locked: cannot open: Permission denied',)", out.stderr


def test_version_is_stable_and_ignores_mtime(tmp_path: Path) -> None:
    """The version hash is the same across reads and after a touch that changes only times."""
    volume = _write(tmp_path / "volume", {"a.yaml": "a: 1", "sub/b": "b"})
    first = read_snapshot(volume).version
    assert read_snapshot(volume).version == first
    os.utime(volume / "a.yaml", (1_000_000, 1_000_000))
    assert read_snapshot(volume).version == first


def test_version_changes_with_content_or_names(tmp_path: Path) -> None:
    """Changing a byte or renaming a file (same bytes) gives a different version."""
    volume = _write(tmp_path / "volume", {"a.yaml": "a: 1"})
    v1 = read_snapshot(volume).version
    (volume / "a.yaml").write_text("a: 2")
    v2 = read_snapshot(volume).version
    (volume / "a.yaml").rename(volume / "b.yaml")
    v3 = read_snapshot(volume).version
    assert len({v1, v2, v3}) == 3


def test_version_does_not_depend_on_the_layout(tmp_path: Path) -> None:
    """The same payload as a plain directory and as a kubelet volume has the same version."""
    files = {"a.yaml": "a: 1\n", "conf.d/x": "x"}
    plain = _write(tmp_path / "plain", files)
    volume = tmp_path / "volume"
    project(volume, files)
    assert read_snapshot(plain).version == read_snapshot(volume).version


def test_version_cannot_be_forged_by_moving_bytes_between_names(tmp_path: Path) -> None:
    """Files whose names and contents concatenate the same still hash differently."""
    one = _write(tmp_path / "one", {"ab": "c"})
    two = _write(tmp_path / "two", {"a": "bc"})
    assert read_snapshot(one).version != read_snapshot(two).version


def test_missing_source_raises_source_error(tmp_path: Path) -> None:
    """A missing source directory (or a file in its place) raises SourceError, not a snapshot."""
    with pytest.raises(SourceError, match="No such file or directory"):
        read_snapshot(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(SourceError, match="not a directory"):
        read_snapshot(tmp_path / "file")


def test_empty_directory_gives_an_empty_snapshot(tmp_path: Path) -> None:
    """An empty source is a snapshot with no files and no problems (validation refuses it later)."""
    snap = read_snapshot(tmp_path)
    assert isinstance(snap, Snapshot)
    assert (snap.files, snap.problems) == ({}, ())


def test_a_version_half_deleted_under_the_reader_is_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kubelet swaps `..data` and deletes the old version dir while it is being listed: the listing
    returns the files not yet deleted, with no error. The reader sees `..data` moved and reads the new
    version instead of taking a version with files missing (the crash test once saw 13 of 20 files live)."""
    volume = tmp_path / "volume"
    old = {f"f{i:02}.yaml": f"id: 1\nfile: {i}\n".encode() for i in range(20)}
    new = {f"f{i:02}.yaml": f"id: 2\nfile: {i}\n".encode() for i in range(20)}
    project(volume, old)
    real_walk = snapshot._walk
    swapped: list[Path] = []

    def walk_during_a_swap(root: Path, vol: Path, problems: list[str]) -> list[tuple[str, Path]]:
        if not swapped:
            swapped.append(root)
            project(volume, new)  # swaps ..data, then deletes the old version dir
            root.mkdir()  # ... caught half way: 13 of its 20 files still there
            for name in sorted(old)[:13]:
                (root / name).write_bytes(old[name])
        return real_walk(root, vol, problems)

    monkeypatch.setattr(snapshot, "_walk", walk_during_a_swap)
    assert read_snapshot(volume).files == new
