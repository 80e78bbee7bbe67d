"""tests/podspec.py: the manifests' pod specs as podman arguments (pure; the container tests run them)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.podspec import Mount, Volume, pod_create_args, pod_template, quantity, run_args, translate

MANIFESTS = Path(__file__).resolve().parent.parent / "manifests"


def _docs(name: str) -> list[Any]:
    return list(yaml.safe_load_all((MANIFESTS / name).read_text()))


def _option(options: tuple[str, ...], flag: str) -> list[str]:
    return [options[i + 1] for i, o in enumerate(options) if o == flag]


def test_quantities() -> None:
    assert quantity("24Mi") == 24 * 2**20
    assert quantity("2Gi") == 2 * 2**30
    assert quantity("1G") == 10**9
    assert quantity(4096) == 4096
    assert quantity("1.5Ki") == 1536
    for bad in ("24MB", "Mi", "-1", "100m"):
        with pytest.raises(ValueError, match="quantity"):
            quantity(bad)


def test_nginx_pod_as_the_manifest_wires_it() -> None:
    spec = pod_template(_docs("nginx.yaml"), "Deployment", "web")
    pod = translate(spec, pod_name="web-0")
    assert pod.share_pid
    # Start order: the native sidecar first, held until its startupProbe answers; then nginx.
    sidecar, nginx = pod.containers
    assert (sidecar.name, sidecar.native_sidecar, sidecar.init) == ("reload-sidecar", True, False)
    assert sidecar.startup_url == "http://127.0.0.1:9533/readyz"
    assert (nginx.name, nginx.native_sidecar, nginx.startup_url) == ("nginx", False, None)
    assert sidecar.probe_urls == (
        ("startupProbe", "http://127.0.0.1:9533/readyz"),
        ("livenessProbe", "http://127.0.0.1:9533/healthz"),
        ("readinessProbe", "http://127.0.0.1:9533/readyz"),
    )
    assert nginx.probe_urls == (("readinessProbe", "http://127.0.0.1:8080/healthz"),)
    assert sidecar.image == "ghcr.io/reload-sidecar/reload-sidecar-nginx:0.1.0"
    # Every env entry of the manifest, in order; fieldRef metadata.name is the pod's name.
    env = _option(sidecar.options, "--env")
    wanted = [e for e in spec["initContainers"][0]["env"] if "value" in e]
    assert [e.split("=", 1) for e in env if not e.startswith("RELOAD_POD_NAME=")] == [
        [e["name"], e["value"]] for e in wanted
    ]
    assert "RELOAD_POD_NAME=web-0" in env
    for c in (sidecar, nginx):
        assert _option(c.options, "--user") == ["101:101"]
        assert "--read-only" in c.options and "--read-only-tmpfs=false" in c.options
        assert _option(c.options, "--security-opt") == ["no-new-privileges"]
        assert _option(c.options, "--cap-drop") == ["ALL"]
        assert _option(c.options, "--memory") == [str(128 * 2**20)]
        assert _option(c.options, "--restart") == ["always"]
    assert sidecar.arguments == ("run",)
    assert json.loads(_option(nginx.options, "--entrypoint")[0]) == ["nginx", "-c", "/etc/nginx/live/nginx.conf"]
    assert sidecar.mounts == (
        Mount("config", "/config", True),
        Mount("live", "/live", False),
        Mount("sidecar-tmp", "/tmp", False),
    )
    assert nginx.mounts == (Mount("live", "/etc/nginx/live", True), Mount("nginx-tmp", "/tmp", False))
    assert pod.volumes == (
        Volume("config", "configMap", source="web-config"),
        Volume("live", "emptyDir", size=24 * 2**20),
        Volume("sidecar-tmp", "emptyDir", size=16 * 2**20),
        Volume("nginx-tmp", "emptyDir", size=64 * 2**20),
    )
    assert pod_create_args(pod, "p1") == [
        "pod",
        "create",
        "--name",
        "p1",
        "--hostname",
        "web-0",
        "--network",
        "none",
        "--share",
        "ipc,net,uts,pid",
    ]
    args = run_args(
        sidecar, pod="p1", name="p1-sidecar", volume_paths={"config": "/c", "live": "/l", "sidecar-tmp": "/t"}
    )
    assert args[:6] == ["run", "-d", "--pod", "p1", "--name", "p1-sidecar"]
    assert args[-2:] == ["ghcr.io/reload-sidecar/reload-sidecar-nginx:0.1.0", "run"]
    assert _option(tuple(args), "--volume") == ["/c:/config:ro", "/l:/live:rw", "/t:/tmp:rw"]


def test_prometheus_pod_fs_group_and_per_container_users() -> None:
    spec = pod_template(_docs("prometheus.yaml"), "StatefulSet", "prometheus")
    pod = translate(spec, pod_name="prometheus-0")
    assert not pod.share_pid  # the HTTP trigger needs no shared PID namespace
    sidecar, prometheus = pod.containers
    assert _option(sidecar.options, "--user") == ["65532:65532"]  # the container's own over the pod's
    assert _option(prometheus.options, "--user") == ["65534:65534"]  # the pod's
    assert _option(sidecar.options, "--group-add") == _option(prometheus.options, "--group-add") == ["65534"]
    assert _option(sidecar.options, "--memory") == [str(192 * 2**20)]
    assert _option(prometheus.options, "--memory") == [str(2**30)]
    assert "RELOAD_POD_NAME=prometheus-0" in _option(sidecar.options, "--env")
    assert prometheus.arguments[-1] == "--web.enable-lifecycle"
    assert "--entrypoint" not in prometheus.options  # args only: the image's entrypoint stays
    data = next(v for v in pod.volumes if v.name == "data")
    assert (data.size, data.group) == (2 * 2**30, 65534)


def test_webhook_deployment() -> None:
    spec = pod_template(_docs("webhook/deployment.yaml"), "Deployment", "reload-sidecar-webhook")
    pod = translate(spec, pod_name="reload-sidecar-webhook-0", namespace="reload-sidecar")
    (webhook,) = pod.containers
    assert webhook.arguments == ("webhook",)
    assert not webhook.native_sidecar and webhook.startup_url is None
    assert Volume("tls", "secret", source="reload-sidecar-webhook-tls") in pod.volumes
    assert "RELOAD_WEBHOOK_LISTEN=0.0.0.0:8443" in _option(webhook.options, "--env")


def _minimal(**container: Any) -> dict[str, Any]:
    return {"containers": [{"name": "c", "image": "i", **container}]}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({**_minimal(), "hostNetwork": True}, "pod spec: hostNetwork not translated"),
        (_minimal(envFrom=[{"configMapRef": {"name": "x"}}]), "container c: envFrom not translated"),
        (_minimal(env=[{"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]), "env IP"),
        (_minimal(securityContext={"privileged": True}), "privileged not translated"),
        (_minimal(securityContext={"runAsNonRoot": True}), "runAsNonRoot without a non-zero runAsUser"),
        (_minimal(securityContext={"runAsNonRoot": True, "runAsUser": 0}), "runAsNonRoot without"),
        (_minimal(startupProbe={"exec": {"command": ["true"]}}), "only httpGet startupProbes"),
        (_minimal(livenessProbe={"tcpSocket": {"port": 80}}), "only httpGet livenessProbes"),
        (_minimal(startupProbe={"httpGet": {"port": "web"}}), "'web' is not a named port"),
        (_minimal(volumeMounts=[{"name": "v", "mountPath": "/v"}]), "names no volume"),
        (_minimal(volumeMounts=[{"name": "v", "mountPath": "/v", "subPath": "x"}]), "subPath not translated"),
        ({**_minimal(), "volumes": [{"name": "v", "hostPath": {"path": "/"}}]}, "only emptyDir, configMap and secret"),
        ({**_minimal(), "volumes": [{"name": "v", "emptyDir": {"medium": "HugePages"}}]}, "medium 'HugePages'"),
        ({**_minimal(), "volumes": [{"name": "v", "configMap": {"name": "x", "items": []}}]}, "items not translated"),
        (_minimal(resources={"limits": {"nvidia.com/gpu": 1}}), "nvidia.com/gpu not translated"),
    ],
)
def test_what_it_cannot_honour_is_refused_by_name(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        translate(spec, pod_name="p")


def test_defaults() -> None:
    pod = translate({**_minimal(), "volumes": [{"name": "v", "emptyDir": {}}]}, pod_name="p")
    (c,) = pod.containers
    assert c.options == ("--restart", "always")  # nothing asked, nothing added but the pod's restart policy
    assert pod.volumes == (Volume("v", "emptyDir", size=64 * 2**20),)
    once = translate({**_minimal(), "restartPolicy": "Never"}, pod_name="p").containers[0]
    assert once.options == ()
    init = translate(
        {**_minimal(), "initContainers": [{"name": "i", "image": "i", "command": ["true"]}]}, pod_name="p"
    ).containers[0]
    assert (init.init, init.native_sidecar, "--restart" in init.options) == (True, False, False)
    unconfined = translate(_minimal(securityContext={"seccompProfile": {"type": "Unconfined"}}), pod_name="p")
    assert unconfined.containers[0].options == ("--security-opt", "seccomp=unconfined", "--restart", "always")
    cpu = translate(_minimal(resources={"limits": {"cpu": "250m"}}), pod_name="p").containers[0]
    assert _option(cpu.options, "--cpus") == ["0.25"]
    with pytest.raises(KeyError, match="no Deployment 'nope'"):
        pod_template(_docs("nginx.yaml"), "Deployment", "nope")
