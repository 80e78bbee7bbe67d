"""Read the other sidecars of the workload: addresses from `RELOAD_PEERS`, identities from their `/status`.

A peer is known by the pod name its `/status` reports, never by its address (several pods may share
an IP, e.g. in tests on loopback). Who the peers are (the membership) is refreshed by `refresh()`,
which the waves gate calls only while a version is pending and then only every few rounds: it resolves
`RELOAD_PEERS` once and learns the names of addresses it has not seen before, in bulk from one peer's
`/peers` (its own address -> name map) and then a bounded number of `/status` reads per refresh.

`read(names)` reads just the named peers (the waves gate's tree neighbours); a peer that fails to answer
for `forget_after_s` is `gone()`. A listed address not named yet still counts (`unnamed()`): the gate
counts it in the fleet's size, as a pod that did not answer, so a pod that cannot name its peers (cut
off before it learned them) never takes itself for the whole fleet. The names learnt are kept in a file
(`names_file`, in the target dir next to the state file) for the next life of the sidecar.

The transport (HTTP, or a simulated network in bench/fleet_sim.py) and the wall clock are injected,
so the same code runs against real sidecars and simulated ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import random
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import structlog

__all__ = ["NAMES_FILE", "Address", "Fleet", "HttpTransport", "PeerView", "Transport", "wave_doc", "where"]

log = structlog.get_logger("peers")

Address = tuple[str, int]
NAMES_FILE = "..reload-sidecar-peers.json"  # in the target dir: the peers' names, for the next life


def where(address: Address) -> str:
    """`host:port`, an IPv6 host in brackets."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def wave_doc(status: Mapping[str, Any], version: str) -> dict[str, Any] | None:
    """A `/status` document's waves document for `version` (stagger.py publishes it), if any."""
    docs = status.get("waves")
    doc = docs.get(version) if isinstance(docs, dict) else None
    return doc if isinstance(doc, dict) else None


@dataclass(frozen=True, slots=True)
class PeerView:
    """One peer's `/status` as last read, and when (by our own wall clock)."""

    pod: str
    status: dict[str, Any]
    seen_at: float

    def version_state(self, version: str) -> tuple[str, float] | None:
        """(state, seconds in that state by the peer's own clock) for `version`, if the peer knows it."""
        entry = self.status.get("versions", {}).get(version)
        if not isinstance(entry, dict):
            return None
        try:
            since = float(entry.get("since", 0.0))
            now = float(self.status.get("now", since))
        except (TypeError, ValueError):
            return None
        return str(entry.get("state")), max(0.0, now - since)

    def failed(self, version: str) -> bool:
        state = self.version_state(version)
        return version in self.status.get("quarantined", {}) or (state is not None and state[0] == "failed")

    def holds(self, version: str) -> bool:
        """The peer holds `version` itself, or its waves document says the fleet holds it."""
        state = self.version_state(version)
        if state is not None and state[0] == "held":
            return True
        doc = self.wave_doc(version)
        return bool(doc and doc.get("hold"))

    def wave_doc(self, version: str) -> dict[str, Any] | None:
        """The peer's waves document for `version` (stagger.py publishes it), if any."""
        return wave_doc(self.status, version)

    def local_time(self, t: Any) -> float | None:
        """A time the peer wrote by its own clock, as our clock reads it (clocks need not agree across pods)."""
        try:
            return float(t) - float(self.status["now"]) + self.seen_at
        except (KeyError, TypeError, ValueError):
            return None


class Transport(Protocol):
    """How peers are found and read: HTTP in a pod, an in-process network in the fleet simulation."""

    async def resolve(self, host: str, port: int) -> list[Address]:
        """Addresses behind `host:port` (raises OSError when it cannot be resolved)."""
        ...

    async def get(self, address: Address, path: str, timeout_s: float) -> dict[str, Any] | None:
        """GET `path` from the peer at `address`: the JSON object it answered, or None (error, timeout)."""
        ...


class HttpTransport:
    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def resolve(self, host: str, port: int) -> list[Address]:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return [(str(info[4][0]), port) for info in infos]

    async def get(self, address: Address, path: str, timeout_s: float) -> dict[str, Any] | None:
        url = f"http://{where(address)}{path}"
        try:
            async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
                if resp.status != 200:
                    return None
                doc = await resp.json(content_type=None)
                return doc if isinstance(doc, dict) else None
        except (TimeoutError, aiohttp.ClientError, ValueError):
            return None


