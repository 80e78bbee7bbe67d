"""Proof of load with real apps: a version the checker passes but the running app refuses at reload is
never committed, rolled back at once (not after the health window), quarantined with the app's own
reason, and the last good version stays; the next good version goes through. 20 good versions in a row
give no false rollback.

Cases (docs/proof.md): nginx (SIGHUP, `workers` proof) with a `listen` on a port another process holds
and an `include` the app cannot read; HAProxy -W (SIGUSR2, `workers`) with a busy `bind` and an
unreadable `errorfile`; Prometheus and Alertmanager on SIGHUP (`metric` proof) and on POST /-/reload
(`http` proof) with an unreadable rule file / template; a reload URL answering 500 is asked exactly once.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.apps import free_port, nginx_conf, prometheus_yml, promtool_bin
from tests.e2e.proof_apps import (
    App,
    alertmanager_yml,
    amtool_bin,
    apply,
    busy_listen,
    haproxy_bin,
    haproxy_cfg,
    nginx_proof_env,
    start_alertmanager,
    start_haproxy,
    start_nginx_no_dac,
    start_prometheus_no_dac,
    unreadable,
    wait_settled,
)
from tests.e2e.sidecar_proc import Sidecar, running, wait_for

FAST_HEALTH = {
    "RELOAD_HEALTH_SUCCESSES": "2",
    "RELOAD_HEALTH_INTERVAL_S": "0.2",
    "RELOAD_HEALTH_TIMEOUT_S": "20",
    "RELOAD_RESYNC_S": "0",
}


def assert_refused(car: Sidecar, st: dict[str, Any], good: str, bad: str, *words: str) -> None:
    """`bad` never committed, rolled back to `good` (live, last good, ready), quarantined with the app's reason."""
    assert st["current"] == st["last_good"] == good and st["ready"], st
    reason = st["quarantined"][bad]["reason"]
    assert any(w in reason for w in words), reason
    assert not [e for e in car.events("committed") if e.get("version") == bad], "a refused version was committed"
    [back] = [e for e in car.events("rolled_back") if e.get("version") == bad]
    assert back["to"] == good
    # rolled back at once: no health poll of the refused version (the proof failed before the health check)
    assert not [e for e in car.events("verified") + car.events("verify_failed") if e.get("version") == bad]
    assert st["versions"][bad]["state"] == "failed" and st["versions"][bad]["proof"].startswith("refused: ")


def good_versions_in_a_row(car: Sidecar, volume: Path, name: str, render: Any, n: int = 20) -> None:
    """`n` good versions, each committed and proven: no false rollback."""
    for i in range(n):
        v = apply(volume, name, render(f"good-{i}"))
        st = wait_settled(car, v, f"good version {i}")
        assert st["last_good"] == v and not st["quarantined"], st
    assert not car.events("rolled_back")
    proofs = [e for e in car.events("reload_proven")]
    assert len(proofs) >= n


# --- nginx: SIGHUP, proven by new workers --------------------------------------------------------------


@contextmanager
def nginx_pod(tmp_path: Path, port: int) -> Iterator[tuple[Sidecar, App, Path, str]]:
    prefix, volume, target = tmp_path / "nginx", tmp_path / "volume", tmp_path / "target"
    (prefix / "tmp").mkdir(parents=True)
    env = {**nginx_proof_env(prefix, port), **FAST_HEALTH}
    first = apply(volume, "nginx.conf", nginx_conf(port, "v1", prefix))
    with running(volume, target, tmp_path, **env) as car:
        car.wait_current(first)
        with start_nginx_no_dac(prefix, target / "nginx.conf", port) as ngx:
            yield car, ngx, volume, first


def _unreadable_include(port: int, prefix: Path, secret: Path) -> str:
    return nginx_conf(port, "v2", prefix).replace("access_log off;", f"access_log off;\n    include {secret};")


