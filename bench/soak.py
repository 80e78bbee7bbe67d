#!/usr/bin/env python3
"""Soak: mixed good and bad versions for a long time on a size-limited tmpfs target (figures only).

  python3 bench/soak.py                       # 20 minutes, real nginx, tmpfs sized by docs/validation.md's arithmetic
  python3 bench/soak.py --minutes 2 --seed 7  # a short run
  python3 bench/soak.py --tmpfs-mib 3         # a target too small for the arithmetic: refusals, then recovery

Needs root (it mounts a tmpfs for the target and unmounts it at the end), nginx, and this checkout.

The real sidecar runs with real nginx (`nginx -t` as the checker, SIGHUP through its pidfile, /health
verified). A kubelet-style `..data` swap is made for each step, chosen at random (seeded):

  good        nginx.conf serving "good-<i>" plus opaque blobs filling up to ~90 % of RELOAD_MAX_TOTAL_BYTES
  bad-health  passes `nginx -t`, /health answers 500: promoted, verified, rolled back, quarantined
  bad-check   `nginx -t` fails: refused before promotion
  bad-yaml    a malformed app.yaml: refused by the parser
  too-big     a blob over RELOAD_MAX_FILE_BYTES: refused while reading
  repeat      a version quarantined earlier comes back: skipped
  burst       5 good swaps in a row, no wait
  damage      the target's `..data` (or everything in the target) is deleted: the next resync repairs it

Every step waits until the sidecar has finished with the step's version. Every 30 s it samples the
sidecar's RSS, fds and threads, the target's entries (version dirs and any partial `..tmp-*`, `..check-*`,
`..del-*`), the tmpfs use, the state file and the `/status` size. At the end a last good version is swapped
in and the run checks: it is live (`..data`), committed (current == last good), served by nginx, `/readyz`
200, no partial dirs, at most RELOAD_HISTORY + 1 version dirs.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from rollback import Sidecar, wait  # noqa: E402 - path set above

from sidecar.snapshot import read_snapshot  # noqa: E402
from tests.e2e.apps import free_port, http_get, nginx_bin, nginx_conf, start_nginx  # noqa: E402
from tests.kubelet import project  # noqa: E402

MAX_FILE, MAX_TOTAL, HISTORY = 512 * 1024, 1024 * 1024, 3
KINDS = {
    "good": 40,
    "bad-health": 20,
    "bad-check": 10,
    "bad-yaml": 8,
    "too-big": 6,
    "repeat": 6,
    "burst": 5,
    "damage": 5,
}
PARTIAL = ("..tmp-", "..check-", "..del-", "..data_tmp", "..link-")
FINAL = {"healthy", "failed", "held"}


class Soak:
    def __init__(self, tmp: Path, target: Path, rng: random.Random, tmpfs_mib: float) -> None:
        self.tmp, self.target, self.rng, self.tmpfs_mib = tmp, target, rng, tmpfs_mib
        self.volume, self.prefix = tmp / "volume", tmp / "nginx"
        (self.prefix / "tmp").mkdir(parents=True)
        self.port = 0
        self.quarantined: list[dict[str, bytes]] = []
        self.counts: collections.Counter[str] = collections.Counter()
        self.stuck: list[str] = []
        self.samples: list[dict[str, Any]] = []
        self.kind = ""

    def payload(self, body: str, *, health: int = 200, check_ok: bool = True, yaml_ok: bool = True) -> dict[str, bytes]:
        conf = nginx_conf(
            self.port, body, self.prefix, health="ok" if health == 200 else "broken", health_status=health
        )
        if not check_ok:
            conf = conf.replace("access_log off;", "access_log off;\n    no_such_directive on;")
        files = {"nginx.conf": conf.encode(), "app.yaml": b"app: {name: soak" + (b"}\n" if yaml_ok else b"\n")}
        room = int(MAX_TOTAL * 0.9) - sum(map(len, files.values()))
        for n in range(self.rng.randint(0, 3)):
            size = self.rng.randint(room // 8, room // 3)
            files[f"blob{n}.bin"] = self.rng.randbytes(size)
        return files

    def version_of(self) -> str:
        return read_snapshot(self.volume, max_file_bytes=MAX_FILE, max_total_bytes=MAX_TOTAL).version

    def status(self) -> dict[str, Any]:
        code, body = http_get(f"http://127.0.0.1:{self.car.port}/status")
        if code != 200:
            raise OSError(f"/status {code}")
        doc: dict[str, Any] = json.loads(body)
        return doc

    def settled(self, v: str) -> bool:
        st = self.status()
        done = st["versions"].get(v, {}).get("state") in FINAL or v in st["quarantined"] or v in st["refused"]
        return done and st["state"] in ("idle", "degraded", "held")

    def swap(self, files: dict[str, bytes], *, wait_done: bool = True) -> str:
        project(self.volume, files)
        v = self.version_of()
        if wait_done:
            try:
                wait(lambda: self.settled(v), 60, f"version {v} settled")
            except SystemExit:
                self.stuck.append(f"{self.kind} {v}")
        return v

    def step(self, i: int) -> None:
        kind = self.rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
        if kind == "repeat" and not self.quarantined:
            kind = "good"
        self.counts[kind] += 1
        self.kind = kind
        if kind == "good":
            self.swap(self.payload(f"good-{i}"))
        elif kind == "bad-health":
            files = self.payload(f"bad-{i}", health=500)
            self.swap(files)
            self.quarantined = [*self.quarantined[-20:], files]
        elif kind == "bad-check":
            self.swap(self.payload(f"badcheck-{i}", check_ok=False))
        elif kind == "bad-yaml":
            self.swap(self.payload(f"badyaml-{i}", yaml_ok=False))
        elif kind == "too-big":
            files = self.payload(f"big-{i}")
            files["huge.bin"] = self.rng.randbytes(MAX_FILE + 1)
            self.swap(files)
        elif kind == "repeat":
            self.swap(self.rng.choice(self.quarantined))
        elif kind == "burst":
            for n in range(5):
                self.swap(self.payload(f"burst-{i}-{n}"), wait_done=n == 4)
        elif kind == "damage":
            self.damage()

    def damage(self) -> None:
        before = self.status()["current"]
        if self.rng.random() < 0.5:
            os.unlink(self.target / "..data")
        else:
            for entry in os.scandir(self.target):  # the sidecar may rename a temp file meanwhile
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    Path(entry.path).unlink(missing_ok=True)
        try:
            wait(lambda: (self.target / "nginx.conf").is_file() and self.status()["current"] == before, 60, "repair")
        except SystemExit:
            self.stuck.append(f"damage of {before}")

    def sample(self, t0: float) -> None:
        pid = self.car.proc.pid
        proc = Path(f"/proc/{pid}")
        status = dict(line.split(":", 1) for line in (proc / "status").read_text().splitlines() if ":" in line)
        names = os.listdir(self.target)
        usage = shutil.disk_usage(self.target)
        state_file = self.target / "..reload-sidecar-state.json"
        _, body = http_get(f"http://127.0.0.1:{self.car.port}/status")
        st = json.loads(body)
        self.samples.append(
            {
                "min": round((time.monotonic() - t0) / 60, 1),
                "rss_mb": int(status["VmRSS"].split()[0]) / 1024,
                "fds": len(os.listdir(proc / "fd")),
                "threads": int(status["Threads"]),
                "versions": sum(n.startswith("..v-") for n in names),
                "partial": sum(n.startswith(PARTIAL) for n in names),
                "used_mib": usage.used / 2**20,
                "state_b": state_file.stat().st_size if state_file.exists() else 0,
                "status_b": len(body),
                "quarantined": len(st["quarantined"]),
                "refused": len(st["refused"]),
            }
        )


def metrics(port: int) -> dict[str, float]:
    _, text = http_get(f"http://127.0.0.1:{port}/metrics")
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("reload_sidecar_") and not line.startswith("reload_sidecar_reload_duration"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[name] = float(value)
    return out


def mount_tmpfs(path: Path, mib: float) -> None:
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(mib * 1024)}k,mode=0755", "tmpfs", str(path)], check=True)


def run(args: argparse.Namespace, tmp: Path, stack: contextlib.ExitStack) -> int:
    target = tmp / "target"
    mount_tmpfs(target, args.tmpfs_mib)
    stack.callback(subprocess.run, ["umount", "-l", str(target)], check=False)
    soak = Soak(tmp, target, random.Random(args.seed), args.tmpfs_mib)
    soak.port = free_port()
    project(soak.volume, soak.payload("good-start"))
    env = {
        "RELOAD_SOURCE_DIR": str(soak.volume),
        "RELOAD_TARGET_DIR": str(target),
        "RELOAD_VALIDATE_COMMAND": f"{nginx_bin()} -t -q -c {{dir}}/nginx.conf",
        "RELOAD_SIGNAL": "SIGHUP",
        "RELOAD_PIDFILE": str(soak.prefix / "nginx.pid"),
        "RELOAD_HEALTH_URL": f"http://127.0.0.1:{soak.port}/health",
        "RELOAD_HEALTH_SUCCESSES": "2",
        "RELOAD_HEALTH_INTERVAL_S": "0.1",
        "RELOAD_HEALTH_TIMEOUT_S": "1",
        "RELOAD_RESYNC_S": "2",
        "RELOAD_HISTORY": str(HISTORY),
        "RELOAD_MAX_FILE_BYTES": str(MAX_FILE),
        "RELOAD_MAX_TOTAL_BYTES": str(MAX_TOTAL),
    }
    soak.car = car = Sidecar(tmp, env)
    stack.callback(car.stop)
    ngx = start_nginx(soak.prefix, target / "nginx.conf", soak.port)
    stack.callback(ngx.stop)
    t0, i, next_sample = time.monotonic(), 0, 0.0
    while time.monotonic() - t0 < args.minutes * 60:
        if time.monotonic() - t0 >= next_sample:
            soak.sample(t0)
            next_sample += 30
        soak.step(i)
        i += 1
    soak.sample(t0)
    final_files = soak.payload("final-good")
    final = soak.swap(final_files)
    soak.sample(t0)
    status = report(soak, i, final, ngx, metrics(car.port))
    if args.keep_log:
        shutil.copy(car.log_path, args.keep_log)
        events = collections.Counter(e["event"] for e in car.log.poll() if e.get("level") in ("warning", "error"))
        print("warnings and errors logged:", dict(events.most_common()))
    return status


def report(soak: Soak, steps: int, final: str, ngx: Any, m: dict[str, float]) -> int:
    st = soak.status()
    names = os.listdir(soak.target)
    checks = {
        "final version live (..data)": os.readlink(soak.target / "..data") == f"..v-{final}",
        "final version committed (current == last_good)": st["current"] == st["last_good"] == final,
        "nginx serves it": ngx.get("/") == (200, "final-good"),
        "/readyz 200": http_get(f"http://127.0.0.1:{soak.car.port}/readyz")[0] == 200,
        "no partial dirs": not any(n.startswith(PARTIAL) for n in names),
        f"version dirs <= HISTORY + 1 ({HISTORY + 1})": sum(n.startswith("..v-") for n in names) <= HISTORY + 1,
        f"no step stuck {soak.stuck}": not soak.stuck,
    }
    cols = list(soak.samples[0])
    print(f"steps: {steps}; kinds: {dict(soak.counts)}")
    print("  ".join(f"{c:>11}" for c in cols))
    for s in soak.samples:
        print("  ".join(f"{s[c]:>11.1f}" if isinstance(s[c], float) else f"{s[c]:>11}" for c in cols))
    warm = [s for s in soak.samples if s["min"] >= 2] or soak.samples
    rss = [s["rss_mb"] for s in warm]
    print(f"RSS after 2 min: first {rss[0]:.1f} MB, last {rss[-1]:.1f} MB, max {max(rss):.1f} MB")
    state_max, status_max = max(s["state_b"] for s in soak.samples), max(s["status_b"] for s in soak.samples)
    print(f"max state file {state_max} B; max /status {status_max} B")
    print(f"max tmpfs use {max(s['used_mib'] for s in soak.samples):.2f} MiB of {soak.tmpfs_mib:.2f} MiB")
    for name in sorted(m):
        if m[name]:
            print(f"  {name} {m[name]:g}")
    for what, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {what}")
    return 0 if all(checks.values()) else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=20)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep-log", type=Path, help="copy the sidecar's JSON log here at the end")
    # docs/validation.md's sizing: (RELOAD_HISTORY + 2) versions of RELOAD_MAX_TOTAL_BYTES, plus 1 MiB of slack.
    ap.add_argument("--tmpfs-mib", type=float, default=(HISTORY + 2) * MAX_TOTAL / 2**20 + 1)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/soak.py mounts a tmpfs for the target: run it as root")
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as t, contextlib.ExitStack() as stack:
        return run(args, Path(t), stack)


if __name__ == "__main__":
    sys.exit(main())
