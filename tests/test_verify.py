"""`verify`: K good polls in a row within a window, against a real loopback app; metric checks."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from sidecar.settings import Settings
from sidecar.verify import HealthCheck, MetricCheck, parse_metric_check, verify
from tests.aio import serving

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PROM_OK = """\
# HELP prometheus_config_last_reload_successful Whether the last configuration reload attempt was successful.
# TYPE prometheus_config_last_reload_successful gauge
prometheus_config_last_reload_successful 1
# HELP prometheus_config_last_reload_success_timestamp_seconds Timestamp of the last successful configuration reload.
# TYPE prometheus_config_last_reload_success_timestamp_seconds gauge
prometheus_config_last_reload_success_timestamp_seconds 1.7325e+09
# HELP prometheus_build_info A metric with a constant '1' value.
# TYPE prometheus_build_info gauge
prometheus_build_info{branch="HEAD",goversion="go1.23.4",version="3.1.0"} 1
# HELP nginx_up Whether nginx answers, per upstream.
# TYPE nginx_up gauge
nginx_up{upstream="a"} 0
nginx_up{upstream="b"} 1
"""


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def statuses(*script: int) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A health endpoint answering from a script of statuses that repeats."""
    calls = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        return web.Response(status=script[(calls - 1) % len(script)], text="health")

    return handler


