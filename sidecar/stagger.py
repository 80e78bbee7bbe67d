"""Version hash -> when this pod may promote it ("go"), or "held" when the fleet refused it.

`none` goes at once; `random:<max_s>` waits a delay drawn once per version; `ordinal:<step_s>` waits
ordinal x step (StatefulSet pod `web-3` -> 3 x step). The delay counts from when this pod first saw
the version, so a resync or a restart of the pass does not start it over.

`waves` coordinates with the peers (docs/stagger.md): every pod orders the live pod names by
sha256(version + name), the same order everywhere and a different canary per version; rank r is in wave
floor(log2(r + 1)) (1 pod, then 2, 4, 8 ...). The same ranks form a tree (parent of r: (r - 1) // F,
F chosen so the tree is at most 3 levels deep below the canary): each pod reads only its parent and its
children, publishes in `/status` a count per wave of the healthy pods of its subtree ("up", summed
towards the canary) and, coming back down from the canary, since when each whole wave is healthy
("down"). A pod goes once "down" says every lower wave has been healthy for `RELOAD_BAKE_S`, and holds
the version as soon as a neighbour reports it failed or held, so a hold crosses the tree in a few rounds.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import random
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import aiohttp
import structlog

from .peers import NAMES_FILE, Fleet, HttpTransport, PeerView
from .settings import Settings

__all__ = [
    "DelayGate",
    "Gate",
    "GateAnswer",
    "NoGate",
    "WaveStep",
    "WaveView",
    "WavesGate",
    "default_peer_forget_s",
    "default_peer_timeout_s",
    "fanout",
    "make_gate",
    "wave_of",
    "wave_order",
    "wave_round",
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


@functools.lru_cache(maxsize=65536)
def _rank_key(version: str, pod: str) -> str:
    return hashlib.sha256(f"{version}/{pod}".encode()).hexdigest()


def wave_order(version: str, pods: Collection[str]) -> list[str]:
    """The rollout order of `pods` for `version`: the same on every pod, a different canary per version."""
    return sorted(pods, key=lambda pod: _rank_key(version, pod))


def wave_of(rank: int) -> int:
    """Wave of a rank: 0 -> 0; 1, 2 -> 1; 3..6 -> 2; 7..14 -> 3 (ranks 2^w - 1 ... 2^(w+1) - 2)."""
    return (rank + 1).bit_length() - 1


def fanout(n: int) -> int:
    """Children per pod in the tree over `n` ranks: the smallest F >= 2 with 1 + F + F^2 + F^3 >= n.

    Three levels below the canary keep a hold from it within 3 rounds of every pod; a pod serves its
    parent and F children: 11 reads per round at 1,000 pods, 18 at 5,000.
    """
    f = 2
    while 1 + f + f * f + f * f * f < n:
        f += 1
    return f


def tree_depth(n: int, f: int) -> int:
    """Levels below the root of the F-ary tree over ranks 0 .. n-1 (0 for a fleet of one)."""
    depth, covered, width = 0, 1, 1
    while covered < n:
        width *= f
        covered += width
        depth += 1
    return depth


def default_peer_timeout_s(bake_s: float) -> float:
    """`RELOAD_PEER_TIMEOUT_S` when unset: bake / 10, within [1 s, 5 s]."""
    return min(5.0, max(1.0, bake_s / 10))


def poll_interval_s(bake_s: float) -> float:
    """One round while a version is pending: a quarter of the bake time, within [0.25 s, 1 s]."""
    return min(1.0, max(0.25, bake_s / 4))


def default_peer_forget_s(bake_s: float, timeout_s: float, pods: int) -> float:
    """`RELOAD_PEER_FORGET_S` when unset: max(bake, 4 x timeout) + 2 x tree depth x round.

    Forgetting a pod re-ranks the whole fleet, so a pod is given several timeouts and the time a
    change takes to cross the tree (up to the canary and back) before it is left out.
    """
    return max(bake_s, 4 * timeout_s) + 2 * tree_depth(pods, fanout(pods)) * poll_interval_s(bake_s)


@dataclass(frozen=True, slots=True)
class WaveView:
    """One version's order over one set of live pods, and the tree and waves built on it."""

    version: str
    order: tuple[str, ...]
    rank: Mapping[str, int]
    key: str  # short hash of the order: documents built on another order are not mixed with this one
    fanout: int

    @staticmethod
    def of(version: str, pods: frozenset[str]) -> WaveView:
        return _view(version, pods)

    @property
    def waves(self) -> int:
        return wave_of(len(self.order) - 1) + 1

    def size(self, wave: int) -> int:
        return max(0, min(1 << wave, len(self.order) - ((1 << wave) - 1)))

    def parent(self, rank: int) -> str | None:
        return self.order[(rank - 1) // self.fanout] if rank else None

    def children(self, rank: int) -> tuple[str, ...]:
        return self.order[rank * self.fanout + 1 : rank * self.fanout + self.fanout + 1]

    def upstream(self, pod: str) -> tuple[str, ...]:
        """Where `pod` gets "down" from, in order: its parent, then (while those are silent) one of the
        parent's siblings, the grandparent, one of its siblings ... the canary. "down" is the same
        document all over the tree; picking the sibling by `pod`'s rank spreads a dead pod's orphans."""
        rank, out = self.rank[pod], []
        while rank:
            parent = (rank - 1) // self.fanout
            out.append(self.order[parent])
            if parent:
                siblings = self.children((parent - 1) // self.fanout)
                other = siblings[(self.rank[pod] + 1) % len(siblings)]
                if other != self.order[parent]:
                    out.append(other)
            rank = parent
        return tuple(out)

    def neighbours(self, pod: str) -> tuple[str, ...]:
        rank = self.rank[pod]
        parent = self.parent(rank)
        return ((parent,) if parent else ()) + self.children(rank)


@functools.lru_cache(maxsize=16)
def _view(version: str, pods: frozenset[str]) -> WaveView:
    order = tuple(wave_order(version, pods))
    key = hashlib.sha256("\n".join(order).encode()).hexdigest()[:16]
    return WaveView(version, order, {pod: r for r, pod in enumerate(order)}, key, fanout(len(order)))


@dataclass(frozen=True, slots=True)
class WaveStep:
    """One round's answer in waves mode: go, wait or held, why, and the document this pod publishes."""

    step: Literal["go", "wait", "held"]
    why: str
    doc: dict[str, Any] = field(default_factory=dict)


def _hold_reason(version: str, own: PeerView, peers: Mapping[str, PeerView]) -> str | None:
    if own.failed(version):
        return "failed here"
    if own.holds(version):
        return "held here"
    failed = sorted(pod for pod, view in peers.items() if view.failed(version))
    if failed:
        return f"reported failed by {', '.join(failed)}"
    holding = sorted(pod for pod, view in peers.items() if view.holds(version))
    if holding:
        return f"held by {', '.join(holding)}"
    return None


def _same_view(peer: PeerView | None, view: WaveView) -> dict[str, Any] | None:
    doc = peer.wave_doc(view.version) if peer is not None else None
    return doc if doc is not None and doc.get("view") == view.key else None


def _up(view: WaveView, me: str, own: PeerView, peers: Mapping[str, PeerView]) -> list[list[Any]]:
    """Per wave: [healthy pods of my subtree, the latest time one of them turned healthy] (my clock)."""
    up: list[list[Any]] = [[0, None] for _ in range(view.waves)]

    def add(wave: int, n: int, since: float | None) -> None:
        if n and since is not None and wave < len(up):
            up[wave][0] += n
            up[wave][1] = since if up[wave][1] is None else max(up[wave][1], since)

    state = own.status.get("versions", {}).get(view.version)
    if isinstance(state, dict) and state.get("state") == "healthy":
        add(wave_of(view.rank[me]), 1, own.local_time(state.get("since")))
    for child in view.children(view.rank[me]):
        doc = _same_view(peers.get(child), view)
        if doc is None or not isinstance(doc.get("up"), list):
            continue
        for wave, entry in enumerate(doc["up"]):
            if isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], int):
                add(wave, entry[0], peers[child].local_time(entry[1]))
    return up


