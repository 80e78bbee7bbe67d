"""Version hash -> when this pod may promote it ("go"), or "held" when the fleet refused it.

`none` goes at once; `random:<max_s>` waits a delay drawn once per version; `ordinal:<step_s>` waits
ordinal x step (StatefulSet pod `web-3` -> 3 x step). The delay counts from when this pod first saw
the version, so a resync or a restart of the pass does not start it over.

`waves` coordinates with the peers (DESIGN.md, "Coordinated waves"): every pod orders the live pod
names by sha256(version + name), the same order everywhere and a different canary per version; rank r
is in wave floor(log2(r + 1)) (1 pod, then 2, 4, 8 ...). A pod goes once every pod of a lower wave
reports the version healthy for `RELOAD_BAKE_S`, and holds it as soon as any peer reports it failed.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

import aiohttp
import structlog

from .peers import Fleet, PeerView
from .settings import Settings

__all__ = [
    "DelayGate",
    "Gate",
    "GateAnswer",
    "NoGate",
    "WaveStep",
    "WavesGate",
    "make_gate",
    "wave_decision",
    "wave_of",
    "wave_order",
]

# What a gate answers for a version (the pipeline's verdict and the webhook's decision are other things).
GateAnswer = Literal["go", "held"]
log = structlog.get_logger("stagger")


class Gate(Protocol):
    async def wait(self, version: str) -> GateAnswer:
        """Return when `version` may be promoted on this pod, or that it is held."""
        ...

    def delay(self, version: str) -> float:
        """Seconds this pod waits for `version` after first seeing it (for logs)."""
        ...

    async def admit_first(self, version: str) -> GateAnswer:
        """At start-up, with nothing promoted yet: may this pod start on `version` at once?"""
        ...


class NoGate:
    async def wait(self, version: str) -> GateAnswer:
        return "go"

    async def admit_first(self, version: str) -> GateAnswer:
        return "go"

    def delay(self, version: str) -> float:
        return 0.0


class DelayGate:
    """A fixed per-version delay: drawn at random, or from the pod ordinal."""

    def __init__(self, mode: Literal["random", "ordinal"], seconds: float, ordinal: int | None = None) -> None:
        if mode == "ordinal" and ordinal is None:
            raise ValueError("ordinal stagger needs the pod's StatefulSet ordinal")
        self.mode, self.seconds, self.ordinal = mode, seconds, ordinal or 0
        self._first_seen: dict[str, float] = {}
        self._delays: dict[str, float] = {}

    def delay(self, version: str) -> float:
        if version not in self._delays:
            if self.mode == "random":
                self._delays[version] = random.uniform(0, self.seconds)  # noqa: S311 - spreading, not security
            else:
                self._delays[version] = self.ordinal * self.seconds
            while len(self._delays) > 64:
                del self._delays[next(iter(self._delays))]
        return self._delays[version]

    async def admit_first(self, version: str) -> GateAnswer:
        return "go"

    async def wait(self, version: str) -> GateAnswer:
        loop = asyncio.get_running_loop()
        first = self._first_seen.setdefault(version, loop.time())
        while len(self._first_seen) > 64:
            del self._first_seen[next(iter(self._first_seen))]
        left = first + self.delay(version) - loop.time()
        if left > 0:
            await asyncio.sleep(left)
        return "go"


def wave_order(version: str, pods: set[str]) -> list[str]:
    """The rollout order of `pods` for `version`: the same on every pod, a different canary per version."""
    return sorted(pods, key=lambda pod: hashlib.sha256(f"{version}/{pod}".encode()).hexdigest())


def wave_of(rank: int) -> int:
    """Wave of a rank: 0 -> 0; 1, 2 -> 1; 3..6 -> 2; 7..14 -> 3 (ranks 2^w - 1 ... 2^(w+1) - 2)."""
    return (rank + 1).bit_length() - 1


@dataclass(frozen=True, slots=True)
class WaveStep:
    """One round's answer in waves mode: go, wait (reading `watch`) or held, and why."""

    step: Literal["go", "wait", "held"]
    why: str
    # The peers whose next answers can change this verdict: the previous wave.
    watch: frozenset[str] = frozenset()


def wave_decision(version: str, me: str, views: Mapping[str, PeerView], bake_s: float) -> WaveStep:
    """Pure decision for one round: go, wait or held, why, and which peers to keep reading.

    Only the previous wave is checked: each of its pods went only once every wave before it had baked
    (by induction, "every lower wave is healthy"), and it holds as soon as it sees a failure, so a hold
    travels one wave per round without every pod reading the whole fleet.
    """
    failed = sorted(pod for pod, view in views.items() if view.failed(version))
    if failed:
        return WaveStep("held", f"reported failed by {', '.join(failed)}")
    order = wave_order(version, set(views) | {me})
    rank = order.index(me)
    wave = wave_of(rank)
    where = f"wave {wave} (rank {rank} of {len(order)})"
    previous = order[(1 << wave >> 1) - 1 : (1 << wave) - 1] if wave else []
    holding = [pod for pod in previous if views[pod].holds(version)]
    if holding:
        return WaveStep("held", f"{where}: held by {', '.join(holding)}")
    waiting = []
    for pod in previous:
        state = views[pod].version_state(version)
        if state is None or state[0] != "healthy" or state[1] < bake_s:
            waiting.append(pod)
    if waiting:
        return WaveStep("wait", f"{where} waits for {', '.join(waiting)}", frozenset(previous))
    return WaveStep("go", where)


class WavesGate:
    """Coordinated waves through the peers' `/status`; polls only while a version waits here."""

    def __init__(self, fleet: Fleet, me: str, bake_s: float) -> None:
        self.fleet, self.me, self.bake_s = fleet, me, bake_s
        # Polling cadence while waiting: a few reads per bake period, at most 1/s and at least 4/s.
        self.poll_s = min(1.0, max(0.25, bake_s / 4))

    def delay(self, version: str) -> float:
        return 0.0

    async def admit_first(self, version: str) -> GateAnswer:
        views = await self.fleet.poll()
        if any(view.failed(version) or view.holds(version) for view in views.values()):
            log.warning("start_refused_by_fleet", version=version)
            return "held"
        return "go"

    async def wait(self, version: str) -> GateAnswer:
        last, watch = "", None
        while True:
            step = wave_decision(version, self.me, await self.fleet.poll(watch), self.bake_s)
            if step.why != last:
                log.info("wave_" + step.step, version=version, why=step.why)
                last = step.why
            if step.step != "wait":
                return step.step
            watch = set(step.watch)
            await asyncio.sleep(self.poll_s)


def make_gate(
    settings: Settings, session: aiohttp.ClientSession, me: str, on_peer_requests: Callable[[int], object] | None = None
) -> Gate:
    mode = settings.stagger.mode
    if mode in ("random", "ordinal"):
        return DelayGate(mode, settings.stagger.seconds, settings.pod_ordinal)
    if mode == "waves":
        forget = max(5.0, settings.bake_s)
        fleet = Fleet(session, settings.peers, me, forget_after_s=forget, on_requests=on_peer_requests)
        return WavesGate(fleet, me, settings.bake_s)
    return NoGate()
