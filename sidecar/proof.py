"""Proof of load: evidence that the app now runs the new version, behind one small `Proof` protocol.

A health URL answering 2xx is no such evidence: an app that refuses a version at reload keeps its old
processes serving. So after the trigger fires, a proof kind (`RELOAD_PROOF`) looks for evidence, and the
health check runs only after it:

- `workers`: master-worker apps (nginx, HAProxy -W, httpd, gunicorn, uWSGI). The signalled process gains
  children that were not there before the signal and are not shutting down. None within
  `RELOAD_PROOF_TIMEOUT_S` (default 10 s: covers nginx's 5 x 500 ms retries of a busy `listen`) means the
  app refused the version. With `RELOAD_APP_ERROR_LOG`, a final `[emerg]` line fails it at once.
- `metric`: apps that publish their reload result (Prometheus, Alertmanager, Thanos, Loki):
  `<prefix>_last_reload_successful` and `<prefix>_last_reload_success_timestamp_seconds` are read before
  the signal; proven when the flag is 1 and the timestamp newer; a flag that turns 0 fails at once.
- `http`: a synchronous reload endpoint; its 2xx answer is the proof (a 4xx/5xx is the trigger's
  `AppRefused`, never retried).
- `process`: the restart trigger; the new process it waited for is the proof.
- `marker`: any app that can show what it loaded. The sidecar puts the version id in each live version dir
  (`..data/..reload-sidecar-version`, and `..reload-sidecar-version.conf`, an nginx `add_header` line);
  proven when the answer of `RELOAD_PROOF_URL` (default the health URL) carries the id, in its
  `X-Config-Version` header or its body.
- `none`: nothing shows what the app loaded: the outcome is `unconfirmed`, never counted successful.

`auto` (the default) picks from the trigger: restart -> process, HTTP -> http, `RELOAD_PROOF_METRIC` set
-> metric, a signal -> workers when the signalled process has children at the time of the signal (else
none), no trigger -> none. Adding a kind is one class with `kind`, `before` and `prove`, one branch in
`make_proof`, and its test (CONTRIBUTING, "Extending").
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

import structlog

from .procfs import children, read_stat
from .settings import Settings
from .trigger import AppRefused, NotSignalled, Trigger, TriggerError, find_processes, read_pidfile

if TYPE_CHECKING:
    from collections.abc import Awaitable

    import aiohttp

    from .metrics import Metrics
    from .state import State
    from .verify import HealthCheck, Outcome

    Verifier = Callable[[aiohttp.ClientSession, HealthCheck], Awaitable[Outcome]]

__all__ = [
    "KINDS",
    "MARKER",
    "NOT_SIGNALLED",
    "AppLog",
    "Judge",
    "MarkerProof",
    "MetricProof",
    "NoProof",
    "Proof",
    "Proven",
    "TriggerProof",
    "WorkersProof",
    "fire_and_prove",
    "app_log",
    "make_proof",
]

NOT_SIGNALLED = "not signalled"  # the stage of a failure to find or check the app: nothing reached it

_log = structlog.get_logger("reloader")
Result = Literal["proven", "refused", "unconfirmed", "failed"]
KINDS = ("auto", "workers", "metric", "http", "process", "marker", "none")
MARKER = "..reload-sidecar-version"  # in each live version dir: never a ConfigMap key (`..` names are the kubelet's)
MARKER_HEADER = "X-Config-Version"
_POLL_S = 0.01  # how often a proof looks again: a new worker appears within milliseconds of the signal
_POLL_SLOW_S = 0.1  # after the first second (a reload that takes long, e.g. thousands of rule files)
_SETTLE_S = 0.3  # an app's error log quiet this long after its final error: it is done with the reload


@dataclass(frozen=True, slots=True)
class Proven:
    """A proof's verdict: `proven`, `refused` (the app said no, or showed no new generation in time),
    `unconfirmed` (nothing to look at) or `failed` (the trigger could not reach the app)."""

    result: Result
    evidence: str
    kind: str
    answer: str = ""  # the trigger's own answer (e.g. "HTTP 200", "SIGHUP -> pid 7")
    # False when nothing reached the app (its process not found or checked): not the version's fault
    signalled: bool = True


class Proof(Protocol):
    kind: str

    async def before(self) -> None:
        """Take what the app shows before the signal (its workers, its reload metric)."""
        ...

    async def prove(self, answer: str) -> Proven:
        """After the trigger answered `answer`: wait (bounded) for the evidence; never raises."""
        ...


class NoProof:
    """RELOAD_PROOF=none: the app gives no sign of what it loaded; the version stays unconfirmed."""

    kind = "none"

    async def before(self) -> None:
        return None

    async def prove(self, answer: str) -> Proven:
        return Proven("unconfirmed", f"{answer}; nothing shows what the app loaded (proof: none)", self.kind)


class TriggerProof:
    """The trigger's own success is the proof: an HTTP 2xx (`http`) or the restart's new process (`process`)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    async def before(self) -> None:
        return None

    async def prove(self, answer: str) -> Proven:
        said = answer if self.kind == "process" else f"the reload endpoint answered {answer}"
        return Proven("proven", said, self.kind)


