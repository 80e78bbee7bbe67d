"""`reload-sidecar fleet`: `/status` documents -> one entry per pod, one line per version in flight; the reader.

The documents are the real `State.status()` of each pod (plus a waves document built on the real
`WaveView`), each pod's clock reading a different time: the view must only compare a pod's times with
its own `now`. The reader is run against the sidecar's real HTTP API (`server.make_app`) on loopback, a
closed port and a socket that never answers. tests/e2e/test_fleet_view.py reads real sidecars in pods
of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from sidecar.fleetview import (
    Answer,
    DaemonResolving,
    FleetRead,
    duration,
    few_words,
    fleet_doc,
    in_flight,
    merge_answers,
    newest_version,
    order_of,
    pod_state,
    read_fleet,
    render,
)
from sidecar.metrics import Metrics
from sidecar.server import Api, make_app, start_server
from sidecar.stagger import WaveView, wave_of
from sidecar.state import Refusal, State

OLD, NEW = "0ld0ld0ld0ld0ld0", "4e74e74e74e74e7e"
BAKE_S = 10.0
PODS = [f"web-{i}" for i in range(8)]
VIEW = WaveView.of(NEW, frozenset(PODS))  # ranks 0; 1, 2; 3..6; 7 -> waves 0, 1, 2, 3


def status(
    pod: str,
    live: str = OLD,
    seen: tuple[tuple[str, str, float], ...] = ((OLD, "healthy", 600.0),),
    phase: str = "idle",
    waves: dict[str, Any] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """`pod`'s /status: `seen` = (version, state, seconds in it), oldest first, by a clock of its own."""
    now = 5000.0 + 137 * PODS.index(pod) if pod in PODS else 5000.0
    state = State(pod=pod, phase=phase, current=live, last_good=live, ready=True)  # type: ignore[arg-type]
    state.versions = {v: (s, now - age) for v, s, age in seen}
    for name, value in fields.items():
        setattr(state, name, value)
    doc: dict[str, Any] = json.loads(json.dumps(state.status(), sort_keys=True))  # as /status serves it
    doc["now"] = now
    if waves is not None:
        doc["waves"] = waves
    return doc


def wave_doc(hold: str | None = None, gone: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"view": VIEW.key, "n": len(VIEW.order), "gone": list(gone), "hold": hold}


def read(*statuses: dict[str, Any] | tuple[str, str], stagger: str = "waves") -> FleetRead:
    """A FleetRead of these answers; a (pod, address) pair is a pod that did not answer."""
    answers = tuple(
        Answer(s[0], s[1], None) if isinstance(s, tuple) else Answer(s["pod"], f"10.0.0.{i}:9533", s)
        for i, s in enumerate(statuses)
    )
    return FleetRead(answers[0].pod, answers, stagger, (), BAKE_S, 1.0, 1_800_000_000.0)


def mid_rollout() -> list[dict[str, Any]]:
    """Waves 0 and 1 live on NEW (wave 1 for 4 s of the 10 s bake), waves 2 and 3 waiting."""
    out = []
    for rank, pod in enumerate(VIEW.order):
        if wave_of(rank) == 0:
            out.append(status(pod, NEW, ((OLD, "healthy", 600), (NEW, "healthy", 30)), waves={NEW: wave_doc()}))
        elif wave_of(rank) == 1:
            out.append(status(pod, NEW, ((OLD, "healthy", 600), (NEW, "healthy", 4 + rank)), waves={NEW: wave_doc()}))
        else:
            out.append(status(pod, OLD, ((OLD, "healthy", 600), (NEW, "waiting", 40)), waves={NEW: wave_doc()}))
    return out


