#!/usr/bin/env python3
"""reload-sidecar latency, footprint and throughput, printed as figures (nothing asserted).

  python3 bench/latency.py                     # all sections, ~2 minutes
  python3 bench/latency.py --peer /tmp/peers/configmap-reload   # + the same runs for configmap-reload
  python3 bench/latency.py --only swap,storm --swaps 300 --json out.json

Sections:
  swap     kubelet-style `..data` swap done -> reload POST received by a loopback receiver: p50/p90/p99/max
           over --swaps swaps (debounce 0, parse-only validation); duplicates and misses counted.
  nginx    the same with `nginx -t` as the checker (RELOAD_VALIDATE_COMMAND), if nginx is installed.
  storm    --storm swaps within 1 s (default debounce 200 ms) -> reload POSTs received.
  idle     RSS and CPU (utime+stime, children included) of the running sidecar over --idle s.
  ready    process start -> /readyz 200, over 10 starts (target dir empty each time).
  pipeline snapshot + validate (parse) + promote of 100 files / 1 MiB, in-process, median of 20.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.kubelet import project  # noqa: E402 - path set up just above

# The console script installed beside this interpreter: `shutil.which` may find a version manager's
# shim (pyenv's is a shell script that adds ~100 ms to every start), which no container has.
SCRIPT = str(Path(sys.executable).with_name("reload-sidecar"))
SIDECAR = (
    f"{SCRIPT} run",
    "RELOAD_SOURCE_DIR={dir} RELOAD_TARGET_DIR={target} RELOAD_RELOAD_URL={url} "
    "RELOAD_LISTEN=127.0.0.1:{port} RELOAD_LOG_LEVEL=warning",
)
TARGET_BASE: str | None = None  # --target-base
PEER = "{peer} -volume-dir={dir} -webhook-url={url} -web.listen-address=127.0.0.1:{port}"


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))] if xs else float("nan")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_tree(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        out.append(todo.pop())
        todo += children.get(out[-1], [])
    return out


def rss_mb(pid: int) -> float:
    total = 0
    for p in proc_tree(pid):
        with contextlib.suppress(OSError, StopIteration):
            lines = Path(f"/proc/{p}/status").read_text().splitlines()
            total += next(int(x.split()[1]) for x in lines if x.startswith("VmRSS:"))
    return total / 1024


def cpu_s(pid: int) -> float:
    ticks = 0
    for p in proc_tree(pid):
        with contextlib.suppress(OSError):
            ticks += sum(int(x) for x in Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """The reloader in its own session (killed as a group), output to `log`."""
    with open(log, "wb") as out:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


class Receiver:
    """A loopback reload endpoint recording when each POST arrives."""

    def __init__(self) -> None:
        self.hits: list[float] = []
        self.event = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.hits.append(time.monotonic())
        self.event.set()
        return web.Response(text="ok\n")

    async def wait_count(self, count: int, limit_s: float) -> bool:
        end = time.monotonic() + limit_s
        while len(self.hits) < count:
            self.event.clear()
            try:
                await asyncio.wait_for(self.event.wait(), max(0.0, end - time.monotonic()))
            except TimeoutError:
                return False
        return True

    async def quiet(self, quiet_s: float, limit_s: float) -> None:
        end = time.monotonic() + limit_s
        while time.monotonic() < end:
            seen = len(self.hits)
            await asyncio.sleep(quiet_s)
            if len(self.hits) == seen:
                return


class Run:
    """One reloader process watching a fresh volume, POSTing to a fresh receiver."""

    def __init__(
        self,
        tmp: Path,
        argv_template: str,
        env_template: str,
        files: Callable[[int], dict[str, bytes]],
        extra_env: dict[str, str],
    ) -> None:
        self.tmp, self.argv_template, self.env_template = tmp, argv_template, env_template
        self.files, self.extra_env = files, extra_env
        self.version = 0
        self.rx = Receiver()
        self.volume = tmp / "volume"
        base = Path(tempfile.mkdtemp(prefix="bench-target-", dir=TARGET_BASE)) if TARGET_BASE else tmp
        self.target = base / "target"
        self.proc: subprocess.Popen[bytes] | None = None

    def swap(self) -> None:
        self.version += 1
        project(self.volume, self.files(self.version))

    async def __aenter__(self) -> Run:
        app = web.Application()
        app.router.add_post("/-/reload", self.rx.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/-/reload"
        self.target.mkdir()
        self.swap()
        fmt = dict(dir=self.volume, target=self.target, url=url, port=free_port())
        env = dict(os.environ, **self.extra_env)
        for word in shlex.split(self.env_template.format(**fmt)):
            k, _, v = word.partition("=")
            env[k] = v
        self.proc = spawn(shlex.split(self.argv_template.format(**fmt)), env, self.tmp / "reloader.log")
        await self.rx.quiet(1.0, 20)
        for _ in range(40):  # ready: a probe swap is answered by a POST
            first = len(self.rx.hits)
            self.swap()
            if await self.rx.wait_count(first + 1, 1.0):
                break
            if self.proc.poll() is not None:
                break
        else:
            raise SystemExit("reloader never answered a swap: " + (self.tmp / "reloader.log").read_text()[-500:])
        if self.proc.poll() is not None:
            raise SystemExit("reloader exited: " + (self.tmp / "reloader.log").read_text()[-500:])
        await self.rx.quiet(1.0, 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        if TARGET_BASE:
            shutil.rmtree(self.target.parent, ignore_errors=True)
        await self.runner.cleanup()

    async def swaps(self, n: int, limit_s: float = 5.0, gap: float = 0.05) -> dict[str, Any]:
        lat, missed, dups = [], 0, 0
        for _ in range(n):
            first = len(self.rx.hits)
            self.swap()
            done = time.monotonic()
            got_one = await self.rx.wait_count(first + 1, limit_s)
            await asyncio.sleep(gap)
            got = len(self.rx.hits) - first
            missed += not got_one
            dups += max(0, got - 1)
            if got_one:
                lat.append((self.rx.hits[first] - done) * 1000)
        return dict(
            n=n,
            p50_ms=pct(lat, 0.5),
            p90_ms=pct(lat, 0.9),
            p99_ms=pct(lat, 0.99),
            max_ms=max(lat) if lat else float("nan"),
            missed=missed,
            duplicates=dups,
        )

    async def storm(self, k: int, window: float = 1.0) -> dict[str, Any]:
        first, start = len(self.rx.hits), time.monotonic()
        for i in range(k):
            self.swap()
            await asyncio.sleep(max(0.0, start + (i + 1) * window / k - time.monotonic()))
        await self.rx.wait_count(first + 1, 10)
        await self.rx.quiet(2.5, 30)
        return dict(storm_swaps=k, storm_posts=len(self.rx.hits) - first)

    async def idle(self, seconds: float) -> dict[str, Any]:
        assert self.proc is not None
        rss, cpu0 = rss_mb(self.proc.pid), cpu_s(self.proc.pid)
        await asyncio.sleep(seconds)
        return dict(idle_rss_mb=round(rss, 1), idle_cpu_s=round(cpu_s(self.proc.pid) - cpu0, 3), idle_s=seconds)


def yaml_files(version: int) -> dict[str, bytes]:
    return {"app.yaml": f"version: {version}\nnonce: {os.urandom(32).hex()}\nlist: [1, 2, 3]\n".encode()}


def nginx_files(tmp: Path) -> Callable[[int], dict[str, bytes]]:
    conf = (
        "worker_processes 1;\npid {tmp}/nginx.pid;\nerror_log stderr;\nevents {{ worker_connections 16; }}\n"
        'http {{ access_log off; server {{ listen 127.0.0.1:1; location / {{ return 200 "v{v}"; }} }} }}\n'
    )
    return lambda v: {"nginx.conf": conf.format(tmp=tmp, v=v).encode()}


async def section_process(
    args: argparse.Namespace,
    tmp: Path,
    name: str,
    argv: str,
    envt: str,
    files: Callable[[int], dict[str, bytes]],
    extra: dict[str, str],
    out: dict[str, Any],
    only: set[str],
) -> None:
    async with Run(tmp, argv, envt, files, extra) as run:
        res: dict[str, Any] = {}
        if "idle" in only:  # first: after start-up and the ready probe, before swaps
            res.update(await run.idle(args.idle))
        if "swap" in only:
            res.update(await run.swaps(args.swaps))
        out[name] = res
        print(fmt_line(name, res), flush=True)


async def section_storm(
    tmp: Path, name: str, argv: str, envt: str, extra: dict[str, str], k: int, out: dict[str, Any]
) -> None:
    async with Run(tmp, argv, envt, yaml_files, extra) as run:
        res = await run.storm(k)
    out.setdefault(name, {}).update(res)
    print(f"{name}: storm {k} swaps in 1 s -> {res['storm_posts']} reload POSTs", flush=True)


def fmt_line(name: str, r: dict[str, Any]) -> str:
    parts = []
    if "p50_ms" in r:
        parts.append(
            f"n={r['n']} p50 {r['p50_ms']:.2f} p90 {r['p90_ms']:.2f} p99 {r['p99_ms']:.2f} "
            f"max {r['max_ms']:.2f} ms, missed {r['missed']}, dup {r['duplicates']}"
        )
    if "idle_rss_mb" in r:
        parts.append(f"idle RSS {r['idle_rss_mb']:.1f} MB, idle CPU {r['idle_cpu_s']:.2f} s/{r['idle_s']:g} s")
    return f"{name}: " + " | ".join(parts)


def section_ready(tmp: Path, runs: int = 10) -> dict[str, Any]:
    volume = tmp / "ready-volume"
    project(volume, yaml_files(1))
    times = []
    for i in range(runs):
        target, port = tmp / f"ready-target-{i}", free_port()
        env = dict(
            os.environ,
            RELOAD_SOURCE_DIR=str(volume),
            RELOAD_TARGET_DIR=str(target),
            RELOAD_LISTEN=f"127.0.0.1:{port}",
            RELOAD_LOG_LEVEL="warning",
        )
        start = time.perf_counter()
        proc = subprocess.Popen([SCRIPT, "run"], env=env, stderr=subprocess.DEVNULL)
        try:
            while time.perf_counter() - start < 10:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                        if r.status == 200:
                            times.append((time.perf_counter() - start) * 1000)
                            break
                except OSError:
                    time.sleep(0.002)
        finally:
            proc.terminate()
            proc.wait()
    res = dict(ready_p50_ms=pct(times, 0.5), ready_max_ms=max(times), ready_runs=len(times))
    print(
        f"start -> /readyz 200: p50 {res['ready_p50_ms']:.0f} ms, max {res['ready_max_ms']:.0f} ms "
        f"over {len(times)} starts",
        flush=True,
    )
    return res


def section_pipeline(tmp: Path, rounds: int = 20) -> dict[str, Any]:
    from sidecar.promote import promote
    from sidecar.settings import ValidatorSpec
    from sidecar.snapshot import read_snapshot
    from sidecar.validate import check_parse

    res: dict[str, Any] = {}
    # all: every file changes each round; one: 1 of the 100 files changes (a typical edit)
    for kind in ("yaml-all", "yaml-one", "opaque-all"):
        volume = tmp / f"pipe-{kind}"
        times: dict[str, list[float]] = {"snapshot": [], "validate": [], "promote": [], "total": []}
        for r in range(rounds):
            files = {}
            for i in range(100):
                n = r if kind != "yaml-one" or i == 0 else 0
                body = (
                    f"key_{i}: value {n} {'x' * 80}\n" * 120
                    if kind.startswith("yaml")
                    else os.urandom(10 * 1024 // 2).hex()
                )
                files[f"f{i:03}.{'yaml' if kind.startswith('yaml') else 'dat'}"] = body.encode()[: 10 * 1024 + 486]
            project(volume, files)
            target = tmp / f"pipe-target-{kind}"
            target.mkdir(exist_ok=True)
            t0 = time.perf_counter()
            snap = read_snapshot(volume, max_total_bytes=8 << 20)
            t1 = time.perf_counter()
            problems = check_parse(snap.files, (ValidatorSpec("auto"),))
            t2 = time.perf_counter()
            promote(snap, target)
            t3 = time.perf_counter()
            assert not problems and not snap.problems, (problems, snap.problems)
            for key, dt in (("snapshot", t1 - t0), ("validate", t2 - t1), ("promote", t3 - t2), ("total", t3 - t0)):
                times[key].append(dt * 1000)
        total_bytes = snap.total_bytes
        med = {k: statistics.median(v) for k, v in times.items()}
        res[kind] = dict(files=len(snap.files), bytes=total_bytes, **{f"{k}_ms": round(v, 2) for k, v in med.items()})
        print(
            f"pipeline 100 files / {total_bytes / 2**20:.2f} MiB ({kind}): snapshot {med['snapshot']:.1f} + "
            f"validate {med['validate']:.1f} + promote {med['promote']:.1f} = {med['total']:.1f} ms "
            f"(median of {rounds})",
            flush=True,
        )
    return res


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    only = set(args.only.split(","))
    out: dict[str, Any] = {}
    argv, envt = SIDECAR
    runners = [("reload-sidecar", argv, envt, {})]
    if args.peer:
        runners.append(("configmap-reload", PEER.replace("{peer}", args.peer), "", {}))
    with tempfile.TemporaryDirectory(prefix="bench-") as t:
        tmp = Path(t)
        for i, (name, a, e, extra) in enumerate(runners):
            if only & {"swap", "idle"}:
                d = tmp / f"swap-{i}"
                d.mkdir()
                await section_process(
                    args, d, name, a, e + " RELOAD_DEBOUNCE_MS=0" if e else e, yaml_files, extra, out, only
                )
            if "storm" in only:
                d = tmp / f"storm-{i}"
                d.mkdir()
                await section_storm(d, name, a, e, extra, args.storm, out)
        if "nginx" in only and shutil.which("nginx"):
            d = tmp / "nginx"
            d.mkdir()
            cmd = f"{shutil.which('nginx')} -t -q -e stderr -p {d} -c {{dir}}/nginx.conf"
            await section_process(
                args,
                d,
                "reload-sidecar+nginx -t",
                argv,
                envt + " RELOAD_DEBOUNCE_MS=0",
                nginx_files(d),
                {"RELOAD_VALIDATE_COMMAND": cmd},
                out,
                {"swap"} | (only - {"idle"}),
            )
        if "ready" in only:
            out["ready"] = section_ready(tmp)
        if "pipeline" in only:
            out["pipeline"] = section_pipeline(tmp)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--swaps", type=int, default=200)
    ap.add_argument("--storm", type=int, default=50)
    ap.add_argument("--idle", type=float, default=10.0)
    ap.add_argument("--peer", help="configmap-reload binary, run through the same sections (swap, idle, storm)")
    ap.add_argument("--only", default="swap,idle,storm,nginx,ready,pipeline")
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument(
        "--target-base",
        help="make the sidecar's target dir here, e.g. /dev/shm for tmpfs "
        "(an emptyDir with medium: Memory); default: beside the volume, on the temp dir's filesystem",
    )
    args = ap.parse_args()
    global TARGET_BASE
    TARGET_BASE = args.target_base
    out = asyncio.run(main_async(args))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
