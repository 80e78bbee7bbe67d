"""One process's start-up, main loop and shutdown; `run`, `demo` and `webhook` all go through it.

uvicorn's `Server` is the model: SIGTERM/SIGINT only set the `stop` Event, the main task returns once
it sees it, and the shutdown runs in one fixed order:

    main returns (watching stopped) -> on_stopping callbacks (not ready) -> "stopping"
      -> each server's cleanup, newest first, with a timeout -> on_close callbacks (HTTP session)
      -> tasks started meanwhile and still running are cancelled, with a message -> "stopped"

The object is an async context manager: leaving it (after a start-up error too) cleans up whatever
was registered so far, without the "stopping"/"stopped" lines a normal shutdown logs.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Coroutine
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import structlog

if TYPE_CHECKING:  # aiohttp is imported by the caller, when it is ready to (see run.py)
    from aiohttp import web

__all__ = ["Lifecycle"]

log = structlog.get_logger("lifecycle")

# How long a task still running after the shutdown gets to finish once cancelled.
_CANCEL_GRACE_S = 1.0


class Lifecycle:
    """Owns the stop Event, the servers to clean up and the shutdown order of one process."""

    def __init__(self, *, cleanup_timeout_s: float = 5.0, handle_signals: bool = True) -> None:
        self.stop = asyncio.Event()
        self.cleanup_timeout_s = cleanup_timeout_s
        self._handle_signals = handle_signals
        self._runners: list[web.BaseRunner] = []
        self._stopping: list[Callable[[], None]] = []
        self._closing: list[Callable[[], Awaitable[object]]] = []
        self._tasks_before: set[asyncio.Task[Any]] = set()
        self._closed = False

    async def __aenter__(self) -> Self:
        if self._handle_signals:
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, self.stop.set)
        self._tasks_before = asyncio.all_tasks()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def own(self, runner: web.BaseRunner) -> None:
        """Clean `runner` up at shutdown (servers go newest first, each within `cleanup_timeout_s`)."""
        self._runners.append(runner)

    def on_stopping(self, callback: Callable[[], None]) -> None:
        """Call `callback` first thing in the shutdown, e.g. to mark the process not ready."""
        self._stopping.append(callback)

    def on_close(self, callback: Callable[[], Awaitable[object]]) -> None:
        """Await `callback` after the servers are cleaned up, e.g. an HTTP client session's `close`."""
        self._closing.append(callback)

    async def run(self, main: Coroutine[Any, Any, None] | None = None) -> None:
        """Run `main` (it must return once `stop` is set), or just wait for `stop`; then shut down in order."""
        try:
            if main is None:
                await self.stop.wait()
            else:
                await main
        finally:
            for callback in self._stopping:
                callback()
            log.info("stopping")
            await self.close()
        log.info("stopped")

    async def close(self) -> None:
        """Servers, then the on_close callbacks, then leftover tasks; runs once, later calls do nothing."""
        if self._closed:
            return
        self._closed = True
        for runner in reversed(self._runners):
            try:
                await asyncio.wait_for(runner.cleanup(), self.cleanup_timeout_s)
            except TimeoutError:
                log.warning("server_cleanup_timeout")
        for callback in self._closing:
            await callback()
        await self._cancel_leftovers()

    async def _cancel_leftovers(self) -> None:
        current = asyncio.current_task()
        left = [t for t in asyncio.all_tasks() - self._tasks_before if t is not current and not t.done()]
        if not left:
            return
        log.warning("tasks_cancelled", tasks=sorted(t.get_name() for t in left))
        for task in left:
            task.cancel("shutdown: still running after the servers stopped")
        await asyncio.wait(left, timeout=_CANCEL_GRACE_S)