@pytest.mark.timeout(180)
@pytest.mark.parametrize("case", ["busy-listen", "unreadable-include"])
def test_nginx_refused_at_reload_is_rolled_back_at_once(tmp_path: Path, case: str) -> None:
    """nginx -t passes the version, the running master refuses it ([emerg], old workers keep serving):
    never committed, rolled back, quarantined with nginx's own [emerg] line; the next good one goes through."""
    port = free_port()
    prefix = tmp_path / "nginx"
    with socket.socket() as held, nginx_pod(tmp_path, port) as (car, ngx, volume, good):
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        if case == "busy-listen":
            busy = busy_listen(nginx_conf(port, "v2", prefix), port, held.getsockname()[1])
            conf, words = busy, ("Address already in use", "bind()")
        else:
            secret = unreadable(tmp_path / "secret.conf", "# an include nginx's master may not read\n")
            conf, words = _unreadable_include(port, prefix, secret), ("Permission denied",)
        bad = apply(volume, "nginx.conf", conf)
        st = wait_settled(car, bad, "the refused version quarantined")
        assert_refused(car, st, good, bad, *words)
        assert "[emerg]" in st["quarantined"][bad]["reason"]
        assert ngx.get("/") == (200, "v1") and ngx.alive()
        assert car.metrics()['reload_sidecar_proofs_total{kind="workers",result="refused"}'] == 1.0

        fixed = apply(volume, "nginx.conf", nginx_conf(port, "v3", prefix))
        st = wait_settled(car, fixed, "the next good version committed")
        assert st["last_good"] == fixed and st["ready"]
        assert "new worker" in st["versions"][fixed]["proof"], st["versions"][fixed]
        wait_for(lambda: ngx.get("/") == (200, "v3"), what="nginx serving v3")


@pytest.mark.timeout(240)
def test_nginx_twenty_good_versions_no_false_rollback(tmp_path: Path) -> None:
    port = free_port()
    with nginx_pod(tmp_path, port) as (car, ngx, volume, _):
        good_versions_in_a_row(car, volume, "nginx.conf", lambda body: nginx_conf(port, body, tmp_path / "nginx"))
        assert ngx.get("/") == (200, "good-19")


# --- Prometheus: SIGHUP proven by its reload metric, POST /-/reload by its answer ---------------------------


@contextmanager
def prometheus_pod(tmp_path: Path, port: int, how: str) -> Iterator[tuple[Sidecar, App, Path, str]]:
    workdir, volume, target = tmp_path / "prom", tmp_path / "volume", tmp_path / "target"
    workdir.mkdir(parents=True)
    url = f"http://127.0.0.1:{port}"
    trigger = (
        {"RELOAD_SIGNAL": "SIGHUP", "RELOAD_PIDFILE": str(workdir / "prometheus.pid")}
        if how == "signal"
        else {"RELOAD_RELOAD_URL": f"{url}/-/reload"}
    )
    env = {
        "RELOAD_VALIDATE_COMMAND": f"{promtool_bin()} check config {{dir}}/prometheus.yml",
        **trigger,
        "RELOAD_PROOF_METRIC": "prometheus_config" if how == "signal" else "",
        "RELOAD_PROOF_URL": f"{url}/metrics" if how == "signal" else "",
        "RELOAD_APP_ERROR_LOG": str(workdir / "prometheus.out"),  # Prometheus's own log (level=error ...)
        "RELOAD_HEALTH_URL": f"{url}/-/healthy",
        **FAST_HEALTH,
    }
    first = apply(volume, "prometheus.yml", prometheus_yml("job-1", "127.0.0.1:9"))
    with running(volume, target, tmp_path, **{k: v for k, v in env.items() if v}) as car:
        car.wait_current(first)
        with start_prometheus_no_dac(workdir, target / "prometheus.yml", port) as prom:
            yield car, prom, volume, first


def _with_rules(yml: str, *files: Path) -> str:
    return yml + "rule_files:\n" + "".join(f"  - {str(f)!r}\n" for f in files)


RULES = "groups:\n  - name: g\n    rules:\n      - record: job:up:sum\n        expr: sum(up)\n"