def _seen(doc: dict[str, Any] | None) -> int:
    """Pods of a child's subtree that reported on this order (0 when the child did not)."""
    seen = doc.get("seen") if doc is not None else None
    return seen if isinstance(seen, int) and seen > 0 else 0


def _down(
    view: WaveView, me: str, up: list[list[Any]], peers: Mapping[str, PeerView], unreachable: Collection[str]
) -> list[float | None]:
    """Per wave: since when the whole wave is healthy (my clock), None while it is not (or not known here).

    From the parent, or while it is silent from the first of `WaveView.upstream` that answers.
    """
    if view.rank[me] == 0:
        return [since if n == view.size(wave) else None for wave, (n, since) in enumerate(up)]
    upstream = view.upstream(me)
    parent = next((a for a in upstream if a not in unreachable), upstream[-1])
    doc = _same_view(peers.get(parent), view)
    given = doc.get("down") if doc is not None else None
    if not isinstance(given, list) or len(given) != view.waves:
        return [None] * view.waves
    return [None if t is None else peers[parent].local_time(t) for t in given]


def _baked(down: list[float | None], waves: int, now: float, bake_s: float) -> tuple[bool, str]:
    """Have waves 0 .. waves-1 all been healthy for `bake_s`? And if not, which one is missing."""
    for wave in range(waves):
        since = down[wave]
        if since is None:
            return False, f"wave {wave} not all healthy yet"
    latest = max((t for t in down[:waves] if t is not None), default=now - bake_s)
    if now - latest < bake_s:
        return False, f"wave {waves - 1} healthy for {now - latest:.1f} s of {bake_s:g}"
    return True, ""


