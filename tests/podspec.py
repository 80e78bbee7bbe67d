"""Test helper: a Kubernetes pod spec, read from the manifests, turned into `podman` arguments.

`podman kube play` (4.3) cannot run the manifests' pods: it runs a native sidecar (an init container with
`restartPolicy: Always`) as an init container that never exits, so the app never starts; it rejects probes
on init containers, ignores `medium: Memory` and `sizeLimit`, and writes a ConfigMap as plain files
without the kubelet's `..data` link. So the container tests read the pod template from the manifest and
translate it here, field by field, into what the kubelet would do:

    spec field                                    podman
    shareProcessNamespace: true                   pod shares pid (a pause process is PID 1, as in k8s)
    securityContext.runAsUser / runAsGroup        --user U[:G]   (container's over the pod's)
    securityContext.fsGroup, supplementalGroups   --group-add    (and the volumes' group, see Volume)
    readOnlyRootFilesystem: true                  --read-only --read-only-tmpfs=false (no /tmp, /run)
    allowPrivilegeEscalation: false               --security-opt no-new-privileges
    capabilities.drop / add                       --cap-drop / --cap-add
    seccompProfile RuntimeDefault / Unconfined    podman's default profile / seccomp=unconfined
    resources.limits.memory / cpu                 --memory / --cpus
    env value, fieldRef metadata.name/namespace   --env
    command / args                                --entrypoint / arguments after the image
    restartPolicy: Always (native sidecar, pod)   --restart always
    emptyDir (sizeLimit)                          a tmpfs of that size on the host, bind-mounted
    configMap / secret                            a host directory the test lays out kubelet-style
    startupProbe httpGet                          the next container starts once it answers 2xx
    liveness, readiness httpGet                   their URLs, for the tests to check (nothing restarts)

Anything else in a spec is refused with the field's name, so a manifest change that this translation
cannot honour fails the test instead of being silently dropped. Pure functions; tests/containers/ runs
the result.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Container",
    "Mount",
    "Pod",
    "Volume",
    "pod_create_args",
    "pod_template",
    "quantity",
    "run_args",
    "translate",
]

_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|k|M|G|T|m)?$")
_FACTORS = {
    None: 1,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
}
# An emptyDir without sizeLimit is bounded in k8s only by the node; here, by this tmpfs size.
DEFAULT_EMPTYDIR_BYTES = 64 * 2**20

_POD_KEYS = {
    "automountServiceAccountToken",  # no API server here: nothing to mount either way
    "serviceAccountName",
    "shareProcessNamespace",
    "securityContext",
    "initContainers",
    "containers",
    "volumes",
    "topologySpreadConstraints",  # scheduling: one node here
    "affinity",
    "terminationGracePeriodSeconds",
    "restartPolicy",
}
_CONTAINER_KEYS = {
    "name",
    "image",
    "imagePullPolicy",  # images are local here
    "restartPolicy",
    "command",
    "args",
    "env",
    "ports",
    "startupProbe",
    "livenessProbe",  # the tests check health themselves; a restart on failure is not what they test
    "readinessProbe",  # Service membership: no Service here
    "lifecycle",  # preStop: only a pod deletion runs it
    "securityContext",
    "resources",
    "volumeMounts",
}
_SECURITY_KEYS = {
    "runAsNonRoot",
    "runAsUser",
    "runAsGroup",
    "fsGroup",
    "supplementalGroups",
    "seccompProfile",
    "readOnlyRootFilesystem",
    "allowPrivilegeEscalation",
    "capabilities",
}


@dataclass(frozen=True)
class Volume:
    """A pod volume: `emptyDir` (a tmpfs of `size` bytes on the host) or a `configMap`/`secret` directory."""

    name: str
    kind: str  # "emptyDir", "configMap" or "secret"
    source: str = ""  # the ConfigMap's or Secret's name
    size: int = 0  # emptyDir only
    group: int | None = None  # fsGroup: the kubelet makes emptyDirs group-owned by it, setgid


@dataclass(frozen=True)
class Mount:
    volume: str
    path: str
    read_only: bool


@dataclass(frozen=True)
class Container:
    name: str
    image: str
    options: tuple[str, ...]  # `podman run` options, without volumes (their host paths come at run time)
    mounts: tuple[Mount, ...]
    arguments: tuple[str, ...]  # after the image
    native_sidecar: bool  # an init container with restartPolicy: Always
    init: bool  # an init container that must exit 0 before the next one starts
    startup_url: str | None  # the startupProbe's URL inside the pod (None: started = ready)
    probe_urls: tuple[tuple[str, str], ...] = ()  # (probe, URL) of every httpGet probe, startup included


@dataclass(frozen=True)
class Pod:
    name: str
    share_pid: bool
    volumes: tuple[Volume, ...]
    containers: tuple[Container, ...]  # in start order: init containers, then the app containers

    def container(self, name: str) -> Container:
        for c in self.containers:
            if c.name == name:
                return c
        raise KeyError(name)


def quantity(text: str | int) -> int:
    """A Kubernetes quantity of bytes: '24Mi' -> 25165824, '1G' -> 10**9."""
    match = _QUANTITY.match(str(text))
    if not match or match.group(2) == "m":
        raise ValueError(f"not a Kubernetes quantity of bytes: {text!r}")
    number, suffix = match.groups()
    return int(float(number) * _FACTORS[suffix])


def _cpus(text: str | int) -> str:
    match = _QUANTITY.match(str(text))
    if not match or match.group(2) not in (None, "m"):
        raise ValueError(f"not a CPU quantity: {text!r}")
    value = float(match.group(1)) / (1000 if match.group(2) == "m" else 1)
    return f"{value:g}"


def pod_template(documents: Iterable[Mapping[str, Any] | None], kind: str, name: str) -> Mapping[str, Any]:
    """The pod spec of the Deployment/StatefulSet/DaemonSet `name` (or of the Pod `name`) in the documents."""
    for doc in documents:
        if doc and doc.get("kind") == kind and doc.get("metadata", {}).get("name") == name:
            spec: Mapping[str, Any] = doc["spec"] if kind == "Pod" else doc["spec"]["template"]["spec"]
            return spec
    raise KeyError(f"no {kind} {name!r} in the manifest")


def _refuse_unknown(what: str, given: Mapping[str, Any], known: set[str]) -> None:
    unknown = sorted(set(given) - known)
    if unknown:
        raise ValueError(f"{what}: {', '.join(unknown)} not translated (tests/podspec.py)")


def _volume(spec: Mapping[str, Any], fs_group: int | None) -> Volume:
    name = spec["name"]
    if "emptyDir" in spec:
        empty = spec["emptyDir"] or {}
        _refuse_unknown(f"volume {name} emptyDir", empty, {"medium", "sizeLimit"})
        if empty.get("medium", "") not in ("", "Memory"):
            raise ValueError(f"volume {name}: emptyDir medium {empty['medium']!r} not translated")
        size = quantity(empty["sizeLimit"]) if "sizeLimit" in empty else DEFAULT_EMPTYDIR_BYTES
        return Volume(name, "emptyDir", size=size, group=fs_group)
    if "configMap" in spec:
        _refuse_unknown(f"volume {name} configMap", spec["configMap"], {"name"})
        return Volume(name, "configMap", source=spec["configMap"]["name"])
    if "secret" in spec:
        _refuse_unknown(f"volume {name} secret", spec["secret"], {"secretName"})
        return Volume(name, "secret", source=spec["secret"]["secretName"])
    raise ValueError(f"volume {name}: only emptyDir, configMap and secret are translated")


def _env(spec: Mapping[str, Any], pod_name: str, namespace: str) -> str:
    name = spec["name"]
    if "value" in spec:
        return f"{name}={spec['value']}"
    field = spec.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
    values = {"metadata.name": pod_name, "metadata.namespace": namespace}
    if field not in values:
        raise ValueError(f"env {name}: only value and fieldRef metadata.name/namespace are translated")
    return f"{name}={values[field]}"


def _security(pod_ctx: Mapping[str, Any], ctx: Mapping[str, Any], name: str) -> list[str]:
    _refuse_unknown(f"container {name} securityContext", ctx, _SECURITY_KEYS)
    merged = {**pod_ctx, **ctx}
    options: list[str] = []
    user, group = merged.get("runAsUser"), merged.get("runAsGroup")
    if merged.get("runAsNonRoot") and (user is None or user == 0):
        # The kubelet checks the image's USER; every manifest here names the UID, and a test that stops
        # doing so should say which user it means.
        raise ValueError(f"container {name}: runAsNonRoot without a non-zero runAsUser")
    if user is not None:
        options += ["--user", f"{user}:{group}" if group is not None else str(user)]
    for extra in [pod_ctx.get("fsGroup"), *pod_ctx.get("supplementalGroups", [])]:
        if extra is not None:
            options += ["--group-add", str(extra)]
    if merged.get("readOnlyRootFilesystem"):
        options += ["--read-only", "--read-only-tmpfs=false"]
    if merged.get("allowPrivilegeEscalation") is False:
        options += ["--security-opt", "no-new-privileges"]
    caps = merged.get("capabilities", {})
    _refuse_unknown(f"container {name} capabilities", caps, {"drop", "add"})
    options += [o for cap in caps.get("drop", []) for o in ("--cap-drop", cap)]
    options += [o for cap in caps.get("add", []) for o in ("--cap-add", cap)]
    seccomp = merged.get("seccompProfile", {}).get("type", "RuntimeDefault")
    if seccomp == "Unconfined":
        options += ["--security-opt", "seccomp=unconfined"]
    elif seccomp != "RuntimeDefault":
        raise ValueError(f"container {name}: seccompProfile {seccomp!r} not translated")
    return options


def _resources(spec: Mapping[str, Any], name: str) -> list[str]:
    _refuse_unknown(f"container {name} resources", spec, {"requests", "limits"})
    limits = spec.get("limits", {})
    _refuse_unknown(f"container {name} limits", limits, {"memory", "cpu"})
    options = []
    if "memory" in limits:
        options += ["--memory", str(quantity(limits["memory"]))]
    if "cpu" in limits:
        options += ["--cpus", _cpus(limits["cpu"])]
    return options


def _probe_url(spec: Mapping[str, Any], name: str, kind: str = "startupProbe") -> str | None:
    probe = spec.get(kind)
    if probe is None:
        return None
    http = probe.get("httpGet")
    if http is None:
        raise ValueError(f"container {name}: only httpGet {kind}s are translated")
    port = http["port"]
    if isinstance(port, str):
        ports = {p["name"]: p["containerPort"] for p in spec.get("ports", []) if "name" in p}
        if port not in ports:
            raise ValueError(f"container {name}: {kind} port {port!r} is not a named port")
        port = ports[port]
    scheme = http.get("scheme", "HTTP").lower()
    return f"{scheme}://{http.get('host', '127.0.0.1')}:{port}{http.get('path', '/')}"


def _container(
    spec: Mapping[str, Any], pod: Mapping[str, Any], *, init: bool, pod_name: str, namespace: str
) -> Container:
    name = spec["name"]
    _refuse_unknown(f"container {name}", spec, _CONTAINER_KEYS)
    native = init and spec.get("restartPolicy") == "Always"
    options: list[str] = []
    for env in spec.get("env", []):
        options += ["--env", _env(env, pod_name, namespace)]
    options += _security(pod.get("securityContext", {}), spec.get("securityContext", {}), name)
    options += _resources(spec.get("resources", {}), name)
    if native or (not init and pod.get("restartPolicy", "Always") == "Always"):
        options += ["--restart", "always"]
    if "command" in spec:
        options += ["--entrypoint", json.dumps(spec["command"])]
    mounts = []
    for m in spec.get("volumeMounts", []):
        _refuse_unknown(f"container {name} volumeMount {m['name']}", m, {"name", "mountPath", "readOnly"})
        mounts.append(Mount(m["name"], m["mountPath"], bool(m.get("readOnly", False))))
    return Container(
        name=name,
        image=spec["image"],
        options=tuple(options),
        mounts=tuple(mounts),
        arguments=tuple(spec.get("args", ())),
        native_sidecar=native,
        init=init and not native,
        startup_url=_probe_url(spec, name),
        probe_urls=tuple(
            (kind, url)
            for kind in ("startupProbe", "livenessProbe", "readinessProbe")
            if (url := _probe_url(spec, name, kind)) is not None
        ),
    )


def translate(spec: Mapping[str, Any], *, pod_name: str, namespace: str = "default") -> Pod:
    """The pod spec `spec` as podman would run it: volumes, and containers in the kubelet's start order."""
    _refuse_unknown("pod spec", spec, _POD_KEYS)
    pod_ctx = spec.get("securityContext", {})
    _refuse_unknown("pod securityContext", pod_ctx, _SECURITY_KEYS)
    volumes = tuple(_volume(v, pod_ctx.get("fsGroup")) for v in spec.get("volumes", []))
    containers = [
        _container(c, spec, init=True, pod_name=pod_name, namespace=namespace) for c in spec.get("initContainers", [])
    ]
    containers += [_container(c, spec, init=False, pod_name=pod_name, namespace=namespace) for c in spec["containers"]]
    declared = {v.name for v in volumes}
    for c in containers:
        for m in c.mounts:
            if m.volume not in declared:
                raise ValueError(f"container {c.name}: volumeMount {m.volume!r} names no volume")
    return Pod(pod_name, bool(spec.get("shareProcessNamespace")), volumes, tuple(containers))


def pod_create_args(pod: Pod, podman_name: str) -> list[str]:
    """`podman pod create` arguments: one network namespace with only loopback (a pod's own 127.0.0.1;
    the tests reach it from inside), the pod's hostname, and the PID namespace if the spec shares it."""
    share = "ipc,net,uts" + (",pid" if pod.share_pid else "")
    return ["pod", "create", "--name", podman_name, "--hostname", pod.name, "--network", "none", "--share", share]


def run_args(container: Container, *, pod: str, name: str, volume_paths: Mapping[str, str]) -> list[str]:
    """`podman run -d` arguments for `container` in the podman pod `pod`; `volume_paths`: volume -> host path."""
    args = ["run", "-d", "--pod", pod, "--name", name, *container.options]
    for m in container.mounts:
        args += ["--volume", f"{volume_paths[m.volume]}:{m.path}:{'ro' if m.read_only else 'rw'}"]
    return [*args, container.image, *container.arguments]
