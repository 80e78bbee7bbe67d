"""The loop that runs the stages in order and owns the state; the only module that knows the order.

    watch -> snapshot -> validate -> gate -> promote -> signal -> prove -> verify -> commit | rollback

Signal, proof and health are `proof.Judge`'s, which steps the live version's life (`verdict.py`): only a
version proven and healthy is committed (last good); a refused one is rolled back at once.

`Reloader.once` is the same order for an initContainer: snapshot -> validate -> promote -> commit.

One worker runs one pass at a time; changes seen meanwhile collapse into one more pass, which reads
the source afresh, so the latest version always wins and a storm costs at most two reloads.

The rule after a promotion: anything that goes wrong before the version is committed (a failed reload
or verification, an exception of any kind) rolls back to the last good version and signals the app, or,
if that fails too, marks the sidecar degraded (not ready) with the reason. State-file writes never stand
in the way: a failed write is logged and counted, and retried at the next commit or pass.

After a commit (but the first), the state write and the pruning of old versions run in the background:
the next version's pass does not wait for them. Writes are serialized and each writes the state as it
is when its turn comes; pruning never runs during a promotion (`Target.lock`); the phase is
"recording" rather than "idle" until they are done; at shutdown they get a few seconds to finish (`drain`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from . import promote as _promote
from .proof import NOT_SIGNALLED, Judge, Proof, app_log, make_proof
from .settings import Settings
from .snapshot import Snapshot, SourceError, read_configured
from .state import State, load_state, save_state, state_doc, write_state
from .target import Target, blocking
from .trigger import Trigger, pace
from .validate import Checks, validate
from .verdict import Verdict
from .watch import changes

if TYPE_CHECKING:  # the stages that need aiohttp are imported when a Reloader is made: `once` runs without it
    import aiohttp

    from .metrics import Metrics
    from .stagger import Gate, GateAnswer
    from .verify import HealthCheck, Outcome

__all__ = ["Reloader"]

log = structlog.get_logger("reloader")
Verifier = Callable[["aiohttp.ClientSession", "HealthCheck"], Awaitable["Outcome"]]


# What the app runs until it is signalled: version, `state.files`, what the sidecar knew of it.
_Live = tuple[str, dict[str, dict[str, object]], Verdict | None]


@dataclass(slots=True)
class _Pass:
    started: float
    snap: Snapshot
    committed: bool = False  # set the moment the version becomes last good: no rollback after that

    @property
    def version(self) -> str:
        return self.snap.version


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
        verifier: Verifier | None = None,
        proof: Proof | None = None,
    ) -> None:
        from .verify import verify

        self.s, self.state, self.metrics = settings, state, metrics
        self.trigger, self.gate = trigger, gate  # signal, proof and health are the judge's
        log_ = app_log(settings)
        proof = proof or make_proof(settings, trigger, session, log_)
        self.judge = Judge(trigger, proof, log_, health, verifier or verify, session, state, metrics)
        self.checks = Checks.from_settings(settings, settings.target_dir)
        self._wake = asyncio.Event()
        self._last_small = False  # was the last snapshot small enough to read without a thread hop?
        self._worker: asyncio.Task[None] | None = None
        # Nothing live at start-up, nothing ready since: the app has not started, nobody to signal next.
        self._unstarted = True
        self._dirty = False  # the state file lags behind memory (a write failed): retried at each pass
        self._unrecorded = False  # degraded because the first version's commit could not be written
        self._good_files: dict[str, dict[str, object]] = {}  # `state.files` of the last good version
        # Promotion with room made, rollback activation, repair, pruning; holds the last good version's files.
        self.target = Target(settings, state, metrics, on_live=self.judge.live)
        self._state_lock = asyncio.Lock()  # one state write at a time, in order
        self._restart_on_record: dict[str, object] | None = None  # `state.restart` as the state file has it
        self._source_version: str | None = None  # what the source showed at the previous pass
        self._background: set[asyncio.Task[object]] = set()  # state writes and pruning after a commit

    @staticmethod
    async def once(settings: Settings) -> bool:
        """`reload-sidecar once` (an initContainer): read -> validate -> promote -> commit, one time.

        No app to signal or verify yet: it starts after this. False (logged) when the source cannot be
        read, the version is refused or it cannot be promoted (a full target: one line, no ..tmp-* left).
        """
        target = settings.target_dir
        _promote.clean_leftovers(target)
        try:
            snap = read_configured(settings.source_dir, settings)
        except SourceError as e:
            log.error("source_unreadable", error=str(e))
            return False
        verdict = await validate(snap, Checks.from_settings(settings, target))
        if not verdict.ok:
            log.error("refused", version=snap.version, problems=list(verdict.problems))
            return False
        try:
            wrote = _promote.promote(snap, target)
        except _promote.PromoteError as e:
            log.error("promote_failed", version=snap.version, error=str(e))
            return False
        # Committed as the sidecar's first promotion is, so the sidecar that starts next does not reload
        # (and re-verify) the app on a version it already has.
        state = State(pod=settings.pod_name)
        load_state(target, state)
        state.last_good = snap.version
        try:
            save_state(target, state)
        except OSError as e:  # the files are in place; the sidecar starting next only re-verifies them
            log.error("state_write_failed", version=snap.version, error=str(e))
        log.info("promoted", version=snap.version, files=len(snap.files), new_dir=wrote)
        return True

    @property
    def alive(self) -> bool:
        return self._worker is not None and not self._worker.done()

    async def run(self, stop: asyncio.Event) -> None:
        """Start up (recover the target dir and state), then watch and sync until `stop` is set."""
        await asyncio.to_thread(self.recover)
        self._wake.set()
        async with asyncio.TaskGroup() as tg:
            self._worker = tg.create_task(self._work(stop), name="worker")
            tg.create_task(self._watch(stop), name="watch")

    def recover(self) -> None:
        """Start-up: remove leftovers, load the state file, find the live version (blocking file work)."""
        target = self.s.target_dir
        removed = _promote.clean_leftovers(target)
        if removed:
            log.info("leftovers_removed", names=removed)
        problem = load_state(target, self.state)
        if problem:
            log.warning("state_file_unusable", problem=problem)
        self._restart_on_record = self.state.restart
        self.state.current = _promote.current_version(target)
        if self.state.last_good and not _promote.version_dir(target, self.state.last_good).is_dir():
            self.state.last_good = None
        self._unstarted = self.state.current is None
        # A life killed between a promotion and its commit left versions the history no longer wants.
        self.target.prune(self.s.history)
        if self.state.current is not None and self.state.current == self.state.last_good:
            if (pending := self.state.pending()) is None:
                self._set_ready(True)
                self.metrics.last_successful.set(1)  # it was reloaded and verified before the restart
            else:  # killed mid-rollback or while degraded: the app may still run another version
                self._degrade(pending)
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
            one_pass = asyncio.create_task(self.pass_once(), name="pass")
            await _first(one_pass, stop.wait())
            if not one_pass.done():
                log.info("pass_cancelled", reason="shutting down")
                one_pass.cancel("sidecar shutting down")
            try:
                await one_pass
            except asyncio.CancelledError:
                if not one_pass.cancelled() or asyncio.current_task().cancelling():  # type: ignore[union-attr]
                    raise  # we are being cancelled ourselves, not just the pass
        self._set_ready(False, "shutting down")
        self.state.phase = "stopping"
        await self.drain()

    async def drain(self, timeout_s: float = 5.0) -> None:
        """Wait for the background state writes and pruning (at most `timeout_s`); cancel what is left."""
        pending = set(self._background)
        if not pending:
            return
        _, late = await asyncio.wait(pending, timeout=timeout_s)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        if late:
            log.warning("state_write_abandoned", reason=f"still running after {timeout_s} s at shutdown")

    async def pass_once(self) -> None:
        """One `sync` with the worker's safety net: a bug in one pass must not end the sidecar."""
        try:
            await self.sync()
        except Exception as e:  # the next change or resync retries
            log.exception("pass_failed", error=str(e))
            self.state.error(f"internal error: {e}")
            live, good = self.state.current, self.state.last_good
            if live is not None and live != good:  # never ready with an unverified version live
                await self._app_degraded(f"internal error while version {live} (not verified) is live: {e}"[:500])
        finally:
            structlog.contextvars.clear_contextvars()
            if self.state.restart is not self._restart_on_record:  # the restart trigger restarted the app
                self._in_background(self._persist(), "state-write")  # /status shows it after our restart too
            if self.state.phase not in ("degraded", "held"):  # idle once the background work is done too
                self.state.phase = "recording" if self._background else "idle"

    async def sync(self) -> None:
        """One pass: read the source and take it as far through the pipeline as it deserves."""
        state, started = self.state, time.perf_counter()
        if self._dirty and await self._persist() and self._unrecorded:
            self._unrecorded = False
            if state.current == state.last_good:
                self._set_ready(True)
                state.phase = "idle"
        if state.current in state.quarantined and state.last_good not in (None, state.current):
            await self._rollback(state.current, "a quarantined version was live at start-up")
            return
        try:
            snap = await blocking(self._last_small, functools.partial(read_configured, self.s.source_dir, self.s))
            self._last_small = snap.small
        except SourceError as e:
            state.error(str(e))
            log.error("source_unreadable", error=str(e))
            return
        v = snap.version
        state.undefer(unless=v)  # the source moved on from a deferred version
        returned, self._source_version = v != self._source_version, v
        known_bad = v in state.quarantined or v in state.refused or v in state.held
        if v in state.quarantined:  # the source's version is one whose reload failed (also after a restart)
            self.metrics.last_successful.set(0)
        if (known_bad or v == state.current) and not await self._check_target(snap):
            return
        if known_bad or (v == state.current and (v == state.last_good or (state.settled(v) and state.ready))):
            if known_bad:
                self._skipped(v, returned)
            await self._recheck_degraded()
            return
        structlog.contextvars.bind_contextvars(version=v)
        state.last_change_at = time.time()
        state.phase = "validating"
        state.mark(v, "validating")
        if not await self._validated(snap):
            return
        first = self._unstarted
        if first and await self.gate.admit_first(v) == "held":
            self._hold(v)
            self._set_ready(False, f"version {v} is held by the fleet; waiting for a newer version")
            return
        if not first and not await self._gate(v):
            return
        await self._apply(snap, _Pass(started, snap), first)

    def _skipped(self, v: str, returned: bool) -> None:
        """The source shows a version known bad: skipped. Said once each time the source comes to it (a
        user going back to content refused earlier), with why; at each resync after that only at debug."""
        if not returned:
            log.debug("skipped_known_bad", version=v)
            return
        state = self.state
        was = "quarantined" if v in state.quarantined else "refused" if v in state.refused else "held"
        why = state.quarantined.get(v) or state.refused.get(v)
        reason = f" at {why.stage}: {why.reason}" if why else " by the fleet (a peer reported it failed)"
        state.error(f"version {v} was {was} earlier{reason}; skipped until the content changes"[:1000])
        log.warning("skipped_known_bad", version=v, was=was, stage=why.stage if why else "fleet")

    async def _validated(self, snap: Snapshot) -> bool:
        """Validate `snap`; a refusal is remembered by hash, a check that could not run is not."""
        state, v = self.state, snap.version
        verdict = await validate(snap, self.checks)
        if verdict.transient:  # no verdict on the content (e.g. no room to stage it): never remembered
            state.error(f"version {v} not checked: {verdict.reason}; retried at the next resync")
            log.error("validate_unavailable", error=verdict.reason)
            if not state.ready:
                self._set_ready(False, f"no good version yet: {v} not checked: {verdict.reason}"[:500])
            return False
        if not verdict.ok:
            state.refuse(v, verdict.reason, "validate")
            self.metrics.validation_failures.inc()
            log.warning("refused", problems=list(verdict.problems), duration_ms=_ms(verdict.duration_s))
            if not state.ready:
                self._set_ready(False, f"no good version yet: {v} refused: {verdict.reason}"[:500])
            return False
        log.info("validated", files=len(snap.files), bytes=snap.total_bytes, duration_ms=_ms(verdict.duration_s))
        return True

    async def _gate(self, v: str) -> bool:
        """Wait for the trigger's pacing (restarts), then the stagger gate, unless a newer change arrives
        first (then this pass is dropped: only the newest version is promoted)."""
        delay = self.gate.delay(v)
        if delay > 0:
            log.info("staggered", delay_s=round(delay, 3))
        self.state.phase = "waiting"
        self.state.mark(v, "waiting")
        gate = asyncio.ensure_future(self._paced_gate(v))
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

    async def _paced_gate(self, v: str) -> GateAnswer:
        await pace(self.trigger)
        return await self.gate.wait(v)

    def _hold(self, v: str) -> None:
        self.state.phase = "held"
        self.state.hold(v)
        self.metrics.held.inc()
        log.warning("held", reason="a peer reported this version failed; keeping the last good version")

    async def _apply(self, snap: Snapshot, p: _Pass, first: bool) -> None:
        state = self.state
        # what the app runs until it is signalled, and what the sidecar knew of it
        previous, previous_files, previous_verdict = state.current, state.files, state.verdict
        state.phase = "promoting"
        t = time.perf_counter()
        try:
            async with self.target.lock:
                wrote = await self.target.promote(snap)
        except Exception as e:  # PromoteError, or a bug: either way, what matters is where ..data points
            live = await asyncio.to_thread(_promote.current_version, self.s.target_dir)
            if live != p.version:  # nothing changed: retried at the next pass, never remembered as bad
                self._not_promoted(p.version, e)
                return
            # ..data was swapped before the error (a top-level link): live but not whole. The target's
            # fault, not the content's: rolled back without a quarantine, so the next pass retries it.
            self._now_live(snap, p.version)
            log.error("promote_failed", error=str(e), live=True)
            self.metrics.reloads.labels("failed").inc()
            await self._fail(p.version, "", f"promoted only in part: {e}")
            return
        try:
            self._now_live(snap, p.version)
            log.info("promoted", files=len(snap.files), new_dir=wrote, duration_ms=_ms(time.perf_counter() - t))
            if first:
                # The app starts after the sidecar and reads the files itself: nobody to signal or verify.
                await self._commit(p, "first version at start-up", first=True)
                return
            # No state write here: a restart reads the live version from ..data and re-verifies it.
            problem = await self.judge.reload()
            if problem is None or problem[0] != NOT_SIGNALLED:
                state.undefer()
            if problem is None:
                await self._commit(p, "reloaded")
                return
            stage, reason = problem
            if stage == NOT_SIGNALLED and previous is not None:
                await self._put_back(p.version, (previous, previous_files, previous_verdict), reason)
                return
        except Exception as e:
            if p.committed:  # it is verified and stays
                log.exception("commit_incomplete", error=str(e))
                state.error(f"internal error after committing {p.version}: {e}")
                return
            log.exception("failed_after_promotion", error=str(e))
            stage, reason = "internal", f"internal error: {type(e).__name__}: {e}"
        self.metrics.reloads.labels("failed").inc()
        await self._fail(p.version, stage, reason)

    def _now_live(self, snap: Snapshot, v: str) -> None:
        self.state.step(v, "promoted", f"{len(snap.files)} files")
        self.judge.live(v)
        self.state.current = v
        self.state.files = {n: {"bytes": snap.sizes.get(n, len(b))} for n, b in snap.files.items()}
        self.metrics.promotions.inc()
        self.metrics.set_version(v)

    def _not_promoted(self, v: str, e: Exception) -> None:
        self.state.error(str(e))
        log.error(
            "promote_failed",
            error=str(e),
            no_space=isinstance(e, _promote.NoSpaceError),
            exc_info=not isinstance(e, _promote.PromoteError),  # a bug, not the target: keep its traceback
        )
        if not self.state.ready:
            self._set_ready(False, f"no good version yet: {v} not promoted: {e}"[:500])

    async def _fail(self, v: str, stage: str, reason: str) -> None:
        """A promoted version failed before its commit: quarantine it (unless `stage` is empty) and roll back."""
        try:
            if stage:
                await self._quarantine_and_rollback(v, stage, reason)
            else:
                self.metrics.last_successful.set(0)
                self.state.error(f"version {v} failed: {reason}")
                await self._rollback(v, reason)
        except Exception as e:  # the last line: whatever happened, never report ready on it
            log.exception("rollback_failed", version=v, error=str(e))
            await self._app_degraded(f"version {v} failed ({reason}) and the rollback raised: {e}"[:500])

    async def _put_back(self, v: str, was: _Live, reason: str) -> None:
        """Nothing reached the app (its process could not be found or checked): it still runs what it ran
        (`was`: version, files, verdict). Not `v`'s fault: `..data` goes back to that version without a
        quarantine or a signal, and the next pass (the next resync) tries `v` again."""
        state, (previous, files, verdict) = self.state, was
        state.phase = "rolling_back"
        try:
            async with self.target.lock:
                await asyncio.to_thread(self.target.make_live, previous)
        except Exception as e:  # ..data may still show `v`, which the app was never told about
            self._degrade(f"version {v} was not signalled and putting {previous} back failed: {e}"[:500])
            log.error("put_back_failed", to=previous, error=str(e))
            return
        state.current, state.files, state.verdict = previous, files, verdict
        self.metrics.set_version(previous)
        self.metrics.reloads.labels("failed").inc()
        self.metrics.last_successful.set(0)
        attempts = state.defer(v, reason)
        state.error(
            f"version {v} not applied: {reason}; nothing was signalled, {previous} put back; retried at the next resync"
        )
        log.warning("reload_deferred", to=previous, attempts=attempts)

    async def _commit(self, p: _Pass, how: str, first: bool = False) -> None:
        state = self.state
        if not first and state.verdict is not None and state.verdict.evidence("proven") is None:
            return self._unconfirmed(p)
        state.step(p.version, "committed", how)
        state.last_good, p.committed = p.version, True
        self._good_files, self.target.good = state.files, p.snap
        state.last_reload_at = time.time()
        state.last_error = state.last_error_at = None  # what went wrong before is history now (quarantined, logs)
        state.mark(p.version, "healthy")
        self.metrics.last_successful.set(1)
        duration = time.perf_counter() - p.started
        if not first:  # the start-up promotion reloaded nothing: not a reload, not a reload's duration
            self.metrics.reloads.labels("success").inc()
            self.metrics.last_success.set(time.time())
            self.metrics.duration.observe(duration)
        if first and not await self._persist():
            # The app starts on the first version once /readyz says so: not before it is on record, or a
            # restart would take it for an unverified version and reload an app that never started.
            self._unrecorded = True
            self._degrade(f"version {p.version} is live but not recorded in the state file; retried at each resync")
        else:
            self._set_ready(True)  # a later verified version whose record fails stays: the write is retried
        # Off the critical path (the next version's pass does not wait for it): the state write (the first
        # version's was just made) and the pruning of old versions.
        self._in_background(self._record(write=not first), "record")
        log.info("committed", how=how, duration_ms=_ms(duration))

    def _unconfirmed(self, p: _Pass) -> None:
        """Healthy but not proven (proof none): live and ready, never last good nor counted successful."""
        self.state.step(p.version, "unconfirmed", "healthy; nothing shows the app loaded it")
        self.state.mark(p.version, "unconfirmed")
        self.metrics.reloads.labels("unconfirmed").inc()
        self._set_ready(True)
        self._in_background(self._record(write=True), "record")
        log.warning("unconfirmed", last_good=self.state.last_good)

    def _in_background(self, work: Coroutine[object, object, object], name: str) -> None:
        task: asyncio.Task[object] = asyncio.create_task(work, name=name)
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[object]) -> None:
        self._background.discard(task)
        if not self._background and self.state.phase == "recording":
            self.state.phase = "idle"

    async def _record(self, write: bool) -> None:
        try:
            if write:
                await self._persist()
            async with self.target.lock:
                await asyncio.to_thread(self.target.prune, self.s.history)
        except Exception as e:  # a bug here must not go unseen (nobody awaits this task's result)
            log.exception("record_failed", error=str(e))

    async def _persist(self, wait: bool = True, note: bool = True) -> bool:
        """Write the state file; best effort: a failure is logged, counted and retried at the next pass.

        Writes are serialized; with `wait=False` and a write under way, this one is queued after it in
        the background instead (False: not written yet).
        """
        if not wait and self._state_lock.locked():
            self._in_background(self._persist(note=note), "state-write")  # failing too, the next pass retries
            return False
        async with self._state_lock:
            doc = state_doc(self.state)
            try:
                await asyncio.to_thread(write_state, self.s.target_dir, doc)
            except Exception as e:
                self._dirty = True
                self.metrics.state_write_failures.inc()
                if note:  # not for a verdict's write: the failure it follows is the error to show
                    self.state.error(f"state file not written ({e}); retried at the next commit or resync")
                log.error("state_write_failed", error=str(e))
                return False
            self._restart_on_record = doc["restart"]
            if self._dirty:
                self._dirty = False
                log.info("state_written", after="an earlier failed write")
            return True

    async def _quarantine_and_rollback(self, bad: str, stage: str, reason: str) -> None:
        self.state.quarantine(bad, reason, stage)
        self.metrics.last_successful.set(0)
        if self.state.last_good not in (None, bad):  # on record: a sidecar killed mid-rollback finishes it
            self.state.step(self.state.last_good, "rolling_back", reason).rolling_back_from = bad
        # Before the rollback, so a crash during it still finds the version quarantined; but only best
        # effort: a full disk, or an earlier commit's write still under way, must not keep a bad version live.
        await self._persist(wait=False)
        self.state.error(f"version {bad} failed at {stage}: {reason}")
        await self._rollback(bad, reason)

    async def _rollback(self, bad: str, reason: str) -> None:
        state, good = self.state, self.state.last_good
        if good is None or good == bad:
            await self._app_degraded(f"version {bad} failed and there is no earlier good version to return to")
            log.error("rollback_impossible", version=bad, reason=reason)
            return
        state.phase = "rolling_back"
        structlog.contextvars.bind_contextvars(version=good, rolling_back_from=bad)
        log.info("rolling_back", reason=reason)
        try:
            await asyncio.to_thread(self.target.make_live, good)
        except Exception as e:  # PromoteError, or anything else: ..data may still show the bad version
            await self._app_degraded(f"version {bad} failed and the rollback to {good} failed: {e}"[:500])
            log.error("rollback_failed", version=bad, to=good, error=str(e))
            return
        state.current = good
        state.files = self._good_files
        self.metrics.set_version(good)
        state.step(good, "rolling_back", reason).rolling_back_from = bad
        problem = await self.judge.reload()
        self.metrics.rollbacks.inc()
        await self.target.discard(bad)
        if problem is not None:
            await self._app_degraded(f"rolled back to {good} but the app is still not healthy: {problem[1]}")
            log.error("rolled_back_unhealthy", version=bad, to=good, reason=reason, after=problem[1])
            return
        self.metrics.reloads.labels("rolled_back").inc()
        state.step(good, "rolled_back", f"from {bad}: {reason}"[:500])
        await self._persist(wait=False, note=False)
        self._set_ready(True)
        state.phase = "idle"
        log.warning("rolled_back", version=bad, to=good, reason=reason)

    async def _check_target(self, snap: Snapshot) -> bool:
        """Is the target still whole? `Target.check` repairs what it can; False while it stays damaged."""
        was_damaged = self.target.damaged
        found = await self.target.check(snap)
        if found.error is not None:
            self._degrade(f"target damaged ({found.problem}) and not repaired: {found.error}"[:500])
            return False
        if was_damaged:  # repaired now, by us or by someone else meanwhile
            self._repaired()
        if found.repaired:
            await self._persist()  # the state file may have gone with the rest
        return True

    def _repaired(self) -> None:
        self._set_ready(True)
        self.state.phase = "idle"

    async def _recheck_degraded(self) -> None:
        """On a pass while degraded, retry what failed: a rollback that did not happen is tried again; on
        the last good version, the app may have recovered."""
        state = self.state
        if state.phase != "degraded" or state.current is None or self._unrecorded or self.target.damaged:
            return
        if state.current != state.last_good:  # never report ready on a version that was not verified
            if state.last_good is not None:
                await self._rollback(state.current, "retrying the rollback that failed")
            return
        problem = await self.judge.reload()
        if problem is None:
            self.state.step(state.current, "committed", "healthy again after degraded")
            self._set_ready(True)
            self.state.phase = "idle"
            await self._persist(note=False)
            log.info("recovered_from_degraded", version=self.state.current)
        else:
            await self._app_degraded(f"version {self.state.current} still not healthy: {problem[1]}")

    async def _app_degraded(self, why: str) -> None:
        """Degraded, on record: a restarted sidecar does not answer ready on the live version either."""
        self._degrade(why)
        if self.state.current is not None:
            self.state.step(self.state.current, "degraded", why)
            await self._persist(wait=False, note=False)

    def _degrade(self, why: str) -> None:
        self.state.phase = "degraded"
        self.state.error(why)
        self._set_ready(False, why)

    def _set_ready(self, ready: bool, reason: str = "") -> None:
        if ready:
            self._unstarted = False
        self.state.ready = ready
        self.state.ready_reason = reason
        self.metrics.ready.set(1 if ready else 0)


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
