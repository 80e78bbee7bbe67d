"""Staggered promotion across real sidecars, each in front of its own real nginx, in pods of their own.

    pod web-i = network namespace (tests/e2e/netns.py), pod IP 10.213.k.(i+1):
        volume-i (kubelet-style) -> sidecar-i (:9533, RELOAD_PEERS = every pod IP:9533) -> nginx-i (:8080)
    one "kubectl apply" = the same nginx.conf text projected into every volume-i at (nearly) the same time

Every pod gets byte-identical config (relative paths, the same port), as from one ConfigMap, so every
pod computes the same version hash; that is what makes the coordinated waves possible.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime
from pathlib import Path

import pytest

from sidecar.snapshot import read_snapshot
from sidecar.stagger import wave_of, wave_order
from tests.e2e.apps import NginxProc, nginx_bin, nginx_conf, start_nginx
from tests.e2e.netns import cut_off, heal, pod_network
from tests.e2e.receiver import always, serving
from tests.e2e.sidecar_proc import Sidecar, http_get, wait_for
from tests.kubelet import project

BAKE_S = 1.0
APP_PORT, SIDECAR_PORT = 8080, 9533


def conf(body: str, health_status: int = 200) -> str:
    """The ConfigMap's nginx.conf: the same text for every pod."""
    return nginx_conf(APP_PORT, body, None, health_status=health_status, listen="")


class Pod:
    def __init__(self, root: Path, i: int, netns: str, ip: str) -> None:
        self.name, self.netns, self.ip = f"web-{i}", netns, ip
        self.dir = root / self.name
        self.prefix, self.volume, self.target = self.dir / "nginx", self.dir / "volume", self.dir / "target"
        (self.prefix / "tmp").mkdir(parents=True)
        self.car: Sidecar | None = None
        self.nginx: NginxProc | None = None

    def sidecar(self, peers: str) -> Sidecar:
        checker = f"{nginx_bin()} -t -q -p {self.prefix}/ -c {{dir}}/nginx.conf"
        return Sidecar(
            self.volume,
            self.target,
            self.dir,
            netns=self.netns,
            host=self.ip,
            port=SIDECAR_PORT,
            RELOAD_POD_NAME=self.name,
            RELOAD_PEERS=peers,
            RELOAD_STAGGER="waves",
            RELOAD_BAKE_S=str(BAKE_S),
            RELOAD_VALIDATE_COMMAND=checker,
            RELOAD_SIGNAL="SIGHUP",
            RELOAD_PIDFILE=str(self.prefix / "nginx.pid"),
            RELOAD_HEALTH_URL=f"http://127.0.0.1:{APP_PORT}/health",
            RELOAD_HEALTH_SUCCESSES="2",
            RELOAD_HEALTH_INTERVAL_S="0.2",
            RELOAD_HEALTH_TIMEOUT_S="3",
            RELOAD_LOG_LEVEL="info",
        )


@contextmanager
def fleet(tmp_path: Path, n: int) -> Iterator[list[Pod]]:
    with pod_network(n) as net, ExitStack() as stack:
        pods = [Pod(tmp_path, i, ns, ip) for i, (ns, ip) in enumerate(net)]
        peers = ",".join(f"{pod.ip}:{SIDECAR_PORT}" for pod in pods)
        for pod in pods:
            project(pod.volume, {"nginx.conf": conf("v1")})
            pod.car = pod.sidecar(peers).start(wait_healthy=False)
            stack.callback(pod.car.kill)
        for pod in pods:
            assert pod.car is not None
            pod.car.wait_current(timeout=30)
            pod.nginx = stack.enter_context(
                start_nginx(pod.prefix, pod.target / "nginx.conf", APP_PORT, netns=pod.netns, host=pod.ip)
            )
        yield pods


def apply(pods: list[Pod], body: str, health_status: int = 200) -> str:
    """One ConfigMap update: every pod's volume gets it at (nearly) the same time; returns its version."""
    for pod in pods:
        project(pod.volume, {"nginx.conf": conf(body, health_status)})
    versions = {read_snapshot(pod.volume).version for pod in pods}
    assert len(versions) == 1, "every pod must see the same content"
    return versions.pop()


def healthy_at(pod: Pod, version: str) -> float | None:
    assert pod.car is not None
    entry = pod.car.status()["versions"].get(version)
    return float(entry["since"]) if entry and entry["state"] == "healthy" else None


def promoted_at(pod: Pod, version: str) -> float | None:
    """Wall time of this pod's `promoted` log event for `version`."""
    assert pod.car is not None
    for ev in pod.car.events("promoted"):
        if ev.get("version") == version:
            return datetime.fromisoformat(ev["timestamp"].replace("Z", "+00:00")).timestamp()
    return None


