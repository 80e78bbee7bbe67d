"""`reload-sidecar fleet`: every pod of the workload at a glance, read from any one of them.

Reads this pod's own sidecar (`/status` and `/peers` on `RELOAD_LISTEN`), the addresses `RELOAD_PEERS`
resolves to and each peer's `/status`: all in parallel, each read bounded by the peer timeout, so a dead
pod shows as unreachable and never holds up the view. Pure functions then turn the documents into one
entry per pod and one per version in flight (`fleet_doc`: what `--json` prints) and into the table
(`render`). Read-only: it only GETs what the sidecars already serve.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

import aiohttp

from .peers import Address, HttpTransport, Transport, _named_addresses, wave_doc, where
from .settings import Settings
from .stagger import WaveView, default_peer_timeout_s, wave_of

__all__ = ["Answer", "DaemonResolving", "FleetRead", "fleet_doc", "read_fleet", "render", "run_fleet"]

_PARALLEL = 128  # reads under way at once (a fleet of 1,000 pods is read in a few batches, never 1,000 sockets)
_ERROR_CHARS = 48  # "last error in a few words"
_WHY_CHARS = 64  # why a version is held, on its line
_HASH = re.compile(r"\b([0-9a-f]{8})[0-9a-f]{8}\b")  # a version hash (snapshot.py: 16 hex digits)
# Version states in a pod's /status `versions` that mean it has not gone with the version yet.
_PENDING = ("validating", "waiting")


@dataclass(frozen=True, slots=True)
class Answer:
    """One pod's `/status` as read (None: no answer in time), its name and where it was read."""

    pod: str  # the name its /status reports, the name /peers gave its address, or the address itself
    address: str
    status: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class FleetRead:
    """Everything one look at the fleet read, and how it was configured."""

    me: str
    answers: tuple[Answer, ...]
    stagger: str  # RELOAD_STAGGER's mode: waves, random, ordinal or none
    unresolved: tuple[str, ...]  # RELOAD_PEERS entries that did not resolve
    bake_s: float
    timeout_s: float
    read_at: float


# ---- reading ---------------------------------------------------------------------------------------


