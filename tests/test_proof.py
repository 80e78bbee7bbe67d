"""Proof kinds (real child processes, a loopback metrics endpoint) and the verdict state machine."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from sidecar.metrics import Metrics
from sidecar.procfs import children
from sidecar.proof import AppLog, MetricProof, NoProof, TriggerProof, WorkersProof, fire_and_prove, make_proof
from sidecar.settings import Settings
from sidecar.state import State, load_state, save_state
from sidecar.trigger import AppRefused, NoTrigger, SignalTrigger, TriggerError
from sidecar.verdict import Verdict, VerdictError
from tests.aio import serving

# A master that starts one new child ("worker") on each SIGHUP, or ignores SIGHUP ("refuses") with "stay".
MASTER = """
import os, signal, subprocess, sys, time
workers = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])]
def hup(*_):
    if sys.argv[1] == "reload":
        workers.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]))
signal.signal(signal.SIGHUP, hup)
open(sys.argv[2], "w").write(str(os.getpid()))
while True:
    time.sleep(0.05)
"""


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def _master(tmp_path: Path, mode: str) -> Iterator[Path]:
    pidfile = tmp_path / "master.pid"
    proc = subprocess.Popen([sys.executable, "-c", MASTER, mode, str(pidfile)], start_new_session=True)
    try:
        deadline = time.monotonic() + 15
        while not (pidfile.exists() and pidfile.read_text()):
            assert time.monotonic() < deadline, "the master did not start"
            time.sleep(0.02)
        while len(_children(proc.pid)) < 1:  # its first worker
            assert time.monotonic() < deadline
            time.sleep(0.02)
        yield pidfile
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _children(pid: int) -> list[int]:
    return [st.pid for st in children(pid)]


@pytest.fixture
def reloading(tmp_path: Path) -> Iterator[Path]:
    yield from _master(tmp_path, "reload")


@pytest.fixture
def refusing(tmp_path: Path) -> Iterator[Path]:
    yield from _master(tmp_path, "stay")


# --- workers -------------------------------------------------------------------------------------------------


async def test_workers_proven_by_a_new_child(reloading: Path) -> None:
    proof = WorkersProof(pidfile=reloading, process="", timeout_s=10)
    proven = await fire_and_prove(SignalTrigger(signal.SIGHUP, pidfile=reloading), proof)
    assert proven.result == "proven" and "1 new worker(s)" in proven.evidence, proven
    assert proven.answer.startswith("SIGHUP -> pid ")


async def test_workers_refused_when_no_new_generation_comes(refusing: Path) -> None:
    """The old workers stay, none is new: refused once the deadline passes (never proven by the old ones)."""
    proof = WorkersProof(pidfile=refusing, process="", timeout_s=0.5)
    proven = await fire_and_prove(SignalTrigger(signal.SIGHUP, pidfile=refusing), proof)
    assert proven.result == "refused" and "no new workers" in proven.evidence and "0.5 s" in proven.evidence


async def test_workers_refused_at_once_on_the_apps_final_error(refusing: Path, tmp_path: Path) -> None:
    """With the app's error log, a final [emerg] line ends the wait at once and becomes the reason."""
    log_path = tmp_path / "error.log"
    log_path.write_text("2026/12/08 old [emerg] from an earlier reload: not this one\n")
    app_log = AppLog(log_path)

    class Trigger:
        method = "signal"

        async def fire(self) -> str:
            with log_path.open("a") as f:
                f.write("[emerg] 1#1: bind() to 0.0.0.0:80 failed (98: Address already in use)\n")
                f.write("[emerg] 1#1: still could not bind()\n")
            return "SIGHUP -> pid 1"

    proof = WorkersProof(pidfile=refusing, process="", timeout_s=60, log=app_log)
    t = time.monotonic()
    proven = await fire_and_prove(Trigger(), proof, app_log)
    assert time.monotonic() - t < 30  # not the 60 s deadline
    assert proven.result == "refused" and "Address already in use" in proven.evidence, proven
    assert "earlier reload" not in proven.evidence


