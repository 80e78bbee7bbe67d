"""The sidecar's HTTP API on a real loopback port: read-only, never file contents, contract metric names."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from sidecar.lifecycle import Lifecycle
from sidecar.metrics import Metrics
from sidecar.preflight import StartupError
from sidecar.run import serve_sidecar
from sidecar.server import IDLE, Api, make_app, start_server
from sidecar.settings import Settings
from sidecar.state import State

CONTRACT = {
    "reload_sidecar_reloads",
    "reload_sidecar_validation_failures",
    "reload_sidecar_rollbacks",
    "reload_sidecar_last_reload_success_timestamp_seconds",
    "reload_sidecar_current_version_info",
    "reload_sidecar_reload_duration_seconds",
    "reload_sidecar_held",
}
# The standard process metrics dashboards expect (prometheus_client's ProcessCollector).
PROCESS = {
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_cpu_seconds",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
}


class Box:
    def __init__(self) -> None:
        self.state, self.metrics, self.alive = State(pod="web-0"), Metrics(), True


@contextlib.asynccontextmanager
async def _serving(box: Box, **kw: float) -> AsyncIterator[tuple[int, web.AppRunner]]:
    runner, port = await start_server(make_app(Api(box.state, box.metrics, lambda: box.alive), **kw), "127.0.0.1", 0)
    try:
        yield port, runner
    finally:
        await runner.cleanup()


@pytest.fixture
async def api() -> AsyncIterator[tuple[str, Box]]:
    box = Box()
    async with _serving(box) as (port, _):
        yield f"http://127.0.0.1:{port}", box


async def _get(url: str, method: str = "GET") -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.request(method, url) as r:
        return r.status, await r.text()


async def test_readyz_says_why_until_ready(api: tuple[str, Box]) -> None:
    """/readyz is 503 with the reason until a good version is live, then 200 naming it."""
    base, box = api
    box.state.ready_reason = "no good version yet: abc refused: app.yaml:2:1: invalid YAML"
    assert await _get(base + "/readyz") == (503, f"not ready: {box.state.ready_reason}\n")
    box.state.ready, box.state.current = True, "abc123"
    assert await _get(base + "/readyz") == (200, "ready: abc123\n")


async def test_healthz_follows_the_reload_loop(api: tuple[str, Box]) -> None:
    """/healthz is 200 while the loop runs and 503 once it has stopped."""
    base, box = api
    assert (await _get(base + "/healthz"))[0] == 200
    box.alive = False
    assert await _get(base + "/healthz") == (503, "reload loop stopped\n")


async def test_status_has_versions_and_sizes_but_no_contents(api: tuple[str, Box]) -> None:
    """/status is JSON with pod, versions, file sizes, reasons and the pod's clock (what peers read)."""
    base, box = api
    box.state.current = box.state.last_good = "v1"
    box.state.files = {"secret.yaml": {"bytes": 23}}
    box.state.refuse("v2", "secret.yaml:1:5: invalid YAML", "validate")
    code, body = await _get(base + "/status")
    doc = json.loads(body)
    assert code == 200 and doc["pod"] == "web-0" and doc["files"] == {"secret.yaml": {"bytes": 23}}
    assert doc["refused"]["v2"]["reason"] == "secret.yaml:1:5: invalid YAML"
    assert doc["versions"]["v2"]["state"] == "failed" and doc["now"] >= doc["versions"]["v2"]["since"]


async def test_metrics_carry_the_contract_names(api: tuple[str, Box]) -> None:
    """/metrics parses as Prometheus text and has every metric DESIGN.md names."""
    base, box = api
    box.metrics.set_version("v1")
    code, body = await _get(base + "/metrics")
    names = {family.name for family in text_string_to_metric_families(body)}
    assert code == 200 and CONTRACT <= names
    assert 'reload_sidecar_current_version_info{hash="v1"} 1.0' in body


async def test_metrics_carry_the_process_metrics(api: tuple[str, Box]) -> None:
    """/metrics also has the process_* families, with this process's live values."""
    base, _ = api
    families = {f.name: f for f in text_string_to_metric_families((await _get(base + "/metrics"))[1])}
    assert PROCESS <= set(families), sorted(families)
    assert families["process_resident_memory_bytes"].samples[0].value > 1 << 20
    assert families["process_open_fds"].samples[0].value >= 3


