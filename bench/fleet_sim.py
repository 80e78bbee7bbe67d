#!/usr/bin/env python3
"""Coordinated waves at 100 to 5,000 pods in one process: the real gate and peer code, simulated peers.

  python3 bench/fleet_sim.py                          # N = 100, 1000, 5000; table
  python3 bench/fleet_sim.py --pods 1000 --json       # one JSON object
  python3 bench/fleet_sim.py --pods 1000 --dead 0.01 --json
  python3 bench/fleet_sim.py --pods 1000 --partition 0.1 --json
  python3 bench/fleet_sim.py --pods 100 --partition 0.1 --cold-cut --json
  python3 bench/fleet_sim.py --pods 100 --protocol old   # the protocol before the tree (git history), same simulation

Every pod is a real `sidecar.stagger.WavesGate` over a real `sidecar.peers.Fleet` and a real
`sidecar.state.State`; only the network (`Transport`: latency, loss, slow pods, dead pods, a partition)
and the reloader (validate -> gate -> promote -> verify, reduced to state changes and a verify delay)
are simulated. Time is virtual: the event loop's clock jumps to the next timer whenever every task
waits, so a 40-minute rollout of 5,000 pods runs in a few minutes of CPU.

Scenarios, in order: an idle window (no pending version: peer requests must be 0); a good version
seen by every pod within `--skew` s (waves, rollout time in bakes, requests per round: mean and peak
total, peak served by one pod, and whether any pod went before the lower waves of its own order had
baked); a bad version that fails health on every pod that applies it (pods touched, rounds for the hold
to reach every pod). With `--partition`, a fraction of the pods is cut off from the rest during each
version and the cut healed once the larger side settled; `*_all` figures include the healed side. With
`--cold-cut` too, the cut-off pods start knowing no peer's name (their sidecars just restarted, or the
cut came before any version made them read each other).

`--protocol old` runs the gate and Fleet of `git show OLD:sidecar/{stagger,peers}.py`, OLD being the last
commit before the tree protocol (`--old-ref`; loaded as a
module from a temporary directory, their HTTP reads and DNS replaced by the same simulated network).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import math
import random
import selectors
import subprocess
import sys
import tempfile
import time
import types
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import structlog  # noqa: E402

import sidecar.state  # noqa: E402 - path set up just above
from sidecar import stagger  # noqa: E402
from sidecar.peers import Address, Fleet  # noqa: E402
from sidecar.state import State  # noqa: E402

SERVICE: Address = ("web.default.svc", 9533)
T = TypeVar("T")


class _VirtualSelector(selectors.DefaultSelector):
    """Never blocks: with nothing ready, the loop's clock jumps by the time it would have waited."""

    loop: VirtualLoop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or timeout is None or timeout <= 0:
            if not ready and timeout is None:
                raise RuntimeError("simulation stalled: no task is runnable and no timer is set")
            return ready
        self.loop.now += timeout
        return []


class VirtualLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        selector = _VirtualSelector()
        super().__init__(selector)
        selector.loop = self
        self.now = 0.0

    def time(self) -> float:
        return self.now


def wall() -> float:
    """Every pod's wall clock (`/status` `now` and `since`): the virtual time."""
    return asyncio.get_running_loop().time()


