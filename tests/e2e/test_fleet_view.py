"""`reload-sidecar fleet` against real sidecars: run inside one pod, as `kubectl exec` would run it.

8 pods in network namespaces (tests/e2e/test_waves.py's fleet: a real nginx behind each sidecar) roll a
good version out in waves while `fleet --watch --json` runs in one of them; then a version that fails
health is held; then one pod is killed and another frozen (it accepts connections and never answers).
Three sidecars on loopback with `ordinal` stagger show the view without waves documents, and the
in-place redraw on a terminal. Assertions are on order and events, never on how long something took.
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from sidecar.snapshot import read_snapshot
from sidecar.stagger import wave_of, wave_order
from tests.e2e.apps import free_port
from tests.e2e.receiver import always, serving
from tests.e2e.sidecar_proc import Sidecar, wait_for
from tests.e2e.test_waves import Pod, apply, conf, fleet
from tests.kubelet import project

# A pod's progress through a version, as the view shows it: each pod only ever moves forward.
_STAGES = ["before", "validating", "waiting", "updating", "baking", "idle"]


def _env(car: Sidecar) -> dict[str, str]:
    """The environment `kubectl exec -c reload-sidecar` gives: the sidecar container's."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("RELOAD_")}, **car.env}


def _argv(pod: Pod | None, *args: str) -> list[str]:
    prefix = ["ip", "netns", "exec", pod.netns] if pod is not None else []
    return [*prefix, sys.executable, "-m", "sidecar", "fleet", *args]


