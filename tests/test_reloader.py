"""The orchestrator's failure paths in process: a real `Reloader` on a real target dir, a scripted fake app.

source/   a kubelet-style volume (tests.kubelet.project)
target/   the sidecar's own, as run.serve_sidecar assembles it:
  ..v-<good>/                 the last good version: what every failure returns to
  ..v-<bad>/                  promoted, failed, deleted right after the rollback
  ..data -> ..v-<good>
  ..reload-sidecar-state.json last good + quarantine (writes may fail: best effort before a rollback)
  app.yaml -> ..data/app.yaml

The app is a fake `Trigger` that reads the live app.yaml on each reload request, as an app would, and
answers per content; verification is a fake verifier scripted the same way. Each pass runs as the worker
runs it (`pass_once`), so `state` is what /status and /readyz show. Tests marked "root" mount a
size-limited tmpfs as the target (a real ENOSPC); as non-root each fails with one line (tests/root.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from structlog.testing import capture_logs

from sidecar.metrics import Metrics
from sidecar.promote import DATA, current_version, promote, version_dir
from sidecar.proof import NoProof
from sidecar.reloader import Reloader
from sidecar.settings import Settings
from sidecar.snapshot import read_snapshot, snapshot_of
from sidecar.stagger import NoGate
from sidecar.state import STATE_FILE, State
from sidecar.trigger import NotSignalled, TriggerError
from sidecar.verify import HealthCheck, Outcome
from tests.kubelet import project
from tests.tmpfs import FILLER, fill, tmpfs

GOOD = {"app.yaml": b"version: 1\nmode: fine\n"}
BAD = {"app.yaml": b"version: 2\nmode: bad\n"}
FIXED = {"app.yaml": b"version: 3\nmode: fixed\n"}
Hook = Callable[[], None]


def _raise(e: BaseException) -> Hook:
    def hook() -> None:
        raise e

    return hook


@dataclass
class App:
    """The fake app behind the `Trigger` protocol: `on_bad` / `on_good` run on each reload of that content."""

    target: Path
    on_bad: Hook | None = None
    on_good: Hook | None = None
    method: str = "fake"
    asked: list[str | None] = field(default_factory=list)  # the version live at each reload request

    async def fire(self) -> str:
        self.asked.append(current_version(self.target))
        hook = self.on_bad if "bad" in (self.target / "app.yaml").read_text() else self.on_good
        if hook is not None:
            hook()
        return "reloaded"


@dataclass
class Rig:
    source: Path
    target: Path
    app: App
    reloader: Reloader

    @property
    def state(self) -> State:
        return self.reloader.state

    def metric(self, name: str, **labels: str) -> float:
        value = self.reloader.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    async def apply(self, files: dict[str, bytes]) -> str:
        """Project `files` into the source and run one pass; returns their version hash."""
        project(self.source, files)
        await self.reloader.pass_once()
        return read_snapshot(self.source).version


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def _rig(tmp_path: Path, session: aiohttp.ClientSession, target: Path | None = None, **kw: object) -> Rig:
    source, target = tmp_path / "source", target or tmp_path / "target"
    app = App(target, **kw)  # type: ignore[arg-type]
    settings = Settings(source_dir=source, target_dir=target, resync_s=0)
    reloader = Reloader(settings, State(pod="t"), Metrics(), app, NoGate(), session)
    return Rig(source, target, app, reloader)


async def _started(rig: Rig) -> str:
    """Recover, then commit GOOD as the first version (the app starts on it: nobody is signalled)."""
    rig.reloader.recover()
    good = await rig.apply(GOOD)
    assert rig.state.last_good == good and rig.state.ready and rig.app.asked == []
    return good


def _assert_rolled_back(rig: Rig, good: str, bad: str, stage: str, why: str) -> None:
    """Back on `good`, the app reloaded on it after `bad`, ready, the bad dir gone, `bad` quarantined."""
    st = rig.state
    assert current_version(rig.target) == good and st.current == good
    assert rig.app.asked == [bad, good], "the app must be told about the bad version, then the good one again"
    assert (st.ready, st.phase) == (True, "idle")
    assert st.last_error is not None and bad in st.last_error and why in st.last_error
    assert st.quarantined[bad].stage == stage and why in st.quarantined[bad].reason
    assert not version_dir(rig.target, bad).exists(), "a failed version's dir is deleted at the rollback"
    assert (rig.target / "app.yaml").read_bytes() == GOOD["app.yaml"]
    assert rig.metric("reload_sidecar_rollbacks_total") == 1
    assert rig.metric("reload_sidecar_reloads_total", result="rolled_back") == 1
    assert rig.metric("reload_sidecar_reloads_total", result="failed") == 1


async def test_trigger_error_on_a_bad_version_rolls_back_and_signals_the_app(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    """The app refuses to reload the new version: back on the last good one, the app told, ready again."""
    rig = _rig(tmp_path, session, on_bad=_raise(TriggerError("HTTP 500 from the app")))
    good = await _started(rig)
    bad = await rig.apply(BAD)
    _assert_rolled_back(rig, good, bad, "reload", "HTTP 500 from the app")


async def test_unexpected_trigger_exception_rolls_back(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    """A trigger raising something unexpected (a ValueError, e.g. from parsing a pidfile) is a failed reload too."""
    rig = _rig(tmp_path, session, on_bad=_raise(ValueError("invalid literal for int(): '²'")))
    good = await _started(rig)
    bad = await rig.apply(BAD)
    _assert_rolled_back(rig, good, bad, "reload", "internal error: ValueError")


async def test_verify_raising_rolls_back(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    """A health check that raises instead of answering counts as a failed verification: rolled back."""

    async def verifier(s: aiohttp.ClientSession, check: HealthCheck) -> Outcome:
        if "bad" in (rig.target / "app.yaml").read_text():
            raise RuntimeError("Session is closed")
        return Outcome(True, "3 good polls in a row", 3)

    rig = _rig(tmp_path, session)
    rig.reloader.judge.health = HealthCheck("http://127.0.0.1:9/health")
    rig.reloader.judge.verifier = verifier
    good = await _started(rig)
    bad = await rig.apply(BAD)
    _assert_rolled_back(rig, good, bad, "verify", "internal error: RuntimeError: Session is closed")


async def test_enospc_on_the_state_write_does_not_stop_the_rollback(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    """(root: tmpfs) The target fills up while the bad version fails: the quarantine write fails with ENOSPC,
    the rollback happens anyway, and the write is retried once there is room."""
    with tmpfs(tmp_path / "target", "2m") as target:

        def full_then_fail() -> None:
            fill(target)
            raise TriggerError("HTTP 500 from the app")

        rig = _rig(tmp_path, session, target=target, on_bad=full_then_fail)
        good = await _started(rig)
        bad = await rig.apply(BAD)
        _assert_rolled_back(rig, good, bad, "reload", "HTTP 500")
        assert rig.metric("reload_sidecar_state_write_failures_total") >= 1
        # the quarantine write failed; the rollback's own write, after the bad dir's discard made room, did not
        assert bad in json.loads((target / STATE_FILE).read_text())["quarantined"]
        assert not [p.name for p in target.iterdir() if p.name.startswith("..tmp-")]

        (target / FILLER).unlink()
        await rig.reloader.pass_once()  # a resync: the source is unchanged, the state write is retried
        assert bad in json.loads((target / STATE_FILE).read_text())["quarantined"]
        assert rig.app.asked == [bad, good] and rig.state.ready


async def test_failed_rollback_is_not_ready_and_is_retried(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    """The rollback cannot swap `..data` (a directory is in the way of `..data_tmp`): degraded, never ready
    on the bad version, even if the app later accepts it; once the way is clear, the next pass rolls back."""
    rig = _rig(tmp_path, session)
    good = await _started(rig)
    obstacle = rig.target / "..data_tmp"

    def block_the_swap_then_fail() -> None:
        (obstacle / "x").mkdir(parents=True)
        raise TriggerError("HTTP 500 from the app")

    rig.app.on_bad = block_the_swap_then_fail
    bad = await rig.apply(BAD)
    st = rig.state
    assert current_version(rig.target) == bad and rig.app.asked == [bad]
    assert (st.ready, st.phase) == (False, "degraded")
    assert st.last_error is not None and "rollback" in st.last_error and good in st.last_error
    assert "rollback" in st.ready_reason

    rig.app.on_bad = None  # the app now takes the bad version: still never ready on it
    await rig.reloader.pass_once()
    assert (st.ready, st.phase) == (False, "degraded") and rig.app.asked == [bad]

    shutil.rmtree(obstacle)
    await rig.reloader.pass_once()
    assert current_version(rig.target) == good and rig.app.asked == [bad, good]
    assert (st.ready, st.phase) == (True, "idle")
    assert not version_dir(rig.target, bad).exists()


async def test_rollback_rebuilds_a_deleted_last_good_dir(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    """The last good version's dir was deleted meanwhile: the rollback rebuilds it from the files the
    sidecar kept, so the app is back on it."""
    rig = _rig(tmp_path, session)
    good = await _started(rig)

    def delete_good_then_fail() -> None:
        shutil.rmtree(version_dir(rig.target, good))
        raise TriggerError("HTTP 500 from the app")

    rig.app.on_bad = delete_good_then_fail
    bad = await rig.apply(BAD)
    _assert_rolled_back(rig, good, bad, "reload", "HTTP 500 from the app")


@pytest.mark.parametrize("error", [TriggerError("app is down"), ValueError("unexpected")], ids=["trigger", "raise"])
async def test_rollback_reload_failing_is_degraded(
    tmp_path: Path, session: aiohttp.ClientSession, error: Exception
) -> None:
    """The app does not take the good version back either: ..data is on it, but the sidecar is not ready
    (the reason says so) until a later pass finds the app healthy."""
    rig = _rig(tmp_path, session, on_bad=_raise(TriggerError("HTTP 500")), on_good=_raise(error))
    good = await _started(rig)
    bad = await rig.apply(BAD)
    st = rig.state
    assert current_version(rig.target) == good and rig.app.asked == [bad, good]
    assert (st.ready, st.phase) == (False, "degraded")
    assert f"rolled back to {good} but the app is still not healthy" in st.ready_reason
    assert not version_dir(rig.target, bad).exists()

    rig.app.on_good = None
    await rig.reloader.pass_once()
    assert (st.ready, st.phase) == (True, "idle") and rig.app.asked == [bad, good, good]


async def test_first_version_is_not_ready_until_recorded(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    """The first version's commit cannot be written (a directory is in the state file's way): not ready,
    the app not started on it; once the write succeeds at a later pass, ready."""
    target = tmp_path / "target"
    (target / STATE_FILE / "x").mkdir(parents=True)
    (target / f"{STATE_FILE}.corrupt" / "x").mkdir(parents=True)  # so start-up cannot move it aside either
    rig = _rig(tmp_path, session)
    rig.reloader.recover()
    v = await rig.apply(GOOD)
    st = rig.state
    assert current_version(target) == v and (target / "app.yaml").read_bytes() == GOOD["app.yaml"]
    assert (st.ready, st.phase) == (False, "degraded") and "state file" in st.ready_reason
    assert rig.metric("reload_sidecar_state_write_failures_total") == 1
    assert rig.app.asked == []

    await rig.reloader.pass_once()
    assert not st.ready and rig.app.asked == [], "no reload for an app that has not started"
    shutil.rmtree(target / STATE_FILE)
    await rig.reloader.pass_once()
    assert (st.ready, st.phase) == (True, "idle") and rig.app.asked == []
    assert json.loads((target / STATE_FILE).read_text())["last_good"] == v


async def test_full_target_refuses_with_the_free_space_and_recovers(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    """(root: tmpfs) No room for a new version: refused with the free space in the reason, nothing partial
    left, the version not remembered as bad; once space returns the next resync applies it."""
    with tmpfs(tmp_path / "target", "2m") as target:
        rig = _rig(tmp_path, session, target=target)
        good = await _started(rig)
        fill(target)
        new = await rig.apply(FIXED)
        st = rig.state
        assert current_version(target) == good and (st.ready, st.current) == (True, good)
        assert st.last_error is not None and f"target {target} has " in st.last_error
        assert f"bytes free, version {new} needs " in st.last_error
        assert new not in st.refused and new not in st.quarantined
        assert sorted(p.name for p in target.iterdir() if p.name.startswith("..")) == sorted(
            [DATA, f"..v-{good}", STATE_FILE, FILLER]
        )

        (target / FILLER).unlink()
        await rig.reloader.pass_once()
        assert current_version(target) == new and st.last_good == new and rig.app.asked == [new]


async def test_no_room_to_stage_for_the_checker_is_not_a_refusal(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    """(root: tmpfs) The checker's copy cannot be staged in a full target: the version is not refused (no
    verdict on its content), the reason is in last_error, and once space returns the next resync applies it."""
    with tmpfs(tmp_path / "target", "2m") as target:
        rig = _rig(tmp_path, session, target=target)
        settings = dataclasses.replace(rig.reloader.s, validate_command=(sys.executable, "-c", "pass", "{dir}"))
        rig.reloader = Reloader(settings, State(pod="t"), Metrics(), rig.app, NoGate(), session)
        good = await _started(rig)
        fill(target)
        with capture_logs() as logs:
            new = await rig.apply(FIXED)
        st = rig.state
        assert current_version(target) == good and (st.ready, st.current) == (True, good)
        assert st.last_error is not None and "no space left on" in st.last_error and new in st.last_error
        assert new not in st.refused and new not in st.quarantined
        assert [e["event"] for e in logs if e["event"] in ("validate_unavailable", "refused")] == [
            "validate_unavailable"
        ]
        assert rig.metric("reload_sidecar_validation_failures_total") == 0

        (target / FILLER).unlink()
        await rig.reloader.pass_once()
        assert current_version(target) == new and st.last_good == new and rig.app.asked == [new]


async def test_an_app_not_found_puts_the_previous_version_back_and_retries(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    """The app's process cannot be found when a good version arrives: nothing was signalled, so no
    quarantine, no rollback, no second signal: `..data` goes back to the version the app runs, ready stays,
    `/status` shows the version deferred; the next pass tries it again and commits it."""
    missing = [True]

    def lookup() -> None:
        if missing[0]:
            raise NotSignalled("pidfile /run/app.pid holds '', not the app's pid")

    rig = _rig(tmp_path, session, on_good=lookup)
    good = await _started(rig)
    new = await rig.apply(FIXED)
    st = rig.state
    assert current_version(rig.target) == good and st.current == st.last_good == good
    assert (st.ready, st.phase) == (True, "idle") and st.quarantined == {}
    assert st.deferred is not None and st.deferred["version"] == new and st.deferred["attempts"] == 1
    assert st.versions[new][0] == "deferred" and "holds ''" in (st.last_error or "")
    assert (rig.target / "app.yaml").read_bytes() == GOOD["app.yaml"]
    assert rig.app.asked == [new] and rig.metric("reload_sidecar_rollbacks_total") == 0
    assert rig.metric("reload_sidecar_last_reload_successful") == 0
    await rig.reloader.pass_once()
    assert st.deferred is not None and st.deferred["attempts"] == 2 and rig.app.asked == [new, new]
    missing[0] = False
    await rig.reloader.pass_once()
    assert st.current == st.last_good == new and st.ready and st.deferred is None
    assert (rig.target / "app.yaml").read_bytes() == FIXED["app.yaml"]


def _wipe(target: Path) -> None:
    for entry in target.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


async def test_deleted_data_link_is_restored_by_the_next_pass(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    """`..data` deleted while the source is unchanged: the next resync puts it back (no reload: the app's
    version did not change), logs `target_repaired` and counts it."""
    rig = _rig(tmp_path, session)
    good = await _started(rig)
    (rig.target / DATA).unlink()
    with capture_logs() as logs:
        await rig.reloader.pass_once()
    assert (rig.target / "app.yaml").read_bytes() == GOOD["app.yaml"] and current_version(rig.target) == good
    [event] = [e for e in logs if e["event"] == "target_repaired"]
    assert event["problem"] == "..data is missing" and event["version"] == good
    assert rig.metric("reload_sidecar_target_repairs_total") == 1
    assert rig.state.ready and rig.app.asked == []
    await rig.reloader.pass_once()
    assert rig.metric("reload_sidecar_target_repairs_total") == 1, "an intact target is not repaired again"


async def test_wiped_target_is_rebuilt(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    """Everything in the target deleted (version dirs, links, state file): rebuilt from the unchanged source."""
    rig = _rig(tmp_path, session)
    good = await _started(rig)
    _wipe(rig.target)
    await rig.reloader.pass_once()
    assert (rig.target / "app.yaml").read_bytes() == GOOD["app.yaml"] and current_version(rig.target) == good
    assert json.loads((rig.target / STATE_FILE).read_text())["last_good"] == good
    assert rig.metric("reload_sidecar_target_repairs_total") == 1 and rig.state.ready


async def test_damage_while_the_source_is_quarantined_goes_back_to_last_good(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    """The source still holds a quarantined version when `..data` and a link vanish, and then when the whole
    target is wiped: the last good version is made live again each time (from its dir, then from the files
    the sidecar kept), not the source's."""
    rig = _rig(tmp_path, session, on_bad=_raise(TriggerError("HTTP 500")))
    good = await _started(rig)
    await rig.apply(BAD)
    (rig.target / DATA).unlink()
    (rig.target / "app.yaml").unlink()
    await rig.reloader.pass_once()
    assert current_version(rig.target) == good and (rig.target / "app.yaml").read_bytes() == GOOD["app.yaml"]
    assert rig.metric("reload_sidecar_target_repairs_total") == 1 and rig.state.ready
    _wipe(rig.target)
    await rig.reloader.pass_once()
    assert current_version(rig.target) == good and (rig.target / "app.yaml").read_bytes() == GOOD["app.yaml"]
    assert rig.metric("reload_sidecar_target_repairs_total") == 2 and rig.state.ready
    assert json.loads((rig.target / STATE_FILE).read_text())["last_good"] == good