def test_each_pods_state_from_its_status() -> None:
    """The state column: from the phase and the newest version's entry, ages by the pod's own clock."""
    assert pod_state(status("web-0"), BAKE_S)[0] == "idle"
    assert pod_state(status("web-0", seen=((OLD, "healthy", 600), (NEW, "waiting", 3))), BAKE_S)[0] == "waiting"
    assert pod_state(status("web-0", seen=((NEW, "validating", 0.1),)), BAKE_S)[0] == "validating"
    baking = status("web-0", NEW, ((NEW, "healthy", 3),), waves={NEW: wave_doc()})
    assert pod_state(baking, BAKE_S)[0] == "baking"
    started = status("web-0", NEW, ((NEW, "healthy", 3),))  # no waves document: not rolled out in waves
    assert pod_state(started, BAKE_S)[0] == "idle"
    assert pod_state(status("web-0", NEW, ((NEW, "healthy", 11),), waves={NEW: wave_doc()}), BAKE_S)[0] == "idle"
    held = status("web-0", seen=((OLD, "healthy", 600), (NEW, "held", 2)), phase="held")
    assert pod_state(held, BAKE_S) == ("held", held["versions"][NEW]["since"])
    refused = status("web-0", seen=((OLD, "healthy", 600), (NEW, "failed", 2)), refused={NEW: Refusal("x", "validate")})
    assert pod_state(refused, BAKE_S)[0] == "refused"
    quarantined = {NEW: Refusal("health 500", "verify")}
    rolled = status("web-0", seen=((OLD, "healthy", 600), (NEW, "failed", 2)), quarantined=quarantined)
    assert pod_state(rolled, BAKE_S)[0] == "rolled_back"
    for phase, shown in (("promoting", "updating"), ("verifying", "updating"), ("degraded", "degraded")):
        assert pod_state(status("web-0", phase=phase), BAKE_S)[0] == shown
    assert pod_state(status("web-0", None, (), phase="starting"), BAKE_S)[0] == "starting"


def test_deferred_and_unconfirmed_versions() -> None:
    """A version put back because the app was not found (`deferred`) is in flight; one live and healthy
    without proof (`unconfirmed`, proof none) is settled: shown as such, not a version in flight."""
    deferred = status("web-0", seen=((OLD, "healthy", 600), (NEW, "deferred", 2)))
    assert pod_state(deferred, BAKE_S)[0] == "deferred" and in_flight({"web-0": deferred}, BAKE_S) == [NEW]
    unconfirmed = status("web-1", NEW, ((OLD, "healthy", 600), (NEW, "unconfirmed", 5)))
    assert pod_state(unconfirmed, BAKE_S)[0] == "unconfirmed" and in_flight({"web-1": unconfirmed}, BAKE_S) == []


def test_a_rollout_in_waves() -> None:
    """Mid-rollout: rows in rollout order with wave and rank, and one line: 3 of 8, wave 2 of 4, bake left."""
    doc = fleet_doc(read(*mid_rollout()))
    assert [e["pod"] for e in doc["pods"]] == list(VIEW.order)
    assert [(e["wave"], e["rank"]) for e in doc["pods"]] == [(wave_of(r), r) for r in range(8)]
    assert [e["state"] for e in doc["pods"]] == ["idle"] + ["baking"] * 2 + ["waiting"] * 5
    assert [e["live"] for e in doc["pods"]] == [NEW] * 3 + [OLD] * 5
    assert doc["pods"][1]["since_s"] == 5.0  # rank 1: healthy for 4 + 1 s by its own clock
    [line] = doc["versions"]
    assert line | {"bake_left_s": None} == {
        "version": NEW,
        "on": 3,
        "of": 8,
        "wave": 2,
        "waves": 4,
        "bake_left_s": None,
        "held": False,
        "why": None,
        "states": {"baking": 2, "idle": 1, "waiting": 5},
    }
    assert line["bake_left_s"] == BAKE_S - 5.0  # the latest of waves 0 and 1 turned healthy 5 s ago
    text = render(doc)
    assert text[-1] == (
        f"version {NEW}: 3 of 8 pods (2 baking, 1 idle, 5 waiting); wave 2 of 4; bake 5.0s left; not held"
    )
    assert text[0].startswith("reload-sidecar fleet: 8 pods (0 unreachable), stagger waves, bake 10s; read from")


