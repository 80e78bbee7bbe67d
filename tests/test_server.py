"""The sidecar's HTTP API on a real loopback port: read-only, never file contents, contract metric names."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sidecar.metrics import Metrics
from sidecar.server import Api, make_app, start_server
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


class Box:
    def __init__(self) -> None:
        self.state, self.metrics, self.alive = State(pod="web-0"), Metrics(), True


@pytest.fixture
async def api() -> AsyncIterator[tuple[str, Box]]:
    box = Box()
    runner, port = await start_server(make_app(Api(box.state, box.metrics, lambda: box.alive)), "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{port}", box
    finally:
        await runner.cleanup()


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


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
async def test_nothing_changes_state(api: tuple[str, Box], method: str) -> None:
    """No endpoint accepts a state-changing method."""
    base, box = api
    for path in ("/healthz", "/readyz", "/status", "/metrics"):
        assert (await _get(base + path, method))[0] == 405
    assert box.state.current is None and box.state.ready is False