def metrics_page(text: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        if request.path == "/metrics":
            return web.Response(text=text, content_type="text/plain")
        return web.Response(text="ok")

    return handler


# --- parse_metric_check ----------------------------------------------------------------------------------


def test_parse_plain_check() -> None:
    """`name==1` parses to name, no labels, operator and value."""
    check = parse_metric_check("prometheus_config_last_reload_successful==1")
    assert check == MetricCheck("prometheus_config_last_reload_successful", (), "==", 1.0)
    assert str(check) == "prometheus_config_last_reload_successful==1"


def test_parse_check_with_labels_and_spaces() -> None:
    """Labels are parsed (sorted, quotes removed); spaces around the operator are allowed."""
    check = parse_metric_check(' nginx_up{upstream="b", job = "web"} >= 0.5 ')
    assert check == MetricCheck("nginx_up", (("job", "web"), ("upstream", "b")), ">=", 0.5)
    assert str(check) == 'nginx_up{job="web",upstream="b"}>=0.5'


@pytest.mark.parametrize("op", ["==", "!=", ">=", "<=", ">", "<"])
def test_parse_every_operator(op: str) -> None:
    """All six comparison operators are understood."""
    assert parse_metric_check(f"x{op}-2e3").op == op
    assert parse_metric_check(f"x{op}-2e3").value == -2000.0


@pytest.mark.parametrize("text", ["", "up", "up=1", "up==", "1up==1", "up==one", 'up{job="a"==1', "up==1e", "up==.."])
def test_parse_bad_check(text: str) -> None:
    """Text that is not `name{labels}<op>number` raises ValueError."""
    with pytest.raises(ValueError, match=r"expected name\{labels\}<op>number"):
        parse_metric_check(text)


def test_health_check_from_settings() -> None:
    """Settings give a HealthCheck with their URLs and window, or None when nothing is configured."""
    base = {"RELOAD_SOURCE_DIR": "/s", "RELOAD_TARGET_DIR": "/t"}
    assert HealthCheck.from_settings(Settings.from_env(base)) is None
    check = HealthCheck.from_settings(
        Settings.from_env(
            {
                **base,
                "RELOAD_HEALTH_URL": "http://127.0.0.1:1/healthz",
                "RELOAD_HEALTH_SUCCESSES": "2",
                "RELOAD_HEALTH_METRIC_URL": "http://127.0.0.1:1/metrics",
                "RELOAD_HEALTH_METRIC": "up==1",
            }
        )
    )
    assert check == HealthCheck(
        "http://127.0.0.1:1/healthz", 2, 1.0, 30.0, "http://127.0.0.1:1/metrics", MetricCheck("up", (), "==", 1.0)
    )


# --- verify against a real app ---------------------------------------------------------------------------


async def test_k_successes_in_a_row_is_ok(session: aiohttp.ClientSession) -> None:
    """An app answering 200 is healthy after exactly `successes` polls."""
    async with serving(statuses(200)) as base:
        outcome = await verify(session, HealthCheck(f"{base}/healthz", successes=3, interval_s=0.25, timeout_s=30))
    assert outcome.ok and outcome.polls == 3
    assert outcome.reason == "3 good polls in a row"


async def test_recovers_after_early_failures(session: aiohttp.ClientSession) -> None:
    """Failures before the streak do not matter: 500, 500, then 200s is healthy after 5 polls."""
    async with serving(statuses(500, 500, 200, 200, 200, 200)) as base:
        outcome = await verify(session, HealthCheck(base, successes=3, interval_s=0.25, timeout_s=30))
    assert outcome.ok and outcome.polls == 5


async def test_flapping_is_never_ok_and_stops_before_the_deadline(session: aiohttp.ClientSession) -> None:
    """200/500/200/500 never gives K in a row; verify gives up once the rest cannot fit in the window."""
    async with serving(statuses(200, 500)) as base:
        start = time.monotonic()
        outcome = await verify(session, HealthCheck(base, successes=10, interval_s=0.1, timeout_s=1.5))
        elapsed = time.monotonic() - start
    assert not outcome.ok
    # The streak never passes 1, so 9+ more polls (0.9 s) are always needed: it stops ~0.6 s in, well before the
    # end of the 1.5 s window (a margin of most of a second for a busy machine).
    assert elapsed < 1.5
    assert 2 <= outcome.polls <= 15
    assert "needed 10 good polls in a row" in outcome.reason and "within 1.5 s" in outcome.reason
    assert "HTTP 500 x" in outcome.reason and "ok x" in outcome.reason


async def test_fails_at_once_when_the_window_is_too_short(session: aiohttp.ClientSession) -> None:
    """When K polls can never fit in the window, verify answers after the first poll instead of waiting."""
    async with serving(statuses(200)) as base:
        start = time.monotonic()
        outcome = await verify(session, HealthCheck(base, successes=5, interval_s=10, timeout_s=20))
        elapsed = time.monotonic() - start
    assert not outcome.ok and outcome.polls == 1
    assert elapsed < 10  # it did not sleep even one interval


async def test_unreachable_app_is_not_healthy(session: aiohttp.ClientSession) -> None:
    """Nothing listening: every poll fails with the connection error, named in the reason."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    outcome = await verify(session, HealthCheck(f"http://127.0.0.1:{port}/", successes=1, interval_s=10, timeout_s=10))
    assert not outcome.ok
    assert "ClientConnectorError x" in outcome.reason


async def test_hanging_app_is_a_timeout(session: aiohttp.ClientSession) -> None:
    """An app that does not answer within the poll timeout counts as a failed poll named `timeout`."""
    release = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response()

    async with serving(hang) as base:
        try:
            outcome = await verify(session, HealthCheck(base, successes=1, interval_s=0.1, timeout_s=0.35))
        finally:
            release.set()
    assert not outcome.ok
    assert "timeout x" in outcome.reason


def _metric_check(url: str, base: str, check: str, *, successes: int = 1, interval_s: float = 10) -> HealthCheck:
    """A health check with one metric sample check on `base`/metrics. With one success needed, one poll decides:
    healthy at once, or not, and then the window (one interval) has no room for another; that poll may take the
    whole interval (10 s) to answer, so a busy machine cannot turn the evidence into "timeout"."""
    window_s = interval_s if successes == 1 else 30.0
    return HealthCheck(url, successes, interval_s, window_s, f"{base}/metrics", parse_metric_check(check))


@pytest.mark.parametrize(
    ("check", "ok", "evidence"),
    [
        ("prometheus_config_last_reload_successful==1", True, ""),
        ("prometheus_config_last_reload_success_timestamp_seconds>1e9", True, ""),
        ('prometheus_build_info{version="3.1.0"}==1', True, ""),
        ('nginx_up{upstream="b"}==1', True, ""),
        ('nginx_up{upstream="a"}==1', False, "nginx_up=0 x"),
        ("prometheus_config_last_reload_successful==0", False, "prometheus_config_last_reload_successful=1 x"),
        ("prometheus_tsdb_head_series>0", False, "prometheus_tsdb_head_series absent x"),
        ('nginx_up{upstream="c"}==1', False, "nginx_up absent x"),
    ],
)
async def test_metric_check_on_a_prometheus_page(
    session: aiohttp.ClientSession, check: str, ok: bool, evidence: str
) -> None:
    """A metric check reads the app's Prometheus text page: values, labels, and absent series."""
    async with serving(metrics_page(PROM_OK)) as base:
        outcome = await verify(
            session,
            _metric_check(f"{base}/healthz", base, check),
        )
    assert outcome.ok is ok, outcome.reason
    assert evidence in outcome.reason


async def test_failed_reload_metric_is_unhealthy(session: aiohttp.ClientSession) -> None:
    """`prometheus_config_last_reload_successful 0` fails the check `==1` even though /healthz is 200."""
    page = PROM_OK.replace("prometheus_config_last_reload_successful 1", "prometheus_config_last_reload_successful 0")
    async with serving(metrics_page(page)) as base:
        outcome = await verify(
            session,
            _metric_check(f"{base}/healthz", base, "prometheus_config_last_reload_successful==1"),
        )
    assert not outcome.ok
    assert "prometheus_config_last_reload_successful=0 x" in outcome.reason


async def test_metric_only_check(session: aiohttp.ClientSession) -> None:
    """With no health URL, the metric check alone decides."""
    async with serving(metrics_page(PROM_OK)) as base:
        outcome = await verify(
            session,
            _metric_check("", base, "prometheus_config_last_reload_successful==1", successes=2, interval_s=0.25),
        )
    assert outcome.ok and outcome.polls == 2


async def test_metrics_page_error_is_unhealthy(session: aiohttp.ClientSession) -> None:
    """A metrics endpoint answering 500 (or garbage) is a failed poll."""

    async def broken(request: web.Request) -> web.Response:
        if request.path == "/metrics":
            return web.Response(status=500)
        return web.Response(text="ok")

    async with serving(broken) as base:
        outcome = await verify(
            session,
            _metric_check(f"{base}/healthz", base, "up==1"),
        )
    assert not outcome.ok and "metrics HTTP 500 x" in outcome.reason
