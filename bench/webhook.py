#!/usr/bin/env python3
"""Admission webhook review latency, printed as figures (nothing asserted).

  python3 bench/webhook.py                  # 300 reviews per run, ~20 s
  python3 bench/webhook.py -n 1000 --json out.json

Starts the real `reload-sidecar webhook` on 127.0.0.1 (TLS with a throw-away CA made by openssl) and
POSTs AdmissionReviews for a ConfigMap the way the API server does: over kept-alive HTTPS connections, to
`/validate?timeout=10s` (timeoutSeconds: 10).
Latency = request sent -> answer parsed, per review. Two profiles: `parse` (a 2 KiB app.yaml, built-in
YAML parsing) and `nginx` (`nginx -t` on a real nginx.conf, staged in a private temp dir per review);
each sequential (one connection) and 8-way concurrent (8 connections), after 20 warm-up reviews.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.e2e.apps import nginx_bin, nginx_conf  # noqa: E402 - path set up just above
from tests.e2e.webhook_proc import Webhook, issue, make_ca, review  # noqa: E402


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))] if xs else float("nan")


def app_yaml() -> str:
    lines = ["server:", "  port: 8080", "routes:"]
    lines += [
        f"  - path: /api/v{i}\n    upstream: http://backend-{i}:8080\n    timeout_s: {i % 7 + 1}" for i in range(24)
    ]
    return "\n".join(lines) + "\n"


async def run(
    session: aiohttp.ClientSession, url: str, data: dict[str, str], profile: str, n: int, concurrency: int, tag: str
) -> dict[str, Any]:
    lat: list[float] = []
    denied = 0
    queue = list(range(n))

    async def worker() -> None:
        nonlocal denied
        while queue:
            i = queue.pop()
            # a different comment in every review: each one is parsed (the per-file verdict cache never hits)
            unique = {key: f"{text}\n# review {tag}-{i}\n" for key, text in data.items()}
            doc = review(f"{tag}-{i}", profile=profile, data=unique)
            start = time.perf_counter()
            async with session.post(url, json=doc) as resp:
                answer = await resp.json()
            lat.append((time.perf_counter() - start) * 1000)
            assert resp.status == 200 and answer["response"]["uid"] == f"{tag}-{i}", answer
            denied += not answer["response"]["allowed"]

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    return dict(
        n=n,
        concurrency=concurrency,
        p50_ms=pct(lat, 0.5),
        p90_ms=pct(lat, 0.9),
        p99_ms=pct(lat, 0.99),
        max_ms=max(lat),
        mean_ms=statistics.fmean(lat),
        per_s=n / wall,
        denied=denied,
    )


async def bench(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    ca = make_ca(tmp / "pki")
    cert, key = issue(ca, tmp / "pki", "webhook", 1)
    prefix = tmp / "nginx"
    (prefix / "tmp").mkdir(parents=True)
    cases = {
        "parse": {"app.yaml": app_yaml()},
        "nginx": {"nginx.conf": nginx_conf(8080, "hello", prefix)},
    }
    profiles = {
        "profiles": {
            "parse": {"validate": ["auto"]},
            "nginx": {"validate": ["none"], "command": f"{nginx_bin()} -t -q -e stderr -c {{dir}}/nginx.conf"},
        }
    }
    (tmp / "profiles.yaml").write_text(json.dumps(profiles))
    hook = Webhook(tmp, ca, cert, key, tmp / "profiles.yaml").start()
    out: dict[str, Any] = {"cpus": os.cpu_count()}
    try:
        url = f"https://127.0.0.1:{hook.port}/validate?timeout=10s"
        for profile, data in cases.items():
            for concurrency in (1, 8):
                connector = aiohttp.TCPConnector(ssl=hook.context, limit=concurrency)
                async with aiohttp.ClientSession(connector=connector) as session:
                    await run(session, url, data, profile, 20, concurrency, "warm")
                    res = await run(session, url, data, profile, args.n, concurrency, f"{profile}-{concurrency}")
                name = f"{profile} {'sequential' if concurrency == 1 else f'{concurrency}-way'}"
                out[name] = res
                print(
                    f"{name:<18} n={res['n']} p50 {res['p50_ms']:.1f} p90 {res['p90_ms']:.1f} "
                    f"p99 {res['p99_ms']:.1f} max {res['max_ms']:.1f} ms, {res['per_s']:.0f} reviews/s, "
                    f"denied {res['denied']}",
                    flush=True,
                )
    finally:
        hook.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=300, help="reviews per run (default 300)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    if shutil.which("openssl") is None:
        sys.exit("bench/webhook.py needs the openssl CLI")
    with tempfile.TemporaryDirectory(prefix="bench-webhook-") as d:
        out = asyncio.run(bench(args, Path(d)))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