@pytest.mark.timeout(180)
@pytest.mark.parametrize("how", ["signal", "http"])
def test_prometheus_refused_rule_file_is_rolled_back(tmp_path: Path, how: str) -> None:
    """promtool (root) reads the rule file, Prometheus cannot: SIGHUP turns its reload metric 0, POST
    answers 500. Never committed; with POST, the reload URL was asked exactly once for the version."""
    port = free_port()
    with prometheus_pod(tmp_path, port, how) as (car, prom, volume, good):
        secret = unreadable(tmp_path / "rules.yml", RULES)
        before = _reload_posts(prom)
        bad = apply(volume, "prometheus.yml", _with_rules(prometheus_yml("job-2", "127.0.0.1:9"), secret))
        st = wait_settled(car, bad, "the refused version quarantined")
        assert_refused(car, st, good, bad, "permission denied")  # Prometheus's own words, from its 500 or its log
        kind = "metric" if how == "signal" else "http"
        assert car.metrics()[f'reload_sidecar_proofs_total{{kind="{kind}",result="refused"}}'] == 1.0
        if how == "http":
            # the refused version, then the rollback's one: each asked once (a 500 is never retried)
            assert _reload_posts(prom) - before == 2.0
        assert "job-1" in _config(prom) and "job-2" not in _config(prom)

        fixed = apply(volume, "prometheus.yml", prometheus_yml("job-3", "127.0.0.1:9"))
        st = wait_settled(car, fixed, "the next good version committed")
        assert st["last_good"] == fixed and "job-3" in _config(prom)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("how", ["signal", "http"])
def test_prometheus_twenty_good_versions_no_false_rollback(tmp_path: Path, how: str) -> None:
    port = free_port()
    with prometheus_pod(tmp_path, port, how) as (car, prom, volume, _):
        good_versions_in_a_row(car, volume, "prometheus.yml", lambda job: prometheus_yml(job, "127.0.0.1:9"))
        assert "good-19" in _config(prom)


@pytest.mark.timeout(240)
def test_prometheus_slow_reload_is_never_proven_by_a_stale_value(tmp_path: Path) -> None:
    """A reload slowed by hundreds of rule files that then fails (the last file unreadable): the metric
    still reads 1 from the previous reload while Prometheus works; the proof waits for a newer timestamp,
    sees the flag turn 0 and rolls back. Never committed."""
    port = free_port()
    with prometheus_pod(tmp_path, port, "signal") as (car, prom, volume, good):
        rules = tmp_path / "rules"
        rules.mkdir()
        many = [rules / f"r{i}.yml" for i in range(400)]
        for i, path in enumerate(many):
            path.write_text(
                "groups:\n"
                + "".join(
                    f"  - name: g{i}-{j}\n    rules:\n"
                    + "".join(f"      - record: r:{i}:{j}:{k}\n        expr: sum(up) by (job)\n" for k in range(5))
                    for j in range(5)
                )
            )
        secret = unreadable(tmp_path / "zz-last.yml", RULES)
        bad = apply(volume, "prometheus.yml", _with_rules(prometheus_yml("job-2", "127.0.0.1:9"), *many, secret))
        st = wait_settled(car, bad, "the slow refused version quarantined")
        assert_refused(car, st, good, bad, "turned 0", "no successful reload")
        assert car.metrics()['reload_sidecar_proofs_total{kind="metric",result="proven"}'] >= 1.0  # the rollback


def _config(prom: App) -> str:
    import json

    status, body = prom.get("/api/v1/status/config")
    assert status == 200, body
    return str(json.loads(body)["data"]["yaml"])


def _reload_posts(prom: App) -> float:
    """POST /-/reload requests Prometheus itself counted (any status)."""
    total = 0.0
    for line in prom.get("/metrics")[1].splitlines():
        if line.startswith("prometheus_http_requests_total{") and 'handler="/-/reload"' in line:
            total += float(line.split()[-1])
    return total


# --- HAProxy -W: SIGUSR2 to the master, proven by its new worker --------------------------------------------