def test_no_bake_left_once_the_wave_started_and_all_done_at_the_end() -> None:
    statuses = mid_rollout()
    statuses[3] = status(VIEW.order[3], NEW, ((OLD, "healthy", 600), (NEW, "healthy", 1)), waves={NEW: wave_doc()})
    [line] = fleet_doc(read(*statuses))["versions"]
    assert (line["on"], line["wave"], line["bake_left_s"]) == (4, 2, None)
    baked = mid_rollout()
    for rank in (1, 2):
        baked[rank] = status(
            VIEW.order[rank], NEW, ((OLD, "healthy", 600), (NEW, "healthy", 12)), waves={NEW: wave_doc()}
        )
    doc = fleet_doc(read(*baked))
    assert doc["versions"][0]["bake_left_s"] == 0.0
    assert "; wave 2 of 4; baked; not held" in render(doc)[-1]  # the next wave is about to start
    done = [status(pod, NEW, ((OLD, "healthy", 600), (NEW, "healthy", 2)), waves={NEW: wave_doc()}) for pod in PODS]
    [line] = fleet_doc(read(*done))["versions"]  # every pod baking the last waves: still in flight
    assert (line["on"], line["wave"], line["waves"]) == (8, 4, 4)
    assert "all waves done" in render(fleet_doc(read(*done)))[-1]
    settled = [status(pod, NEW, ((OLD, "healthy", 600), (NEW, "healthy", 60)), waves={NEW: wave_doc()}) for pod in PODS]
    doc = fleet_doc(read(*settled))
    assert doc["versions"] == []
    assert render(doc)[-1] == f"no version in flight: every pod that answered is on {NEW}"


def test_a_held_version_and_a_dead_pod() -> None:
    """The canary rolled back, the others hold it; a pod that did not answer is a row of its own."""
    canary, dead = VIEW.order[0], VIEW.order[5]
    why = "health http://127.0.0.1:8080/health: HTTP 500 after 3 tries, the last at 12:00:00"
    statuses: list[dict[str, Any] | tuple[str, str]] = [
        status(
            canary,
            seen=((OLD, "healthy", 600), (NEW, "failed", 20)),
            quarantined={NEW: Refusal(why, "verify")},
            last_error=f"version {NEW} failed at verify: {why}",
            last_error_at=5000.0 + 137 * PODS.index(canary) - 20,
            waves={NEW: wave_doc(hold="failed here")},
        )
    ]
    for pod in VIEW.order[1:]:
        if pod == dead:
            statuses.append((pod, "10.0.0.9:9533"))
            continue
        hold = f"reported failed by {canary}"
        statuses.append(
            status(pod, seen=((OLD, "healthy", 600), (NEW, "held", 18)), phase="held", waves={NEW: wave_doc(hold)})
        )
    doc = fleet_doc(read(*statuses))
    rows = {e["pod"]: e for e in doc["pods"]}
    assert rows[canary]["state"] == "rolled_back" and rows[canary]["last_error_s"] == 20.0
    assert rows[dead] == {
        "pod": dead,
        "address": "10.0.0.9:9533",
        "reachable": False,
        "state": "unreachable",
        "live": None,
        "version": None,
        "wave": 2,  # where it stands in the order of the version in flight
        "rank": 5,
    }
    assert {e["state"] for e in doc["pods"]} == {"rolled_back", "held", "unreachable"}
    assert doc["unreachable"] == 1
    [line] = doc["versions"]
    assert line["held"] and line["on"] == 0 and line["of"] == 8
    assert line["why"] == f"rolled back on {canary} at verify: {why}"  # whole; the table cuts it
    text = render(doc)
    assert text[-1].startswith(f"version {NEW}: 0 of 8 pods (6 held, 1 rolled_back); HELD: rolled back on {canary} at")
    assert text[-1].endswith("…") and len(text[-1]) < 160
    [dead_row] = [t for t in text if t.startswith(dead)]
    assert dead_row.split()[1:6] == ["-", "unreachable", "2", "5", "-"]
    assert dead_row.endswith("no answer from 10.0.0.9:9533 in 1s")
    [canary_row] = [t for t in text if t.startswith(canary)]
    # the error cut to a few words, the version hash in them to 8 characters (the JSON has it all)
    assert f"20s ago: version {NEW[:8]} failed at verify: health" in canary_row and "…" in canary_row


