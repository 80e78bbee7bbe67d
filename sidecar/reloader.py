"""The loop that runs the stages in order and owns the state; the only module that knows the order.

    watch -> snapshot -> validate -> gate -> promote -> signal -> verify -> commit | rollback

One worker runs one pass at a time; changes seen meanwhile collapse into one more pass, which reads
the source afresh, so the latest version always wins and a storm costs at most two reloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import aiohttp
import structlog

from . import promote as _promote
from .metrics import Metrics
from .settings import Settings
from .signal import Trigger, TriggerError
from .snapshot import Snapshot, SourceError, read_configured
from .stagger import Gate
from .state import State, load_state, save_state
from .validate import Checks, validate
from .verify import HealthCheck, verify
from .watch import changes

__all__ = ["Reloader"]

log = structlog.get_logger("reloader")
T = TypeVar("T")


@dataclass(slots=True)
class _Pass:
    started: float
    version: str


class Reloader:
    """Runs the pipeline for `settings`; `state` and `metrics` are read by the HTTP server."""

    def __init__(
        self,
        settings: Settings,
        state: State,
        metrics: Metrics,
        trigger: Trigger,
        gate: Gate,
        session: aiohttp.ClientSession,
        health: HealthCheck | None = None,
    ) -> None:
        self.s, self.state, self.metrics = settings, state, metrics
        self.trigger, self.gate, self.session, self.health = trigger, gate, session, health
        self.checks = Checks.from_settings(settings, settings.target_dir)
        self._wake = asyncio.Event()
        self._last_small = False  # was the last snapshot small enough to read without a thread hop?
        self._worker: asyncio.Task[None] | None = None

    @property
    def alive(self) -> bool:
        return self._worker is not None and not self._worker.done()

    async def run(self, stop: asyncio.Event) -> None:
        """Start up (recover the target dir and state), then watch and sync until `stop` is set."""
        await asyncio.to_thread(self._recover)
        self._wake.set()
        async with asyncio.TaskGroup() as tg:
            self._worker = tg.create_task(self._work(stop), name="worker")
            tg.create_task(self._watch(stop), name="watch")

    def _recover(self) -> None:
        target = self.s.target_dir
        removed = _promote.clean_leftovers(target)
        if removed:
            log.info("leftovers_removed", names=removed)
        problem = load_state(target, self.state)
        if problem:
            log.warning("state_file_unusable", problem=problem)
        self.state.current = _promote.current_version(target)
        if self.state.last_good and not _promote.version_dir(target, self.state.last_good).is_dir():
            self.state.last_good = None
        if self.state.current is not None and self.state.current == self.state.last_good:
            self._set_ready(True)
        self.metrics.set_version(self.state.current)
        log.info(
            "recovered",
            current=self.state.current,
            last_good=self.state.last_good,
            quarantined=len(self.state.quarantined),
        )

    async def _watch(self, stop: asyncio.Event) -> None:
        async for tick in changes(
            self.s.source_dir, debounce_ms=self.s.debounce_ms, resync_s=self.s.resync_s, stop=stop
        ):
            log.debug("source_tick", tick=tick)
            self._wake.set()

    async def _work(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await _first(self._wake.wait(), stop.wait())
            if stop.is_set():
                break
            self._wake.clear()
            # A pass may wait minutes (stagger, verification): SIGTERM must not wait for it.
            one_pass = asyncio.create_task(self.sync(), name="pass")
            await _first(one_pass, stop.wait())
            if not one_pass.done():
                log.info("pass_cancelled", reason="shutting down")
                one_pass.cancel("sidecar shutting down")
            try:
                await one_pass
            except asyncio.CancelledError:
                if not one_pass.cancelled() or asyncio.current_task().cancelling():  # type: ignore[union-attr]
                    raise  # we are being cancelled ourselves, not just the pass
            except Exception as e:  # a bug in one pass must not end the sidecar; the next change retries
                log.exception("pass_failed", error=str(e))
                self.state.error(f"internal error: {e}")
            finally:
                structlog.contextvars.clear_contextvars()
                if self.state.phase not in ("degraded", "held"):
                    self.state.phase = "idle"
        self._set_ready(False, "shutting down")
        self.state.phase = "stopping"

    async def sync(self) -> None:
        """One pass: read the source and take it as far through the pipeline as it deserves."""
        state, started = self.state, time.perf_counter()
        if state.current in state.quarantined and state.last_good not in (None, state.current):
            await self._rollback(state.current, "a quarantined version was live at start-up")
            return
        try:
            snap = await _blocking(self._last_small, functools.partial(read_configured, self.s.source_dir, self.s))
            self._last_small = snap.small
        except SourceError as e:
            state.error(str(e))
            log.error("source_unreadable", error=str(e))
            return
        v = snap.version
        known_bad = v in state.quarantined or v in state.refused or v in state.held
        if known_bad or (v == state.current and v == state.last_good):
            if known_bad:
                log.debug("skipped_known_bad", version=v)
            await self._recheck_degraded()
            return
        structlog.contextvars.bind_contextvars(version=v)
        state.last_change_at = time.time()
        state.phase = "validating"
        state.mark(v, "validating")
        verdict = await validate(snap, self.checks)
        if not verdict.ok:
            state.refuse(v, verdict.reason, "validate")
            self.metrics.validation_failures.inc()
            log.warning("refused", problems=list(verdict.problems), duration_ms=_ms(verdict.duration_s))
            if not state.ready:
                self._set_ready(False, f"no good version yet: {v} refused: {verdict.reason}"[:500])
            return
        log.info("validated", files=len(snap.files), bytes=snap.total_bytes, duration_ms=_ms(verdict.duration_s))
        first = state.current is None
        if first and await self.gate.admit_first(v) == "held":
            self._hold(v)
            self._set_ready(False, f"version {v} is held by the fleet; waiting for a newer version")
            return
        if not first and not await self._gate(v):
            return
        await self._apply(snap, _Pass(started, v), first)

    async def _gate(self, v: str) -> bool:
        """Wait for the stagger gate, unless a newer change arrives first (then this pass is dropped)."""
        delay = self.gate.delay(v)
        if delay > 0:
            log.info("staggered", delay_s=round(delay, 3))
        self.state.phase = "waiting"
        self.state.mark(v, "waiting")
        gate = asyncio.ensure_future(self.gate.wait(v))
        try:
            await _first(gate, self._wake.wait())
        finally:  # superseded, or this pass itself cancelled (shutdown): the gate's polling stops too
            if not gate.done():
                gate.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await gate
        if gate.cancelled():
            log.info("superseded")
            return False
        if gate.result() == "held":
            self._hold(v)
            return False
        return True

    def _hold(self, v: str) -> None:
        self.state.phase = "held"
        self.state.hold(v)
        self.metrics.held.inc()
        log.warning("held", reason="a peer reported this version failed; keeping the last good version")

    async def _apply(self, snap: Snapshot, p: _Pass, first: bool) -> None:
        state = self.state
        state.phase = "promoting"
        t = time.perf_counter()
        try:
            wrote = await _blocking(snap.small, functools.partial(_promote.promote, snap, self.s.target_dir))
        except _promote.PromoteError as e:
            state.error(str(e))
            log.error("promote_failed", error=str(e))
            return
        state.current = p.version
        state.files = {n: {"bytes": snap.sizes[n]} for n in snap.files}
        self.metrics.promotions.inc()
        self.metrics.set_version(p.version)
        log.info("promoted", files=len(snap.files), new_dir=wrote, duration_ms=_ms(time.perf_counter() - t))
        if first:
            # The app starts after the sidecar and reads the files itself: nobody to signal or verify.
            await self._commit(p, "first version at start-up")
            return
        # No state write here: a restart reads the live version from ..data and re-verifies it.
        problem = await self._reload_and_verify()
        if problem is None:
            await self._commit(p, "reloaded")
        else:
            stage, reason = problem
            self.metrics.reloads.labels("failed").inc()
            await self._quarantine_and_rollback(p.version, stage, reason)

    async def _reload_and_verify(self) -> tuple[str, str] | None:
        """(stage, reason) when the app did not reload or is not healthy afterwards; None when it is."""
        self.state.phase = "reloading"
        t = time.perf_counter()
        try:
            evidence = await self.trigger.fire()
        except TriggerError as e:
            log.error("reload_failed", method=self.trigger.method, error=str(e))
            return "reload", str(e)
        log.info(
            "reload_triggered", method=self.trigger.method, evidence=evidence, duration_ms=_ms(time.perf_counter() - t)
        )
        if self.health is None:
            return None
        self.state.phase = "verifying"
        t = time.perf_counter()
        outcome = await verify(self.session, self.health)
        log.log(
            20 if outcome.ok else 40,
            "verified" if outcome.ok else "verify_failed",
            reason=outcome.reason,
            polls=outcome.polls,
            duration_ms=_ms(time.perf_counter() - t),
        )
        return None if outcome.ok else ("verify", outcome.reason)

    async def _commit(self, p: _Pass, how: str) -> None:
        state = self.state
        state.last_good = p.version
        state.last_reload_at = time.time()
        state.mark(p.version, "healthy")
        self._set_ready(True)
        self.metrics.reloads.labels("success").inc()
        self.metrics.last_success.set(time.time())
        self.metrics.last_successful.set(1)
        duration = time.perf_counter() - p.started
        self.metrics.duration.observe(duration)
        await asyncio.to_thread(self._persist_and_prune)
        log.info("committed", how=how, duration_ms=_ms(duration))

    def _persist_and_prune(self) -> None:
        save_state(self.s.target_dir, self.state)
        protect = {v for v in (self.state.last_good, self.state.current) if v}
        removed = _promote.prune(self.s.target_dir, self.s.history, protect)
        if removed:
            log.debug("pruned", versions=removed)

    async def _quarantine_and_rollback(self, bad: str, stage: str, reason: str) -> None:
        self.state.quarantine(bad, reason, stage)
        self.state.error(f"version {bad} failed at {stage}: {reason}")
        self.metrics.last_successful.set(0)
        await asyncio.to_thread(save_state, self.s.target_dir, self.state)
        await self._rollback(bad, reason)

    async def _rollback(self, bad: str, reason: str) -> None:
        state, good = self.state, self.state.last_good
        if good is None or good == bad:
            self._degrade(f"version {bad} failed and there is no earlier good version to return to")
            log.error("rollback_impossible", version=bad, reason=reason)
            return
        state.phase = "rolling_back"
        structlog.contextvars.bind_contextvars(version=good, rolling_back_from=bad)
        log.info("rolling_back", reason=reason)
        try:
            await asyncio.to_thread(_promote.activate, self.s.target_dir, good)
        except _promote.PromoteError as e:
            self._degrade(str(e))
            log.error("rollback_failed", version=bad, to=good, error=str(e))
            return
        state.current = good
        self.metrics.set_version(good)
        await asyncio.to_thread(save_state, self.s.target_dir, state)
        problem = await self._reload_and_verify()
        self.metrics.rollbacks.inc()
        if problem is not None:
            self._degrade(f"rolled back to {good} but the app is still not healthy: {problem[1]}")
            log.error("rolled_back_unhealthy", version=bad, to=good, reason=reason, after=problem[1])
            return
        self.metrics.reloads.labels("rolled_back").inc()
        self._set_ready(True)
        state.phase = "idle"
        log.warning("rolled_back", version=bad, to=good, reason=reason)

    async def _recheck_degraded(self) -> None:
        """On a resync while degraded: the app may have recovered on the live version."""
        if self.state.phase != "degraded" or self.state.current is None:
            return
        problem = await self._reload_and_verify()
        if problem is None:
            self._set_ready(True)
            self.state.phase = "idle"
            log.info("recovered_from_degraded", version=self.state.current)
        else:
            self._degrade(f"version {self.state.current} still not healthy: {problem[1]}")

    def _degrade(self, why: str) -> None:
        self.state.phase = "degraded"
        self.state.error(why)
        self._set_ready(False, why)

    def _set_ready(self, ready: bool, reason: str = "") -> None:
        self.state.ready = ready
        self.state.ready_reason = reason
        self.metrics.ready.set(1 if ready else 0)


async def _blocking(inline: bool, call: Callable[[], T]) -> T:
    """Run blocking file work: inline when it is small (a thread hand-off, ~0.15 ms, costs more than the
    work and is most of the reload latency), in a worker thread otherwise so the event loop stays free."""
    return call() if inline else await asyncio.to_thread(call)


async def _first(*aws: Awaitable[object]) -> None:
    """Return when the first of `aws` is done; the others are cancelled (a Task passed in is left running)."""
    futures = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for f, a in zip(futures, aws, strict=True):
            if f is not a:
                f.cancel()


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)
