#!/usr/bin/env python3
"""Coordinated waves at fleet scale: N real sidecars (RELOAD_STAGGER=waves) with a small fake app each.

  python3 bench/fleet.py                 # N = 8, 16, 32
  python3 bench/fleet.py --sizes 8,16,32,64 --bake 1 --json fleet.json

Per N it prints: waves taken for a good version (clusters of promotion times) against ceil(log2(N+1)),
time from the apply to the last pod healthy, pods that ever loaded a bad version (passes validation,
fails health), and the peer /status reads per pod per second while idle and during the rollout
(from each sidecar's reload_sidecar_peer_requests_total).

All sidecars listen on 127.0.0.1 (different ports, peers by a static list) and share one fake app
server in this process: /p/<i>/-/reload makes pod i "load" its target's app.yaml, /p/<i>/health
answers 500 while the loaded config says `broken: true`. The ConfigMap text is the same for every pod.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sidecar.snapshot import read_snapshot  # noqa: E402 - path set up just above
from sidecar.stagger import wave_of, wave_order  # noqa: E402
from tests.kubelet import project  # noqa: E402


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FakeApps:
    """One server standing in for N apps; pod i's config is what it read from its target on its last reload."""

    def __init__(self, targets: list[Path]) -> None:
        self.targets = targets
        self.loaded = ["" for _ in targets]
        self.loaded_broken: set[int] = set()

    async def reload(self, request: web.Request) -> web.Response:
        i = int(request.match_info["i"])
        text = await asyncio.to_thread((self.targets[i] / "app.yaml").read_text)
        self.loaded[i] = text
        if "broken: true" in text:
            self.loaded_broken.add(i)
        return web.Response(text="ok\n")

    async def health(self, request: web.Request) -> web.Response:
        i = int(request.match_info["i"])
        return web.Response(status=500 if "broken: true" in self.loaded[i] else 200)


def get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as r:
        return dict(json.loads(r.read()))