@pytest.mark.parametrize("stagger", ["random", "ordinal", "none"])
def test_without_waves_version_and_state_per_pod(stagger: str) -> None:
    statuses = [
        status("web-0", NEW, ((OLD, "healthy", 600), (NEW, "healthy", 1))),
        status("web-1", OLD, ((OLD, "healthy", 600), (NEW, "waiting", 3))),
        status("web-2", OLD, ((OLD, "healthy", 600), (NEW, "refused", 3))),
    ]
    statuses[2] = status(
        "web-2", OLD, ((OLD, "healthy", 600), (NEW, "failed", 3)), refused={NEW: Refusal("a.yaml:1:1: bad", "validate")}
    )
    doc = fleet_doc(read(*statuses, stagger=stagger))
    assert [(e["pod"], e["state"], e["wave"], e["rank"]) for e in doc["pods"]] == [
        ("web-0", "idle", None, None),
        ("web-1", "waiting", None, None),
        ("web-2", "refused", None, None),
    ]
    [line] = doc["versions"]
    assert (line["on"], line["wave"], line["bake_left_s"], line["held"]) == (1, None, None, False)
    assert render(doc)[-1] == (
        f"version {NEW}: 1 of 3 pods (1 idle, 1 refused, 1 waiting); refused on web-2 at validate: a.yaml:1:1: bad"
    )
    assert render(doc)[0].startswith(f"reload-sidecar fleet: 3 pods (0 unreachable), stagger {stagger}; read from")


def test_a_pod_that_has_not_seen_the_change_is_no_version_in_flight() -> None:
    """Only versions some pod is not idle on are in flight: a straggler idle on the old one adds no line."""
    statuses = {
        "web-0": status("web-0", NEW, ((OLD, "healthy", 600), (NEW, "waiting", 1))),
        "web-1": status("web-1"),
    }
    assert in_flight(statuses, BAKE_S) == [NEW]
    newer = "9999999999999999"
    statuses["web-1"] = status("web-1", OLD, ((OLD, "healthy", 600), (newer, "validating", 0.5)))
    assert in_flight(statuses, BAKE_S) == [newer, NEW]  # newest first


def test_answers_merged_by_pod_name() -> None:
    """This pod first; read again through its own IP it counts once; a silent address is named by /peers
    if it can be, else shown by its address; an answer beats a silence for the same name."""
    own = Answer("web-0", "127.0.0.1:9533", {"pod": "web-0"})
    got = merge_answers(
        own,
        [
            (("10.0.0.1", 9533), {"pod": "web-0"}),
            (("10.0.0.2", 9533), None),
            (("10.0.0.3", 9533), None),
            (("10.0.0.4", 9533), {"pod": "web-2"}),
            (("10.0.0.5", 9533), {"no": "pod"}),
        ],
        {("10.0.0.2", 9533): "web-1", ("10.0.0.3", 9533): "web-2"},
    )
    assert [(a.pod, a.address, a.status is not None) for a in got] == [
        ("web-0", "127.0.0.1:9533", True),
        ("web-1", "10.0.0.2:9533", False),
        ("web-2", "10.0.0.4:9533", True),
        ("10.0.0.5:9533", "10.0.0.5:9533", False),
    ]
    silent_own = merge_answers(Answer("web-0", "127.0.0.1:9533", None), [(("10.0.0.1", 9533), {"pod": "web-0"})], {})
    assert [(a.pod, a.address) for a in silent_own] == [("web-0", "10.0.0.1:9533")]


