#!/usr/bin/env python3
"""reload-sidecar latency, footprint and throughput, printed as figures (nothing asserted).

  python3 bench/latency.py                     # all sections, ~4 minutes
  python3 bench/latency.py --peer /tmp/peers/configmap-reload   # + the same runs for configmap-reload
  python3 bench/latency.py --only swap,storm --swaps 6000 --json out.json

Run it with the interpreter whose console script (`reload-sidecar` beside it) and site-packages are to be
measured; the target dir is on tmpfs (/dev/shm, as the manifests' `emptyDir: {medium: Memory}`) unless
--target-base says otherwise. Latencies count from the `..data` rename of a kubelet-style swap.

Sections:
  swap     swap -> reload request received by a loopback receiver: p50/p90/p99/max over --swaps swaps
           (debounce 0, parse-only validation, health URL checked after each reload); duplicates and
           misses counted; RSS before, half-way and after (growth over many swaps: --swaps 6000).
  idle     RSS, PSS and anonymous memory (/proc/PID/smaps_rollup) after start-up, the ready probe and one
           /metrics scrape, with an HTTP trigger and a health URL; then CPU (utime+stime, children
           included) over --idle s.
  nginx    the swap section with `nginx -t` as the checker (RELOAD_VALIDATE_COMMAND), if nginx is installed.
  storm    --storm swaps within 1 s (default debounce 200 ms) -> reload requests received.
  ready    process start -> /readyz 200, alternately for the console script and for `python -S -m sidecar`
           (site-packages on PYTHONPATH), --starts starts each (target dir empty each time).
  scale    swap -> reload request for 1 file, 100 files / 1 MiB and 1,000 files / 10 MiB, YAML and opaque,
           every file changed and one file changed (median of --scale-swaps swaps); with --peer beside it.
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
    "RELOAD_SOURCE_DIR={dir} RELOAD_TARGET_DIR={target} RELOAD_RELOAD_URL={url} RELOAD_HEALTH_URL={health} "
    "RELOAD_HEALTH_SUCCESSES=1 RELOAD_HEALTH_INTERVAL_S=0.05 RELOAD_LISTEN=127.0.0.1:{port} RELOAD_LOG_LEVEL=warning",
)
TARGET_BASE: str | None = None  # --target-base
SHM = "/dev/shm"  # noqa: S108 - tmpfs for the target dir; each run makes its own mkdtemp dir there
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


def memory_mb(pid: int) -> dict[str, float]:
    """RSS, PSS and anonymous memory of `pid` and its children, from /proc/PID/smaps_rollup."""
    keys = {"Rss:": "rss_mb", "Pss:": "pss_mb", "Anonymous:": "anon_mb"}
    out = dict.fromkeys(keys.values(), 0.0)
    for p in proc_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                key, _, rest = line.partition(" ")
                if key in keys:
                    out[keys[key]] += int(rest.split()[0]) / 1024
    return {k: round(v, 1) for k, v in out.items()}


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

    async def healthy(self, request: web.Request) -> web.Response:
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
        self.swapped = 0.0  # monotonic time of the last swap's ..data rename
        self.port = 0
        self.rx = Receiver()
        self.volume = tmp / "volume"
        base = Path(tempfile.mkdtemp(prefix="bench-target-", dir=TARGET_BASE)) if TARGET_BASE else tmp
        self.target = base / "target"
        self.proc: subprocess.Popen[bytes] | None = None

    async def swap(self) -> None:
        """One kubelet-style swap, in a thread: the receiver on this loop timestamps the request meanwhile
        (the kubelet's work after the rename, deleting the old version, must not delay it)."""
        self.version += 1
        await asyncio.to_thread(project, self.volume, self.files(self.version), extra=self._mark)

    def _mark(self, _version_dir: Path) -> None:
        self.swapped = time.monotonic()  # the payload is written; the ..data rename follows at once

    async def __aenter__(self) -> Run:
        app = web.Application()
        app.router.add_post("/-/reload", self.rx.handle)
        app.router.add_get("/healthz", self.rx.healthy)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        base = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        self.target.mkdir()
        await self.swap()
        self.port = free_port()
        fmt = dict(
            dir=self.volume, target=self.target, url=base + "/-/reload", health=base + "/healthz", port=self.port
        )
        env = dict(os.environ, **self.extra_env)
        for word in shlex.split(self.env_template.format(**fmt)):
            k, _, v = word.partition("=")
            env[k] = v
        self.proc = spawn(shlex.split(self.argv_template.format(**fmt)), env, self.tmp / "reloader.log")
        await self.rx.quiet(1.0, 20)
        for _ in range(40):  # ready: a probe swap is answered by a POST
            first = len(self.rx.hits)
            await self.swap()
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
        assert self.proc is not None
        lat, missed, dups, rss = [], 0, 0, [memory_mb(self.proc.pid)["rss_mb"]]
        for i in range(n):
            if i == n // 2:
                rss.append(memory_mb(self.proc.pid)["rss_mb"])
            first = len(self.rx.hits)
            await self.swap()
            done = self.swapped
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
            rss_start_mb=rss[0],
            rss_half_mb=rss[-1],
            rss_end_mb=memory_mb(self.proc.pid)["rss_mb"],
        )

    async def storm(self, k: int, window: float = 1.0) -> dict[str, Any]:
        first, start = len(self.rx.hits), time.monotonic()
        for i in range(k):
            await self.swap()
            await asyncio.sleep(max(0.0, start + (i + 1) * window / k - time.monotonic()))
        await self.rx.wait_count(first + 1, 10)
        await self.rx.quiet(2.5, 30)
        return dict(storm_swaps=k, storm_posts=len(self.rx.hits) - first)

    async def idle(self, seconds: float) -> dict[str, Any]:
        """Memory after one /metrics scrape (as Prometheus would make), then CPU over `seconds`."""
        assert self.proc is not None
        with contextlib.suppress(OSError):
            await asyncio.to_thread(_get, f"http://127.0.0.1:{self.port}/metrics")
        await asyncio.sleep(0.5)
        mem = {f"idle_{k}": v for k, v in memory_mb(self.proc.pid).items()}
        cpu0 = cpu_s(self.proc.pid)
        await asyncio.sleep(seconds)
        return dict(mem, idle_cpu_s=round(cpu_s(self.proc.pid) - cpu0, 3), idle_s=seconds)