class Fleet:
    """Membership (pod name <-> address) and the latest view of each peer read."""

    def __init__(
        self,
        transport: Transport,
        peers: tuple[Address, ...],
        me: str,
        *,
        timeout_s: float = 1.0,
        forget_after_s: float = 10.0,
        learn_per_round: int = 16,
        on_requests: Callable[[int], object] | None = None,
        clock: Callable[[], float] = time.time,
        names_file: Path | None = None,
    ) -> None:
        self.transport, self.peers, self.me = transport, peers, me
        self.timeout_s, self.forget_after_s, self.learn_per_round = timeout_s, forget_after_s, learn_per_round
        self.on_requests = on_requests  # told how many peer reads each call made (a metric)
        self.clock = clock
        self.views: dict[str, PeerView] = {}
        # Replaced, never mutated, so many Fleets may share one map (the simulation seeds them that way).
        self.names: Mapping[Address, str] = load_names(names_file) if names_file is not None else {}
        self.names_file = names_file
        self._saved: Mapping[Address, str] = self.names
        self._listed: frozenset[Address] = frozenset()
        self._failing_since: dict[str, float] = {}
        self._in_flight: dict[str, asyncio.Future[dict[str, Any] | None]] = {}
        self._complete_for: tuple[frozenset[Address] | None, Mapping[Address, str] | None] = (None, None)

    def members(self) -> frozenset[str]:
        """Pod names of the listed addresses we know, and this pod (the same object while unchanged)."""
        return self._counted()[0]

    def unnamed(self) -> int:
        """Listed addresses we cannot name (they never answered us): pods all the same, silent ones.

        This pod's own address among them (it could not even read itself) counts once more: too many
        pods make a majority harder to reach, too few would let a minority take itself for a majority.
        """
        return self._counted()[1]

    def _counted(self) -> tuple[frozenset[str], int]:
        cached = getattr(self, "_members_cache", None)
        if cached is None or cached[0] is not self.names or cached[1] is not self._listed:
            members = frozenset(self.names[a] for a in self._listed if a in self.names) | {self.me}
            unnamed = sum(1 for a in self._listed if a not in self.names)
            cached = self._members_cache = (self.names, self._listed, (members, unnamed))
        return cached[2]

    @property
    def _by_name(self) -> dict[str, Address]:
        cached = getattr(self, "_by_name_cache", None)
        if cached is None or cached[0] is not self.names:
            cached = (self.names, {name: a for a, name in self.names.items()})
            self._by_name_cache = cached
        return cached[1]

    def seed(self, names: Mapping[Address, str], listed: Iterable[Address]) -> None:
        """Start from a known membership (the fleet simulation's warm start)."""
        self.names, self._listed = names, frozenset(listed)

    def peers_doc(self) -> dict[str, Any]:
        """What `/peers` serves: the pod names of the listed addresses we know (never more than that)."""
        return {"pod": self.me, "peers": {name: [a[0], a[1]] for a, name in self.names.items() if a in self._listed}}

    async def resolve(self) -> frozenset[Address]:
        """Resolve `RELOAD_PEERS` (once for all its entries): the listed addresses."""
        listed: set[Address] = set()
        for host, port in self.peers:
            try:
                listed.update(await self.transport.resolve(host, port))
            except OSError as e:
                log.warning("peer_unresolvable", peer=where((host, port)), error=str(e))
        if listed != self._listed:
            self._listed = frozenset(listed)
        return self._listed

    async def refresh(self) -> None:
        """Resolve `RELOAD_PEERS` once; learn names of new addresses (bulk from one peer, then a few directly)."""
        listed = await self.resolve()
        if listed is self._complete_for[0] and self.names is self._complete_for[1]:
            return  # the same addresses, every one named: nothing to learn or drop
        names = {a: n for a, n in self.names.items() if a in listed}
        unknown = [a for a in listed if a not in names]
        reads = 0
        if len(unknown) > self.learn_per_round:
            source = random.choice(sorted(a for a in listed if a in names) or unknown)  # noqa: S311 - spreading load
            doc = await self.transport.get(source, "/peers", self.timeout_s)
            reads += 1
            for address, name in _named_addresses(doc).items():
                if address in listed and address not in names:
                    names[address] = name
            unknown = [a for a in listed if a not in names]
        ask = random.sample(unknown, min(len(unknown), self.learn_per_round))
        answers = await asyncio.gather(*(self.transport.get(a, "/status", self.timeout_s) for a in ask))
        reads += len(ask)
        for address, status in zip(ask, answers, strict=True):
            if status is not None and isinstance(status.get("pod"), str):
                names[address] = status["pod"]
        if self.on_requests is not None and reads:
            self.on_requests(reads)
        if names != self.names:
            self.names = names
        if len(names) == len(listed):
            self._complete_for = (listed, self.names)
        self._save()
        for pod in list(self.views):
            if pod not in self._by_name or self._by_name[pod] not in listed:
                log.info("peer_forgotten", peer=pod, listed=False)
                del self.views[pod]
                self._failing_since.pop(pod, None)

    def _save(self) -> None:
        """Keep the names learnt for the next life of the sidecar (written only when they changed)."""
        if self.names_file is None or self.names == self._saved:
            return
        try:
            save_names(self.names_file, self.names)
        except OSError as e:
            log.warning("peer_names_not_saved", path=str(self.names_file), error=str(e))
        self._saved = self.names

    async def read(self, pods: Iterable[str], wait_s: float | None = None) -> dict[str, PeerView]:
        """Read the named peers' `/status`; returns the latest view of each that was ever read (self excluded).

        With `wait_s`, returns after at most that long: a slow read (a dead peer's, until its timeout)
        finishes in the background and counts from then on, so it never holds up the answers of the
        others; a peer whose read is still under way is not asked again.
        """
        wanted = dict.fromkeys(pods)
        targets = [
            (pod, self._by_name[pod])
            for pod in wanted
            if pod != self.me and pod in self._by_name and pod not in self._in_flight
        ]
        if self.on_requests is not None and targets:
            self.on_requests(len(targets))
        tasks = []
        for pod, address in targets:
            task = asyncio.ensure_future(self.transport.get(address, "/status", self.timeout_s))
            self._in_flight[pod] = task
            task.add_done_callback(functools.partial(self._answered, pod, address))
            tasks.append(task)
        if tasks:
            await asyncio.wait(tasks, timeout=wait_s)
        return {pod: self.views[pod] for pod in wanted if pod in self.views}

    def _answered(self, pod: str, address: Address, task: asyncio.Future[dict[str, Any] | None]) -> None:
        self._in_flight.pop(pod, None)
        status = None if task.cancelled() or task.exception() is not None else task.result()
        now = self.clock()
        if status is not None and status.get("pod") == pod:
            self.views[pod] = PeerView(pod, status, now)
            self._failing_since.pop(pod, None)
        elif status is not None and isinstance(status.get("pod"), str):
            # the address now belongs to another pod (an IP reused): learn it, drop the old name
            self.names = {**{a: n for a, n in self.names.items() if n != status["pod"]}, address: status["pod"]}
            self.views.pop(pod, None)
        else:
            self._failing_since.setdefault(pod, now)

    async def sample(self, k: int) -> dict[str, PeerView]:
        """Read `k` listed addresses at random (a starting pod's question: does the fleet hold this version?)."""
        if not self._listed:
            await self.resolve()
        choice = random.sample(sorted(self._listed), min(k, len(self._listed)))
        results = await asyncio.gather(*(self.transport.get(a, "/status", self.timeout_s) for a in choice))
        if self.on_requests is not None and choice:
            self.on_requests(len(choice))
        now = self.clock()
        return {
            s["pod"]: PeerView(s["pod"], s, now)
            for s in results
            if s is not None and isinstance(s.get("pod"), str) and s["pod"] != self.me
        }

    def gone_pods(self) -> set[str]:
        """Every pod that has not answered for longer than `forget_after_s`."""
        return {pod for pod in self._failing_since if self.gone(pod)}

    def gone(self, pod: str) -> bool:
        """`pod` has not answered for longer than `forget_after_s`."""
        since = self._failing_since.get(pod)
        return since is not None and self.clock() - since > self.forget_after_s

    def unreachable_s(self, pod: str) -> float:
        since = self._failing_since.get(pod)
        return 0.0 if since is None else self.clock() - since