def own_address(listen: tuple[str, int]) -> Address:
    """Where this pod's sidecar answers: its `RELOAD_LISTEN`, the wildcard read as loopback."""
    host, port = listen
    return ({"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host), port)  # noqa: S104


async def read_fleet(
    transport: Transport, own: Address, peers: Sequence[Address], me: str, timeout_s: float
) -> tuple[list[Answer], list[str]]:
    """This pod's sidecar first, then every address `peers` resolve to or its `/peers` names, each read
    once; at most one timeout for the resolution and one per batch of `_PARALLEL` reads. Returns the
    answers and the `peers` entries that did not resolve."""
    limit = asyncio.Semaphore(_PARALLEL)

    async def get(address: Address, path: str) -> dict[str, Any] | None:
        async with limit:
            return await transport.get(address, path, timeout_s)

    async def resolve(host: str, port: int) -> list[Address] | None:
        try:
            return await asyncio.wait_for(transport.resolve(host, port), timeout_s)
        except (OSError, TimeoutError):
            return None  # unresolvable now: the pods /peers names are still read

    own_status, own_peers, *resolved = await asyncio.gather(
        get(own, "/status"), get(own, "/peers"), *(resolve(host, port) for host, port in peers)
    )
    if own_status is not None and isinstance(own_status.get("pod"), str):
        me = own_status["pod"]
    else:
        own_status = None
    named = _named_addresses(own_peers)
    found = {a for addresses in resolved for a in addresses or ()} | set(named)
    others = sorted(found - {a for a, name in named.items() if name == me})
    statuses = await asyncio.gather(*(get(a, "/status") for a in others))
    answers = merge_answers(Answer(me, where(own), own_status), zip(others, statuses, strict=True), named)
    return answers, [where(peer) for peer, addresses in zip(peers, resolved, strict=True) if addresses is None]


class DaemonResolving(HttpTransport):
    """HTTP reads, and names resolved in daemon threads: a resolver that hangs past the timeout is given
    up on and never holds up the command's exit (the event loop's executor threads are waited for)."""

    async def resolve(self, host: str, port: int) -> list[Address]:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[list[Address]] = loop.create_future()

        def settle(result: list[Address] | None, error: OSError | None) -> None:
            if done.done():  # given up on meanwhile (cancelled by the timeout)
                return
            if error is not None:
                done.set_exception(error)
            else:
                done.set_result(result or [])

        def work() -> None:
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
                answer: tuple[list[Address] | None, OSError | None] = ([(str(i[4][0]), port) for i in infos], None)
            except OSError as e:
                answer = (None, e)
            try:
                loop.call_soon_threadsafe(settle, *answer)
            except RuntimeError:  # the loop is closed: the command is done without this answer
                pass

        threading.Thread(target=work, name=f"resolve-{host}", daemon=True).start()
        return await done


def merge_answers(
    own: Answer, read: Iterable[tuple[Address, dict[str, Any] | None]], named: Mapping[Address, str]
) -> list[Answer]:
    """One answer per pod, this pod first: named by its `/status`, else by `/peers`, else by its address.
    A pod read twice (this pod through its own IP too) counts once, and an answer beats a silence."""
    by_pod: dict[str, Answer] = {}

    def put(answer: Answer) -> None:
        known = by_pod.get(answer.pod)
        if known is None or (known.status is None and answer.status is not None):
            by_pod[answer.pod] = answer

    put(own)
    for address, status in read:
        name = status.get("pod") if status is not None else None
        if isinstance(name, str):
            put(Answer(name, where(address), status))
        else:
            put(Answer(named.get(address, where(address)), where(address), None))
    return list(by_pod.values())


# ---- one pod ---------------------------------------------------------------------------------------


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _ago(status: Mapping[str, Any], t: Any) -> float | None:
    """Seconds since `t`, both by the pod's own clock (clocks need not agree across pods)."""
    now, then = _num(status.get("now")), _num(t)
    return None if now is None or then is None else max(0.0, now - then)


def newest_version(status: Mapping[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """The version whose state changed last on this pod (the one it is busy with), and its entry.

    By `since`: `/status` serves `versions` with its keys sorted, not in the order they came.
    """
    versions = status.get("versions")
    entries = (
        [(_num(e.get("since")) or 0.0, v, e) for v, e in versions.items() if isinstance(e, dict)]
        if isinstance(versions, dict)
        else []
    )
    if not entries:
        return None, {}
    _, version, entry = max(entries, key=lambda item: item[0])
    return str(version), entry


def pod_state(status: Mapping[str, Any], bake_s: float) -> tuple[str, Any]:
    """(state, since: a time by the pod's clock) of one pod, from its `/status`.

    idle, validating, waiting (for its wave or its delay), updating (promoting, reloading, verifying),
    baking (healthy for less than the bake time on a version it rolled out in waves, not the one it
    started on), held, refused (by validation), rolled_back (the version failed here), rolling_back,
    deferred (the app's process not found: retried), unconfirmed (live and healthy, not proven: proof
    none), degraded, starting.
    """
    phase = status.get("state")
    version, entry = newest_version(status)
    kind, since = entry.get("state"), entry.get("since")
    if phase == "degraded" or phase == "rolling_back":
        return str(phase), status.get("last_error_at")
    if phase in ("promoting", "reloading", "verifying"):
        return "updating", since
    if kind == "held" or phase == "held":
        return "held", since
    if kind == "failed":
        return ("rolled_back" if version in (status.get("quarantined") or {}) else "refused"), since
    if kind in _PENDING or kind == "deferred":  # deferred: the app's process was not found; retried
        return str(kind), since
    if kind == "unconfirmed" and version == status.get("current"):  # live, healthy, not proven (proof none)
        return "unconfirmed", since
    if kind == "healthy" and version == status.get("current"):
        age = _ago(status, since)
        waved = version is not None and wave_doc(status, version) is not None
        return ("baking" if waved and age is not None and age < bake_s else "idle"), since
    if phase == "starting" or version is None:
        return ("starting" if phase == "starting" else "idle"), status.get("started_at")
    return "idle", since


def few_words(text: Any, chars: int = _ERROR_CHARS) -> str | None:
    """`text` on one line, cut to `chars` characters."""
    if not isinstance(text, str) or not text.strip():
        return None
    flat = " ".join(text.split())
    return flat if len(flat) <= chars else flat[: chars - 1] + "…"


def pod_entry(answer: Answer, views: Mapping[str, WaveView], bake_s: float, newest: str | None) -> dict[str, Any]:
    """One row of the table, as `--json` prints it: wave and rank in the order of the version this pod is
    busy with (a pod that did not answer: of `newest`, the newest version in flight)."""
    entry: dict[str, Any] = {"pod": answer.pod, "address": answer.address, "reachable": answer.status is not None}
    st = answer.status
    version = newest_version(st)[0] if st is not None else newest
    view = views.get(version) if version is not None else None
    rank = view.rank.get(answer.pod) if view is not None else None
    entry |= {"wave": wave_of(rank) if rank is not None else None, "rank": rank}
    if st is None:
        return entry | {"state": "unreachable", "live": None, "version": None}
    state, since = pod_state(st, bake_s)
    return entry | {
        "state": state,
        "live": st.get("current"),
        "version": version,
        "since": since,
        "since_s": _ago(st, since),
        "last_error": st.get("last_error"),
        "last_error_s": _ago(st, st.get("last_error_at")),
    }


# ---- versions in flight ----------------------------------------------------------------------------


def _healthy_on(status: Mapping[str, Any], version: str) -> float | None:
    """Seconds `version` has been live and healthy on this pod (its clock), None if it is not."""
    entry = (status.get("versions") or {}).get(version)
    if status.get("current") != version or not isinstance(entry, dict) or entry.get("state") != "healthy":
        return None
    return _ago(status, entry.get("since")) or 0.0


def in_flight(statuses: Mapping[str, Mapping[str, Any]], bake_s: float) -> list[str]:
    """Versions some pod saw last and is not idle on (waiting, baking, held, refused ...), newest first."""
    seen_s: dict[str, float] = {}  # version -> seconds since the first pod that has it as its newest saw it
    for st in statuses.values():
        version, entry = newest_version(st)
        if version is not None and pod_state(st, bake_s)[0] not in ("idle", "unconfirmed"):  # settled
            seen_s[version] = max(seen_s.get(version, 0.0), _ago(st, entry.get("since")) or 0.0)
    return sorted(seen_s, key=lambda v: seen_s[v])


def _gone(statuses: Iterable[Mapping[str, Any]], version: str) -> set[str]:
    """Pods the waves documents of `version` report left out of the order."""
    out: set[str] = set()
    for st in statuses:
        doc = wave_doc(st, version)
        if doc is not None and isinstance(doc.get("gone"), list):
            out.update(p for p in doc["gone"] if isinstance(p, str))
    return out


def order_of(version: str, pods: Sequence[str], statuses: Mapping[str, Mapping[str, Any]]) -> WaveView | None:
    """The order the pods use for `version`: the one whose key their waves documents name most, among
    every known pod and those minus the ones reported left out or silent; None when no document names
    any of these (then no wave or rank is shown rather than a guess)."""
    keys = Counter(
        doc["view"] for st in statuses.values() if (doc := wave_doc(st, version)) is not None and doc.get("view")
    )
    if not keys:
        return None
    gone = _gone(statuses.values(), version)
    silent = {pod for pod in pods if pod not in statuses}
    candidates = [frozenset(pods) - gone, frozenset(pods) - gone - silent, frozenset(pods), frozenset(pods) - silent]
    views = [WaveView.of(version, c) for c in candidates if c]
    best = max(views, key=lambda view: keys.get(view.key, 0), default=None)
    return best if best is not None and keys.get(best.key) else None


def _failed(version: str, statuses: Mapping[str, Mapping[str, Any]]) -> str | None:
    """Where `version` failed first (by pod name), at which stage and why (the table cuts it to a few words)."""
    for pod, st in sorted(statuses.items(), key=lambda item: _natural(item[0])):
        for kind, what in (("quarantined", "rolled back on"), ("refused", "refused on")):
            why = (st.get(kind) or {}).get(version)
            if isinstance(why, dict):
                return f"{what} {pod} at {why.get('stage')}: {' '.join(str(why.get('reason')).split())}"
    return None


def _held(version: str, statuses: Mapping[str, Mapping[str, Any]]) -> str | None:
    """Why the fleet holds `version` (a waves document's hold, or the pods holding it), None if nobody does."""
    for st in statuses.values():
        doc = wave_doc(st, version)
        if doc is not None and doc.get("hold"):
            return str(doc["hold"])
    holding = sorted((pod for pod, st in statuses.items() if version in (st.get("held") or ())), key=_natural)
    return f"held by {', '.join(holding)}" if holding else None


def version_entry(
    version: str,
    pods: Sequence[str],
    statuses: Mapping[str, Mapping[str, Any]],
    view: WaveView | None,
    bake_s: float,
) -> dict[str, Any]:
    """One line per version in flight: how many pods run it, which wave is under way, bake left, hold."""
    healthy = {pod: t for pod, st in statuses.items() if (t := _healthy_on(st, version)) is not None}
    held, failed = _held(version, statuses), _failed(version, statuses)
    states = Counter(pod_state(st, bake_s)[0] for st in statuses.values() if newest_version(st)[0] == version)
    entry: dict[str, Any] = {
        "version": version,
        "on": len(healthy),
        "of": len(pods),
        "held": held is not None,
        "why": failed or held,
        "states": dict(sorted(states.items())),
        "wave": None,
        "waves": None,
        "bake_left_s": None,
    }
    if view is not None:
        entry.update(_wave_progress(view, healthy, bake_s))
    return entry


def _wave_progress(view: WaveView, healthy: Mapping[str, float], bake_s: float) -> dict[str, Any]:
    """The first wave not all healthy (== waves when every one is) and the bake time its start waits for."""
    wave = next(
        (w for w in range(view.waves) if not all(p in healthy for p in view.order[(1 << w) - 1 : (2 << w) - 1])),
        view.waves,
    )
    lower = [healthy[p] for p in view.order[: (1 << wave) - 1]]
    started = any(p in healthy for p in view.order[(1 << wave) - 1 : (2 << wave) - 1])
    left = bake_s - min(lower) if lower and wave < view.waves and not started else None
    return {"wave": wave, "waves": view.waves, "bake_left_s": max(0.0, left) if left is not None else None}


# ---- the document and the table ----------------------------------------------------------------------


def fleet_doc(read: FleetRead) -> dict[str, Any]:
    """What `fleet --json` prints, and what the table shows."""
    waves = read.stagger == "waves"
    statuses = {a.pod: a.status for a in read.answers if a.status is not None}
    pods = [a.pod for a in read.answers]
    flying = in_flight(statuses, read.bake_s)
    views = {v: view for v in flying if (view := order_of(v, pods, statuses)) is not None} if waves else {}
    entries = [pod_entry(a, views, read.bake_s, flying[0] if flying else None) for a in read.answers]
    first = views.get(flying[0]) if flying else None
    entries.sort(key=lambda e: (first.rank.get(e["pod"], len(pods)) if first else 0, _natural(e["pod"])))
    return {
        "read_from": read.me,
        "read_at": datetime.fromtimestamp(read.read_at, UTC).isoformat(timespec="seconds"),
        "stagger": read.stagger,
        "bake_s": read.bake_s if waves else None,
        "timeout_s": read.timeout_s,
        "pods": entries,
        "unreachable": sum(not e["reachable"] for e in entries),
        "unresolved": list(read.unresolved),
        "versions": [version_entry(v, pods, statuses, views.get(v), read.bake_s) for v in flying],
    }


def _natural(name: str) -> list[Any]:
    """`web-2` before `web-10`."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name)]


def duration(seconds: float | None) -> str:
    """12.3 -> '12s', 192 -> '3m12s', 0.4 -> '0.4s'."""
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.1f}s"
    s = int(seconds)
    for unit, size, sub, subsize in (("d", 86400, "h", 3600), ("h", 3600, "m", 60), ("m", 60, "s", 1)):
        if s >= size:
            return f"{s // size}{unit}{(s % size) // subsize}{sub}"
    return f"{s}s"


def _row(e: Mapping[str, Any], timeout_s: float, several: bool) -> list[str]:
    """One pod's row; with several versions in flight, the state names the version it is about."""
    where = ["-" if e[k] is None else str(e[k]) for k in ("wave", "rank")]
    if not e["reachable"]:
        return [e["pod"], "-", "unreachable", *where, "-", f"no answer from {e['address']} in {timeout_s:g}s"]
    error = few_words(_short(e["last_error"])) if e["last_error"] else None
    if error is not None:
        error = f"{duration(e['last_error_s'])} ago: {error}"
    about = f" {e['version'][:8]}" if several and e["version"] and e["version"] != e["live"] else ""
    since = "-" if e["since_s"] is None else f"{duration(e['since_s'])} ago"
    return [e["pod"], e["live"] or "-", e["state"] + about, *where, since, error or "-"]


def version_line(v: Mapping[str, Any]) -> str:
    states = ", ".join(f"{n} {s}" for s, n in v["states"].items())
    parts = [f"{v['on']} of {v['of']} pods" + (f" ({states})" if states else "")]
    if v["waves"] is not None and not v["held"]:  # a held version goes no further: its wave says nothing
        parts.append("all waves done" if v["wave"] >= v["waves"] else f"wave {v['wave']} of {v['waves']}")
    if v["bake_left_s"] is not None and not v["held"]:
        parts.append(f"bake {duration(v['bake_left_s'])} left" if v["bake_left_s"] > 0 else "baked")
    why = few_words(_short(v["why"]), _WHY_CHARS) if v["why"] else None
    parts.append(f"HELD: {why}" if v["held"] else (why or "not held"))
    return f"version {v['version']}: {'; '.join(parts)}"


def _short(text: str) -> str:
    """Version hashes cut to 8 characters, so a few words say more."""
    return _HASH.sub(r"\1", text)


def render(doc: Mapping[str, Any], height: int | None = None) -> list[str]:
    """The table and the version lines, as printed; at most `height` lines (a terminal's): the last pods'
    rows give way first, so the version lines always show."""
    head = ["POD", "LIVE", "STATE", "WAVE", "RANK", "SINCE", "LAST ERROR"]
    rows = [head] + [_row(e, doc["timeout_s"], len(doc["versions"]) > 1) for e in doc["pods"]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head) - 1)]
    stagger = doc["stagger"] + (f", bake {doc['bake_s']:g}s" if doc["bake_s"] is not None else "")
    top = [
        f"reload-sidecar fleet: {len(doc['pods'])} pods ({doc['unreachable']} unreachable), stagger {stagger}; "
        f"read from {doc['read_from']} at {doc['read_at'][11:19]} UTC",
        "",
    ]
    table = ["  ".join([*(c.ljust(w) for c, w in zip(r, widths, strict=False)), r[-1]]).rstrip() for r in rows]
    bottom = [""]
    if doc["unresolved"]:
        bottom.append(f"RELOAD_PEERS: {', '.join(doc['unresolved'])} did not resolve in {doc['timeout_s']:g}s")
    lives = {e["live"] for e in doc["pods"] if e["reachable"] and e["live"]}
    if doc["versions"]:
        bottom += [version_line(v) for v in doc["versions"]]
    elif len(lives) == 1:
        bottom.append(f"no version in flight: every pod that answered is on {lives.pop()}")
    else:
        bottom.append("no version in flight")
    room = len(table) if height is None else height - len(top) - len(bottom)
    if len(table) > room:
        keep = max(2, room - 1)  # the column heads and one pod at least, then the line saying what is cut
        table = [*table[:keep], f"... {len(table) - keep} more pods (a taller terminal, or --json, shows them)"]
    return top + table + bottom


# ---- the command -----------------------------------------------------------------------------------


async def _look(settings: Settings, transport: Transport, timeout_s: float) -> FleetRead:
    me = settings.pod_name or os.uname().nodename
    answers, unresolved = await read_fleet(transport, own_address(settings.listen), settings.peers, me, timeout_s)
    return FleetRead(
        me, tuple(answers), settings.stagger.mode, tuple(unresolved), settings.bake_s, timeout_s, time.time()
    )


def _frame(doc: Mapping[str, Any], as_json: bool, height: int | None = None) -> str:
    return json.dumps(doc, sort_keys=True) if as_json else "\n".join(render(doc, height))


async def _fleet(settings: Settings, *, watch: bool, as_json: bool, interval_s: float, out: TextIO) -> int:
    timeout_s = settings.peer_timeout_s or default_peer_timeout_s(settings.bake_s)
    tty = watch and not as_json and out.isatty()
    connector = aiohttp.TCPConnector(limit=_PARALLEL)
    async with aiohttp.ClientSession(connector=connector) as session:
        transport = DaemonResolving(session)
        first = True
        while True:
            doc = fleet_doc(await _look(settings, transport, timeout_s))
            if tty:  # drawn over the last frame: cursor home, each line cut to the width and cleared after
                width, height = shutil.get_terminal_size()
                lines = _frame(doc, as_json, height - 1).splitlines()
                home = "\x1b[2J\x1b[H" if first else "\x1b[H"
                out.write(home + "".join(line[:width] + "\x1b[K\n" for line in lines) + "\x1b[J")
            else:
                out.write(_frame(doc, as_json) + ("\n\n" if watch and not as_json else "\n"))
            out.flush()
            if not watch:
                return 0
            first = False
            await asyncio.sleep(interval_s)


def run_fleet(settings: Settings, *, watch: bool = False, as_json: bool = False, interval_s: float = 1.0) -> int:
    """`reload-sidecar fleet`: print the fleet once, or redraw it every `interval_s` until Ctrl-C."""
    try:
        return asyncio.run(_fleet(settings, watch=watch, as_json=as_json, interval_s=interval_s, out=sys.stdout))
    except KeyboardInterrupt:
        return 0