def _get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 - a loopback http URL built here
        r.read()
        return int(r.status)


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
    if "rss_end_mb" in r:
        parts.append(f"RSS {r['rss_start_mb']:.1f} -> {r['rss_half_mb']:.1f} -> {r['rss_end_mb']:.1f} MB")
    if "idle_rss_mb" in r:
        parts.append(
            f"idle RSS / PSS / anon {r['idle_rss_mb']:.1f} / {r['idle_pss_mb']:.1f} / {r['idle_anon_mb']:.1f} MB, "
            f"idle CPU {r['idle_cpu_s']:.2f} s/{r['idle_s']:g} s"
        )
    return f"{name}: " + " | ".join(parts)


def _s_pythonpath() -> str:
    """For `python -S`: the dir the console script imports `sidecar` from, then site-packages."""
    probe = (
        "import os, site, sidecar; "
        "print(os.pathsep.join([os.path.dirname(os.path.dirname(sidecar.__file__)), *site.getsitepackages()]))"
    )
    python = str(Path(SCRIPT).with_name("python3"))
    return subprocess.run([python, "-c", probe], cwd="/", capture_output=True, text=True, check=True).stdout.strip()


def _start_to_ready(argv: list[str], env: dict[str, str], port: int, cwd: Path) -> float | None:
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stderr=subprocess.DEVNULL, cwd=cwd)
    try:
        while time.perf_counter() - start < 10 and proc.poll() is None:
            try:
                if _get(f"http://127.0.0.1:{port}/readyz") == 200:
                    return (time.perf_counter() - start) * 1000
            except OSError:
                time.sleep(0.002)
        return None
    finally:
        proc.terminate()
        proc.wait()