def _finished(version: str, peers: Mapping[str, PeerView], now: float, bake_s: float) -> tuple[str, list[Any]] | None:
    """A neighbour whose order (whichever it is) has been entirely healthy for the bake time, if any,
    with its "down" times in our clock.

    Enough for a pod that is late (it was cut off, or left out of the order, or joined after) to go: a
    majority of the fleet has baked the version, whatever order each pod used to get there.
    """
    for pod, peer in sorted(peers.items()):
        doc = peer.wave_doc(version)
        down = doc.get("down") if doc is not None and doc.get("done") else None
        if isinstance(down, list) and down:
            times = [peer.local_time(t) for t in down]
            if _baked(times, len(times), now, bake_s)[0]:
                return pod, times
    return None


def wave_round(
    view: WaveView,
    me: str,
    own: PeerView,
    peers: Mapping[str, PeerView],
    bake_s: float,
    now: float,
    gone: Collection[str] = (),
    unreachable: Collection[str] = (),
    listed: int = 0,
) -> WaveStep:
    """Pure decision for one round from this pod's status (`own`) and its tree neighbours' (`peers`).

    Held when this pod or any neighbour failed or holds the version. Otherwise the canary (rank 0)
    goes once more than half the fleet (`listed` pods, named or not, left out or not; at least the
    order) reported on its order through the tree ("seen"); any other pod of wave
    w goes once its parent's "down" (from the canary, built from every subtree's "up") says waves
    0 .. w-1 have baked. Any pod goes once a neighbour reports its whole order done and baked (how a
    pod left out of the order, or cut off for a while, catches up).
    """
    doc: dict[str, Any] = {"view": view.key, "n": len(view.order), "gone": sorted(gone)[:1000], "hold": None}
    settled = _held_or_finished(view.version, own, peers, now, bake_s, doc)
    if settled is not None:
        return settled
    if me not in view.rank:
        return WaveStep("wait", f"left out of the order of {len(view.order)}: waiting for every wave to bake", doc)
    rank = view.rank[me]
    wave = wave_of(rank)
    where = f"wave {wave} (rank {rank} of {len(view.order)})"
    up = _up(view, me, own, peers)
    down = _down(view, me, up, peers, unreachable)
    seen = 1 + sum(_seen(_same_view(peers.get(child), view)) for child in view.children(rank))
    doc.update(up=up, down=down, seen=seen, done=all(t is not None for t in down))
    if rank == 0:
        # Only a canary that a majority of the whole fleet reached through the tree goes: one cut off with
        # a few pods (a partition) cannot be a second canary, even with the rest left out of its order.
        fleet = max(listed, len(view.order))
        if 2 * seen <= fleet:
            return WaveStep("wait", f"{where} waits: {seen} of {fleet} pods agree on the order", doc)
        return WaveStep("go", where, doc)
    ok, missing = _baked(down, wave, now, bake_s)
    if not ok:
        return WaveStep("wait", f"{where} waits: {missing}", doc)
    return WaveStep("go", where, doc)