def reached_only_the_canary(pods: list[Pod], good: str, bad: str) -> str:
    """Wait until `bad`'s canary has rolled it back (quarantined) and every other pod holds it, then check,
    a bake later, that every pod runs `good` and only the canary ever promoted `bad`; returns the canary."""
    canary = wave_order(bad, {p.name for p in pods})[0]

    def settled() -> bool:
        states = {p.name: p.car.status() for p in pods if p.car}
        return all(bad in st["quarantined"] if name == canary else bad in st["held"] for name, st in states.items())

    wait_for(settled, 60, 0.2, what="canary rolled back and the others held")
    time.sleep(BAKE_S)  # nothing else moves afterwards
    for pod in pods:
        assert pod.car is not None and pod.nginx is not None
        st = pod.car.status()
        assert st["current"] == st["last_good"] == good, pod.name
        assert pod.nginx.get("/") == (200, "v2")
        touched = [e for e in pod.car.events("promoted") if e["version"] == bad]
        assert len(touched) == (1 if pod.name == canary else 0), pod.name
        assert not [e for e in pod.car.events("committed") if e.get("version") == bad], pod.name
        if pod.name != canary:
            assert st["versions"][bad]["state"] == "held"
            assert pod.car.metrics()["reload_sidecar_held_total"] == 1.0
    return canary


@pytest.mark.timeout(150)
def test_good_version_rolls_out_in_log2_waves_and_bad_one_reaches_one_pod(tmp_path: Path) -> None:
    """8 pods: a good version goes 1, 2, 4, 1 pods per wave, each wave after the previous baked; a version
    that passes nginx -t but fails health reaches exactly one pod, which rolls back, and all others hold it."""
    n = 8
    with fleet(tmp_path, n) as pods:
        good = apply(pods, "v2")
        wait_for(lambda: all(healthy_at(p, good) for p in pods), 60, 0.2, what="v2 healthy everywhere")
        for pod in pods:
            assert pod.nginx is not None and pod.nginx.get("/") == (200, "v2")
        order = wave_order(good, {p.name for p in pods})
        by_name = {p.name: p for p in pods}
        waves: dict[int, list[str]] = {}
        for rank, name in enumerate(order):
            waves.setdefault(wave_of(rank), []).append(name)
        assert [len(w) for w in waves.values()] == [1, 2, 4, 1]
        assert len(waves) == math.ceil(math.log2(n + 1))
        for w in range(1, len(waves)):
            earlier_healthy = max(healthy_at(by_name[p], good) or 0 for p in waves[w - 1])
            for name in waves[w]:
                start = promoted_at(by_name[name], good)
                assert start is not None
                assert start >= earlier_healthy + BAKE_S - 0.05, f"wave {w} ({name}) started before wave {w - 1} baked"

        bad = apply(pods, "v3-broken", health_status=500)
        reached_only_the_canary(pods, good, bad)
        assert sum(p.car.metrics()["reload_sidecar_rollbacks_total"] for p in pods if p.car) == 1.0

        # Settled: no pod reads any other (the tree rounds end with the hold); /peers names the fleet.
        before = [p.car.metrics()["reload_sidecar_peer_requests_total"] for p in pods if p.car]
        time.sleep(3 * BAKE_S)
        assert [p.car.metrics()["reload_sidecar_peer_requests_total"] for p in pods if p.car] == before
        assert pods[0].car is not None
        code, body = http_get(pods[0].car.url + "/peers")
        assert code == 200 and set(json.loads(body)["peers"]) == {p.name for p in pods}  # itself too


@pytest.mark.timeout(120)
def test_pod_killed_mid_rollout_does_not_block_the_others(tmp_path: Path) -> None:
    """A pod SIGKILLed while a version rolls out is left out; every other pod still gets the version."""
    with fleet(tmp_path, 4) as pods:
        good = apply(pods, "v2")
        order = wave_order(good, {p.name for p in pods})
        victim = next(p for p in pods if p.name == order[0])  # the canary: everybody else waits for it
        assert victim.car is not None
        victim.car.kill()
        others = [p for p in pods if p is not victim]
        started = time.monotonic()
        wait_for(lambda: all(healthy_at(p, good) for p in others), 60, 0.2, what="the others finish")
        assert time.monotonic() - started < 40
        for pod in others:
            assert pod.nginx is not None and pod.nginx.get("/") == (200, "v2")


@pytest.mark.timeout(120)
def test_newer_version_supersedes_one_still_rolling(tmp_path: Path) -> None:
    """A newer good version pushed while an older one is still rolling: every pod ends on the newer one."""
    with fleet(tmp_path, 4) as pods:
        v2 = apply(pods, "v2")
        wait_for(lambda: any(healthy_at(p, v2) for p in pods), 30, 0.1, what="v2 canary healthy")
        v3 = apply(pods, "v3")
        wait_for(lambda: all(healthy_at(p, v3) for p in pods), 60, 0.2, what="v3 everywhere")
        for pod in pods:
            assert pod.car is not None and pod.nginx is not None
            assert pod.car.status()["current"] == v3
            assert pod.nginx.get("/") == (200, "v3")