async def test_a_port_taken_after_the_cli_check_is_one_startup_error(tmp_path: Path) -> None:
    """The bind itself failing (the port taken between the CLI's check and the start) is a StartupError
    carrying the CLI's one line, not an OSError traceback."""
    (tmp_path / "src").mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {"RELOAD_SOURCE_DIR": str(tmp_path / "src"), "RELOAD_TARGET_DIR": str(tmp_path / "t")}
        settings = Settings.from_env({**env, "RELOAD_LISTEN": f"127.0.0.1:{port}"})
        async with Lifecycle(handle_signals=False) as life:
            with pytest.raises(StartupError) as exc:
                await serve_sidecar(settings, life)
    assert str(exc.value) == f"RELOAD_LISTEN='127.0.0.1:{port}': port {port} is already in use by another process"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
async def test_nothing_changes_state(api: tuple[str, Box], method: str) -> None:
    """No endpoint accepts a state-changing method."""
    base, box = api
    for path in ("/healthz", "/readyz", "/status", "/metrics"):
        assert (await _get(base + path, method))[0] == 405
    assert box.state.current is None and box.state.ready is False


# --- idle connections -------------------------------------------------------------------------------------

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _ask(conn: Conn, path: str) -> int:
    """One keep-alive request on an open connection; its status."""
    reader, writer = conn
    writer.write(f"GET {path} HTTP/1.1\r\nHost: sidecar\r\n\r\n".encode())
    await writer.drain()
    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    length = next(int(line.split(":")[1]) for line in head.split("\r\n") if line.lower().startswith("content-length"))
    await reader.readexactly(length)
    return int(head.split()[1])


async def _closed_by_server(conn: Conn, within: float) -> bool:
    """True once the server closes `conn` (EOF); False if it is still open after `within` s."""
    try:
        return await asyncio.wait_for(conn[0].read(), within) == b""
    except TimeoutError:
        return False


async def test_idle_connections_are_closed() -> None:
    """Connections that send nothing, half a request, or nothing after an answer are closed by the server."""
    async with _serving(Box(), idle_timeout_s=1.0) as (port, runner):
        silent = [await asyncio.open_connection("127.0.0.1", port) for _ in range(20)]
        partial = await asyncio.open_connection("127.0.0.1", port)
        partial[1].write(b"GET /status HTTP/1.1\r\nHost: sidecar\r\n")  # never finished
        answered = await asyncio.open_connection("127.0.0.1", port)
        assert await _ask(answered, "/healthz") == 200
        conns = [*silent, partial, answered]
        assert all(await asyncio.gather(*(_closed_by_server(c, 30) for c in conns)))
        assert runner.server is not None and runner.server.connections == []
        for _, writer in conns:
            writer.close()


async def test_kept_alive_connection_outlives_the_idle_timeout_while_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client polling more often than the idle timeout keeps one connection for longer than the timeout.

    The event loop's clock is moved forward by hand (by 6 s between requests, against a 10 s timeout), so the
    test asserts what each sweep does instead of racing real time on a busy machine.
    """
    loop = asyncio.get_running_loop()
    real_time, ahead = loop.time, [0.0]
    monkeypatch.setattr(loop, "time", lambda: real_time() + ahead[0])
    async with _serving(Box(), idle_timeout_s=10.0) as (port, runner):
        assert runner.server is not None
        closer = runner.app[IDLE]

        def sweep_after(seconds: float) -> int:
            ahead[0] += seconds
            return closer.sweep(runner.server.connections if runner.server else [])

        conn = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(10):  # a request every 6 s: the connection lives 60 s, six times the timeout
            assert await _ask(conn, "/status") == 200
            assert sweep_after(6.0) == 0
        assert len(runner.server.connections) == 1
        # An aiohttp client (how peers poll /status) reuses its pooled connection between polls too
        # (it keeps one for 15 s).
        async with aiohttp.ClientSession() as session:
            for _ in range(3):
                async with session.get(f"http://127.0.0.1:{port}/status") as resp:
                    assert resp.status == 200
                assert await _ask(conn, "/status") == 200
                assert sweep_after(6.0) == 0
            assert len(runner.server.connections) == 2
            assert sweep_after(10.0) == 2  # both unused for the whole timeout: closed
        assert await _closed_by_server(conn, 30)
        conn[1].close()
