#!/usr/bin/env python3
"""The images as containers: build times, sizes, the sidecar container's cgroup memory and start → ready,
beside the same sidecar as a plain process (figures printed, nothing asserted). Root and podman needed.

  python3 bench/containers.py                # ~3 minutes from nothing: bases, images, 5 pods
  python3 bench/containers.py --runs 10 --json out.json

Storage: $CONTAINERS_STORAGE_CONF if set (images there are reused; builds timed only when missing), else a
temp dir of its own, removed at the end. Each run starts the pod of manifests/nginx.yaml as the container
tests do (tests/containers/engine.py): `podman run` of the sidecar → its /readyz 200 (the native sidecar's
startupProbe, polled every 10 ms), nginx started → serving; then the sidecar container's cgroup memory
(usage and working set, after one /metrics scrape) and its process's RSS; then a good version: the
`..data` swap → nginx serving it. The plain process runs the venv's own `reload-sidecar` with the
manifest's env against a tmp target, start → /readyz and RSS, taking turns with the pod runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.containers.engine import IMAGES, Podman, engine_env, ensure_images, run_pod  # noqa: E402
from tests.e2e.apps import free_port  # noqa: E402
from tests.kubelet import project  # noqa: E402
from tests.podspec import pod_template, translate  # noqa: E402


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _pod_run(podman: Podman, spec: Any, data: dict[str, str], tmp: Path) -> dict[str, float]:
    pod = translate(spec, pod_name="web-bench")
    config = tmp / "config"
    project(config, data)
    with run_pod(podman, pod, tmp, {"config": config}) as running:
        ready_s = running.ready["reload-sidecar"] - running.started["reload-sidecar"]
        t = time.monotonic()
        while not running.answers("http://127.0.0.1:8080/healthz"):
            if time.monotonic() - t > 60:
                raise RuntimeError(running.logs("nginx"))
            time.sleep(0.01)
        nginx_s = time.monotonic() - running.started["nginx"]
        running.http("http://127.0.0.1:9533/metrics")
        memory = running.memory("reload-sidecar")
        rss = _rss_kb(running.pid("reload-sidecar"))
        nginx_memory = running.memory("nginx")
        swapped = time.monotonic()
        project(config, {**data, "default.conf": data["default.conf"].replace("version 1", "version 2")})
        while b"version 2" not in running.http("http://127.0.0.1:8080/")[1]:
            if time.monotonic() - swapped > 60:
                raise RuntimeError(running.logs("reload-sidecar"))
            time.sleep(0.01)
        served_s = time.monotonic() - swapped
    return {
        "container start -> readyz ms": ready_s * 1000,
        "nginx start -> serving ms": nginx_s * 1000,
        "sidecar cgroup usage MB": memory["usage"] / 1e6,
        "sidecar cgroup working set MB": memory["working_set"] / 1e6,
        "sidecar process RSS MB (in the container)": rss * 1024 / 1e6,
        "nginx cgroup working set MB": nginx_memory["working_set"] / 1e6,
        "swap -> served ms": served_s * 1000,
    }


def _process_run(env: dict[str, str], data: dict[str, str], tmp: Path) -> dict[str, float]:
    source, target = tmp / "src", tmp / "dst"
    project(source, data)
    target.mkdir()
    port = free_port()
    env = {**os.environ, **env, "RELOAD_SOURCE_DIR": str(source), "RELOAD_TARGET_DIR": str(target)}
    env["RELOAD_LISTEN"] = f"127.0.0.1:{port}"
    for key in ("RELOAD_SIGNAL", "RELOAD_PROCESS", "RELOAD_HEALTH_URL"):  # no nginx beside this one
        env.pop(key, None)
    script = Path(sys.executable).parent / "reload-sidecar"
    t = time.monotonic()
    proc = subprocess.Popen([str(script), "run"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() - t > 60 or proc.poll() is not None:
                raise RuntimeError("the process did not become ready")
            time.sleep(0.01)
        ready_s = time.monotonic() - t
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).close()
        rss = _rss_kb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {"process start -> readyz ms": ready_s * 1000, "process RSS MB": rss * 1024 / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (tmpfs volumes, pod network namespaces; debootstrap when bases are missing)")
    docs = [d for d in yaml.safe_load_all((ROOT / "manifests" / "nginx.yaml").read_text()) if d]
    spec = pod_template(docs, "Deployment", "web")
    data = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    sidecar_env = dict(
        e.split("=", 1) for c in [translate(spec, pod_name="p").containers[0]] for e in c.options if "=" in e
    )
    sidecar_env = {k: v for k, v in sidecar_env.items() if k.startswith("RELOAD_")}

    with tempfile.TemporaryDirectory(prefix="bench-containers-") as tmp_name:
        tmp = Path(tmp_name)
        env = dict(os.environ)
        own = "CONTAINERS_STORAGE_CONF" not in env
        if own:
            env.update(engine_env(tmp / "podman"))
        env["CONTAINER_ENGINE"] = "podman"
        podman = Podman(env)
        try:
            ensure_images(podman)
            results: dict[str, Any] = {"builds s": {k: round(v, 1) for k, v in podman.timings.items()}}
            results["image MB"] = {name: round(podman.size(image) / 1e6) for name, image in IMAGES.items()}
            runs: list[dict[str, float]] = []
            for i in range(args.runs):
                run_dir = tmp / f"run{i}"
                run_dir.mkdir()
                figures = _pod_run(podman, spec, data, run_dir / "pod")
                (run_dir / "proc").mkdir()
                figures |= _process_run(sidecar_env, data, run_dir / "proc")
                runs.append(figures)
            results["runs"] = runs
        finally:
            if own:
                podman("rmi", "--all", "--force", timeout=300, check=False)

    print(f"builds (s): {results['builds s'] or 'none: all images were in the storage'}")
    print("image sizes (MB): " + ", ".join(f"{k} {v}" for k, v in results["image MB"].items()))
    print(f"{'figure':44} {'median':>8} {'min':>8} {'max':>8}   ({args.runs} runs)")
    for key in runs[0]:
        values = [r[key] for r in runs]
        print(f"{key:44} {statistics.median(values):8.1f} {min(values):8.1f} {max(values):8.1f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