def section_ready(tmp: Path, runs: int = 10) -> dict[str, Any]:
    """Start -> /readyz 200, the console script and `python -S -m sidecar` taking turns."""
    volume = tmp / "ready-volume"
    project(volume, yaml_files(1))
    python = str(Path(SCRIPT).with_name("python3"))
    variants = {
        "script": ([SCRIPT, "run"], {}),
        "python -S": ([python, "-S", "-m", "sidecar", "run"], {"PYTHONPATH": _s_pythonpath()}),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for i in range(runs):
        for name, (argv, extra) in variants.items():
            target, port = tmp / f"ready-target-{name[-6:].strip()}-{i}", free_port()
            env = dict(
                os.environ,
                RELOAD_SOURCE_DIR=str(volume),
                RELOAD_TARGET_DIR=str(target),
                RELOAD_LISTEN=f"127.0.0.1:{port}",
                RELOAD_LOG_LEVEL="warning",
                **extra,
            )
            if (ms := _start_to_ready(argv, env, port, tmp)) is not None:
                times[name].append(ms)
    res: dict[str, Any] = {}
    for name, key in (("script", "ready"), ("python -S", "ready_S")):
        ts = times[name]
        res |= {f"{key}_p50_ms": pct(ts, 0.5), f"{key}_min_ms": min(ts, default=float("nan")), f"{key}_runs": len(ts)}
        print(
            f"start -> /readyz 200 ({name}): p50 {pct(ts, 0.5):.0f} ms, min {min(ts, default=float('nan')):.0f} ms, "
            f"max {max(ts, default=float('nan')):.0f} ms over {len(ts)} of {runs} starts",
            flush=True,
        )
    return res


SCALES = (("1 file", 1, 1024), ("100 files / 1 MiB", 100, 10 * 1024), ("1,000 files / 10 MiB", 1000, 10 * 1024))


def scale_files(count: int, size: int, kind: str, changed: str) -> Callable[[int], dict[str, bytes]]:
    """Version v of `count` files of `size` bytes: YAML or opaque, every file or only the first changed."""
    fixed = os.urandom(size // 2).hex().encode()

    def files(version: int) -> dict[str, bytes]:
        out = {}
        for i in range(count):
            n = version if changed == "all" or i == 0 else 0
            if kind == "yaml":
                body = "".join(f"key_{j}: value {n} {'x' * 70}\n" for j in range(size // 90)).encode()
                out[f"f{i:04}.yaml"] = body[:size]
            else:
                out[f"f{i:04}.dat"] = (f"{n:08}".encode() + fixed)[:size]
        return out

    return files


async def section_scale(
    tmp: Path, runners: list[tuple[str, str, str, dict[str, str]]], swaps: int, out: dict[str, Any]
) -> None:
    """Swap -> reload request by size, format and how much of the version changed."""
    res: dict[str, Any] = out.setdefault("scale", {})
    case = 0
    for label, count, size in SCALES:
        for kind in ("yaml", "opaque"):
            for changed in ("all", "one") if count > 1 else ("all",):
                row = f"{label}, {kind}, {changed} changed" if count > 1 else f"{label}, {kind}"
                for name, argv, envt, extra in runners:
                    case += 1
                    d = tmp / f"scale-{case}"
                    d.mkdir()
                    limits = {"RELOAD_MAX_TOTAL_BYTES": str(64 << 20)} if envt else {}
                    env = envt + " RELOAD_DEBOUNCE_MS=0" if envt else envt
                    async with Run(d, argv, env, scale_files(count, size, kind, changed), extra | limits) as run:
                        r = await run.swaps(swaps, limit_s=30, gap=0.2)
                    res.setdefault(row, {})[name] = r
                    print(
                        f"scale {row}: {name}: p50 {r['p50_ms']:.1f} ms, max {r['max_ms']:.1f} ms "
                        f"(n={r['n']}, missed {r['missed']})",
                        flush=True,
                    )
                    shutil.rmtree(d, ignore_errors=True)


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
            out["ready"] = section_ready(tmp, args.starts)
        if "scale" in only:
            await section_scale(tmp, runners, args.scale_swaps, out)
        if "pipeline" in only:
            out["pipeline"] = section_pipeline(tmp)
    return out


def summary(out: dict[str, Any], names: list[str]) -> str:
    """The figures as one Markdown table, a column per reloader."""

    def cell(name: str, fmt: Callable[[dict[str, Any]], str], keys: tuple[str, ...]) -> str:
        r = out.get(name, {})
        return fmt(r) if all(k in r for k in keys) else "n/a"

    rows: list[tuple[str, list[str]]] = []
    figures: list[tuple[str, tuple[str, ...], Callable[[dict[str, Any]], str]]] = [
        (
            "idle RSS / PSS / anonymous",
            ("idle_rss_mb", "idle_pss_mb", "idle_anon_mb"),
            lambda r: f"{r['idle_rss_mb']:.1f} / {r['idle_pss_mb']:.1f} / {r['idle_anon_mb']:.1f} MB",
        ),
        ("idle CPU", ("idle_cpu_s",), lambda r: f"{r['idle_cpu_s']:.2f} s / {r['idle_s']:g} s"),
        (
            "swap → reload request p50 / p99",
            ("p50_ms", "p99_ms"),
            lambda r: f"{r['p50_ms']:.2f} / {r['p99_ms']:.2f} ms (n={r['n']}, missed {r['missed']})",
        ),
        (
            "RSS before → after the swaps",
            ("rss_start_mb", "rss_end_mb"),
            lambda r: (
                f"{r['rss_start_mb']:.1f} → {r['rss_end_mb']:.1f} MB ({r['rss_end_mb'] - r['rss_start_mb']:+.1f})"
            ),
        ),
        ("storm → reload requests", ("storm_posts",), lambda r: f"{r['storm_posts']} for {r['storm_swaps']} swaps"),
    ]
    for label, keys, fmt in figures:
        rows.append((label, [cell(n, fmt, keys) for n in names]))
    ready = out.get("ready", {})
    for key, label in (("ready", "console script"), ("ready_S", "python -S")):
        if f"{key}_p50_ms" in ready:
            value = f"{ready[f'{key}_p50_ms']:.0f} ms (min {ready[f'{key}_min_ms']:.0f})"
            rows.append((f"start → /readyz 200 p50, {label}", [value] + ["n/a"] * (len(names) - 1)))
    for row, by_name in out.get("scale", {}).items():
        values = [f"{by_name[n]['p50_ms']:.1f} ms" if n in by_name else "n/a" for n in names]
        rows.append((f"swap → reload p50, {row}", values))
    lines = ["| figure | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines += [f"| {label} | " + " | ".join(values) + " |" for label, values in rows]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--swaps", type=int, default=200, help="swaps of the swap section (RSS growth: e.g. 6000)")
    ap.add_argument("--storm", type=int, default=50)
    ap.add_argument("--idle", type=float, default=30.0, help="seconds of idle CPU measured")
    ap.add_argument("--starts", type=int, default=10, help="starts of each variant in the ready section")
    ap.add_argument("--scale-swaps", type=int, default=10, help="swaps per case of the scale section")
    ap.add_argument("--peer", help="configmap-reload binary, run through the same sections (swap, idle, storm, scale)")
    ap.add_argument("--only", default="swap,idle,storm,nginx,ready,scale,pipeline")
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument(
        "--target-base",
        default=SHM if os.path.isdir(SHM) else "",
        help="make the sidecar's target dir here (default /dev/shm: tmpfs, as an emptyDir with medium: Memory); "
        "an empty value puts it beside the volume, on the temp dir's filesystem",
    )
    args = ap.parse_args()
    global TARGET_BASE
    TARGET_BASE = args.target_base or None
    sys.setswitchinterval(0.0005)  # the receiver's timestamps wait less for a swap thread holding the GIL
    out = asyncio.run(main_async(args))
    names = ["reload-sidecar"] + (["configmap-reload"] if args.peer else [])
    print(f"\ntarget dir on {TARGET_BASE or tempfile.gettempdir()}; {sys.executable}\n" + summary(out, names))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
