"""The real sidecar's and webhook's /metrics: process_* metrics, `promtool check metrics`, and what
`reload_sidecar_last_reload_successful` says after a verified rollback.

volume/  written by tests.kubelet.project (kubelet-style ..data swaps)
target/  the sidecar's; the loopback app reads target/app.yaml on every request and answers /health 500
         while the version says `mode: bad`
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.apps import http_get, promtool_bin
from tests.e2e.receiver import reader, serving
from tests.e2e.sidecar_proc import Sidecar, running, wait_for
from tests.e2e.webhook_proc import Webhook, issue, make_ca
from tests.kubelet import project

PROCESS = {
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_cpu_seconds",  # the family of process_cpu_seconds_total
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
}
GOOD = {"app.yaml": b"version: 1\nmode: fine\n"}
BAD = {"app.yaml": b"version: 2\nmode: bad\n"}
FIXED = {"app.yaml": b"version: 3\nmode: fixed\n"}
SUCCESSFUL = "reload_sidecar_last_reload_successful"


def _promtool_check(text: str) -> str:
    done = subprocess.run([promtool_bin(), "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def _start_time(pid: int) -> float:
    """Unix time `pid` started, from /proc (boot time + its start in clock ticks)."""
    with open(f"/proc/{pid}/stat") as f:
        ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/stat") as f:
        boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def test_sidecar_metrics_have_process_metrics_and_pass_promtool(tmp_path: Path) -> None:
    """The sidecar's /metrics carries process_* with this process's values; `promtool check metrics` is clean."""
    volume, target = tmp_path / "volume", tmp_path / "target"
    project(volume, GOOD)
    with running(volume, target, tmp_path) as car:
        car.wait_current()
        code, body = http_get(car.url + "/metrics")
        assert code == 200
        families = {f.name: f for f in text_string_to_metric_families(body)}
        assert PROCESS <= set(families), sorted(families)
        assert car.proc is not None  # the figures are the sidecar's own, not the test's: its start time
        assert abs(families["process_start_time_seconds"].samples[0].value - _start_time(car.proc.pid)) < 0.05
        assert families["process_resident_memory_bytes"].samples[0].value > 1 << 20
        assert families["process_max_fds"].samples[0].value >= families["process_open_fds"].samples[0].value >= 3
        assert _promtool_check(body) == ""


def test_webhook_metrics_have_process_metrics(tmp_path: Path) -> None:
    """The webhook's /metrics (on its TLS port) carries process_* too, and passes promtool."""
    ca = make_ca(tmp_path / "pki")
    cert, key = issue(ca, tmp_path / "pki", "webhook", 1)
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text("profiles:\n  yaml: {validate: [auto]}\n")
    hook = Webhook(tmp_path, ca, cert, key, profiles).start()
    try:
        code, body = hook.request("GET", "/metrics")
        assert code == 200
        text = body.decode()
        assert PROCESS <= {f.name for f in text_string_to_metric_families(text)}
        assert _promtool_check(text) == ""
    finally:
        assert hook.stop() == 0, hook.log_tail()


def _app(target: Path) -> object:
    """A loopback app reading target/app.yaml: reloads always work; /health is 500 on a `mode: bad` version."""

    def script(method: str, path: str, n: int) -> tuple[int, str]:
        bad = "bad" in reader(target / "app.yaml")()
        status = 500 if method == "GET" and bad else 200
        return status, f"status {status}\n"

    return script


def test_last_reload_successful_is_0_after_a_verified_rollback_until_a_good_version(tmp_path: Path) -> None:
    """1 after a good version; 0 once a bad one failed verification, though the rollback verified and the
    sidecar is ready again; still 0 after a restart with the bad version in the source; 1 once a fixed
    version reloads; 1 after a restart on it."""
    volume, target = tmp_path / "volume", tmp_path / "target"
    project(volume, GOOD)
    with serving(_app(target), on_reload=reader(target / "app.yaml")) as rx:  # type: ignore[arg-type]
        env = {
            "RELOAD_RELOAD_URL": rx.url + "/-/reload",
            "RELOAD_HEALTH_URL": rx.url + "/health",
            "RELOAD_HEALTH_SUCCESSES": "2",
            "RELOAD_HEALTH_INTERVAL_S": "0.1",
            "RELOAD_HEALTH_TIMEOUT_S": "1",
            "RELOAD_RESYNC_S": "0.3",
        }
        car = Sidecar(volume, target, tmp_path, **env).start()
        try:
            good = car.wait_current()["current"]
            assert car.metrics()[SUCCESSFUL] == 1.0

            project(volume, BAD)
            st = wait_for(lambda: (s := car.status())["quarantined"] and s["state"] == "idle" and s, 20)
            assert st["current"] == st["last_good"] == good and st["ready"]
            m = car.metrics()
            assert (
                m["reload_sidecar_rollbacks_total"] == 1.0
                and m['reload_sidecar_reloads_total{result="rolled_back"}'] == 1.0
            )
            assert m["reload_sidecar_ready"] == 1.0, "the rollback was verified"
            assert m[SUCCESSFUL] == 0.0, "the newest version's reload failed: the ConfigMap's change did not take"

            assert car.stop() == 0
            car = Sidecar(volume, target, tmp_path, **env).start()
            wait_for(lambda: car.events("skipped_known_bad"), 10, what="a pass over the quarantined version")
            m = car.metrics()
            assert (m["reload_sidecar_ready"], m[SUCCESSFUL]) == (1.0, 0.0), "a restart does not forget the failure"

            project(volume, FIXED)
            wait_for(lambda: (s := car.status())["last_good"] not in (good, None) and s["state"] == "idle", 20)
            assert car.metrics()[SUCCESSFUL] == 1.0

            assert car.stop() == 0
            car = Sidecar(volume, target, tmp_path, **env).start()
            wait_for(lambda: car.status()["ready"], 10, what="ready after the restart")
            assert car.metrics()[SUCCESSFUL] == 1.0, "a restart on a verified version says so"
        finally:
            car.kill()