@pytest.mark.parametrize(
    ("stagger", "pod", "low", "high"),
    # high: the stagger delay plus 2 s for the sidecar to notice, check, promote and call the app on a busy machine
    [("ordinal:0.6", "web-3", 1.8, 3.8), ("ordinal:0.6", "web-0", 0.0, 2.0), ("random:1.5", "web-1", 0.0, 3.5)],
)
def test_random_and_ordinal_delays_fall_in_their_windows(
    tmp_path: Path, stagger: str, pod: str, low: float, high: float
) -> None:
    """ordinal:<step> waits ordinal x step; random:<max> waits within [0, max] (plus reaction time)."""
    volume, target = tmp_path / "volume", tmp_path / "target"
    project(volume, {"app.yaml": "v: 1\n"})
    with serving(always(200)) as app:
        car = Sidecar(
            volume,
            target,
            tmp_path,
            RELOAD_RELOAD_URL=app.url + "/-/reload",
            RELOAD_STAGGER=stagger,
            RELOAD_POD_NAME=pod,
            RELOAD_DEBOUNCE_MS="0",
        ).start()
        try:
            car.wait_current()
            assert app.count() == 0, "start-up is never staggered: the app waits for its first config"
            for round_ in range(2):
                project(volume, {"app.yaml": f"v: {round_ + 2}\n"})
                swapped = time.monotonic()
                wait_for(lambda r=round_: app.count() == r + 1, high + 5, 0.01, what="staggered reload")
                delay = app.calls[-1][0] - swapped
                assert low <= delay <= high, f"{stagger} {pod}: reload after {delay:.2f} s"
        finally:
            car.stop()


def _went_with(pod: Pod, version: str) -> bool:
    assert pod.car is not None
    return any(e.get("version") == version for e in pod.car.events("promoted"))


def _settled_on(pods: list[Pod], version: str) -> bool:
    """Every pod quarantined `version` (it applied it and rolled back) or holds it."""
    states = [p.car.status() for p in pods if p.car]
    return len(states) == len(pods) and all(version in st["quarantined"] or version in st["held"] for st in states)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("when", ["after a sidecar restart", "right after fleet start"])
def test_pods_cut_off_never_decide_alone(tmp_path: Path, when: str) -> None:
    """7 pods; 2 are cut off from the rest before they could name their peers (their sidecars restarted:
    the names were only in memory; or the cut came before any version made them read each other). A
    version that fails health reaches one pod: the majority's canary. The cut pods count the addresses
    they cannot name, see 1 of 7, wait for a majority, and hold the version once the cut heals."""
    with fleet(tmp_path, 7) as pods:
        cut, rest = pods[:2], pods[2:]
        body = "v1"
        if when == "after a sidecar restart":
            body = "v2"
            good = apply(pods, body)
            wait_for(lambda: all(healthy_at(p, good) for p in pods), 60, 0.2, what="v2 healthy everywhere")
            for pod in cut:
                assert pod.car is not None
                pod.car.kill()
                pod.car.start().wait_current(good, timeout=30)
        live = read_snapshot(pods[0].volume).version
        for pod in cut:
            cut_off(pod.netns, [p.ip for p in pods if p is not pod])
        bad = apply(pods, "v3-broken", health_status=500)

        def waits_for_majority(pod: Pod) -> bool:
            assert pod.car is not None
            return any(e.get("version") == bad and "majority" in e["why"] for e in pod.car.events("wave_wait"))

        # Each cut pod went with it (the defect) or waits for a majority (where it stays while cut).
        wait_for(
            lambda: all(_went_with(p, bad) or waits_for_majority(p) for p in cut) and _settled_on(rest, bad),
            120,
            0.3,
            what="the cut pods decided and the majority settled",
        )
        for pod in cut:
            heal(pod.netns, [p.ip for p in pods if p is not pod])
        wait_for(lambda: _settled_on(pods, bad), 90, 0.3, what="every pod quarantined or held the bad version")
        touched = sorted(p.name for p in pods if _went_with(p, bad))
        assert len(touched) == 1, f"the bad version reached {touched}"
        for pod in cut:
            assert pod.car is not None and pod.nginx is not None
            st = pod.car.status()
            assert st["current"] == st["last_good"] == live and bad in st["held"], pod.name
            assert pod.nginx.get("/") == (200, body)
        assert sum(p.car.metrics()["reload_sidecar_rollbacks_total"] for p in pods if p.car) == 1.0