def _named_addresses(doc: dict[str, Any] | None) -> dict[Address, str]:
    """A peer's `/peers` answer as address -> pod name (malformed entries skipped)."""
    given = doc.get("peers") if doc else None
    out: dict[Address, str] = {}
    for name, where in given.items() if isinstance(given, dict) else ():
        if isinstance(name, str) and isinstance(where, list) and len(where) == 2 and isinstance(where[1], int):
            out[(str(where[0]), where[1])] = name
    return out


def load_names(path: Path) -> dict[Address, str]:
    """The names `save_names` kept (an earlier life of this sidecar); empty if none or unreadable."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        log.warning("peer_names_unreadable", path=str(path), error=str(e))
        return {}
    given = doc.get("names") if isinstance(doc, dict) else None
    out: dict[Address, str] = {}
    for entry in given if isinstance(given, list) else ():
        if isinstance(entry, list) and len(entry) == 3 and isinstance(entry[1], int) and isinstance(entry[2], str):
            out[(str(entry[0]), entry[1])] = entry[2]
    return out


def save_names(path: Path, names: Mapping[Address, str]) -> None:
    """Write address -> pod name atomically (temp file + rename): {"names": [[host, port, pod], ...]}."""
    tmp = path.with_name(f"..tmp-peers-{os.getpid()}")
    try:
        tmp.write_text(json.dumps({"names": [[a[0], a[1], name] for a, name in names.items()]}), encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