def look(car: Sidecar, pod: Pod | None = None, *args: str) -> subprocess.CompletedProcess[str]:
    """One `reload-sidecar fleet` in `pod` (its netns) with `car`'s environment; hang protection only."""
    proc = subprocess.run(_argv(pod, *args), env=_env(car), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc


@contextmanager
def watching(car: Sidecar, pod: Pod | None, out: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`fleet --watch --json` in the background, one JSON document per line into `out`; ended by SIGINT."""
    err = out.with_suffix(".stderr")
    with open(out, "wb") as f, open(err, "wb") as e:
        proc = subprocess.Popen(_argv(pod, "--watch", "--json", "--interval", "0.2"), env=_env(car), stdout=f, stderr=e)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # Ctrl-C: exit 0
            try:
                assert proc.wait(15) == 0, err.read_text()
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)


def frames(out: Path) -> list[dict[str, Any]]:
    """The complete JSON lines written so far."""
    return [json.loads(line) for line in out.read_text().splitlines(keepends=True) if line.endswith("\n")]


def stage(row: dict[str, Any], version: str) -> int:
    if row["live"] == version and row["state"] in ("baking", "idle"):
        return _STAGES.index(row["state"])
    if row["version"] != version:
        return 0
    return _STAGES.index(row["state"])


def version_of(body: str) -> str:
    """The version hash every pod will compute for the ConfigMap text with this body (known before the push)."""
    return read_snapshot_of({"nginx.conf": conf(body)})


def read_snapshot_of(files: dict[str, str]) -> str:
    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / f"fleet-view-{os.getpid()}-{time.monotonic_ns()}"  # noqa: S108
    project(scratch, files)
    try:
        return read_snapshot(scratch).version
    finally:
        subprocess.run(["rm", "-rf", str(scratch)], check=True)


@pytest.mark.timeout(240)
def test_rollout_in_waves_then_a_held_version_then_dead_pods(tmp_path: Path) -> None:
    n = 8
    with fleet(tmp_path, n) as pods:
        names = {p.name for p in pods}
        good = version_of("v2")
        order = wave_order(good, names)
        # Run in the last pod of the order: its own /status, read first, is the last to change, so every
        # frame is consistent (no pod of a later wave shown on the version before an earlier wave).
        viewer = next(p for p in pods if p.name == order[-1])
        assert viewer.car is not None

        # Settled fleet: every pod on v1, nothing in flight; the table and the JSON say the same.
        doc = json.loads(look(viewer.car, viewer, "--json").stdout)
        v1 = viewer.car.status()["current"]
        assert doc["read_from"] == viewer.name and doc["stagger"] == "waves" and doc["versions"] == []
        assert sorted((e["pod"], e["reachable"], e["live"], e["state"]) for e in doc["pods"]) == [
            (name, True, v1, "idle") for name in sorted(names)
        ]
        text = look(viewer.car, viewer).stdout
        assert f"no version in flight: every pod that answered is on {v1}" in text

        out = tmp_path / "watch.jsonl"
        with watching(viewer.car, viewer, out):
            assert apply(pods, "v2") == good

            def finished() -> bool:
                seen = frames(out)
                return bool(seen) and not seen[-1]["versions"] and all(e["live"] == good for e in seen[-1]["pods"])

            wait_for(finished, 90, 0.2, what="the watch showing v2 everywhere, nothing in flight")
        seen = frames(out)
        rollout = [f for f in seen if any(v["version"] == good for v in f["versions"])]
        assert rollout, "no frame showed v2 in flight"
        # Frames in which the pods' waves documents already agree on the order (a pod that has not yet named
        # every peer publishes another order for a moment; the view then shows no wave rather than a guess).
        ranked = [f for f in rollout if f["versions"][0]["waves"] is not None]
        assert ranked, "no frame showed the waves"
        for frame in rollout:
            rows = frame["pods"]
            assert len(rows) == n and all(r["reachable"] for r in rows)
            [line] = frame["versions"]
            healthy = {r["pod"] for r in rows if r["live"] == good and r["state"] in ("baking", "idle")}
            for r in rows:  # waves one after the other: a pod on v2 only once every earlier wave is healthy
                if r["live"] == good:
                    earlier = order[: (1 << wave_of(order.index(r["pod"]))) - 1]
                    assert set(earlier) <= healthy, (r["pod"], earlier, healthy)
            assert (line["of"], line["held"], line["on"]) == (n, False, len(healthy))
            if frame not in ranked:
                continue
            # rows in the version's order, with each pod's wave and rank; the line's wave is the first not whole
            assert [r["pod"] for r in rows] == order
            assert [(r["wave"], r["rank"]) for r in rows if r["version"] == good] == [
                (wave_of(order.index(r["pod"])), order.index(r["pod"])) for r in rows if r["version"] == good
            ]
            whole = [all(p in healthy for r, p in enumerate(order) if wave_of(r) == w) for w in range(4)]
            assert (line["waves"], line["wave"]) == (4, whole.index(False) if False in whole else 4)
        assert any(0 < f["versions"][0]["on"] < n for f in rollout), "no frame during the waves"
        # Each pod only moves forward (v1 idle, validating, waiting, updating, baking, idle on v2), and so
        # does the line: pods on the version and the wave under way.
        for name in names:
            stages = [stage(next(r for r in f["pods"] if r["pod"] == name), good) for f in seen]
            assert stages == sorted(stages), (name, stages)
        counts = [f["versions"][0]["on"] for f in rollout]
        waves = [f["versions"][0]["wave"] for f in ranked]
        assert counts == sorted(counts) and waves == sorted(waves)
        assert {r["state"] for f in rollout for r in f["pods"]} >= {"waiting", "idle"}

        # A version nginx -t accepts but that fails health: the canary rolls back, every other pod holds it.
        bad = apply(pods, "v3-broken", health_status=500)
        canary = wave_order(bad, names)[0]

        def settled() -> bool:
            states = {p.name: p.car.status() for p in pods if p.car}
            return all(bad in st["quarantined"] if name == canary else bad in st["held"] for name, st in states.items())

        wait_for(settled, 60, 0.2, what="canary rolled back and the others held")
        doc = json.loads(look(viewer.car, viewer, "--json").stdout)
        rows = {r["pod"]: r for r in doc["pods"]}
        assert rows[canary]["state"] == "rolled_back" and rows[canary]["live"] == good
        assert "failed at verify" in rows[canary]["last_error"]
        assert {name: r["state"] for name, r in rows.items() if name != canary} == dict.fromkeys(
            names - {canary}, "held"
        )
        [line] = doc["versions"]
        assert (line["version"], line["on"], line["of"], line["held"]) == (bad, 0, n, True)
        assert line["why"].startswith(f"rolled back on {canary} at verify: ")
        text = look(viewer.car, viewer).stdout
        assert f"version {bad}: 0 of {n} pods ({n - 1} held, 1 rolled_back); HELD: rolled back on {canary} at" in text

        # One pod killed (by its pid), one frozen: both shown unreachable, by name, and the view still comes.
        others = [p for p in pods if p is not viewer and p.name != canary]
        dead, frozen = others[0], others[1]
        assert dead.car is not None and dead.car.proc is not None
        assert frozen.car is not None and frozen.car.proc is not None
        dead.car.kill()
        os.kill(frozen.car.proc.pid, signal.SIGSTOP)
        try:
            doc = json.loads(look(viewer.car, viewer, "--json").stdout)
        finally:
            os.kill(frozen.car.proc.pid, signal.SIGCONT)
        rows = {r["pod"]: r for r in doc["pods"]}
        assert set(rows) == names and doc["unreachable"] == 2
        for gone in (dead, frozen):
            assert rows[gone.name]["state"] == "unreachable" and rows[gone.name]["address"] == f"{gone.ip}:9533"
            assert rows[gone.name]["rank"] == wave_order(bad, names).index(gone.name)  # its place in the order
        assert all(r["reachable"] for name, r in rows.items() if name not in (dead.name, frozen.name))
        assert doc["versions"][0]["of"] == n


def _ordinal_pods(tmp_path: Path, stack: ExitStack, url: str, n: int) -> list[Sidecar]:
    ports = [free_port() for _ in range(n)]
    peers = ",".join(f"127.0.0.1:{port}" for port in ports)
    cars = []
    for i, port in enumerate(ports):
        volume = tmp_path / f"web-{i}" / "volume"
        project(volume, {"app.yaml": "v: 1\n"})
        car = Sidecar(
            volume,
            tmp_path / f"web-{i}" / "target",
            tmp_path / f"web-{i}",
            port=port,
            RELOAD_RELOAD_URL=url,
            RELOAD_STAGGER="ordinal:3",
            RELOAD_POD_NAME=f"web-{i}",
            RELOAD_PEERS=peers,
        ).start()
        stack.callback(car.kill)
        cars.append(car)
    for car in cars:
        car.wait_current()
    return cars


@pytest.mark.timeout(120)
def test_ordinal_stagger_version_and_state_per_pod_and_the_redraw(tmp_path: Path) -> None:
    """Without waves documents: version and state per pod, no wave or rank; found through RELOAD_PEERS
    (/peers names nobody outside waves mode). And `--watch` on a terminal redraws in place."""
    with serving(always(200)) as app, ExitStack() as stack:
        cars = _ordinal_pods(tmp_path, stack, app.url + "/-/reload", 3)
        v1 = cars[0].status()["current"]
        out = tmp_path / "watch.jsonl"
        with watching(cars[1], None, out):
            for car in cars:
                project(car.source, {"app.yaml": "v: 2\n"})
            new = read_snapshot(cars[0].source).version
            wait_for(lambda: all(healthy_at_car(c, new) for c in cars), 30, 0.2, what="v2 on every pod")
            wait_for(lambda: frames(out) and not frames(out)[-1]["versions"], 30, 0.2, what="the view settled")
        seen = frames(out)
        assert {(f["stagger"], len(f["pods"]), f["read_from"]) for f in seen} == {("ordinal", 3, "web-1")}
        for f in seen:
            assert [r["pod"] for r in f["pods"]] == ["web-0", "web-1", "web-2"]
            assert all(r["wave"] is None and r["rank"] is None for r in f["pods"])
            for line in f["versions"]:
                assert (line["version"], line["of"], line["wave"], line["bake_left_s"]) == (new, 3, None, None)
        for i in range(3):
            stages = [stage(f["pods"][i], new) for f in seen]
            assert stages == sorted(stages) and stages[-1] == _STAGES.index("idle"), (i, stages)
        assert any(f["pods"][2]["state"] == "waiting" for f in seen), "web-2 (6 s of delay) never shown waiting"
        assert any(line["on"] == 1 for f in seen for line in f["versions"])
        assert v1 != new

        # --watch on a terminal: cleared once, then each frame drawn over the last (cursor home, lines
        # cleared to their end), until Ctrl-C (exit 0).
        master, slave = pty.openpty()
        proc = subprocess.Popen(
            _argv(None, "--watch", "--interval", "0.2"), env=_env(cars[0]), stdout=slave, stderr=subprocess.DEVNULL
        )
        os.close(slave)
        try:
            got = b""
            deadline = time.monotonic() + 30
            while got.count(b"\x1b[H") < 3 and time.monotonic() < deadline:
                if select.select([master], [], [], 1)[0]:
                    got += os.read(master, 65536)
        finally:
            proc.send_signal(signal.SIGINT)
            code = proc.wait(15)
            os.close(master)
        assert code == 0
        assert got.startswith(b"\x1b[2J\x1b[H") and got.count(b"\x1b[2J") == 1
        assert got.count(b"\x1b[H") >= 3
        first = got.split(b"\x1b[H")[1].decode().replace("\r\n", "\n")  # the terminal's own line ends
        assert "reload-sidecar fleet: 3 pods (0 unreachable), stagger ordinal; read from web-0" in first
        assert f"no version in flight: every pod that answered is on {new}" in first
        assert all(line.endswith("\x1b[K") for line in first.split("\n")[:-1])


def healthy_at_car(car: Sidecar, version: str) -> bool:
    entry = car.status()["versions"].get(version)
    return bool(entry and entry["state"] == "healthy")