def _held_or_finished(
    version: str, own: PeerView, peers: Mapping[str, PeerView], now: float, bake_s: float, doc: dict[str, Any]
) -> WaveStep | None:
    """Held (this pod or a neighbour failed or holds it), or go (a neighbour reports every wave done and
    baked: passed on in `doc`, so a pod that reads only this one can catch up too); None otherwise."""
    held = _hold_reason(version, own, peers)
    if held is not None:
        doc["hold"] = held
        return WaveStep("held", held, doc)
    finished = _finished(version, peers, now, bake_s)
    if finished is not None:
        doc.update(down=finished[1], done=True)
        return WaveStep("go", f"{finished[0]} reports every wave done and baked", doc)
    return None


def _minority_round(
    version: str, own: PeerView, peers: Mapping[str, PeerView], bake_s: float, now: float, reachable: int, n: int
) -> WaveStep:
    """This pod reaches at most half the fleet (a partition): it never goes on its own order then."""
    doc: dict[str, Any] = {"view": "", "hold": None, "gone": []}
    settled = _held_or_finished(version, own, peers, now, bake_s, doc)
    if settled is not None:
        return settled
    return WaveStep("wait", f"only {reachable} of {n} pods reachable: waiting for a majority", doc)


_KEEP_DOCS = 8  # versions whose waves document /status keeps serving
_PROBE_EVERY = 32  # rounds between two reads of a pod left out of the order, while this pod waits