def peer_requests(url: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("reload_sidecar_peer_requests_total "):
                return float(line.split()[1])
    return 0.0


async def until(cond: Any, limit_s: float, every: float = 0.2) -> bool:
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        if await asyncio.to_thread(cond):
            return True
        await asyncio.sleep(every)
    return False


def spawn(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [str(Path(sys.executable).with_name("reload-sidecar")), "run"],  # not a shim (see bench/latency.py)
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def promoted_at(log: Path, version: str) -> float:
    """Wall time of the `promoted` event for `version` in a sidecar's JSON log."""
    for line in log.read_text().splitlines():
        if line.startswith("{") and '"promoted"' in line:
            event = json.loads(line)
            if event.get("event") == "promoted" and event.get("version") == version:
                return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()
    raise SystemExit(f"{log}: no promoted event for {version}")


def cluster(times: list[float], gap: float) -> int:
    """Number of groups in sorted `times` separated by more than `gap`."""
    times = sorted(times)
    return 1 + sum(1 for a, b in zip(times, times[1:], strict=False) if b - a > gap) if times else 0


async def run_size(n: int, bake: float, idle_s: float, tmp: Path) -> dict[str, Any]:
    targets = [tmp / f"pod-{i}" / "target" for i in range(n)]
    volumes = [tmp / f"pod-{i}" / "volume" for i in range(n)]
    apps = FakeApps(targets)
    app = web.Application()
    app.router.add_post("/p/{i}/-/reload", apps.reload)
    app.router.add_get("/p/{i}/health", apps.health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    ports = [free_port() for _ in range(n)]
    peers = ",".join(f"127.0.0.1:{p}" for p in ports)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(n):
            project(volumes[i], {"app.yaml": "version: 1\nbroken: false\n"})
            env = {k: v for k, v in os.environ.items() if not k.startswith("RELOAD_")}
            env["PYTHONPATH"] = str(ROOT)  # this checkout's sidecar, whichever one is installed
            env.update(
                RELOAD_SOURCE_DIR=str(volumes[i]),
                RELOAD_TARGET_DIR=str(targets[i]),
                RELOAD_LISTEN=f"127.0.0.1:{ports[i]}",
                RELOAD_POD_NAME=f"web-{i}",
                RELOAD_PEERS=peers,
                RELOAD_STAGGER="waves",
                RELOAD_BAKE_S=str(bake),
                RELOAD_RELOAD_URL=f"{base}/p/{i}/-/reload",
                RELOAD_HEALTH_URL=f"{base}/p/{i}/health",
                RELOAD_HEALTH_SUCCESSES="2",
                RELOAD_HEALTH_INTERVAL_S="0.1",
                RELOAD_HEALTH_TIMEOUT_S="1",
                RELOAD_DEBOUNCE_MS="50",
                RELOAD_LOG_LEVEL="info",  # the `promoted` events time each pod's start
            )
            procs.append(spawn(env, tmp / f"pod-{i}" / "sidecar.log"))
        urls = [f"http://127.0.0.1:{p}" for p in ports]

        def all_current(version: str | None = None) -> bool:
            try:
                docs = [get_json(u + "/status") for u in urls]
            except OSError:
                return False
            return all(
                d["current"] and (version is None or d["last_good"] == version) and d["state"] == "idle" for d in docs
            )

        if not await until(all_current, 120):
            raise SystemExit(f"N={n}: the fleet did not start")
        for i in range(n):  # the apps start after their sidecars and read their config
            apps.loaded[i] = (targets[i] / "app.yaml").read_text()

        before = [peer_requests(u) for u in urls]
        await asyncio.sleep(idle_s)
        idle_rate = sum(peer_requests(u) - b for u, b in zip(urls, before, strict=True)) / n / idle_s

        # A good version.
        before = [peer_requests(u) for u in urls]
        start = time.time()
        for v in volumes:
            project(v, {"app.yaml": "version: 2\nbroken: false\n"})
        version = read_snapshot(volumes[0]).version
        if not await until(lambda: all_current(version), 60 + 10 * bake * math.log2(n + 1)):
            raise SystemExit(f"N={n}: the good version did not reach every pod")
        rollout_s = time.time() - start
        healthy_at = [get_json(u + "/status")["versions"][version]["since"] for u in urls]
        promoted_rel = sorted(t - start for t in healthy_at)
        # Waves: the wave of each pod's rank in the version's order (the same order every pod computes),
        # checked against time: every pod of wave w must start only after every pod of wave w-1 has been
        # healthy for the bake time. `clusters` counts groups of start times split by gaps over 0.6 x bake
        # (equal to the waves until N sidecars saturate the 2 cores and a wave's starts spread out).
        starts = [promoted_at(tmp / f"pod-{i}" / "sidecar.log", version) - start for i in range(n)]
        healthy = [t - start for t in healthy_at]
        order = wave_order(version, {f"web-{i}" for i in range(n)})
        wave = [wave_of(order.index(f"web-{i}")) for i in range(n)]
        waves = max(wave) + 1
        in_order = all(
            min(s for s, w in zip(starts, wave, strict=True) if w == k)
            >= max(h for h, w in zip(healthy, wave, strict=True) if w == k - 1) + bake - 0.05
            for k in range(1, waves)
        )
        clusters = cluster(starts, bake * 0.6)
        rollout_rate = sum(peer_requests(u) - b for u, b in zip(urls, before, strict=True)) / n / rollout_s

        # A bad version: passes validation, fails health.
        start = time.time()
        for v in volumes:
            project(v, {"app.yaml": "version: 3\nbroken: true\n"})
        bad = read_snapshot(volumes[0]).version

        def settled() -> bool:
            docs = [get_json(u + "/status") for u in urls]
            return all(bad in d["quarantined"] or bad in d["held"] for d in docs) and all(
                d["state"] in ("idle", "held") for d in docs
            )

        held_ok = await until(settled, 60)
        bad_s = time.time() - start
        docs = [get_json(u + "/status") for u in urls]
        res = dict(
            n=n,
            bake_s=bake,
            waves=waves,
            waves_in_order=in_order,
            start_clusters=clusters,
            waves_target=math.ceil(math.log2(n + 1)),
            rollout_s=round(rollout_s, 2),
            first_healthy_s=round(promoted_rel[0], 2),
            bad_touched=len(apps.loaded_broken),
            bad_quarantined=sum(bad in d["quarantined"] for d in docs),
            bad_held=sum(bad in d["held"] for d in docs),
            bad_settled=held_ok,
            bad_settle_s=round(bad_s, 2),
            idle_peer_req_per_pod_s=round(idle_rate, 3),
            rollout_peer_req_per_pod_s=round(rollout_rate, 1),
            end_on_good=all(d["current"] == version for d in docs),
        )
        return res
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
        await runner.cleanup()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="8,16,32")
    ap.add_argument("--bake", type=float, default=1.0)
    ap.add_argument("--idle", type=float, default=10.0, help="idle window for the peer-poll rate (s)")
    ap.add_argument("--json")
    a = ap.parse_args()
    out = []

    for n in (int(x) for x in a.sizes.split(",")):
        with tempfile.TemporaryDirectory(prefix=f"fleet-{n}-") as tmp:
            r = asyncio.run(run_size(n, a.bake, a.idle, Path(tmp)))
        out.append(r)
        print(
            f"N={n:>3}: waves {r['waves']} (target {r['waves_target']}; each after the previous baked: "
            f"{r['waves_in_order']}; start-time clusters {r['start_clusters']}), full rollout {r['rollout_s']:.1f} s "
            f"(bake {a.bake:g} s, canary healthy at {r['first_healthy_s']:.1f} s) | bad version loaded by "
            f"{r['bad_touched']} pod(s), quarantined on {r['bad_quarantined']}, held on {r['bad_held']}, "
            f"settled in {r['bad_settle_s']:.1f} s | peer reads per pod: idle {r['idle_peer_req_per_pod_s']:.2f}/s, "
            f"rollout {r['rollout_peer_req_per_pod_s']:.1f}/s | all on good: {r['end_on_good']}",
            flush=True,
        )
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
