"""Is the app healthy on the new version? K consecutive good polls within a window, or a clear "no".

A poll is good when the health URL answers 2xx and, if configured, one sample of the app's
Prometheus metrics (read with prometheus_client's text parser) satisfies the check, e.g.
`prometheus_config_last_reload_successful==1`.
"""

from __future__ import annotations

import asyncio
import operator
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from .settings import MetricCheck, Settings, parse_metric_check

__all__ = ["HealthCheck", "MetricCheck", "Outcome", "parse_metric_check", "verify"]

_OPS: dict[str, Callable[[float, float], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
}


@dataclass(frozen=True, slots=True)
class HealthCheck:
    url: str
    successes: int = 3
    interval_s: float = 1.0
    timeout_s: float = 30.0
    metric_url: str = ""
    metric: MetricCheck | None = None

    @classmethod
    def from_settings(cls, s: Settings) -> HealthCheck | None:
        if not s.health_url and not s.health_metric_url:
            return None
        return cls(
            s.health_url,
            s.health_successes,
            s.health_interval_s,
            s.health_timeout_s,
            s.health_metric_url,
            s.health_metric,
        )


@dataclass(frozen=True, slots=True)
class Outcome:
    ok: bool
    reason: str
    polls: int


def _sample_value(text: str, check: MetricCheck) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families

    want = dict(check.labels)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == check.name and all(sample.labels.get(k) == v for k, v in want.items()):
                return float(sample.value)
    return None


async def _poll(session: aiohttp.ClientSession, check: HealthCheck, limit: aiohttp.ClientTimeout) -> str | None:
    """None when healthy, else what was wrong (short, for evidence)."""
    try:
        if check.url:
            async with session.get(check.url, timeout=limit) as resp:
                await resp.read()
                if resp.status // 100 != 2:
                    return f"HTTP {resp.status}"
        if check.metric is not None and check.metric_url:
            async with session.get(check.metric_url, timeout=limit) as resp:
                if resp.status // 100 != 2:
                    return f"metrics HTTP {resp.status}"
                value = _sample_value(await resp.text(), check.metric)
            if value is None:
                return f"{check.metric.name} absent"
            if not _OPS[check.metric.op](value, check.metric.value):
                return f"{check.metric.name}={value:g}"
    except TimeoutError:
        return "timeout"
    except (aiohttp.ClientError, ValueError) as e:
        return type(e).__name__
    return None


async def verify(session: aiohttp.ClientSession, check: HealthCheck) -> Outcome:
    """Poll until `successes` good polls in a row, or fail once that can no longer happen in the window."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + check.timeout_s
    timeout = aiohttp.ClientTimeout(total=max(0.05, min(check.interval_s, check.timeout_s)))
    streak, polls, seen = 0, 0, Counter[str]()
    while True:
        problem = await _poll(session, check, timeout)
        polls += 1
        seen[problem or "ok"] += 1
        streak = 0 if problem else streak + 1
        if streak >= check.successes:
            return Outcome(True, f"{streak} good polls in a row", polls)
        needed = check.successes - streak
        # Each further poll comes after one interval: fail now if the window cannot fit the rest.
        if loop.time() + needed * check.interval_s > deadline:
            evidence = ", ".join(f"{k} x{n}" for k, n in seen.most_common())
            target = check.url or check.metric_url
            return Outcome(
                False,
                f"not healthy: needed {check.successes} good polls in a row of {target} within "
                f"{check.timeout_s:g} s, got {polls} polls ({evidence})",
                polls,
            )
        await asyncio.sleep(check.interval_s)
