"""The sidecar's own HTTP API: /healthz, /readyz, /status, /metrics. Read-only: nothing here changes state."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from .metrics import Metrics
from .state import State

__all__ = ["Api", "make_app", "start_server"]


@dataclass(slots=True)
class Api:
    state: State
    metrics: Metrics
    alive: Callable[[], bool]


API = web.AppKey("api", Api)


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
    body = json.dumps(request.app[API].state.status(), indent=1, sort_keys=True)
    return web.Response(text=body + "\n", content_type="application/json")


async def _metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[API].metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def make_app(api: Api) -> web.Application:
    app = web.Application(client_max_size=1024)
    app[API] = api
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/status", _status)
    app.router.add_get("/metrics", _metrics)
    return app


async def start_server(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Start serving; returns the runner (call `cleanup()`) and the bound port (useful with port 0)."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    return runner, int(runner.addresses[0][1])