@pytest.fixture
def childless() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


async def test_auto_workers_without_children_is_unconfirmed(tmp_path: Path, childless: subprocess.Popen[bytes]) -> None:
    pidfile = tmp_path / "app.pid"
    pidfile.write_text(str(childless.pid))
    proof = WorkersProof(pidfile=pidfile, process="", timeout_s=1, auto=True)
    await proof.before()
    assert proof.kind == "none"
    assert (await proof.prove("SIGUSR1 -> pid 1")).result == "unconfirmed"


def test_app_log_ignores_retried_binds_and_keeps_the_first_lines(tmp_path: Path) -> None:
    path = tmp_path / "error.log"
    log = AppLog(path)
    log.mark()
    path.write_text("[emerg] bind() to 127.0.0.1:81 failed (98: Address already in use)\n[notice] retrying\n")
    assert not log.final_error()
    assert log.reason() == "[emerg] bind() to 127.0.0.1:81 failed (98: Address already in use)"
    with path.open("a") as f:
        f.write("[emerg] still could not bind()\n")
    assert log.final_error()


# --- metric --------------------------------------------------------------------------------------------------


class Metric:
    """A /metrics endpoint whose reload flag and timestamp the test sets."""

    def __init__(self, ok: float, at: float) -> None:
        self.ok, self.at, self.reads = ok, at, 0

    async def __call__(self, request: web.Request) -> web.Response:
        self.reads += 1
        text = (
            "# TYPE prometheus_config_last_reload_successful gauge\n"
            f"prometheus_config_last_reload_successful {self.ok}\n"
            f"prometheus_config_last_reload_success_timestamp_seconds {self.at}\n"
        )
        return web.Response(text=text)


class Hook:
    method = "signal"

    def __init__(self, then: object = None) -> None:
        self.then = then

    async def fire(self) -> str:
        if callable(self.then):
            self.then()
        return "SIGHUP -> pid 9"


async def test_metric_stale_value_never_proves(session: aiohttp.ClientSession) -> None:
    """Flag 1 with the timestamp read before the signal: not proven, however long; a newer one proves."""
    app = Metric(1, 1000.0)
    async with serving(app) as base:
        proof = MetricProof(session, f"{base}/metrics", "prometheus_config", timeout_s=0.6, interval_s=0.02)
        proven = await fire_and_prove(Hook(), proof)
        assert proven.result == "refused" and "no successful reload" in proven.evidence, proven
        assert app.reads > 5

        async def later() -> None:
            await asyncio.sleep(0.2)
            app.at = 1001.5

        task = asyncio.ensure_future(later())
        proof = MetricProof(session, f"{base}/metrics", "prometheus_config", timeout_s=10, interval_s=0.02)
        proven = await fire_and_prove(Hook(), proof)
        await task
        assert proven.result == "proven" and "newer" in proven.evidence


async def test_metric_flag_turning_zero_fails_at_once(session: aiohttp.ClientSession) -> None:
    app = Metric(1, 1000.0)
    async with serving(app) as base:
        proof = MetricProof(session, f"{base}/metrics", "prometheus_config", timeout_s=60, interval_s=0.02)
        t = time.monotonic()
        proven = await fire_and_prove(Hook(lambda: setattr(app, "ok", 0)), proof)
        assert proven.result == "refused" and "turned 0" in proven.evidence
        assert time.monotonic() - t < 30


async def test_metric_zero_before_waits_for_a_newer_success(session: aiohttp.ClientSession) -> None:
    """A flag already 0 (the previous reload failed) says nothing about this one: it waits for a success."""
    app = Metric(0, 1000.0)
    async with serving(app) as base:

        def fixed() -> None:
            app.ok, app.at = 1, 1002.0

        proof = MetricProof(session, f"{base}/metrics", "prometheus_config", timeout_s=10, interval_s=0.02)
        proven = await fire_and_prove(Hook(fixed), proof)
        assert proven.result == "proven"


# --- the trigger's own answer, none, make_proof -----------------------------------------------------------------