@dataclass
class Traffic:
    """Peer requests, counted per round (a bin of `round_s` virtual seconds): total and per serving pod."""

    round_s: float
    total: int = 0
    _bin: int = -1
    _in_bin: int = 0
    _served: Counter[Address] = field(default_factory=Counter)
    rounds: int = 0
    peak_total: int = 0
    peak_served: int = 0

    def count(self, target: Address, served: bool) -> None:
        """One request sent (`served`: it reached a live pod, which answered it)."""
        b = int(wall() // self.round_s)
        if b != self._bin:
            self._close()
            self._bin = b
        self.total += 1
        self._in_bin += 1
        if served:
            self._served[target] += 1

    def _close(self) -> None:
        if self._in_bin:
            self.peak_total = max(self.peak_total, self._in_bin)
            self.peak_served = max(self.peak_served, max(self._served.values(), default=0))
        self._in_bin = 0
        self._served.clear()

    def window(self) -> Traffic:
        """A fresh counter for the next phase."""
        self._close()
        return Traffic(self.round_s)

    def summary(self, seconds: float) -> dict[str, float]:
        self._close()
        rounds = max(1.0, seconds / self.round_s)
        return {
            "requests": self.total,
            "mean_per_round": round(self.total / rounds, 1),
            "peak_per_round": self.peak_total,
            "peak_served_by_one_pod": self.peak_served,
        }


@dataclass
class Net:
    latency_s: float
    loss: float
    slow: set[Address]
    dead: set[Address]
    side: dict[Address, int]  # partition: pods on different sides cannot reach each other
    rng: random.Random
    pods: dict[Address, SimPod] = field(default_factory=dict)
    traffic: Traffic = field(default_factory=lambda: Traffic(1.0))
    partitioned: bool = False
    resolves: int = 0

    def cut(self, a: Address, b: Address) -> bool:
        return self.partitioned and self.side.get(a, 0) != self.side.get(b, 0)


class SimTransport:
    """`sidecar.peers.Transport` over `Net`: one per pod (it knows who is asking)."""

    def __init__(self, net: Net, me: Address) -> None:
        self.net, self.me = net, me

    async def resolve(self, host: str, port: int) -> list[Address]:
        self.net.resolves += 1
        return list(self.net.pods)  # a headless Service with publishNotReadyAddresses: dead pods too

    async def get(self, address: Address, path: str, timeout_s: float) -> dict[str, Any] | None:
        net = self.net
        if address in net.dead or net.cut(self.me, address) or address not in net.pods:
            net.traffic.count(address, served=False)
            await asyncio.sleep(timeout_s)
            return None
        net.traffic.count(address, served=True)
        delay = net.latency_s * net.rng.uniform(0.5, 1.5)
        if address in net.slow:
            delay *= 20
        if delay > timeout_s:
            await asyncio.sleep(timeout_s)
            return None
        await asyncio.sleep(delay)
        if net.rng.random() < net.loss:
            return None
        return net.pods[address].serve(path)


class SimPod:
    """A sidecar reduced to its `State`, its gate and the steps a version goes through."""

    def __init__(self, name: str, address: Address, net: Net, gate_factory: Callable[[SimPod], Any]) -> None:
        self.name, self.address, self.net = name, address, net
        self.state = State(pod=name)
        self.state.ready, self.state.phase = True, "idle"
        self.gate = gate_factory(self)
        self.went: dict[str, float] = {}
        self.went_view: dict[str, tuple[tuple[str, ...], int]] = {}  # version -> (order, my rank) when it went
        self.held_at: dict[str, float] = {}
        self.failed_at: dict[str, float] = {}

    def serve(self, path: str) -> dict[str, Any]:
        if path == "/peers":
            return dict(self.gate.peers_doc())
        doc = self.state.status()
        extra = getattr(self.gate, "status_extra", None)
        if extra is not None:
            doc.update(extra())
        return doc

    async def take(self, version: str, bad: bool, verify_s: float) -> None:
        """validate -> gate -> promote -> verify for one version, as the reloader does it."""
        state = self.state
        state.mark(version, "validating")
        state.phase = "waiting"
        state.mark(version, "waiting")
        answer = await self.gate.wait(version)
        if answer == "held":
            state.hold(version)
            state.phase = "held"
            self.held_at[version] = wall()
            return
        self.went[version] = wall()
        self.went_view[version] = self._view(version)
        state.mark(version, "applying")
        await asyncio.sleep(verify_s)
        if bad:
            state.quarantine(version, "health check failed", "verify")
            self.failed_at[version] = wall()
        else:
            state.current = state.last_good = version
            state.mark(version, "healthy")
        state.phase = "idle"

    def _view(self, version: str) -> tuple[tuple[str, ...], int]:
        views = getattr(self.gate, "views", None)
        if views is not None and version in views:  # this protocol: the order its last round used
            order = views[version].order
        else:  # the old protocol: the peers it knew
            order = tuple(stagger.wave_order(version, set(self.gate.fleet.views) | {self.name}))
        return order, order.index(self.name) if self.name in order else -1


# The last commit whose waves protocol read whole waves and the whole fleet (before the tree over the ranks).
OLD_PROTOCOL_REF = "5187a4c"


def load_old_protocol(ref: str = OLD_PROTOCOL_REF) -> types.ModuleType:
    """`sidecar/stagger.py` and `sidecar/peers.py` at `ref` as package `sidecar_main` (HTTP and DNS stubbed)."""
    tmp = Path(tempfile.mkdtemp(prefix="sidecar-main-"))
    pkg = tmp / "sidecar_main"
    pkg.mkdir()
    for name in ("stagger", "peers"):
        text = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{ref}:sidecar/{name}.py"], check=True, capture_output=True, text=True
        ).stdout
        (pkg / f"{name}.py").write_text(text)
    (pkg / "settings.py").write_text("from sidecar.settings import Settings  # noqa: F401\n")
    (pkg / "__init__.py").write_text("")
    sys.path.insert(0, str(tmp))
    return importlib.import_module("sidecar_main.stagger")


