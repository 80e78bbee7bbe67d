"""The manifests' pods as containers: nginx + sidecar (manifests/nginx.yaml), Prometheus + sidecar
(manifests/prometheus.yaml), and the webhook (manifests/webhook/deployment.yaml), each read from its
manifest and started by tests/podspec.py's translation (env, securityContext, volumes, start order)."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.containers.engine import REPO, Podman, RunningPod, run_pod
from tests.e2e.webhook_proc import client_context, issue, make_ca, review
from tests.kubelet import project
from tests.podspec import pod_template, translate


def _manifest(name: str) -> list[Any]:
    return [d for d in yaml.safe_load_all((REPO / "manifests" / name).read_text()) if d]


def _configmap(docs: list[Any], name: str) -> dict[str, str]:
    data: dict[str, str] = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name)["data"]
    return data


def _count(running: RunningPod, event: str) -> int:
    return sum(1 for e in running.events("reload-sidecar") if e["event"] == event)


def _after(running: RunningPod, event: str, before: int) -> Callable[[], bool]:
    return lambda: _count(running, event) > before


def _body(running: RunningPod, url: str) -> str:
    status, body = running.http(url)
    return f"{status} {body.decode()}"


def test_nginx_pod(podman: Podman, tmp_path: Path) -> None:
    """Good, refused and unhealthy versions, then a SIGKILL of the sidecar container, in the pod the
    manifest describes: SIGHUP crosses containers through the shared PID namespace; nginx's master never
    restarts; a refused version never reaches `live`; an unhealthy one is rolled back."""
    docs = _manifest("nginx.yaml")
    data = _configmap(docs, "web-config")
    pod = translate(pod_template(docs, "Deployment", "web"), pod_name="web-7c9d4-x2x9z")
    config = tmp_path / "config"
    project(config, data)
    version = data["default.conf"]
    with run_pod(podman, pod, tmp_path, {"config": config}) as running:
        # The native sidecar was ready (first version live) before nginx was started.
        assert running.ready["reload-sidecar"] < running.started["nginx"]
        running.wait_for("nginx serves v1", lambda: running.answers("http://127.0.0.1:8080/healthz"), "nginx")
        # Every probe the manifest declares answers 200 at the URL it names.
        for container in pod.containers:
            for kind, url in container.probe_urls:
                assert running.http(url)[0] == 200, (container.name, kind, url)
        assert _body(running, "http://127.0.0.1:8080/") == "200 hello from version 1\n"
        master = running.pid("nginx")

        # Good: promoted, SIGHUP to nginx's master (same process), served, committed.
        committed = _count(running, "committed")
        project(config, {**data, "default.conf": version.replace("version 1", "version 2")})
        running.wait_for("v2 committed", _after(running, "committed", committed), "reload-sidecar")
        assert _body(running, "http://127.0.0.1:8080/") == "200 hello from version 2\n"

        # Refused by `nginx -t` inside the sidecar: nginx keeps serving version 2.
        refused = _count(running, "refused")
        live = Path(running.paths["live"])
        data_link = os.readlink(live / "..data")
        project(
            config, {**data, "nginx.conf": data["nginx.conf"].replace("worker_processes 2;", "worker_processes two;")}
        )
        running.wait_for("bad version refused", _after(running, "refused", refused), "reload-sidecar")
        assert "worker_processes" in json.dumps(
            [e for e in running.events("reload-sidecar") if e["event"] == "refused"][-1]
        )
        assert os.readlink(live / "..data") == data_link
        assert _body(running, "http://127.0.0.1:8080/") == "200 hello from version 2\n"

        # Unhealthy: passes `nginx -t`, but /healthz fails after the reload: rolled back to version 2.
        rolled = _count(running, "rolled_back")
        sick = version.replace("version 1", "version 3").replace('return 200 "ok\\n";', 'return 500 "sick\\n";')
        assert sick != version.replace("version 1", "version 3")
        project(config, {**data, "default.conf": sick})
        running.wait_for("unhealthy version rolled back", _after(running, "rolled_back", rolled), "reload-sidecar")
        running.wait_for(
            "v2 back", lambda: _body(running, "http://127.0.0.1:8080/") == "200 hello from version 2\n", "nginx"
        )
        assert os.readlink(live / "..data") == data_link

        # SIGKILL of the sidecar (as the OOM killer would): restarted by its restartPolicy, it recovers the
        # live version from its state in `live` (no rollback, no new promotion), nginx serves on untouched,
        # and the next version goes through.
        rolled, promoted = _count(running, "rolled_back"), _count(running, "promoted")
        os.kill(running.pid("reload-sidecar"), signal.SIGKILL)
        running.wait_for(
            "sidecar restarted",
            lambda: running.restarts("reload-sidecar") == 1 and running.running("reload-sidecar"),
            "reload-sidecar",
        )
        assert _body(running, "http://127.0.0.1:8080/") == "200 hello from version 2\n"
        running.wait_for(
            "sidecar ready again", lambda: running.answers("http://127.0.0.1:9533/readyz"), "reload-sidecar"
        )
        running.wait_for("recovered logged", lambda: _count(running, "recovered") >= 1, "reload-sidecar")
        assert (_count(running, "rolled_back"), _count(running, "promoted")) == (rolled, promoted)
        committed = _count(running, "committed")
        project(config, {**data, "default.conf": version.replace("version 1", "version 4")})
        running.wait_for("v4 committed", _after(running, "committed", committed), "reload-sidecar")
        assert _body(running, "http://127.0.0.1:8080/") == "200 hello from version 4\n"
        assert running.pid("nginx") == master and running.restarts("nginx") == 0


def test_prometheus_pod(podman: Podman, tmp_path: Path) -> None:
    """HTTP trigger: the sidecar POSTs /-/reload; Prometheus runs the new scrape interval; a version promtool
    refuses never reaches it. Different UIDs (65532, 65534) share the volumes through fsGroup."""
    docs = _manifest("prometheus.yaml")
    data = _configmap(docs, "prometheus-config")
    pod = translate(pod_template(docs, "StatefulSet", "prometheus"), pod_name="prometheus-0")
    config = tmp_path / "config"
    project(config, data)
    with run_pod(podman, pod, tmp_path, {"config": config}) as running:
        assert running.ready["reload-sidecar"] < running.started["prometheus"]
        ready = "http://127.0.0.1:9090/-/ready"
        running.wait_for("prometheus ready", lambda: running.answers(ready), "prometheus", timeout=180)

        def interval() -> str:
            status, body = running.http("http://127.0.0.1:9090/api/v1/status/config")
            assert status == 200, body
            loaded = yaml.safe_load(json.loads(body)["data"]["yaml"])
            return str(loaded["global"]["scrape_interval"])

        assert interval() == "30s"
        for container in pod.containers:
            for kind, url in container.probe_urls:
                assert running.http(url)[0] == 200, (container.name, kind, url)
        committed = _count(running, "committed")
        project(
            config, {"prometheus.yml": data["prometheus.yml"].replace("scrape_interval: 30s", "scrape_interval: 15s")}
        )
        running.wait_for("15s committed", _after(running, "committed", committed), "reload-sidecar")
        assert interval() == "15s"
        assert any(
            e["event"] == "committed" and e.get("how") != "first version at start-up"
            for e in running.events("reload-sidecar")
        )

        refused = _count(running, "refused")
        project(
            config, {"prometheus.yml": data["prometheus.yml"].replace("scrape_interval: 30s", "scrape_interval: soon")}
        )
        running.wait_for("bad version refused", _after(running, "refused", refused), "reload-sidecar")
        assert interval() == "15s"
        assert running.restarts("prometheus") == 0


def test_webhook_answers_admission_reviews_over_tls(podman: Podman, tmp_path: Path) -> None:
    """The webhook Deployment's container, with a Secret of a test CA's certificate and the profiles
    ConfigMap of the manifests: a real AdmissionReview over TLS, allowed or denied by `nginx -t` in it."""
    docs = _manifest("webhook/deployment.yaml")
    profiles = _configmap(_manifest("webhook/profiles.yaml"), "reload-sidecar-webhook-profiles")
    pod = translate(
        pod_template(docs, "Deployment", "reload-sidecar-webhook"), pod_name="webhook-0", namespace="reload-sidecar"
    )
    ca = make_ca(tmp_path / "pki")
    cert, key = issue(ca, tmp_path / "pki", "webhook", 2)
    tls, profile_dir = tmp_path / "tls", tmp_path / "profiles"
    project(tls, {"tls.crt": cert.read_bytes(), "tls.key": key.read_bytes()})
    project(profile_dir, profiles)
    nginx = _configmap(_manifest("nginx.yaml"), "web-config")
    context = client_context(ca)
    with run_pod(podman, pod, tmp_path, {"tls": tls, "profiles": profile_dir}) as running:
        url = "https://127.0.0.1:8443"

        def up() -> bool:
            assert running.running("webhook"), running.logs("webhook")
            return running.answers(f"{url}/healthz", context)

        running.wait_for("webhook up", up, "webhook")
        probes = pod.container("webhook").probe_urls
        assert [kind for kind, _ in probes] == ["livenessProbe", "readinessProbe"]
        for kind, probe in probes:
            assert running.http(probe, context=context)[0] == 200, (kind, probe)

        def answer(uid: str, data: dict[str, str]) -> dict[str, Any]:
            body = json.dumps(review(uid, profile="nginx", data=data)).encode()
            status, raw = running.http(f"{url}/validate?timeout=10s", body, context=context)
            assert status == 200, raw
            reply = json.loads(raw)
            assert reply["response"]["uid"] == uid
            response: dict[str, Any] = reply["response"]
            return response

        assert answer("good", nginx)["allowed"] is True
        denied = answer("bad", {**nginx, "default.conf": "server { listen 8080; bogus_directive on; }\n"})
        assert denied["allowed"] is False and "bogus_directive" in denied["status"]["message"], denied