def test_words_and_durations() -> None:
    assert few_words(None) is None and few_words("  ") is None
    assert few_words("a\n  b") == "a b"
    assert few_words("x" * 60) == "x" * 47 + "…"
    assert [duration(s) for s in (None, 0.44, 9.96, 12.3, 192, 7300, 200000)] == [
        "-",
        "0.4s",
        "10.0s",
        "12s",
        "3m12s",
        "2h1m",
        "2d7h",
    ]


def test_unresolved_peers_are_said() -> None:
    r = read(status("web-0"))
    doc = fleet_doc(FleetRead(r.me, r.answers, "waves", ("web.default.svc:9533",), BAKE_S, 1.0, r.read_at))
    assert "RELOAD_PEERS: web.default.svc:9533 did not resolve in 1s" in render(doc)


def test_the_newest_version_is_the_last_to_change_not_the_last_key() -> None:
    """/status sorts its keys: a version whose hash sorts first can still be the one the pod is busy with."""
    first = "0000000000000000"
    doc = status(
        "web-0", NEW, ((NEW, "healthy", 600), (first, "failed", 5)), quarantined={first: Refusal("x", "verify")}
    )
    assert list(doc["versions"]) == [first, NEW]
    assert newest_version(doc) == (first, doc["versions"][first])
    assert pod_state(doc, BAKE_S)[0] == "rolled_back"


def test_the_order_without_the_pods_left_out_and_none_when_no_document_agrees() -> None:
    """A pod the documents report left out has no rank (the others are ranked without it); documents
    built on an order the view cannot rebuild give no wave or rank rather than a guess."""
    out = VIEW.order[3]
    smaller = WaveView.of(NEW, frozenset(PODS) - {out})
    doc = {"view": smaller.key, "n": 7, "gone": [out], "hold": None}
    statuses = [
        status(pod, OLD, ((OLD, "healthy", 600), (NEW, "waiting", 5)), waves={NEW: doc}) for pod in PODS if pod != out
    ]
    statuses.append(status(out, OLD, ((OLD, "healthy", 600), (NEW, "waiting", 5))))
    rows = fleet_doc(read(*statuses))["pods"]
    assert [r["pod"] for r in rows] == [*smaller.order, out]
    assert [r["rank"] for r in rows] == [*range(7), None]
    assert order_of(NEW, PODS, {s["pod"]: s for s in statuses}) == smaller
    strange = {**doc, "view": "0123456789abcdef"}
    others = {pod: status(pod, OLD, ((NEW, "waiting", 5),), waves={NEW: strange}) for pod in PODS}
    assert order_of(NEW, PODS, others) is None
    assert {r["rank"] for r in fleet_doc(read(*others.values()))["pods"]} == {None}


def test_two_versions_in_flight_each_pod_says_which_one_it_is_about() -> None:
    """A newer version pushed while one still rolls: a line each, newest first; a pod's state names its version."""
    newer = "9999999999999999"
    statuses = mid_rollout()
    statuses[-1] = status(VIEW.order[-1], OLD, ((OLD, "healthy", 600), (NEW, "waiting", 40), (newer, "validating", 1)))
    doc = fleet_doc(read(*statuses))
    assert [v["version"] for v in doc["versions"]] == [newer, NEW]
    text = render(doc)
    [row] = [t for t in text if t.startswith(VIEW.order[-1])]
    assert row.split()[1:3] == [OLD, "validating"] and row.split()[3] == newer[:8]
    [waiting] = [t for t in text if t.startswith(VIEW.order[3])]
    assert waiting.split()[2:4] == ["waiting", NEW[:8]]