def gate_factory(protocol: str, bake_s: float, timeout_s: float | None, forget_s: float | None) -> Callable[..., Any]:
    if protocol == "old":
        old = load_old_protocol()
        peers_mod = sys.modules["sidecar_main.peers"]
        peers_mod.time = types.SimpleNamespace(monotonic=wall)  # type: ignore[attr-defined]

        class OldFleet(peers_mod.Fleet):  # type: ignore[misc, name-defined]
            transport: SimTransport

            async def _resolve(self) -> list[Address]:
                return await self.transport.resolve(*SERVICE)

            async def _read(self, host: str, port: int) -> dict[str, Any] | None:
                return await self.transport.get((host, port), "/status", 1.0)

        def make_old(pod: SimPod) -> Any:
            fleet = OldFleet(None, (SERVICE,), pod.name, forget_after_s=max(5.0, bake_s))
            fleet.transport = SimTransport(pod.net, pod.address)
            return old.WavesGate(fleet, pod.name, bake_s)

        return make_old

    timeout = timeout_s or stagger.default_peer_timeout_s(bake_s)

    def make_new(pod: SimPod) -> Any:
        fleet = Fleet(
            SimTransport(pod.net, pod.address),
            (SERVICE,),
            pod.name,
            timeout_s=timeout,
            forget_after_s=forget_s or 10.0,
            clock=wall,
        )
        return stagger.WavesGate(fleet, pod.name, bake_s, pod.state.status, forget_s=forget_s, clock=wall)

    return make_new


@dataclass
class Options:
    pods: int
    protocol: str = "new"
    bake_s: float = 10.0
    verify_s: float = 1.0
    skew_s: float = 2.0
    latency_s: float = 0.005
    loss: float = 0.0
    slow: float = 0.0
    dead: float = 0.0
    partition: float = 0.0
    timeout_s: float | None = None
    forget_s: float | None = None
    idle_s: float = 30.0
    seed: int = 1
    kill_canary: bool = False  # the canary of each version is among the dead pods
    cold_cut: bool = False  # the cut-off pods start without their peers' names (sidecars restarted)


GOOD, BAD = "v2-good", "v3-bad"