class WavesGate:
    """Coordinated waves through the tree of peers; reads peers only while a version rolls out here."""

    def __init__(
        self,
        fleet: Fleet,
        me: str,
        bake_s: float,
        own_status: Callable[[], dict[str, Any]],
        *,
        forget_s: float | None = None,
        refresh_every: int = 16,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.fleet, self.me, self.bake_s, self.own_status = fleet, me, bake_s, own_status
        self.forget_s, self.refresh_every, self.clock = forget_s, refresh_every, clock
        self.poll_s = poll_interval_s(bake_s)
        self.published: dict[str, dict[str, Any]] = {}
        self.views: dict[str, WaveView] = {}  # the order each version's last round used (logs, fleet_sim)
        # version -> (members, left out, fleet size with the unnamed addresses): what its view was made for
        self._view_of: dict[str, tuple[frozenset[str], frozenset[str], int]] = {}
        self.why: dict[str, str] = {}  # version -> why this pod went or held it
        self._mute: dict[str, dict[str, float]] = {}  # version -> pod answering without a document -> since
        self._rollouts: dict[str, tuple[asyncio.Task[None], asyncio.Future[GateAnswer]]] = {}

    def delay(self, version: str) -> float:
        return 0.0

    def status_extra(self) -> dict[str, Any]:
        """Added to `/status`: this pod's waves document per recent version."""
        return {"waves": dict(self.published)}

    def peers_doc(self) -> dict[str, Any]:
        return self.fleet.peers_doc()

    async def admit_first(self, version: str) -> GateAnswer:
        """A few peers at random: the hold reaches every pod in a few rounds, so any one of them knows."""
        views = await self.fleet.sample(3)
        if any(view.failed(version) or view.holds(version) for view in views.values()):
            log.warning("start_refused_by_fleet", version=version)
            return "held"
        if any((view.version_state(version) or ("",))[0] == "waiting" for view in views.values()):
            self._start(version)  # a rollout under way: take part (else it would be left out after a while)
        return "go"

    async def wait(self, version: str) -> GateAnswer:
        _, decided = self._start(version)
        return await asyncio.shield(decided)

    def _start(self, version: str) -> tuple[asyncio.Task[None], asyncio.Future[GateAnswer]]:
        if version in self._rollouts:
            return self._rollouts[version]
        for old, (task, _) in list(self._rollouts.items()):  # a newer version: stop taking part in the others
            if not task.done():
                task.cancel()
                self.published[old] = {**self.published.get(old, {}), "superseded": True}
        decided: asyncio.Future[GateAnswer] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(self._take_part(version, decided), name=f"waves-{version[:12]}")
        task.add_done_callback(lambda _: decided.done() or decided.cancel())  # superseded: no waiter hangs
        self._rollouts[version] = (task, decided)
        while len(self._rollouts) > _KEEP_DOCS:
            del self._rollouts[next(iter(self._rollouts))]
        return task, decided

    async def _take_part(self, version: str, decided: asyncio.Future[GateAnswer]) -> None:
        """Rounds until the version is done everywhere, held, or a newer version replaces it."""
        gone: set[str] = set()  # pods left out, as this pod or a neighbour found them unreachable
        last, rounds, next_refresh = "", 0, 0
        await asyncio.sleep(random.uniform(0, self.poll_s))  # noqa: S311 - spreads the fleet's rounds
        while True:
            if rounds >= next_refresh:
                await self.fleet.refresh()
                spread = max(1, self.refresh_every // 4)
                next_refresh = rounds + self.refresh_every + random.randint(-spread, spread)  # noqa: S311
            rounds += 1
            step = await self._round(version, gone, probe=rounds % _PROBE_EVERY == 0)
            self.published[version] = step.doc
            while len(self.published) > _KEEP_DOCS:
                del self.published[next(iter(self.published))]
            if not decided.done():
                if step.why != last:
                    log.info("wave_" + step.step, version=version, why=step.why)
                    last = step.why
                if step.step != "wait":
                    decided.set_result(step.step)
                    self.why[version] = step.why
            if step.step == "held" or step.doc.get("done") or step.doc.get("superseded"):
                return
            await asyncio.sleep(self.poll_s)

    @staticmethod
    def _waiting(status: Mapping[str, Any], version: str) -> bool:
        """This pod (its `/status` document) has not gone with `version` yet."""
        entry = status.get("versions", {}).get(version)
        return not isinstance(entry, dict) or entry.get("state") in ("validating", "waiting")

    def _note_gone(self, version: str, peers: Mapping[str, PeerView], members: frozenset[str], gone: set[str]) -> None:
        """Pods the neighbours left out, and neighbours that answer without taking part for the forget time
        (started on this version, or not seen it yet): as good as silent, they catch up once the rest baked."""
        now, mute = self.clock(), self._mute.setdefault(version, {})
        for pod, peer in peers.items():
            doc = peer.wave_doc(version)
            if doc is not None and isinstance(doc.get("gone"), list):
                gone.update(p for p in doc["gone"] if isinstance(p, str) and p in members)
            if doc is None and not peer.failed(version) and not peer.holds(version):
                if now - mute.setdefault(pod, now) > self.fleet.forget_after_s:
                    gone.add(pod)
            else:
                mute.pop(pod, None)

    async def _round(self, version: str, gone: set[str], probe: bool = False) -> WaveStep:
        """Read this pod's tree neighbours once and decide; `gone` grows with what they report."""
        members, unnamed = self.fleet.members(), self.fleet.unnamed()
        left_out = frozenset((gone | self.fleet.gone_pods()) & members)
        # A listed address this pod cannot name is a pod all the same, one that does not answer it: counted
        # in the fleet, never in the order (a pod cut off before it learnt its peers' names is a minority).
        size = len(members) + unnamed
        quorate = 2 * (len(left_out) + unnamed) < size
        live = left_out if quorate else frozenset()
        if self._view_of.get(version) != (members, live, size):  # unchanged: no re-hashing of the whole fleet
            if self.forget_s is None:  # derived from the fleet's size (unnamed addresses too), cached with it
                self.fleet.forget_after_s = default_peer_forget_s(self.bake_s, self.fleet.timeout_s, size)
            self._view_of[version] = (members, live, size)
            self.views[version] = WaveView.of(version, members - live)
        view = self.views[version]
        while len(self.views) > _KEEP_DOCS:
            self._view_of.pop(next(iter(self.views)), None)
            self.why.pop(next(iter(self.views)), None)
            self._mute.pop(next(iter(self.views)), None)
            del self.views[next(iter(self.views))]
        if self.me in view.rank:
            targets = view.neighbours(self.me)
            upstream = view.upstream(self.me)
            for below, above in zip(upstream, upstream[1:], strict=False):  # the parent is silent: an uncle ...
                if not self.fleet.unreachable_s(below):
                    break
                targets += (above,)
        else:  # left out: follow one pod of the order for its "down" document
            targets = (view.order[int(hashlib.sha256(self.me.encode()).hexdigest(), 16) % len(view.order)],)
        status = self.own_status()
        if probe and left_out and self._waiting(status, version):  # one left-out pod: back (a healed partition)? done?
            targets += (random.choice(sorted(left_out)),)  # noqa: S311
        peers = await self.fleet.read(targets, wait_s=self.poll_s)
        self._note_gone(version, peers, members, gone)
        own = PeerView(self.me, self.own_status(), self.clock())
        superseded = any((p.wave_doc(version) or {}).get("superseded") for p in peers.values())
        if superseded and not self._waiting(own.status, version):
            # the fleet moved on to a newer version before this one finished: nobody waits for it any more
            return WaveStep("go", "superseded by a newer version", {"superseded": True})
        if quorate:
            silent = {pod for pod in targets if self.fleet.unreachable_s(pod)}
            return wave_round(view, self.me, own, peers, self.bake_s, self.clock(), left_out, silent, size)
        return _minority_round(version, own, peers, self.bake_s, self.clock(), len(members) - len(left_out), size)


def make_gate(
    settings: Settings,
    session: aiohttp.ClientSession,
    me: str,
    on_peer_requests: Callable[[int], object] | None = None,
    own_status: Callable[[], dict[str, Any]] | None = None,
) -> Gate:
    mode = settings.stagger.mode
    if mode in ("random", "ordinal"):
        return DelayGate(mode, settings.stagger.seconds, settings.pod_ordinal)
    if mode == "waves":
        timeout = settings.peer_timeout_s or default_peer_timeout_s(settings.bake_s)
        fleet = Fleet(
            HttpTransport(session),
            settings.peers,
            me,
            timeout_s=timeout,
            forget_after_s=settings.peer_forget_s or default_peer_forget_s(settings.bake_s, timeout, 1),
            on_requests=on_peer_requests,
            names_file=settings.target_dir / NAMES_FILE,
        )
        return WavesGate(
            fleet, me, settings.bake_s, own_status or (lambda: {"pod": me}), forget_s=settings.peer_forget_s
        )
    return NoGate()