@contextlib.asynccontextmanager
async def sidecar_api(pod: str, peers: dict[str, list[Any]] | None = None) -> AsyncIterator[int]:
    """The sidecar's real HTTP API for a pod named `pod` on 127.0.0.1 (any port), `/peers` serving `peers`."""
    state = State(pod=pod, phase="idle", current=OLD, last_good=OLD, ready=True)
    state.mark(OLD, "healthy")
    doc = {"pod": pod, "peers": peers or {}}
    runner, port = await start_server(make_app(Api(state, Metrics(), lambda: True, peers=lambda: doc)), "127.0.0.1", 0)
    try:
        yield port
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def silent() -> AsyncIterator[int]:
    """A port that accepts connections and never answers (a frozen process)."""
    held: list[asyncio.StreamWriter] = []

    async def keep(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(keep, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(20)  # hang protection: a read or a resolution not bounded
async def test_reader_names_pods_by_status_then_by_peers_and_bounds_every_read() -> None:
    """This pod, a peer answering, a peer named by /peers that refuses connections, one that never answers
    and an address nobody named: every one a row; the silent one costs one timeout, not a hang."""
    dead, frozen_name = closed_port(), "web-3"
    async with silent() as frozen, sidecar_api("web-1") as one:
        peers = {"web-0": ["127.0.0.1", 0], "web-1": ["127.0.0.1", one], "web-2": ["127.0.0.1", dead]}
        peers[frozen_name] = ["127.0.0.1", frozen]
        async with sidecar_api("web-0", peers) as own, aiohttp.ClientSession() as session:
            stray = closed_port()
            listed = [("127.0.0.1", one), ("127.0.0.1", own), ("127.0.0.1", stray), ("nosuch.invalid", 9533)]
            started = time.monotonic()
            answers, unresolved = await read_fleet(DaemonResolving(session), ("127.0.0.1", own), listed, "?", 0.5)
            took = time.monotonic() - started
    assert answers[0].pod == "web-0"  # this pod first; the answer names it: "?" (RELOAD_POD_NAME) is not used
    assert sorted((a.pod, a.address, a.status is not None) for a in answers) == [
        (f"127.0.0.1:{stray}", f"127.0.0.1:{stray}", False),
        ("web-0", f"127.0.0.1:{own}", True),
        ("web-1", f"127.0.0.1:{one}", True),
        ("web-2", f"127.0.0.1:{dead}", False),
        (frozen_name, f"127.0.0.1:{frozen}", False),
    ]
    assert unresolved == ["nosuch.invalid:9533"]
    assert took < 30, "hang protection only: one timeout for the silent pod is the expected cost"


@pytest.mark.timeout(20)  # hang protection: a read or a resolution not bounded
async def test_a_resolver_that_never_answers_costs_one_timeout() -> None:
    """RELOAD_PEERS that does not resolve in time is reported and skipped; this pod is still shown."""

    class Stuck(DaemonResolving):
        async def resolve(self, host: str, port: int) -> list[tuple[str, int]]:
            await asyncio.Event().wait()
            raise AssertionError("never")

    async with sidecar_api("web-0") as own, aiohttp.ClientSession() as session:
        answers, unresolved = await read_fleet(Stuck(session), ("127.0.0.1", own), [("web.ns.svc", 9533)], "web-0", 0.3)
    assert [(a.pod, a.status is not None) for a in answers] == [("web-0", True)]
    assert unresolved == ["web.ns.svc:9533"]


@pytest.mark.timeout(20)  # hang protection: a read or a resolution not bounded
async def test_names_resolve_in_daemon_threads() -> None:
    async with aiohttp.ClientSession() as session:
        assert ("127.0.0.1", 9533) in await DaemonResolving(session).resolve("localhost", 9533)
        with pytest.raises(OSError):
            await DaemonResolving(session).resolve("nosuch.invalid", 9533)


def test_a_short_terminal_cuts_the_last_rows_never_the_version_lines() -> None:
    doc = fleet_doc(read(*mid_rollout()))
    full = render(doc)
    assert len(full) == 2 + 9 + 2  # header, blank; column heads and 8 rows; blank, the version line
    assert render(doc, height=len(full)) == full
    short = render(doc, height=10)
    assert len(short) == 10
    assert short[2:7] == full[2:7]  # the column heads and the first rows, in rollout order
    assert short[7] == "... 4 more pods (a taller terminal, or --json, shows them)"
    assert short[-1] == full[-1] and short[-1].startswith(f"version {NEW}: 3 of 8 pods")