class WorkersProof:
    """New children of the signalled process: the app started a generation of workers on the new config."""

    def __init__(
        self,
        *,
        pidfile: Path | None,
        process: str,
        timeout_s: float,
        log: AppLog | None = None,
        auto: bool = False,
        proc: Path = Path("/proc"),
    ) -> None:
        self.pidfile, self.process, self.timeout_s, self.log, self.auto, self.proc = (
            pidfile,
            process,
            timeout_s,
            log,
            auto,
            proc,
        )
        self.kind = "workers"
        self._master: int | None = None
        self._before: set[tuple[int, int]] = set()
        self._signalled = 0.0

    async def before(self) -> None:
        self._master, self._before = self._find_master(), set()
        if self._master is not None:
            self._before = {(c, s) for c, s, _ in self._children(self._master)}
        # auto: a process without children re-reads in place (or is not master-worker): no workers to see
        self.kind = "none" if self.auto and not self._before else "workers"
        self._signalled = time.monotonic()

    async def prove(self, answer: str) -> Proven:
        if self.kind == "none":
            return await NoProof().prove(answer)
        master = self._master
        if master is None:
            return Proven("unconfirmed", f"{answer}; the app's process was not found before the signal", self.kind)
        deadline = self._signalled + self.timeout_s
        logged, quiet_from = -1, 0.0
        while True:
            new = [(c, title) for c, s, title in self._children(master) if (c, s) not in self._before]
            live = [c for c, title in new if "shutting down" not in title]
            if live:
                ms = (time.monotonic() - self._signalled) * 1000
                return Proven("proven", f"{len(live)} new worker(s) {ms:.0f} ms after {answer}", self.kind)
            if read_stat(master, self.proc) is None:
                return Proven("refused", f"pid {master} exited after {answer}", self.kind)
            if self.log is not None and self.log.final_error():  # its lines are added as the reason
                # refused; but the rollback signals next: only once the app is done (its log quiet), e.g.
                # HAProxy's master re-executes itself once more after "Loading failure!", deaf to a signal
                size, now = self.log.size(), time.monotonic()
                if size != logged:
                    logged, quiet_from = size, now
                elif now - quiet_from >= _SETTLE_S:
                    return Proven("refused", f"no new workers after {answer}, and the app logged an error", self.kind)
            if time.monotonic() >= deadline:
                return Proven(
                    "refused",
                    f"no new workers of pid {master} within {self.timeout_s:g} s (RELOAD_PROOF_TIMEOUT_S) after "
                    f"{answer}: the app kept its old workers, so it refused the version",
                    self.kind,
                )
            await asyncio.sleep(_POLL_S if time.monotonic() - self._signalled < 1 else _POLL_SLOW_S)

    def _find_master(self) -> int | None:
        try:
            if self.pidfile is not None:
                return read_pidfile(self.pidfile)[0]
            pids = find_processes(self.process, self.proc)
        except TriggerError:
            return None  # the trigger finds (and reports) it the same way
        return pids[0] if len(pids) == 1 else None

    def _children(self, master: int) -> list[tuple[int, int, str]]:
        """(pid, start ticks, title) of each live child of `master`."""
        out = []
        with contextlib.suppress(OSError):
            for st in children(master, self.proc):
                if st.dead:
                    continue
                try:
                    with open(f"{self.proc}/{st.pid}/cmdline", "rb") as f:
                        title = f.read(256).replace(b"\0", b" ").decode("utf-8", "replace")
                except OSError:
                    continue
                out.append((st.pid, st.start, title))
        return out


