"""Entries the kubelet never makes, planted in a real kubelet-style swap: each version is refused once, with
a reason naming the entry, and resyncs neither retry it nor log a traceback (the real sidecar process).

    volume/
    ├── ..2026_…/          app.yaml + the planted entry (symlinks into each other, a name of raw bytes)
    ├── ..data -> ..2026_…
    └── app.yaml -> ..data/app.yaml
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from sidecar.snapshot import snapshot_of
from tests.e2e.sidecar_proc import running, wait_for
from tests.kubelet import project

GOOD = {"app.yaml": "version: 1\n"}
NEXT = {"app.yaml": "version: 2\n"}
LAST = {"app.yaml": "version: 3\n"}
RESYNCS = 3


def _links_into_each_other(version_dir: Path) -> None:
    os.symlink("pong.yaml", version_dir / "ping.yaml")
    os.symlink("ping.yaml", version_dir / "pong.yaml")


def _name_not_utf8(version_dir: Path) -> None:
    (version_dir / os.fsdecode(b"caf\xe9.yaml")).write_bytes(b"a: 1\n")


def _dir_link_to_itself(version_dir: Path) -> None:
    os.symlink(".", version_dir / "conf.d")


PLANTS: dict[str, tuple[Callable[[Path], None], str]] = {
    "symlink_loop": (_links_into_each_other, "ping.yaml: symlink loop; pong.yaml: symlink loop"),
    "name_not_utf8": (_name_not_utf8, "caf\\xe9.yaml: file name is not valid UTF-8 (bytes shown escaped)"),
    "dir_loop": (_dir_link_to_itself, "conf.d: symlink loop"),
}


@pytest.mark.parametrize("case", sorted(PLANTS))
def test_hostile_entry_is_refused_once_and_resyncs_stay_quiet(tmp_path: Path, case: str) -> None:
    """The version is refused with the entry named; resyncs skip it (no pass_failed, no traceback); the good
    version stays live and ready, and the next clean version is taken."""
    plant, reason = PLANTS[case]
    volume, target = tmp_path / "volume", tmp_path / "target"
    project(volume, GOOD)
    with running(volume, target, tmp_path, RELOAD_RESYNC_S="0.2") as car:
        good = car.wait_current()["current"]
        project(volume, NEXT, extra=plant)
        st = wait_for(lambda: (s := car.status())["refused"] and s, 15, what=f"{case} refused; {car.log_tail()}")
        [(bad, refusal)] = st["refused"].items()
        assert refusal == {"reason": reason, "stage": "validate", "at": refusal["at"]}
        assert st["last_error"] == f"version {bad} refused at validate: {reason}"
        ticks = len(car.events("source_tick"))
        wait_for(lambda: len(car.events("source_tick")) >= ticks + RESYNCS, 15, what="resyncs")
        st = car.status()
        assert (st["current"], st["ready"], st["state"]) == (good, True, "idle"), st
        log = car.log_path.read_text(errors="replace")
        assert [e["version"] for e in car.events("refused")] == [bad], log[-3000:]
        assert not car.events("pass_failed") and "Traceback" not in log and "internal error" not in log
        project(volume, LAST)
        car.wait_current(snapshot_of({k: v.encode() for k, v in LAST.items()}).version)
