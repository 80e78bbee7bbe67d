"""The sidecar's own HTTP API: /healthz, /readyz, /status, /peers, /metrics. Read-only: nothing here changes state.

A connection that sends no request for `IDLE_TIMEOUT_S` (none at all, half of one, or none since the
last answer) is closed, so idle connections cannot pile up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from prometheus_client import CONTENT_TYPE_LATEST

from .metrics import Metrics
from .state import State

__all__ = ["IDLE_TIMEOUT_S", "Api", "make_app", "start_server"]

# Longer than the 15 s an aiohttp client (a peer polling /status) keeps an idle pooled connection, so
# the client, not this server, closes it between polls and a reused connection is never cut mid-request.
IDLE_TIMEOUT_S = 20.0


@dataclass(slots=True)
class Api:
    state: State
    metrics: Metrics
    alive: Callable[[], bool]
    # waves mode: the gate's documents added to /status, and the peer names /peers serves
    status_extra: Callable[[], dict[str, Any]] | None = None
    peers: Callable[[], dict[str, Any]] | None = None


API = web.AppKey("api", Api)


@dataclass(slots=True)
class _IdleCloser:
    """Closes connections idle for `timeout_s`, checked every quarter of it. Not aiohttp's
    `keepalive_timeout`: older releases (this project allows aiohttp >= 3.9) apply it only after a first
    request, never to a connection that sends none."""

    timeout_s: float
    _last: dict[RequestHandler, float] = field(default_factory=dict)  # last request seen, or first sight
    _busy: dict[RequestHandler, int] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        conn = request.protocol
        self._busy[conn] = self._busy.get(conn, 0) + 1
        try:
            return await handler(request)
        finally:
            self._busy[conn] -= 1
            self._last[conn] = asyncio.get_running_loop().time()

    def start(self, runner: web.BaseRunner) -> None:
        self._task = asyncio.create_task(self._sweep_forever(runner), name="idle-closer")

    async def stop(self, _app: web.Application) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _sweep_forever(self, runner: web.BaseRunner) -> None:
        while True:
            await asyncio.sleep(self.timeout_s / 4)
            self.sweep(runner.server.connections if runner.server is not None else [])

    def sweep(self, conns: list[RequestHandler]) -> int:
        """Close the idle ones among `conns`; returns how many."""
        now, closed = asyncio.get_running_loop().time(), 0
        for gone in self._last.keys() - set(conns):
            self._last.pop(gone, None)
            self._busy.pop(gone, None)
        for conn in conns:
            if not self._busy.get(conn) and now - self._last.setdefault(conn, now) >= self.timeout_s:
                conn.force_close()
                closed += 1
        return closed


IDLE = web.AppKey("idle", _IdleCloser)


async def _healthz(request: web.Request) -> web.Response:
    if request.app[API].alive():
        return web.Response(text="ok\n")
    return web.Response(status=503, text="reload loop stopped\n")


async def _readyz(request: web.Request) -> web.Response:
    state = request.app[API].state
    if state.ready:
        return web.Response(text=f"ready: {state.current}\n")
    return web.Response(status=503, text=f"not ready: {state.ready_reason}\n")


async def _status(request: web.Request) -> web.Response:
    api = request.app[API]
    doc = api.state.status()
    if api.status_extra is not None:
        doc.update(api.status_extra())
    body = json.dumps(doc, indent=1, sort_keys=True)
    return web.Response(text=body + "\n", content_type="application/json")


async def _peers(request: web.Request) -> web.Response:
    """waves mode: the pod names this sidecar knows for the addresses `RELOAD_PEERS` lists (no contents)."""
    api = request.app[API]
    doc = api.peers() if api.peers is not None else {"pod": api.state.pod, "peers": {}}
    return web.Response(text=json.dumps(doc, sort_keys=True) + "\n", content_type="application/json")


async def _metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[API].metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def make_app(api: Api, *, idle_timeout_s: float = IDLE_TIMEOUT_S) -> web.Application:
    idle = _IdleCloser(idle_timeout_s)
    app = web.Application(client_max_size=1024, middlewares=[idle.middleware])
    app[API] = api
    app[IDLE] = idle
    app.on_cleanup.append(idle.stop)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/status", _status)
    app.router.add_get("/peers", _peers)
    app.router.add_get("/metrics", _metrics)
    return app


async def start_server(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Start serving; returns the runner (call `cleanup()`) and the bound port (useful with port 0)."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    app[IDLE].start(runner)
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    return runner, int(runner.addresses[0][1])
