"""`Lifecycle`: the shutdown order, in-process, with recording stand-ins for the servers (no sockets)."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any, cast

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from sidecar.lifecycle import Lifecycle


class _Runner:
    """Stands in for an aiohttp runner: records its cleanup, or never finishes it."""

    def __init__(self, name: str, seen: list[str], *, hang: bool = False) -> None:
        self.name, self.seen, self.hang = name, seen, hang

    async def cleanup(self) -> None:
        self.seen.append(f"cleanup {self.name}")
        if self.hang:
            await asyncio.Event().wait()


def _own(life: Lifecycle, runner: _Runner) -> None:
    life.own(cast(web.BaseRunner, runner))


def _events(logs: list[dict[str, Any]]) -> list[str]:
    return [str(e["event"]) for e in logs]


async def test_shutdown_runs_in_order() -> None:
    """main returns, then not ready, "stopping", servers newest first, the session, "stopped"."""
    seen: list[str] = []

    async def main(stop: asyncio.Event) -> None:
        await stop.wait()
        seen.append("main returned")

    async def close_session() -> None:
        seen.append("session closed")

    with capture_logs() as logs:
        async with Lifecycle(handle_signals=False) as life:
            _own(life, _Runner("first", seen))
            _own(life, _Runner("second", seen))
            life.on_stopping(lambda: seen.append("not ready"))
            life.on_close(close_session)
            asyncio.get_running_loop().call_soon(life.stop.set)
            await life.run(main(life.stop))
    assert seen == ["main returned", "not ready", "cleanup second", "cleanup first", "session closed"]
    assert _events(logs) == ["stopping", "stopped"]


async def test_sigterm_only_sets_stop() -> None:
    """SIGTERM sets the stop Event; `run()` without a main task then shuts down and returns."""
    seen: list[str] = []
    with capture_logs() as logs:
        async with Lifecycle() as life:
            _own(life, _Runner("server", seen))
            asyncio.get_running_loop().call_soon(os.kill, os.getpid(), signal.SIGTERM)
            await life.run()
    assert life.stop.is_set() and seen == ["cleanup server"]
    assert _events(logs) == ["stopping", "stopped"]


async def test_a_hung_server_cleanup_times_out_and_the_rest_still_closes() -> None:
    """A server whose cleanup never ends is given up on after the timeout, with a warning; the next one still closes."""
    seen: list[str] = []
    with capture_logs() as logs:
        async with Lifecycle(cleanup_timeout_s=0.05, handle_signals=False) as life:
            _own(life, _Runner("older", seen))
            _own(life, _Runner("stuck", seen, hang=True))
            life.stop.set()
            await life.run()
    assert seen == ["cleanup stuck", "cleanup older"]
    assert _events(logs) == ["stopping", "server_cleanup_timeout", "stopped"]


async def test_leftover_tasks_are_cancelled_with_a_message() -> None:
    """A task started during the run and still running after the servers stopped is cancelled and named."""
    with capture_logs() as logs:
        async with Lifecycle(handle_signals=False) as life:
            straggler = asyncio.create_task(asyncio.Event().wait(), name="straggler")
            life.stop.set()
            await life.run()
    assert straggler.cancelled()
    assert logs[1] == {"event": "tasks_cancelled", "log_level": "warning", "tasks": ["straggler"]}


async def test_a_start_up_error_still_cleans_up_without_the_shutdown_lines() -> None:
    """Leaving the context after a start-up error cleans up what was registered; no "stopping"/"stopped"."""
    seen: list[str] = []

    async def close_session() -> None:
        seen.append("session closed")

    with capture_logs() as logs, pytest.raises(OSError, match="address in use"):
        async with Lifecycle(handle_signals=False) as life:
            life.on_close(close_session)
            _own(life, _Runner("server", seen))
            raise OSError("address in use")
    assert seen == ["cleanup server", "session closed"]
    assert logs == []


async def test_a_failing_main_task_still_shuts_down_and_raises() -> None:
    """An exception from the main task goes through the whole shutdown, then propagates; no "stopped"."""
    seen: list[str] = []

    async def main() -> None:
        raise RuntimeError("boom")

    with capture_logs() as logs, pytest.raises(RuntimeError, match="boom"):
        async with Lifecycle(handle_signals=False) as life:
            _own(life, _Runner("server", seen))
            life.on_stopping(lambda: seen.append("not ready"))
            await life.run(main())
    assert seen == ["not ready", "cleanup server"]
    assert _events(logs) == ["stopping"]