@contextmanager
def haproxy_pod(tmp_path: Path, port: int) -> Iterator[tuple[Sidecar, App, Path, str]]:
    workdir, volume, target = tmp_path / "haproxy", tmp_path / "volume", tmp_path / "target"
    workdir.mkdir(parents=True)
    env = {
        "RELOAD_VALIDATE_COMMAND": f"{haproxy_bin()} -c -q -f {{dir}}/haproxy.cfg",
        "RELOAD_SIGNAL": "SIGUSR2",
        "RELOAD_PIDFILE": str(workdir / "haproxy.pid"),
        "RELOAD_PROOF": "workers",
        "RELOAD_APP_ERROR_LOG": str(workdir / "haproxy.out"),
        "RELOAD_HEALTH_URL": f"http://127.0.0.1:{port}/health",
        **FAST_HEALTH,
    }
    first = apply(volume, "haproxy.cfg", haproxy_cfg(port, "v1"))
    with running(volume, target, tmp_path, **env) as car:
        car.wait_current(first)
        with start_haproxy(workdir, target / "haproxy.cfg", port) as hap:
            yield car, hap, volume, first


@pytest.mark.timeout(180)
@pytest.mark.parametrize("case", ["busy-bind", "unreadable-errorfile"])
def test_haproxy_refused_at_reload_is_rolled_back_at_once(tmp_path: Path, case: str) -> None:
    """`haproxy -c` passes the version; the master's reload fails ("Loading failure!") and the old worker
    serves on: never committed, rolled back, quarantined with HAProxy's [ALERT] line."""
    port = free_port()
    with socket.socket() as held, haproxy_pod(tmp_path, port) as (car, hap, volume, good):
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        if case == "busy-bind":
            conf = haproxy_cfg(port, "v2", extra=f"    bind 127.0.0.1:{held.getsockname()[1]}\n")
            words: tuple[str, ...] = ("cannot bind socket", "Address already in use")
        else:
            page = unreadable(tmp_path / "503.http", "HTTP/1.0 503 Service Unavailable\r\n\r\nbusy\n")
            conf, words = haproxy_cfg(port, "v2", errorfile=str(page)), ("errorfile", "error opening file")
        bad = apply(volume, "haproxy.cfg", conf)
        st = wait_settled(car, bad, "the refused version quarantined")
        assert_refused(car, st, good, bad, *words)
        assert "[ALERT]" in st["quarantined"][bad]["reason"]
        wait_for(lambda: hap.get("/") == (200, "v1"), what="the old worker serving v1")

        fixed = apply(volume, "haproxy.cfg", haproxy_cfg(port, "v3"))
        st = wait_settled(car, fixed, "the next good version committed")
        assert st["last_good"] == fixed and "new worker" in st["versions"][fixed]["proof"]
        wait_for(lambda: hap.get("/") == (200, "v3"), what="HAProxy serving v3")


@pytest.mark.timeout(240)
def test_haproxy_twenty_good_versions_no_false_rollback(tmp_path: Path) -> None:
    port = free_port()
    with haproxy_pod(tmp_path, port) as (car, hap, volume, _):
        good_versions_in_a_row(car, volume, "haproxy.cfg", lambda body: haproxy_cfg(port, body))
        wait_for(lambda: hap.get("/") == (200, "good-19"), what="HAProxy serving the last version")


# --- Alertmanager: SIGHUP proven by its reload metric, POST /-/reload by its answer -------------------------


@contextmanager
def alertmanager_pod(tmp_path: Path, port: int, how: str) -> Iterator[tuple[Sidecar, App, Path, str]]:
    workdir, volume, target = tmp_path / "am", tmp_path / "volume", tmp_path / "target"
    workdir.mkdir(parents=True)
    url = f"http://127.0.0.1:{port}"
    trigger = (
        {
            "RELOAD_SIGNAL": "SIGHUP",
            "RELOAD_PIDFILE": str(workdir / "alertmanager.pid"),
            "RELOAD_PROOF_METRIC": "alertmanager_config",
        }
        if how == "signal"
        else {"RELOAD_RELOAD_URL": f"{url}/-/reload"}
    )
    env = {
        "RELOAD_VALIDATE_COMMAND": f"{amtool_bin()} check-config {{dir}}/alertmanager.yml",
        **trigger,
        "RELOAD_PROOF_URL": f"{url}/metrics",
        "RELOAD_APP_ERROR_LOG": str(workdir / "alertmanager.out"),
        "RELOAD_HEALTH_URL": f"{url}/-/healthy",
        **FAST_HEALTH,
    }
    first = apply(volume, "alertmanager.yml", alertmanager_yml("r-1"))
    with running(volume, target, tmp_path, **env) as car:
        car.wait_current(first)
        with start_alertmanager(workdir, target / "alertmanager.yml", port) as am:
            yield car, am, volume, first


