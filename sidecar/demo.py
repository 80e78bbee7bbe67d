"""`reload-sidecar demo`: the whole loop on one machine with nothing but Python.

A plain directory stands in for the ConfigMap volume, a tiny aiohttp app reads the target dir and
reloads on `POST /-/reload`, and the real sidecar sits between them. Three scripted changes show a good
version promoted, a malformed one refused, and one that passes validation but makes the app unhealthy
rolled back; then it waits so a person can edit the volume and watch.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from .lifecycle import Lifecycle
from .preflight import StartupError, bind_problem
from .run import serve_sidecar
from .settings import Settings

__all__ = ["run_demo"]

_SCHEMA = {
    "type": "object",
    "required": ["message"],
    "properties": {"message": {"type": "string"}, "healthy": {"type": "boolean"}},
}


class _DemoApp:
    """The "application": serves `message` from its config, unhealthy when `healthy: false`."""

    def __init__(self, config: Path) -> None:
        self.config, self.message, self.healthy, self.reloads = config, "(no config yet)", True, 0

    def load(self) -> None:
        doc: dict[str, Any] = yaml.safe_load(self.config.read_text()) or {}
        self.message, self.healthy = str(doc.get("message")), bool(doc.get("healthy", True))
        self.reloads += 1

    async def index(self, _: web.Request) -> web.Response:
        return web.Response(text=self.message + "\n")

    async def health(self, _: web.Request) -> web.Response:
        return web.Response(status=200 if self.healthy else 500, text="ok\n" if self.healthy else "broken\n")

    async def reload(self, _: web.Request) -> web.Response:
        try:
            self.load()
        except (OSError, yaml.YAMLError) as e:
            return web.Response(status=500, text=f"reload failed: {e}\n")
        return web.Response(text="reloaded\n")


def _write(volume: Path, text: str) -> None:
    tmp = volume / ".app.yaml.tmp"
    tmp.write_text(text)
    os.replace(tmp, volume / "app.yaml")


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback URL built here
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


async def _until(cond: Any, seconds: float = 15.0) -> bool:
    for _ in range(int(seconds / 0.1)):
        if await asyncio.to_thread(cond):
            return True
        await asyncio.sleep(0.1)
    return False


async def _script(volume: Path, app_url: str, status_url: str, wait: bool) -> None:
    def status() -> dict[str, Any]:
        return dict(json.loads(_get(status_url)[1]))

    def says() -> str:
        return _get(app_url)[1].strip()

    async def now() -> tuple[dict[str, Any], str]:
        return await asyncio.to_thread(status), await asyncio.to_thread(says)

    await _until(lambda: _get(status_url.replace("/status", "/readyz"))[0] == 200)
    st, text = await now()
    print(f"\n[1] start-up: version {st['current']} promoted; the app says: {text!r}")
    _write(volume, "message: hello from version 2\nhealthy: true\n")
    await _until(lambda: says() == "hello from version 2")
    st, text = await now()
    print(f"[2] good edit: version {st['current']} promoted and reloaded; the app says: {text!r}")
    _write(volume, "message: [unclosed\n")
    await _until(lambda: status()["refused"])
    st, text = await now()
    print(f"[3] malformed YAML: refused ({next(iter(st['refused'].values()))['reason']}); the app still says: {text!r}")
    _write(volume, "message: version 3 breaks the app\nhealthy: false\n")
    await _until(lambda: status()["quarantined"] and status()["state"] == "idle", 20)
    st, text = await now()
    print(
        f"[4] valid but breaks the app: rolled back to {st['current']}, the bad version quarantined "
        f"({next(iter(st['quarantined'].values()))['reason']}); the app says: {text!r}"
    )
    if wait:
        print(f"\nNow edit {volume / 'app.yaml'} (keys: message, healthy) and watch; status: {status_url}")


def run_demo(port: int | None, *, wait: bool = True) -> int:
    """Run the demo; returns when Ctrl-C is pressed (or right after the script with `wait=False`).

    Without `port`, the sidecar listens on 9533 if it is free, else on any free port; a given `port`
    that is busy raises `StartupError`.
    """
    port = _pick_port(port)
    # Narration line by line, also into a pipe or a file (block-buffered, it appeared only at Ctrl-C).
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    return asyncio.run(_demo(port, wait))


def _pick_port(port: int | None) -> int:
    if port is not None:
        if why := bind_problem("127.0.0.1", port):
            raise StartupError(f"demo --port {port}: {why}; leave --port out to use a free one")
        return port
    if bind_problem("127.0.0.1", 9533) is None:
        return 9533
    with socket.socket() as sock:  # the kernel's pick; free again once closed, and not handed out again at once
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _demo(port: int, wait: bool) -> int:
    with tempfile.TemporaryDirectory(prefix="reload-sidecar-demo-") as tmp:
        root = Path(tmp)
        volume, target = root / "volume", root / "target"
        volume.mkdir()
        (root / "schema.json").write_text(json.dumps(_SCHEMA))
        _write(volume, "message: hello from version 1\nhealthy: true\n")
        app = _DemoApp(target / "app.yaml")
        web_app = web.Application()
        web_app.add_routes(
            [web.get("/", app.index), web.get("/healthz", app.health), web.post("/-/reload", app.reload)]
        )
        # One lifecycle for the process: Ctrl-C stops the sidecar, then its server and the app's go down.
        async with Lifecycle(cleanup_timeout_s=5) as life:
            runner = web.AppRunner(web_app, access_log=None, handle_signals=False)
            await runner.setup()
            life.own(runner)
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            app_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
            settings = _settings(root, volume, target, app_url, port)
            edit = " (edit me)" if wait else ""
            print(
                f"reload-sidecar demo in {root}\n  volume{edit}: {volume}/app.yaml\n  target (the app "
                f"reads): {target}\n  app: {app_url}/\n  sidecar: http://127.0.0.1:{port}/status"
            )
            sidecar = asyncio.create_task(serve_sidecar(settings, life))
            for _ in range(150):  # 15 s for the first promotion
                if sidecar.done() or (target / "app.yaml").exists():
                    break
                await asyncio.sleep(0.1)
            if sidecar.done():  # it could not start (e.g. the port was taken meanwhile): its error, not ours
                return await sidecar
            if not (target / "app.yaml").exists():
                raise StartupError(f"demo: no version was promoted into {target} within 15 s; see the log above")
            app.load()  # the app starts after the sidecar's first promotion, as in a pod
            await _script(volume, app_url + "/", f"http://127.0.0.1:{port}/status", wait)
            if not wait:
                print(f"\n--no-wait: done; {root} is removed as the demo exits.")
                life.stop.set()
            else:
                print("Ctrl-C to stop.")
            return await sidecar


def _settings(root: Path, volume: Path, target: Path, app_url: str, port: int) -> Settings:
    return Settings.from_env(
        {
            "RELOAD_SOURCE_DIR": str(volume),
            "RELOAD_TARGET_DIR": str(target),
            "RELOAD_EXCLUDE": ".*",
            "RELOAD_VALIDATE": f"auto,schema:{root / 'schema.json'}",
            "RELOAD_RELOAD_URL": f"{app_url}/-/reload",
            "RELOAD_HEALTH_URL": f"{app_url}/healthz",
            "RELOAD_HEALTH_SUCCESSES": "2",
            "RELOAD_HEALTH_INTERVAL_S": "0.2",
            "RELOAD_HEALTH_TIMEOUT_S": "2",
            "RELOAD_DEBOUNCE_MS": "100",
            "RELOAD_LISTEN": f"127.0.0.1:{port}",
            "RELOAD_POD_NAME": "demo-0",
            "RELOAD_LOG_FORMAT": "console",
        }
    )
