"""Stagger gates: when this pod may promote a version (none, random per version, StatefulSet ordinal)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine

import aiohttp
import pytest

from sidecar import stagger
from sidecar.settings import Settings, parse_ordinal
from sidecar.stagger import DelayGate, NoGate, make_gate


@pytest.mark.parametrize(("pod", "n"), [("web-0", 0), ("web-3", 3), ("my-app-v2-12", 12), ("db-007", 7)])
def test_ordinal_from_pod_name(pod: str, n: int) -> None:
    """The StatefulSet ordinal is the number after the last dash."""
    assert parse_ordinal(pod) == n


@pytest.mark.parametrize("pod", ["web", "web-", "web-3a", "web-7f9c8d6b5-x2kqz", ""])
def test_pod_name_without_ordinal(pod: str) -> None:
    """A pod name without a trailing `-<n>` (e.g. a Deployment pod) has no ordinal."""
    assert parse_ordinal(pod) is None


def test_ordinal_delay_is_ordinal_times_step() -> None:
    """With `ordinal:<step>`, pod `web-n` waits n x step for every version."""
    assert DelayGate("ordinal", 10.0, 3).delay("v1") == 30.0
    assert DelayGate("ordinal", 10.0, 3).delay("v2") == 30.0
    assert DelayGate("ordinal", 10.0, 0).delay("v1") == 0.0


def test_random_delay_is_bounded_and_stable_per_version() -> None:
    """With `random:<max>`, each version gets one delay in [0, max], the same on every call."""
    gate = DelayGate("random", 2.0)
    delays = {f"v{i}": gate.delay(f"v{i}") for i in range(50)}
    assert all(0.0 <= d <= 2.0 for d in delays.values())
    assert all(gate.delay(v) == d for v, d in delays.items())
    assert len(set(delays.values())) > 10  # drawn per version, not one fixed delay


def test_random_delay_zero_max_is_zero() -> None:
    """`random:0` never waits."""
    assert DelayGate("random", 0.0).delay("v") == 0.0


class SleepSpy:
    """`asyncio` as the stagger module sees it, recording how long each `sleep` was asked for (and sleeping it)."""

    def __init__(self) -> None:
        self.asked: list[float] = []

    def __getattr__(self, name: str) -> object:
        return getattr(asyncio, name)

    async def sleep(self, delay: float) -> None:
        self.asked.append(delay)
        await asyncio.sleep(delay)


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> SleepSpy:
    spy = SleepSpy()
    monkeypatch.setattr(stagger, "asyncio", spy)
    return spy


def _done_without_waiting(coro: Coroutine[object, None, str]) -> str:
    """The result of `coro` if it finishes without once yielding to the event loop (fails otherwise)."""
    try:
        coro.send(None)
    except StopIteration as e:
        return str(e.value)
    coro.close()
    raise AssertionError("it waited")


async def test_wait_returns_go_after_the_delay(sleeps: SleepSpy) -> None:
    """wait() returns "go" after the pod's delay (web-2, step 0.05 s -> 0.1 s), asked for in one sleep."""
    gate = DelayGate("ordinal", 0.05, 2)
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await gate.wait("v1") == "go"
    assert loop.time() - start >= 0.1 - 0.02  # the loop may run a timer up to its clock resolution early
    assert len(sleeps.asked) == 1 and 0 < sleeps.asked[0] <= 0.1


async def test_wait_counts_from_first_sight(sleeps: SleepSpy) -> None:
    """A second wait for the same version only waits what is left of the delay, not the whole of it again."""
    gate = DelayGate("ordinal", 0.1, 4)  # 0.4 s
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(gate.wait("v1"), 0.25)
    assert await gate.wait("v1") == "go"
    assert len(sleeps.asked) == 2 and 0 < sleeps.asked[1] <= 0.4 - 0.25 + 0.02  # what was left, at most
    assert _done_without_waiting(gate.wait("v1")) == "go"  # already due: no wait at all
    assert len(sleeps.asked) == 2


async def test_each_version_has_its_own_clock(sleeps: SleepSpy) -> None:
    """A new version starts its own delay even when an older one is already due."""
    gate = DelayGate("ordinal", 0.05, 1)
    await gate.wait("v1")
    assert _done_without_waiting(gate.wait("v1")) == "go"
    await gate.wait("v2")
    assert len(sleeps.asked) == 2 and sleeps.asked[1] > 0


def test_no_gate_goes_at_once() -> None:
    """NoGate returns "go" without waiting, with zero delay."""
    gate = NoGate()
    assert _done_without_waiting(gate.wait("v")) == "go"
    assert gate.delay("v") == 0.0


async def test_make_gate_from_settings() -> None:
    """RELOAD_STAGGER picks the gate: ordinal/random give a DelayGate, none gives a NoGate."""
    base = {"RELOAD_SOURCE_DIR": "/s", "RELOAD_TARGET_DIR": "/t"}
    async with aiohttp.ClientSession() as session:
        env = {**base, "RELOAD_STAGGER": "ordinal:5", "RELOAD_POD_NAME": "web-4"}
        gate = make_gate(Settings.from_env(env), session, "web-4")
        assert isinstance(gate, DelayGate) and gate.delay("v") == 20.0
        gate = make_gate(Settings.from_env({**base, "RELOAD_STAGGER": "random:3"}), session, "p")
        assert isinstance(gate, DelayGate) and 0 <= gate.delay("v") <= 3
        assert isinstance(make_gate(Settings.from_env(base), session, "p"), NoGate)


async def test_delay_gates_never_delay_the_first_version() -> None:
    """At start-up (nothing promoted yet) the delay gates admit a version at once: the app waits for it."""
    gate = DelayGate("ordinal", 60.0, 9)
    assert _done_without_waiting(gate.admit_first("v1")) == "go"
    assert _done_without_waiting(NoGate().admit_first("v1")) == "go"