@pytest.mark.timeout(180)
@pytest.mark.parametrize("how", ["signal", "http"])
def test_alertmanager_refused_template_is_rolled_back(tmp_path: Path, how: str) -> None:
    """amtool reads the template, Alertmanager cannot: its reload metric turns 0 (SIGHUP) or POST answers
    500 (asked once). Never committed, rolled back, the next good version goes through."""
    port = free_port()
    with alertmanager_pod(tmp_path, port, how) as (car, am, volume, good):
        tmpl = unreadable(tmp_path / "x.tmpl", '{{ define "x" }}x{{ end }}\n')
        bad = apply(volume, "alertmanager.yml", alertmanager_yml("r-2", str(tmpl)))
        st = wait_settled(car, bad, "the refused version quarantined")
        assert_refused(car, st, good, bad, "permission denied")  # Alertmanager's own words
        kind = "metric" if how == "signal" else "http"
        assert car.metrics()[f'reload_sidecar_proofs_total{{kind="{kind}",result="refused"}}'] == 1.0

        fixed = apply(volume, "alertmanager.yml", alertmanager_yml("r-3"))
        st = wait_settled(car, fixed, "the next good version committed")
        assert st["last_good"] == fixed and "r-3" in _am_config(am)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("how", ["signal", "http"])
def test_alertmanager_twenty_good_versions_no_false_rollback(tmp_path: Path, how: str) -> None:
    port = free_port()
    with alertmanager_pod(tmp_path, port, how) as (car, am, volume, _):
        good_versions_in_a_row(car, volume, "alertmanager.yml", alertmanager_yml)
        assert "good-19" in _am_config(am)


def _am_config(am: App) -> str:
    import json

    status, body = am.get("/api/v2/status")
    assert status == 200, body
    return str(json.loads(body)["config"]["original"])


# --- the version marker: nginx includes the marker's add_header line --------------------------------------


def _marked(port: int, body: str, prefix: Path, target: Path) -> str:
    marker = f"include {target}/..data/..reload-sidecar-version.conf;"
    return nginx_conf(port, body, prefix).replace("location = /health {", "location = /health {\n            " + marker)


@pytest.mark.timeout(180)
def test_nginx_version_marker_proves_a_reload_and_catches_a_refusal(tmp_path: Path) -> None:
    """RELOAD_PROOF=marker: nginx's /health carries X-Config-Version from an included file, read only with
    the config. A good version shows its own id (proven); a refused one keeps showing the old id: rolled back."""
    port, prefix = free_port(), tmp_path / "nginx"
    volume, target = tmp_path / "volume", tmp_path / "target"
    (prefix / "tmp").mkdir(parents=True)
    env = {
        "RELOAD_VALIDATE_COMMAND": "",
        "RELOAD_SIGNAL": "SIGHUP",
        "RELOAD_PIDFILE": str(prefix / "nginx.pid"),
        "RELOAD_PROOF": "marker",
        "RELOAD_PROOF_TIMEOUT_S": "3",
        "RELOAD_HEALTH_URL": f"http://127.0.0.1:{port}/health",
        **FAST_HEALTH,
    }
    first = apply(volume, "nginx.conf", _marked(port, "v1", prefix, target))
    with socket.socket() as held, running(volume, target, tmp_path, **{k: v for k, v in env.items() if v}) as car:
        car.wait_current(first)
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        with start_nginx_no_dac(prefix, target / "nginx.conf", port) as ngx:
            good = apply(volume, "nginx.conf", _marked(port, "v2", prefix, target))
            st = wait_settled(car, good, "the marked version committed")
            assert st["last_good"] == good and f"shows version {good}" in st["versions"][good]["proof"], st
            busy = busy_listen(_marked(port, "v3", prefix, target), port, held.getsockname()[1])
            bad = apply(volume, "nginx.conf", busy)
            st = wait_settled(car, bad, "the refused version quarantined")
            assert_refused(car, st, good, bad, f"did not show version {bad}")
            assert ngx.get("/") == (200, "v2")
