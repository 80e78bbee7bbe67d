"""Real nginx (nginx -t, SIGHUP by pidfile) and real Prometheus (promtool, POST /-/reload) behind the sidecar.

volume/nginx.conf -> ..data/nginx.conf        (kubelet-style, written by tests.kubelet.project)
target/nginx.conf -> ..data/nginx.conf        (the sidecar's; nginx runs with -c target/nginx.conf)
"""

from __future__ import annotations

from pathlib import Path

from tests.e2e.apps import free_port, nginx_bin, nginx_conf, prometheus_yml, promtool_bin, start_nginx, start_prometheus
from tests.e2e.sidecar_proc import live_files, running, wait_for
from tests.kubelet import project


def test_nginx_good_version_served_and_rejected_version_never_reaches_target(tmp_path: Path) -> None:
    """nginx serves a good swap after SIGHUP; a version `nginx -t` rejects stays out and nginx keeps serving."""
    prefix, volume, target = tmp_path / "nginx", tmp_path / "volume", tmp_path / "target"
    (prefix / "tmp").mkdir(parents=True)
    port = free_port()
    project(volume, {"nginx.conf": nginx_conf(port, "v1", prefix)})
    env = {
        "RELOAD_VALIDATE_COMMAND": f"{nginx_bin()} -t -q -c {{dir}}/nginx.conf",
        "RELOAD_SIGNAL": "SIGHUP",
        "RELOAD_PIDFILE": str(prefix / "nginx.pid"),
        "RELOAD_HEALTH_URL": f"http://127.0.0.1:{port}/health",
        "RELOAD_HEALTH_SUCCESSES": "2",
        "RELOAD_HEALTH_INTERVAL_S": "0.2",
        "RELOAD_HEALTH_TIMEOUT_S": "10",
    }
    with running(volume, target, tmp_path, **env) as car:
        first = car.wait_current()
        assert first["ready"]
        with start_nginx(prefix, target / "nginx.conf", port) as ngx:  # the app starts after the sidecar
            assert ngx.get("/") == (200, "v1")
            project(volume, {"nginx.conf": nginx_conf(port, "v2", prefix)})
            ngx.wait_body("/", "v2")
            st = wait_for(lambda: (s := car.status())["last_good"] != first["current"] and s, what="v2 committed")
            assert st["current"] == st["last_good"]
            [trigger] = car.events("reload_triggered")
            assert trigger["evidence"] == f"SIGHUP -> pid {ngx.pid}"

            broken = nginx_conf(port, "v3", prefix).replace("worker_connections 64;", "worker_connections 64")
            project(volume, {"nginx.conf": broken})
            st = wait_for(lambda: (s := car.status())["refused"] and s, what="nginx -t refusal")
            [(bad, refusal)] = st["refused"].items()
            assert "nginx" in refusal["reason"] and "exited 1" in refusal["reason"], refusal
            assert "[emerg]" in refusal["reason"] and "nginx.conf" in refusal["reason"], refusal
            assert st["current"] == st["last_good"] != bad
            assert live_files(target)["nginx.conf"].decode() == nginx_conf(port, "v2", prefix)
            assert ngx.get("/") == (200, "v2")
            assert car.metrics()["reload_sidecar_validation_failures_total"] == 1.0
            assert car.events("refused")[0]["version"] == bad
            assert len(car.events("reload_triggered")) == 1, "a refused version must not signal nginx"
            assert ngx.alive()


def test_prometheus_new_scrape_config_loaded_and_bad_one_refused(tmp_path: Path) -> None:
    """Prometheus gets a new scrape job via POST /-/reload (verified by its own metric); promtool refuses a bad one."""
    workdir, volume, target = tmp_path / "prom", tmp_path / "volume", tmp_path / "target"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    project(volume, {"prometheus.yml": prometheus_yml("job-one", "127.0.0.1:9")})
    env = {
        "RELOAD_VALIDATE_COMMAND": f"{promtool_bin()} check config {{dir}}/prometheus.yml",
        "RELOAD_RELOAD_URL": f"{url}/-/reload",
        "RELOAD_HEALTH_URL": f"{url}/-/healthy",
        "RELOAD_HEALTH_METRIC_URL": f"{url}/metrics",
        "RELOAD_HEALTH_METRIC": "prometheus_config_last_reload_successful==1",
        "RELOAD_HEALTH_SUCCESSES": "2",
        "RELOAD_HEALTH_INTERVAL_S": "0.2",
        "RELOAD_HEALTH_TIMEOUT_S": "10",
    }
    with running(volume, target, tmp_path, **env) as car:
        first = car.wait_current()
        with start_prometheus(workdir, target / "prometheus.yml", port) as prom:
            assert "job-one" in prom.config_text()
            project(volume, {"prometheus.yml": prometheus_yml("job-two", "127.0.0.1:9")})
            wait_for(lambda: "job-two" in prom.config_text(), what="job-two in /api/v1/status/config")
            st = wait_for(lambda: (s := car.status())["last_good"] != first["current"] and s, what="committed")
            assert st["ready"] and prom.metric("prometheus_config_last_reload_successful") == 1.0
            assert car.events("reload_triggered")[0]["evidence"] == "HTTP 200"
            assert car.events("verified"), "the health metric must have been checked"

            bad = prometheus_yml("job-three", "127.0.0.1:9").replace("scrape_interval: 1s", "scrape_interval: often")
            project(volume, {"prometheus.yml": bad})
            st = wait_for(lambda: (s := car.status())["refused"] and s, what="promtool refusal")
            [refusal] = st["refused"].values()
            assert "promtool" in refusal["reason"] and "often" in refusal["reason"], refusal
            assert "job-two" in prom.config_text() and "job-three" not in prom.config_text()
            assert len(car.events("reload_triggered")) == 1
            assert car.metrics()["reload_sidecar_validation_failures_total"] == 1.0