class Sim:
    def __init__(self, o: Options) -> None:
        self.o = o
        rng = random.Random(o.seed)
        random.seed(o.seed)  # the gates' jitter too: a run is repeatable
        addresses = [(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", 9533) for i in range(o.pods)]
        k_dead, k_slow, k_part = (round(o.pods * x) for x in (o.dead, o.slow, o.partition))
        shuffled = rng.sample(addresses, len(addresses))
        dead = set(shuffled[:k_dead])
        if o.kill_canary:
            by_name = {f"web-{i:05d}": a for i, a in enumerate(addresses)}
            dead |= {by_name[stagger.wave_order(v, set(by_name))[0]] for v in (GOOD, BAD)}
        slow = set(shuffled[k_dead : k_dead + k_slow])
        minority = set(rng.sample(sorted(set(addresses) - dead), k_part))
        self.poll_s = stagger.poll_interval_s(o.bake_s)
        self.net = Net(o.latency_s, o.loss, slow, dead, {a: 1 for a in minority}, rng, traffic=Traffic(self.poll_s))
        self.make = make = gate_factory(o.protocol, o.bake_s, o.timeout_s, o.forget_s)
        self.pods = [SimPod(f"web-{i:05d}", a, self.net, make) for i, a in enumerate(addresses)]
        self.net.pods = {p.address: p for p in self.pods}
        names = {p.address: p.name for p in self.pods}
        for pod in self.pods:  # warm start: membership learnt before (a refresh then reads nobody)
            if o.cold_cut and pod.address in minority:
                continue  # knows no name: it learns them at its refreshes, from the pods it reaches
            fleet = pod.gate.fleet
            if hasattr(fleet, "seed"):
                fleet.seed(names, names)
            else:
                fleet._names = dict(names)
        self.live = [p for p in self.pods if p.address not in dead]
        self.majority = [p for p in self.live if p.address not in minority]
        self.rng = rng

    async def idle(self) -> int:
        self.net.traffic = self.net.traffic.window()
        await asyncio.sleep(self.o.idle_s)
        return self.net.traffic.total

    async def newcomer(self, version: str) -> str:
        """A pod joining the fleet now (listed from now on): what its gate answers at start-up for `version`."""
        i = len(self.pods)
        pod = SimPod(f"web-{i:05d}", (f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", 9533), self.net, self.make)
        self.pods.append(pod)
        self.net.pods[pod.address] = pod
        answer = str(await pod.gate.admit_first(version))
        if answer == "go":  # start-up: promoted at once, the app starts on it
            pod.state.current = pod.state.last_good = version
            pod.state.mark(version, "healthy")
        else:
            pod.state.hold(version)
        return answer

    async def version(self, version: str, bad: bool) -> dict[str, Any]:
        o = self.o
        self.net.traffic = self.net.traffic.window()
        self.net.partitioned = o.partition > 0
        start = wall()
        tasks = []
        for pod in self.live:
            tasks.append(asyncio.create_task(self._later(pod, version, bad, self.rng.uniform(0, o.skew_s))))
        limit = start + 60 * o.bake_s * math.log2(o.pods + 1) + 600
        settled_majority = await self._until(lambda: self._settled(self.majority, version), limit)
        majority_s = wall() - start
        traffic = self.net.traffic.summary(majority_s)
        self.net.partitioned = False
        settled_all = await self._until(lambda: self._settled(self.live, version), wall() + 60 * o.bake_s + 600)
        all_s = wall() - start
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return {
            "start": start,
            "settled_majority": settled_majority,
            "majority_s": majority_s,
            "settled_all": settled_all,
            "all_s": all_s,
            "traffic": traffic,
        }

    async def _later(self, pod: SimPod, version: str, bad: bool, delay: float) -> None:
        await asyncio.sleep(delay)
        await pod.take(version, bad, self.o.verify_s)

    def _settled(self, pods: list[SimPod], version: str) -> bool:
        states = (p.state.versions.get(version, ("", 0.0))[0] for p in pods)
        return all(s in ("healthy", "held", "failed") for s in states)

    async def _until(self, cond: Callable[[], bool], limit: float) -> bool:
        while not cond():
            if wall() > limit:
                return False
            await asyncio.sleep(self.poll_s / 2)
        return True

    def waves(self, version: str, start: float) -> dict[str, Any]:
        """Waves taken (clusters of start times), and pods that went before their lower waves had baked."""
        went = sorted(p.went[version] for p in self.majority if version in p.went)  # a healed side goes late
        clusters = 1 + sum(1 for a, b in zip(went, went[1:], strict=False) if b - a > self.o.bake_s / 2) if went else 0
        healthy_at = {
            p.name: p.state.versions[version][1]
            for p in self.live
            if p.state.versions.get(version, ("",))[0] == "healthy"
        }
        early, late, checked = 0, 0, set()
        for pod in self.live:
            if version not in pod.went:
                continue
            if "every wave done and baked" in getattr(pod.gate, "why", {}).get(version, ""):
                late += 1  # it caught up on a neighbour's finished order (cut off, or left out, for a while)
                continue
            order, rank = pod.went_view[version]
            wave = stagger.wave_of(rank) if rank >= 0 else None
            lower = order[: (1 << wave) - 1] if wave is not None else order
            key = (id(order), wave)
            if key in checked:
                continue
            t = pod.went[version]
            if all(q in healthy_at and healthy_at[q] <= t - self.o.bake_s + 1e-6 for q in lower):
                checked.add(key)  # good versions stay healthy: later starts on this order and wave are fine too
            else:
                early += 1
        return {
            "waves": clusters,
            "early_starts": early,
            "caught_up": late,
            "last_healthy": max(healthy_at.values(), default=start),
        }


async def simulate(o: Options) -> dict[str, Any]:
    sim = Sim(o)
    cpu = time.process_time()
    idle_requests = await sim.idle()
    good = await sim.version(GOOD, bad=False)
    w = sim.waves(GOOD, good["start"])
    live_n = len(sim.live)
    healthy = sum(p.state.versions.get(GOOD, ("",))[0] == "healthy" for p in sim.live)
    bad = await sim.version(BAD, bad=True)
    touched = [p for p in sim.live if BAD in p.went]
    first_fail = min((p.failed_at[BAD] for p in touched if BAD in p.failed_at), default=None)
    holds = [p.held_at[BAD] for p in sim.majority if BAD in p.held_at]
    holds_all = [p.held_at[BAD] for p in sim.live if BAD in p.held_at]
    poll = sim.poll_s

    def rounds(times: list[float]) -> float | None:
        return round((max(times) - first_fail) / poll, 2) if times and first_fail is not None else None

    return {
        "protocol": o.protocol,
        "pods": o.pods,
        "dead": round(o.pods * o.dead),
        "partitioned": round(o.pods * o.partition),
        "bake_s": o.bake_s,
        "round_s": poll,
        "idle_requests": idle_requests,
        "waves": w["waves"],
        "waves_target": math.ceil(math.log2(live_n + 1)),
        "early_starts": w["early_starts"],
        "caught_up": w["caught_up"],
        "rollout_complete": good["settled_majority"] and healthy == live_n if not o.partition else good["settled_all"],
        "rollout_bakes": round((w["last_healthy"] - good["start"]) / o.bake_s, 2),
        "rollout_bakes_majority": round(good["majority_s"] / o.bake_s, 2),
        "healthy_pods": healthy,
        "requests_per_round": good["traffic"]["mean_per_round"],
        "peak_requests_per_round": good["traffic"]["peak_per_round"],
        "busiest_pod_requests_per_round": good["traffic"]["peak_served_by_one_pod"],
        "bad_version_pods": len(touched),
        "bad_settled": bad["settled_majority"] and bad["settled_all"],
        "hold_rounds": rounds(holds),
        "hold_rounds_all": rounds(holds_all),
        "hold_requests_per_round": bad["traffic"]["mean_per_round"],
        "dns_resolves": sim.net.resolves,
        "cpu_s": round(time.process_time() - cpu, 1),
    }


def run(o: Options, scenario: Callable[[Options], Coroutine[Any, Any, T]] = simulate) -> T:  # type: ignore[assignment]
    """`scenario(o)` on a virtual clock (State's wall clock too, restored afterwards), errors-only logs."""
    was_configured, real_time = structlog.is_configured(), sidecar.state.time
    config = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    sidecar.state.time = types.SimpleNamespace(time=wall)  # type: ignore[assignment]
    loop = VirtualLoop()
    try:
        return loop.run_until_complete(scenario(o))
    finally:
        loop.close()
        sidecar.state.time = real_time
        if was_configured:
            structlog.configure(**config)
        else:
            structlog.reset_defaults()


def row(r: dict[str, Any]) -> str:
    return (
        f"{r['protocol']:>3} N={r['pods']:>5} dead={r['dead']:>3} cut={r['partitioned']:>3} | "
        f"waves {r['waves']:>2}/{r['waves_target']:>2} early {r['early_starts']} late {r['caught_up']:>3} | "
        f"rollout {r['rollout_bakes']:>5.1f} bakes | req/round {r['requests_per_round']:>9.1f} "
        f"(peak {r['peak_requests_per_round']:>7}, busiest pod {r['busiest_pod_requests_per_round']:>5}) | "
        f"bad touched {r['bad_version_pods']} | hold {r['hold_rounds']} rounds (all {r['hold_rounds_all']}) | "
        f"idle {r['idle_requests']} | complete {r['rollout_complete']}, bad settled {r['bad_settled']} | "
        f"cpu {r['cpu_s']} s"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pods", help="one N (default: the table for 100, 1000, 5000)", type=int)
    ap.add_argument("--protocol", choices=["new", "old"], default="new")
    ap.add_argument("--bake", type=float, default=10.0, help="RELOAD_BAKE_S (a round is min(1, bake/4) s)")
    ap.add_argument("--verify", type=float, default=1.0, help="seconds from promote to healthy or failed")
    ap.add_argument("--skew", type=float, default=2.0, help="pods see a version within this many seconds")
    ap.add_argument("--latency", type=float, default=0.005, help="one peer read, s (uniform x0.5-1.5)")
    ap.add_argument("--loss", type=float, default=0.0, help="fraction of reads lost")
    ap.add_argument("--slow", type=float, default=0.0, help="fraction of pods answering 20x slower")
    ap.add_argument("--dead", type=float, default=0.0, help="fraction of pods dead (listed, never answer)")
    ap.add_argument("--partition", type=float, default=0.0, help="fraction of pods cut off during each version")
    ap.add_argument("--timeout", type=float, help="RELOAD_PEER_TIMEOUT_S (default: derived)")
    ap.add_argument("--forget", type=float, help="RELOAD_PEER_FORGET_S (default: derived)")
    ap.add_argument("--kill-canary", action="store_true", help="each version's canary is dead from the start")
    ap.add_argument("--cold-cut", action="store_true", help="the --partition pods start knowing no peer's name")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="one JSON object (needs --pods)")
    a = ap.parse_args()
    sizes = [a.pods] if a.pods else [100, 1000, 5000]
    for n in sizes:
        o = Options(
            n, a.protocol, a.bake, a.verify, a.skew, a.latency, a.loss, a.slow, a.dead, a.partition,
            a.timeout, a.forget, seed=a.seed, kill_canary=a.kill_canary, cold_cut=a.cold_cut,
        )  # fmt: skip
        r = run(o)
        print(json.dumps(r) if a.json else row(r), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