class MetricProof:
    """The app's own reload result: `<prefix>_last_reload_successful` and its success timestamp."""

    kind = "metric"

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        prefix: str,
        timeout_s: float,
        interval_s: float = 0.05,
    ) -> None:
        self.session, self.url, self.timeout_s, self.interval_s = session, url, timeout_s, interval_s
        self.flag, self.stamp = f"{prefix}_last_reload_successful", f"{prefix}_last_reload_success_timestamp_seconds"
        self._was: tuple[float | None, float | None] = (None, None)
        self._signalled = 0.0

    async def before(self) -> None:
        self._was = await self._read()
        self._signalled = time.monotonic()

    async def prove(self, answer: str) -> Proven:
        was_ok, was_at = self._was
        deadline = self._signalled + self.timeout_s
        seen = "no answer"
        while True:
            ok, at = await self._read()
            if ok is not None and at is not None:
                seen = f"{self.flag}={ok:g}, {self.stamp}={at:.3f}"
                if ok == 1 and (was_at is None or at > was_at):
                    ms = (time.monotonic() - self._signalled) * 1000
                    return Proven("proven", f"reload timestamp newer than before {answer} ({ms:.0f} ms)", self.kind)
                if ok == 0 and was_ok != 0:  # it was 1 before: only this reload can have turned it 0
                    return Proven("refused", f"{self.flag} turned 0 after {answer}", self.kind)
            if time.monotonic() >= deadline:
                return Proven(
                    "refused",
                    f"no successful reload within {self.timeout_s:g} s (RELOAD_PROOF_TIMEOUT_S) after {answer}: "
                    f"{seen} (before: {self.stamp}={was_at})",
                    self.kind,
                )
            await asyncio.sleep(self.interval_s)

    async def _read(self) -> tuple[float | None, float | None]:
        import aiohttp

        try:
            async with self.session.get(self.url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                if resp.status // 100 != 2:
                    return None, None
                text = await resp.text()
        except (TimeoutError, aiohttp.ClientError, ValueError):
            return None, None
        return _sample(text, self.flag), _sample(text, self.stamp)


class MarkerProof:
    """The app's answer carries the live version's id, which it can only have read with the config."""

    kind = "marker"

    def __init__(
        self, session: aiohttp.ClientSession, url: str, target: Path, timeout_s: float, interval_s: float = 0.05
    ) -> None:
        self.session, self.url, self.target, self.timeout_s, self.interval_s = (
            session,
            url,
            target,
            timeout_s,
            interval_s,
        )
        self._version: str | None = None
        self._signalled = 0.0

    def write(self, version: str) -> None:
        """Put the marker files in the live version dir (atomically: a temp file renamed over)."""
        data = self.target / "..data"
        for name, text in (
            (MARKER, f"{version}\n"),
            (f"{MARKER}.conf", f'add_header {MARKER_HEADER} "{version}" always;\n'),
        ):
            tmp = data / f"{name}.tmp"
            tmp.write_text(text)
            os.replace(tmp, data / name)

    async def before(self) -> None:
        try:
            link = os.readlink(self.target / "..data")
        except OSError:
            link = ""
        self._version = link.removeprefix("..v-") or None
        if self._version is not None:
            with contextlib.suppress(OSError):  # a missing marker only means the proof fails
                self.write(self._version)
        self._signalled = time.monotonic()

    async def prove(self, answer: str) -> Proven:
        import aiohttp

        version, deadline = self._version, self._signalled + self.timeout_s
        if version is None:
            return Proven("unconfirmed", f"{answer}; no live version to mark", self.kind)
        seen = "no answer"
        while True:
            try:
                async with self.session.get(self.url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    shown = resp.headers.get(MARKER_HEADER, "")
                    body = (await resp.content.read(65536)).decode("utf-8", "replace")
                if shown == version or version in body:
                    ms = (time.monotonic() - self._signalled) * 1000
                    return Proven("proven", f"{self.url} shows version {version} {ms:.0f} ms after {answer}", self.kind)
                seen = f"it shows {shown or 'another version'!s}"[:120]
            except (TimeoutError, aiohttp.ClientError) as e:
                seen = type(e).__name__
            if time.monotonic() >= deadline:
                return Proven(
                    "refused",
                    f"{self.url} did not show version {version} within {self.timeout_s:g} s "
                    f"(RELOAD_PROOF_TIMEOUT_S) after {answer}: {seen}",
                    self.kind,
                )
            await asyncio.sleep(self.interval_s)


def _sample(text: str, name: str) -> float | None:
    m = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? +(\S+)", text, re.MULTILINE)
    try:
        return float(m.group(1)) if m else None
    except ValueError:
        return None


# An app's own words for "I refused this config", in its error log, are the reason: nginx's [emerg]/[alert],
# HAProxy's [ALERT], Go apps' level=error or err="..." (Alertmanager logs a failed reload without a level).
# Final (the app is done with the reload, the rollback may signal it): nginx's [emerg] but its "bind() ...
# failed", retried 5 x 500 ms; HAProxy's "Loading failure!" (its [ALERT] lines come while the master is
# still re-executing itself, deaf to a signal).
_REFUSAL = re.compile(r"\[(emerg|alert|crit|ALERT)\]|level=error|\"level\":\"error\"| err=\"")
_FINAL = re.compile(r"\[emerg\]|Loading failure!")
_RETRIED = re.compile(r"bind\(\) to .* failed")
_LOG_TAIL_BYTES = 64 * 1024


class AppLog:
    """`RELOAD_APP_ERROR_LOG`: the lines the app wrote after the signal, for its own reason of a refusal."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mark = 0

    def mark(self) -> None:
        try:
            self._mark = self.path.stat().st_size
        except OSError:
            self._mark = 0

    def _new_lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                start = self._mark if self._mark <= size else 0  # rotated or truncated meanwhile
                f.seek(max(start, size - _LOG_TAIL_BYTES))
                data = f.read(_LOG_TAIL_BYTES)
        except OSError:
            return []
        return data.decode("utf-8", "replace").splitlines()

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except OSError:
            return 0

    def final_error(self) -> bool:
        """Has the app logged a final refusal since `mark` (not one it retries)?"""
        return any(_FINAL.search(line) and not _RETRIED.search(line) for line in self._new_lines())

    def reason(self) -> str | None:
        """The app's first error lines since `mark` (the first names the cause; later ones sum up)."""
        lines = list(dict.fromkeys(line.strip() for line in self._new_lines() if _REFUSAL.search(line)))
        return " | ".join(lines[:3])[:700] if lines else None


async def fire_and_prove(trigger: Trigger, proof: Proof, log: AppLog | None = None) -> Proven:
    """Take the proof's before-picture, fire the trigger, wait for the proof. Never raises (but
    CancelledError): a trigger that fails is `failed` (not reached) or `refused` (the app said no)."""
    if log is not None:
        log.mark()
    try:
        await proof.before()
    except Exception as e:  # nothing was signalled: a failure to reach the app, retried like one
        return Proven(
            "failed", f"internal error before the signal: {type(e).__name__}: {e}", proof.kind, signalled=False
        )
    try:
        answer = await trigger.fire()
    except AppRefused as e:
        return await _with_log(Proven("refused", str(e), proof.kind), log)
    except NotSignalled as e:
        return Proven("failed", str(e), proof.kind, signalled=False)
    except TriggerError as e:
        return Proven("failed", str(e), proof.kind)
    except Exception as e:
        return Proven("failed", f"internal error: {type(e).__name__}: {e}", proof.kind)
    try:
        proven = await proof.prove(answer)
    except Exception as e:
        proven = Proven("refused", f"internal error while proving: {type(e).__name__}: {e}", proof.kind)
    proven = Proven(proven.result, proven.evidence, proven.kind, answer)
    return await _with_log(proven, log) if proven.result == "refused" else proven


async def _with_log(proven: Proven, log: AppLog | None) -> Proven:
    said = log.reason() if log is not None else None
    for _ in range(25):  # an app may log its reason just after it answered or set its metric: 0.5 s at most
        if said or log is None:
            break
        await asyncio.sleep(0.02)
        said = log.reason()
    if not said or said in proven.evidence:
        return proven
    return Proven(proven.result, f"{proven.evidence}; the app logged: {said}", proven.kind, proven.answer)


def app_log(settings: Settings) -> AppLog | None:
    return AppLog(settings.app_error_log) if settings.app_error_log is not None else None


def make_proof(
    settings: Settings, trigger: Trigger, session: aiohttp.ClientSession | None, log: AppLog | None = None
) -> Proof:
    """The proof `settings` ask for (`RELOAD_PROOF`), `auto` resolved from the trigger."""
    kind, s = settings.proof, settings
    if trigger.method == "none":
        return NoProof()  # nobody is told to reload: nothing to prove, whatever RELOAD_PROOF says
    if kind == "auto":
        kind = _auto(s, trigger.method)
    if kind == "metric" and session is not None:
        return MetricProof(session, s.proof_url or s.health_metric_url, s.proof_metric, s.proof_timeout_s)
    if kind == "marker" and session is not None:
        return MarkerProof(session, s.proof_url or s.health_url, s.target_dir, s.proof_timeout_s)
    if kind in ("workers", "auto-workers"):
        return WorkersProof(
            pidfile=s.pidfile, process=s.process, timeout_s=s.proof_timeout_s, log=log, auto=kind == "auto-workers"
        )
    if kind in ("http", "process"):
        return TriggerProof(kind)
    return NoProof()


def _auto(s: Settings, method: str) -> str:
    choose: dict[str, Callable[[], str]] = {
        "restart": lambda: "process",
        "http": lambda: "metric" if s.proof_metric else "http",
        "signal": lambda: "metric" if s.proof_metric else "auto-workers",
    }
    return choose.get(method, lambda: "http")()  # another trigger (a test's): its own answer


class Judge:
    """Signal -> proof -> health for the live version, each step recorded in its verdict (`State.step`).

    The reloader awaits `reload` wherever the app must take the live version (a new one, a rollback, a
    re-check); the order of those stages stays the reloader's.
    """

    def __init__(
        self,
        trigger: Trigger,
        proof: Proof,
        log: AppLog | None,
        health: HealthCheck | None,
        verifier: Verifier,
        session: aiohttp.ClientSession,
        state: State,
        metrics: Metrics,
    ) -> None:
        self.trigger, self.proof, self.log, self.health, self.verifier = trigger, proof, log, health, verifier
        self.session, self.state, self.metrics = session, state, metrics

    def live(self, version: str) -> None:
        """`version` was just made live: the marker proof puts its id there (the app may read it at start)."""
        if isinstance(self.proof, MarkerProof):
            try:
                self.proof.write(version)
            except OSError as e:
                _log.warning("marker_not_written", error=str(e))

    async def reload(self) -> tuple[str, str] | None:
        """(stage, reason) when the app was not reached (`reload`), refused the version (`proof`: not
        proven) or is not healthy afterwards (`verify`); None when proven (or unconfirmed) and healthy.

        Never raises (but CancelledError): an unexpected exception is a failure of its stage, logged.
        """
        state, v = self.state, self.state.current or ""
        state.phase = "reloading"
        t = time.perf_counter()
        proven = await fire_and_prove(self.trigger, self.proof, self.log)
        self.metrics.proofs.labels(proven.kind, proven.result).inc()
        ms = round((time.perf_counter() - t) * 1000, 2)
        if not proven.signalled:  # the reloader puts the previous version back and retries later
            _log.error("reload_failed", method=self.trigger.method, error=proven.evidence, signalled=False)
            return NOT_SIGNALLED, proven.evidence
        if proven.result == "failed":
            state.step(v, "refused", f"not signalled: {proven.evidence}")
            _log.error("reload_failed", method=self.trigger.method, error=proven.evidence)
            return "reload", proven.evidence
        _log.info("reload_triggered", method=self.trigger.method, evidence=proven.answer, duration_ms=ms)
        state.step(v, "signalled", proven.answer or self.trigger.method)
        state.step(v, proven.result, proven.evidence)
        if proven.result == "refused":
            _log.error(
                "reload_failed", method=self.trigger.method, result="refused", proof=proven.kind, error=proven.evidence
            )
            return "proof", proven.evidence
        event = "reload_proven" if proven.result == "proven" else "reload_unconfirmed"
        _log.log(20 if proven.result == "proven" else 30, event, proof=proven.kind, evidence=proven.evidence)
        return await self._healthy(v)

    async def _healthy(self, v: str) -> tuple[str, str] | None:
        if self.health is None:
            self.state.step(v, "healthy", "no health check configured")
            return None
        self.state.phase = "verifying"
        t = time.perf_counter()
        try:
            outcome = await self.verifier(self.session, self.health)
        except Exception as e:
            _log.exception("verify_failed", error=str(e))
            self.state.step(v, "refused", f"health check raised {type(e).__name__}: {e}")
            return "verify", f"internal error: {type(e).__name__}: {e}"
        _log.log(
            20 if outcome.ok else 40,
            "verified" if outcome.ok else "verify_failed",
            reason=outcome.reason,
            polls=outcome.polls,
            duration_ms=round((time.perf_counter() - t) * 1000, 2),
        )
        self.state.step(v, "healthy" if outcome.ok else "refused", outcome.reason)
        return None if outcome.ok else ("verify", outcome.reason)
