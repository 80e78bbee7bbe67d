"""watch.changes(): real inotify (or the watchfiles fallback) on real directories.

kubelet volume:  ..2026_.../ (ignored)  ..data -> ..2026_... (its rename is the change)  app.yaml -> ..data/app.yaml
plain dir:       app.yaml, conf.d/x.conf (edited in place; new subdirectories are watched as they appear)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from sidecar import watch
from sidecar.watch import Tick, changes
from tests.kubelet import project


class Ticks:
    """Collects the ticks of one `changes()` generator running as a task."""

    def __init__(self) -> None:
        self.ticks: list[tuple[float, Tick]] = []
        self.new = asyncio.Event()

    def kinds(self) -> list[Tick]:
        return [kind for _, kind in self.ticks]

    async def next(self, within: float = 30.0) -> Tick:
        seen = len(self.ticks)
        end = time.monotonic() + within
        while len(self.ticks) == seen:
            self.new.clear()
            await asyncio.wait_for(self.new.wait(), max(0.001, end - time.monotonic()))
        return self.ticks[seen][1]

    async def quiet(self, seconds: float) -> None:
        seen = len(self.ticks)
        await asyncio.sleep(seconds)
        assert len(self.ticks) == seen, f"unexpected ticks: {self.kinds()[seen:]}"


@contextlib.asynccontextmanager
async def watching(source: Path, debounce_ms: int = 0, resync_s: float = 0) -> AsyncIterator[Ticks]:
    stop = asyncio.Event()
    ticks = Ticks()

    async def run() -> None:
        async for tick in changes(source, debounce_ms=debounce_ms, resync_s=resync_s, stop=stop):
            ticks.ticks.append((time.monotonic(), tick))
            ticks.new.set()

    task = asyncio.create_task(run())
    await asyncio.sleep(0)  # the task's first step sets the inotify watches up, synchronously
    try:
        yield ticks
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_kubelet_swap_is_one_change(tmp_path: Path) -> None:
    """A kubelet-style ..data swap gives a change; the kubelet's own ..* bookkeeping alone gives none."""
    volume = tmp_path / "volume"
    project(volume, {"app.yaml": "v: 1\n"})
    async with watching(volume, debounce_ms=50) as ticks:
        project(volume, {"app.yaml": "v: 2\n"})
        assert await ticks.next() == "change"
        await ticks.quiet(0.3)
        (volume / "..2099_01_01_00_00_00.1").mkdir()  # a version dir appearing is not yet a change
        await ticks.quiet(0.3)


async def test_plain_directory_edits_and_new_subdirectories(tmp_path: Path) -> None:
    """In a plain directory an in-place edit is a change, and so is an edit in a subdirectory created later."""
    source = tmp_path / "conf"
    source.mkdir()
    (source / "app.yaml").write_text("v: 1\n")
    async with watching(source) as ticks:
        (source / "app.yaml").write_text("v: 2\n")
        assert await ticks.next() == "change"
        (source / "conf.d").mkdir()
        assert await ticks.next() == "change"
        await asyncio.sleep(0.05)
        (source / "conf.d" / "x.conf").write_text("x\n")
        assert await ticks.next() == "change"


def _edit(path: Path) -> None:
    path.write_text(str(time.monotonic()))


async def _write_stream(path: Path, until: Callable[[], bool], limit_s: float) -> tuple[float, float]:
    """Write `path` every ~5 ms until `until()` or `limit_s`; returns the longest gap between two writes (the
    event loop, which runs the watcher too, may have been starved in it) and when the last write was made."""
    gap, last, start = 0.0, time.monotonic(), time.monotonic()
    while not until() and time.monotonic() - start < limit_s:
        _edit(path)
        now = time.monotonic()
        gap, last = max(gap, now - last), now
        await asyncio.sleep(0.005)
    return gap, last


async def test_burst_is_debounced_into_one_change(tmp_path: Path) -> None:
    """A burst of edits closer together than the debounce ends in one change, after the last edit.

    On a busy machine a sleep can outlast the debounce; such a burst (two bursts, really) is written again,
    so the test asserts the debounce rule itself, not the scheduler's punctuality.
    """
    source = tmp_path / "conf"
    source.mkdir()
    debounce = 0.6
    for _ in range(10):
        async with watching(source, debounce_ms=int(debounce * 1000)) as ticks:
            gap, last = await _write_stream(source / "app.yaml", lambda: False, 0.3)
            if gap >= debounce:
                continue
            assert await ticks.next(within=30) == "change"
            assert ticks.ticks[0][0] >= last
            await ticks.quiet(2 * debounce)
            assert ticks.kinds() == ["change"]
            return
    pytest.fail("the machine never wrote 40 edits without a pause as long as the debounce")


async def test_endless_stream_still_gets_through(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Changes that never pause for the debounce still produce a change once the maximum wait has passed."""
    monkeypatch.setattr(watch, "_MAX_WAIT_MIN_S", 0.3)
    monkeypatch.setattr(watch, "_MAX_WAIT_FACTOR", 2)
    source = tmp_path / "conf"
    source.mkdir()
    debounce = 0.8  # max wait: max(0.3, 2 x 0.8) = 1.6 s
    for _ in range(10):
        async with watching(source, debounce_ms=int(debounce * 1000)) as ticks:
            gap, _ = await _write_stream(source / "app.yaml", lambda: bool(ticks.ticks), 30)
            if gap >= debounce:
                continue  # a stall let the debounce fire: not the case under test
            assert ticks.kinds()[:1] == ["change"]
            return
    pytest.fail("the machine never kept up a stream without a pause as long as the debounce")


async def test_resync_ticks_when_nothing_changes(tmp_path: Path) -> None:
    """With RELOAD_RESYNC_S set, an idle source still gets periodic resync ticks."""
    source = tmp_path / "conf"
    source.mkdir()
    async with watching(source, resync_s=0.1) as ticks:
        assert await ticks.next() == "resync"
        assert await ticks.next() == "resync"


async def test_stop_ends_the_generator_promptly(tmp_path: Path) -> None:
    """Setting the stop event ends the stream at once, even with no resync timer."""
    source = tmp_path / "conf"
    source.mkdir()
    stop = asyncio.Event()
    seen: list[Tick] = []

    async def run() -> None:
        async for tick in changes(source, debounce_ms=0, resync_s=0, stop=stop):
            seen.append(tick)

    task = asyncio.create_task(run())
    await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, 30)  # without a resync timer, only the stop event can end the wait
    assert seen == []


async def test_falls_back_to_watchfiles_without_inotify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When inotify cannot be used (e.g. out of watches), watchfiles takes over and changes still arrive."""

    def no_inotify(*args: object) -> None:
        raise OSError(28, "inotify watch: No space left on device (fs.inotify.max_user_watches)")

    monkeypatch.setattr(watch._Inotify, "__init__", no_inotify)
    volume = tmp_path / "volume"
    project(volume, {"app.yaml": "v: 1\n"})
    async with watching(volume) as ticks:
        # watchfiles starts its notifier in a thread, in its own time: a new version every second until one is
        # seen, rather than guessing how long the thread takes to start on a busy machine.
        for n in range(2, 32):
            project(volume, {"app.yaml": f"v: {n}\n"})
            with contextlib.suppress(TimeoutError):
                assert await ticks.next(within=1) == "change"
                break
        assert ticks.kinds()[:1] == ["change"]