async def test_damage_that_cannot_be_repaired_is_not_ready(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    """The one damage self-repair cannot undo (docs/validation.md): right after a restart, the last good
    version's dir deleted while the source shows a quarantined version, so its files are neither in memory
    nor in the source. Not ready, with the reason, at each pass; once the source shows the last good
    version again the next pass rebuilds it and the sidecar is ready again."""
    rig = _rig(tmp_path, session, on_bad=_raise(TriggerError("HTTP 500")))
    good = await _started(rig)
    await rig.apply(BAD)
    rig = _rig(tmp_path, session)  # a restart: nothing in memory
    rig.reloader.recover()
    shutil.rmtree(version_dir(rig.target, good))
    await rig.reloader.pass_once()
    st = rig.state
    assert (st.ready, st.phase) == (False, "degraded") and f"target damaged (..v-{good} is missing" in st.ready_reason
    await rig.reloader.pass_once()
    assert not st.ready and rig.app.asked == []
    await rig.apply(GOOD)
    await rig.reloader.drain()  # the repair's state write may still be "recording" on a busy machine
    assert (st.ready, st.phase) == (True, "idle") and current_version(rig.target) == good
    assert (rig.target / "app.yaml").read_bytes() == GOOD["app.yaml"] and rig.app.asked == []


async def test_a_dir_in_place_of_data_is_replaced(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    """A directory where `..data` belongs (the app would read through it): deleted and `..data` made again
    by the next pass, without reloading the app; ready throughout the repair's end."""
    rig = _rig(tmp_path, session)
    good = await _started(rig)
    (rig.target / DATA).unlink()
    (rig.target / DATA / "x").mkdir(parents=True)
    await rig.reloader.pass_once()
    st = rig.state
    assert (st.ready, st.phase) == (True, "idle") and current_version(rig.target) == good
    assert (rig.target / "app.yaml").read_bytes() == GOOD["app.yaml"] and rig.app.asked == []
    assert rig.metric("reload_sidecar_target_repairs_total") == 1


@dataclass
class FleetGate:
    """A fake fleet behind the `Gate` protocol: `held` versions are reported failed by a peer."""

    held: set[str] = field(default_factory=set)
    asked: list[str] = field(default_factory=list)

    async def wait(self, version: str) -> str:
        self.asked.append(version)
        return "held" if version in self.held else "go"

    async def admit_first(self, version: str) -> str:
        return await self.wait(version)

    def delay(self, version: str) -> float:
        return 0.0


async def test_a_version_the_fleet_holds_is_never_promoted(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    """The gate answers "held" (a peer reported the version failed): the last good version stays live, the
    app is not told, the version is held (and skipped by later passes) and the next version is taken."""
    rig = _rig(tmp_path, session)
    gate = FleetGate()
    rig.reloader.gate = gate
    good = await _started(rig)
    gate.held.add(read_snapshot_of(BAD))
    bad = await rig.apply(BAD)
    st = rig.state
    assert current_version(rig.target) == good and rig.app.asked == [] and not version_dir(rig.target, bad).exists()
    assert (st.phase, st.ready, bad in st.held, st.versions[bad][0]) == ("held", True, True, "held")
    assert rig.metric("reload_sidecar_held_total") == 1
    await rig.reloader.pass_once()  # a resync: the held version is not asked about again
    assert gate.asked == [good, bad]  # good at start-up (admit_first), bad once
    fixed = await rig.apply(FIXED)
    assert current_version(rig.target) == fixed and st.last_good == fixed and rig.app.asked == [fixed]


async def test_a_starting_pod_never_starts_on_a_held_version(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    """At start-up the fleet holds the source's version: nothing is promoted and /readyz says why (the app
    waits); the next version is promoted as the first one, with nobody to signal."""
    rig = _rig(tmp_path, session)
    rig.reloader.gate = FleetGate(held={read_snapshot_of(BAD)})
    rig.reloader.recover()
    bad = await rig.apply(BAD)
    st = rig.state
    assert current_version(rig.target) is None and not st.ready and bad in st.ready_reason
    assert "held by the fleet" in st.ready_reason
    good = await rig.apply(GOOD)
    assert current_version(rig.target) == good and st.ready and rig.app.asked == []


def read_snapshot_of(files: dict[str, bytes]) -> str:
    """The version hash the sidecar computes for `files` (the same function reads the source)."""
    return snapshot_of(files, max_file_bytes=1 << 20, max_total_bytes=4 << 20).version


async def test_start_up_prunes_what_a_killed_life_left(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    """Versions promoted by a sidecar killed before it pruned are trimmed to RELOAD_HISTORY at start-up,
    never the live or the last good one (the first pass may have nothing to commit, so nothing to prune)."""
    rig = _rig(tmp_path, session)
    good = await _started(rig)
    for n in range(10):  # promoted and never pruned, as by lives killed right after the swap
        snap = snapshot_of(
            {"app.yaml": f"version: {n + 10}\n".encode()}, max_file_bytes=1 << 20, max_total_bytes=1 << 20
        )
        promote(snap, rig.target)
    live = current_version(rig.target)
    again = Reloader(rig.reloader.s, State(pod="t"), Metrics(), rig.app, NoGate(), session)
    again.recover()
    left = sorted(p.name for p in rig.target.iterdir() if p.name.startswith("..v-"))
    assert len(left) == rig.reloader.s.history + 2, left  # history + the live one + the last good one
    assert f"..v-{live}" in left and f"..v-{good}" in left


async def test_unchanged_files_are_linked_from_the_last_good_version(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    """A new version shares the files it did not change with the last good one (same inode), never alters
    the last good one's bytes, and a rollback from it serves them again."""
    rig = _rig(tmp_path, session, on_bad=_raise(TriggerError("HTTP 500 from the app")))
    rig.reloader.recover()
    static = {"static/big.conf": b"x" * 50_000, "static/small.conf": b"y\n"}
    good = await rig.apply({**GOOD, **static})
    fixed = await rig.apply({**FIXED, **static})
    assert rig.state.last_good == fixed and rig.app.asked == [fixed]

    def inode(version: str, name: str) -> int:
        return (version_dir(rig.target, version) / name).stat().st_ino

    assert all(inode(good, name) == inode(fixed, name) for name in static)
    assert inode(good, "app.yaml") != inode(fixed, "app.yaml")
    assert (version_dir(rig.target, good) / "app.yaml").read_bytes() == GOOD["app.yaml"]

    bad = await rig.apply({**BAD, **static})
    assert current_version(rig.target) == fixed and rig.app.asked == [fixed, bad, fixed]
    assert not version_dir(rig.target, bad).exists()
    live = {name: (rig.target / name).read_bytes() for name in ("app.yaml", *static)}
    assert live == {**FIXED, **static}
    assert all(inode(good, name) == inode(fixed, name) for name in static)


class _BlockedWriter:
    """The state writer (`write_state`) with a gate: each write waits, in its thread, until `release`d."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import threading

        from sidecar import reloader, state

        self._real = state.write_state
        self.entered, self.gate = threading.Event(), threading.Event()
        self.written: list[str | None] = []
        monkeypatch.setattr(reloader, "write_state", self)

    def __call__(self, target: Path, doc: dict[str, object]) -> None:
        self.entered.set()
        assert self.gate.wait(60), "the test never released the state writer"
        self._real(target, doc)
        self.written.append(doc["last_good"])  # type: ignore[arg-type]

    async def wait_entered(self) -> None:
        assert await asyncio.to_thread(self.entered.wait, 30), "no state write started"


async def test_the_next_pass_does_not_wait_for_the_state_write(
    tmp_path: Path, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit's state write still blocked (a slow disk): the next version's pass runs through its reload
    request meanwhile; once the writes go through, in order, the state file names the newest last good."""
    rig = _rig(tmp_path, session)
    await _started(rig)
    writer = _BlockedWriter(monkeypatch)
    fixed = await asyncio.wait_for(rig.apply(FIXED), 30)  # returns with its state write still blocked
    await writer.wait_entered()
    newest = {"app.yaml": b"version: 4\nmode: newer\n"}
    v4 = await asyncio.wait_for(rig.apply(newest), 30)
    assert rig.app.asked == [fixed, v4], "the second reload request is made while the first write waits"
    assert writer.written == [] and rig.state.last_good == v4 and rig.state.ready
    assert rig.state.phase == "recording", "/status is not idle while the writes wait"
    writer.gate.set()
    await rig.reloader.drain()
    assert writer.written == [fixed, v4], "one write per commit, in commit order"
    assert rig.state.phase == "idle"
    assert json.loads((rig.target / STATE_FILE).read_text())["last_good"] == v4
    assert rig.metric("reload_sidecar_state_write_failures_total") == 0


async def test_a_rollback_does_not_wait_for_a_blocked_state_write(
    tmp_path: Path, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The quarantine is written before a rollback only if no write is under way: a blocked commit write
    never keeps a bad version live. The quarantine is written after it, and the file ends complete."""
    rig = _rig(tmp_path, session, on_bad=_raise(TriggerError("HTTP 500 from the app")))
    await _started(rig)
    writer = _BlockedWriter(monkeypatch)
    fixed = await asyncio.wait_for(rig.apply(FIXED), 30)
    await writer.wait_entered()
    bad = await asyncio.wait_for(rig.apply(BAD), 30)
    assert current_version(rig.target) == fixed and rig.app.asked == [fixed, bad, fixed]
    assert rig.state.ready and bad in rig.state.quarantined
    writer.gate.set()
    await rig.reloader.drain()
    doc = json.loads((rig.target / STATE_FILE).read_text())
    assert doc["last_good"] == fixed and bad in doc["quarantined"]


async def test_shutdown_lets_a_pending_state_write_finish(
    tmp_path: Path, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM (the worker's stop) with a state write under way: the worker waits for it (bounded), so the
    last commit is on record when the sidecar exits."""
    rig = _rig(tmp_path, session)
    await _started(rig)
    writer = _BlockedWriter(monkeypatch)
    fixed = await asyncio.wait_for(rig.apply(FIXED), 30)
    await writer.wait_entered()
    stop = asyncio.Event()
    stop.set()
    worker = asyncio.create_task(rig.reloader._work(stop))
    await asyncio.sleep(0.2)
    assert not worker.done(), "the worker waits for the pending write"
    writer.gate.set()
    await asyncio.wait_for(worker, 30)
    assert json.loads((rig.target / STATE_FILE).read_text())["last_good"] == fixed
    assert (rig.state.ready, rig.state.phase) == (False, "stopping")


async def test_unconfirmed_version_is_live_and_ready_but_never_last_good(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    """Proof `none`: a healthy version stays live and ready, but last good stays the proven one, it counts as
    unconfirmed (not success), a resync does not reload it again, and a restarted sidecar checks it again
    before it answers ready."""
    rig = _rig(tmp_path, session)
    rig.reloader = Reloader(rig.reloader.s, State(pod="t"), Metrics(), rig.app, NoGate(), session, proof=NoProof())
    good = await _started(rig)
    fixed = await rig.apply(FIXED)
    st = rig.state
    assert (st.current, st.last_good, st.ready) == (fixed, good, True) and rig.app.asked == [fixed]
    assert st.versions[fixed][0] == "unconfirmed" and st.verdict is not None and st.verdict.step == "unconfirmed"
    assert rig.metric("reload_sidecar_reloads_total", result="unconfirmed") == 1.0
    assert rig.metric("reload_sidecar_reloads_total", result="success") == 0.0  # the start-up is no reload
    await rig.reloader.pass_once()  # a resync
    assert rig.app.asked == [fixed]
    await rig.reloader.drain()

    again = Reloader(rig.reloader.s, State(pod="t"), Metrics(), rig.app, NoGate(), session, proof=NoProof())
    again.recover()
    assert not again.state.ready and again.state.last_good == good
    await again.pass_once()
    assert again.state.ready and again.state.current == fixed and rig.app.asked == [fixed, fixed]