async def test_http_refusal_and_unreached_app() -> None:
    class Refusing:
        method = "http"

        async def fire(self) -> str:
            raise AppRefused("POST /-/reload failed after 1 attempt(s): HTTP 500 'bad rule'")

    class Down:
        method = "http"

        async def fire(self) -> str:
            raise TriggerError("connection refused")

    refused = await fire_and_prove(Refusing(), TriggerProof("http"))
    assert (refused.result, refused.kind) == ("refused", "http") and "bad rule" in refused.evidence
    assert (await fire_and_prove(Down(), TriggerProof("http"))).result == "failed"
    assert (await fire_and_prove(NoTrigger(), NoProof())).result == "unconfirmed"


@pytest.mark.parametrize(
    ("env", "kind"),
    [
        ({"RELOAD_RELOAD_URL": "http://a:1/r"}, "http"),
        ({"RELOAD_RESTART": "true", "RELOAD_PROCESS": "a"}, "process"),
        ({"RELOAD_SIGNAL": "HUP", "RELOAD_PROCESS": "nginx"}, "workers"),
        (
            {
                "RELOAD_SIGNAL": "HUP",
                "RELOAD_PROCESS": "p",
                "RELOAD_PROOF_METRIC": "x",
                "RELOAD_PROOF_URL": "http://a:1/m",
            },
            "metric",
        ),
        ({}, "none"),
        ({"RELOAD_PROOF": "workers"}, "none"),  # no trigger: nothing to prove
        ({"RELOAD_SIGNAL": "HUP", "RELOAD_PROCESS": "pg", "RELOAD_PROOF": "none"}, "none"),
    ],
)
async def test_make_proof_auto_follows_the_trigger(
    session: aiohttp.ClientSession, env: dict[str, str], kind: str
) -> None:
    from sidecar.trigger import make_trigger

    s = Settings.from_env({"RELOAD_SOURCE_DIR": "/s", "RELOAD_TARGET_DIR": "/t", **env})
    proof = make_proof(s, make_trigger(s, session, state=State(pod="p"), metrics=Metrics()), session)
    assert proof.kind == kind or (kind == "workers" and isinstance(proof, WorkersProof))


# --- the verdict ---------------------------------------------------------------------------------------------


def test_verdict_walks_its_steps_and_refuses_others() -> None:
    v = Verdict("abc", "promoted")
    for step in ("signalled", "proven", "healthy", "committed"):
        v.to(step, f"why {step}")  # type: ignore[arg-type]
    assert v.settled and v.evidence("proven") == "why proven"
    assert [s for s, _, _ in v.steps] == ["promoted", "signalled", "proven", "healthy", "committed"]
    with pytest.raises(VerdictError, match="committed -> proven"):
        v.to("proven")
    assert Verdict.from_doc(v.doc()) == v
    for bad in ([], {"version": 1, "step": "committed"}, {"version": "a", "step": "sleeping"}):
        with pytest.raises((TypeError, ValueError)):
            Verdict.from_doc(bad)


def test_state_steps_lives_and_pending(tmp_path: Path) -> None:
    state = State(pod="p")
    state.step("bad", "promoted")
    state.step("bad", "signalled", "SIGHUP -> pid 7")
    state.step("bad", "refused", "no new workers")
    assert state.proofs["bad"] == "refused: no new workers"
    state.step("good", "rolling_back", "no new workers").rolling_back_from = "bad"
    state.current = state.last_good = "good"
    save_state(tmp_path, state)
    again = State(pod="p")
    assert load_state(tmp_path, again) is None
    again.current = "good"
    assert again.verdict is not None and again.verdict.step == "rolling_back"
    assert again.verdict.rolling_back_from == "bad"
    assert "rolling_back" in (again.pending() or "")
    for step in ("signalled", "proven", "healthy", "rolled_back"):
        again.step("good", step)  # type: ignore[arg-type]
    assert again.pending() is None and again.settled("good")
    again.step("good", "proven")  # not a step from rolled_back: a new life, never fatal, and said
    assert again.verdict.step == "proven" and "not a step" in (again.last_error or "")
