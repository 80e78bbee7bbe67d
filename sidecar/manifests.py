"""`reload-sidecar check-manifests`: the wiring mistakes that build fine and fail only in the cluster.

Reads what `kubectl kustomize` (or any YAML of Kubernetes objects) gives and reports each mistake in a
workload that runs reload-sidecar as one line, `Kind/name: what is wrong`: a container without an image
(a sidecar your patch added to a workload the component did not change), a mount of a volume the pod
does not have, the app still mounting the ConfigMap, a target that is no tmpfs or too small for the
history, a signal or restart trigger that cannot reach the app (PID namespace, UID), a `run` sidecar
that is not native or whose probes miss its endpoints, and settings that `run` would refuse.
tests/test_manifests.py holds the shipped examples to the same rules, and more.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .preflight import StartupError
from .settings import Settings, SettingsError

__all__ = ["SIDECAR_NAME", "check_documents", "check_manifests"]

#: The container name the components give the sidecar.
SIDECAR_NAME = "reload-sidecar"
_CONFIG_SOURCES = ("configMap", "secret", "projected")
_PROBES = {"startupProbe": "/readyz", "readinessProbe": "/readyz", "livenessProbe": "/healthz"}
# What the kubelet fills in from the downward API, stood in by plausible values so the settings parse.
_STAND_INS = {"metadata.name": "web-0", "metadata.namespace": "default", "status.podIP": "10.0.0.7"}
_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}

Container = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class _Pod:
    """One workload's pod template."""

    where: str  # Kind/name
    annotated: bool  # reload-sidecar.io/inject: "true" on the workload
    spec: Mapping[str, Any]

    @property
    def inits(self) -> list[Container]:
        return list(self.spec.get("initContainers") or [])

    @property
    def containers(self) -> list[Container]:
        return list(self.spec.get("containers") or [])

    def volume(self, name: str) -> Mapping[str, Any]:
        return next((v for v in self.spec.get("volumes") or [] if v.get("name") == name), {})


def check_manifests(files: Sequence[Path]) -> int:
    """The command: problems on stdout, one a line, exit 1; input that cannot be read is a `StartupError`."""
    docs: list[object] = []
    for path in files or [Path("-")]:
        name = "stdin" if str(path) == "-" else str(path)
        try:
            text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
            docs.extend(yaml.safe_load_all(text))
        except (OSError, UnicodeDecodeError) as e:
            raise StartupError(f"{name}: cannot read: {getattr(e, 'strerror', None) or e}") from None
        except yaml.YAMLError as e:
            raise StartupError(f"{name}: invalid YAML: {' '.join(str(e).split())}") from None
    problems, seen = check_documents(docs)
    if not seen:
        problems.append(
            "no reload-sidecar container in the input: a workload the components should change lacks the"
            ' annotation reload-sidecar.io/inject: "true" (on the Deployment or StatefulSet, not its pod template)'
        )
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"ok: {seen} reload-sidecar container(s), no wiring mistake found", file=sys.stderr)
    return 0


def check_documents(docs: Iterable[object]) -> tuple[list[str], int]:
    """(every problem, the number of reload-sidecar containers seen) in the Kubernetes objects `docs`."""
    problems: list[str] = []
    seen = 0
    for pod in _pods(docs):
        problems.extend(_pod_problems(pod))
        seen += sum(1 for c in pod.inits + pod.containers if _is_ours(c) and _command(c) in ("run", "once"))
    return problems, seen


def _pods(docs: Iterable[object]) -> Iterable[_Pod]:
    for doc in docs:
        if not isinstance(doc, Mapping) or not isinstance(doc.get("spec"), Mapping):
            continue
        kind, meta, spec = str(doc.get("kind", "")), doc.get("metadata") or {}, doc["spec"]
        if kind == "Pod":
            template: Any = {"spec": spec}
        elif kind == "CronJob":
            template = (spec.get("jobTemplate") or {}).get("spec", {}).get("template")
        else:
            template = spec.get("template")
        if isinstance(template, Mapping) and isinstance(template.get("spec"), Mapping):
            annotated = str((meta.get("annotations") or {}).get("reload-sidecar.io/inject", "")).lower() == "true"
            yield _Pod(f"{kind}/{meta.get('name', '?')}", annotated, template["spec"])


def _is_ours(c: Container) -> bool:
    """A reload-sidecar image (any variant, any registry), or the component's container name."""
    return c.get("name") == SIDECAR_NAME or str(c.get("image", "")).rsplit("/", 1)[-1].startswith(SIDECAR_NAME)


def _command(c: Container) -> str:
    return str((c.get("args") or ["run"])[0])


def _pod_problems(pod: _Pod) -> list[str]:
    out = [f"{pod.where}: {p}" for p in _container_problems(pod)]
    sidecars = [
        c for c in pod.inits + pod.containers if _is_ours(c) and c.get("image") and _command(c) in ("run", "once")
    ]
    for sidecar in sidecars:
        out.extend(f"{pod.where}: {sidecar.get('name')}: {p}" for p in _sidecar_problems(pod, sidecar, sidecars))
    return out


def _container_problems(pod: _Pod) -> list[str]:
    """A container without an image, a mount of a volume the pod does not define."""
    out: list[str] = []
    volumes = {v.get("name") for v in pod.spec.get("volumes") or []}
    for c in pod.inits + pod.containers:
        name = c.get("name")
        if not c.get("image"):
            hint = ""
            if name == SIDECAR_NAME and not pod.annotated:
                hint = (
                    ' (the reload-sidecar components change only workloads annotated reload-sidecar.io/inject: "true";'
                    " this one is not, so only your patch's part of the sidecar is there)"
                )
            out.append(f"container {name} has no image{hint}")
        for mount in c.get("volumeMounts") or []:
            if mount.get("name") not in volumes:
                out.append(f"container {name} mounts volume {mount.get('name')!r}, which the pod does not define")
    return out


def _sidecar_problems(pod: _Pod, sidecar: Container, sidecars: list[Container]) -> list[str]:
    try:
        settings = Settings.from_env(_env(sidecar))
    except SettingsError as e:
        return list(e.problems)
    source = _mount(sidecar, str(settings.source_dir))
    target = _mount(sidecar, str(settings.target_dir))
    apps = [c for c in pod.inits + pod.containers if not _is_ours(c)]
    out: list[str] = []
    if source is None:
        out.append(f"nothing is mounted at RELOAD_SOURCE_DIR={str(settings.source_dir)!r} (the ConfigMap volume)")
    else:
        out.extend(_source_problems(pod, source, apps))
    if target is None:
        out.append(f"nothing is mounted at RELOAD_TARGET_DIR={str(settings.target_dir)!r} (an emptyDir the app reads)")
    else:
        out.extend(_target_problems(pod, sidecar, settings, str(target.get("name"))))
        out.extend(_reader_problems(str(target.get("name")), apps))
    if _command(sidecar) == "run":
        out.extend(_run_problems(pod, sidecar, settings, sidecars))
        if settings.signal is not None or settings.restart:
            out.extend(_signal_problems(pod, sidecar, settings))
    return out


def _source_problems(pod: _Pod, source: Mapping[str, Any], apps: list[Container]) -> list[str]:
    name = str(source.get("name"))
    out: list[str] = []
    if source.get("readOnly") is not True:
        out.append(f"mounts the config volume {name!r} read-write; add readOnly: true")
    if not any(k in pod.volume(name) for k in _CONFIG_SOURCES):
        out.append(f"volume {name!r} at RELOAD_SOURCE_DIR is not a configMap, secret or projected volume")
    for app in apps:
        if name in _mounted(app):
            out.append(
                f"app container {app.get('name')} mounts the config volume {name!r}: it must read the sidecar's "
                "target instead, or it reloads versions nobody validated"
            )
    return out


def _reader_problems(target: str, apps: list[Container]) -> list[str]:
    """The app reads the target, read-only."""
    readers = [a for a in apps if target in _mounted(a)]
    if apps and not readers:
        return [f"no app container mounts the target {target!r}: the app never sees a promoted version"]
    return [
        f"app container {a.get('name')} mounts the target {target!r} read-write; add readOnly: true"
        for a in readers
        if _mounted(a)[target].get("readOnly") is not True
    ]


def _mounted(c: Container) -> dict[str, Mapping[str, Any]]:
    return {str(m.get("name")): m for m in c.get("volumeMounts") or []}


def _target_problems(pod: _Pod, sidecar: Container, settings: Settings, name: str) -> list[str]:
    volume = pod.volume(name)
    if "emptyDir" not in volume:
        return [f"volume {name!r} at RELOAD_TARGET_DIR is not an emptyDir"]
    empty = volume.get("emptyDir") or {}
    out: list[str] = []
    if empty.get("medium") != "Memory":
        out.append(
            f"emptyDir {name!r} should be medium: Memory (tmpfs): a copy of a Secret must not land on the node's disk"
        )
    if _command(sidecar) != "run":
        return out
    need = (settings.history + 2) * settings.max_total_bytes + (1 << 20)
    why = (
        f"(RELOAD_HISTORY {settings.history} + 2) x RELOAD_MAX_TOTAL_BYTES {settings.max_total_bytes} + 1 MiB"
        f" = {need} bytes"
    )
    size = _quantity(str(empty.get("sizeLimit", "")))
    if size is None:
        out.append(
            f'emptyDir {name!r} has no sizeLimit; it needs {why} (docs/validation.md, "Space in the target dir")'
        )
    elif size < need:
        out.append(
            f"emptyDir {name!r} sizeLimit {empty.get('sizeLimit')} is {size} bytes, less than {why} "
            '(docs/validation.md, "Space in the target dir")'
        )
    return out


def _run_problems(pod: _Pod, sidecar: Container, settings: Settings, sidecars: list[Container]) -> list[str]:
    out: list[str] = []
    if any(sidecar is c for c in pod.inits):
        if sidecar.get("restartPolicy") != "Always":
            out.append(
                "a `run` initContainer needs restartPolicy: Always (a native sidecar); without it the pod never starts"
            )
    elif not any(_command(c) == "once" for c in sidecars if any(c is i for i in pod.inits)):
        out.append(
            "a `run` sidecar among the containers needs a `once` initContainer, or the app may start on no version"
        )
    for probe, path in _PROBES.items():
        get = (sidecar.get(probe) or {}).get("httpGet") or {}
        port = _port_number(sidecar, get.get("port"))
        if get.get("path") != path or port != settings.listen[1]:
            out.append(f"{probe} should be httpGet {path} on port {settings.listen[1]} (RELOAD_LISTEN)")
    return out


def _signal_problems(pod: _Pod, sidecar: Container, settings: Settings) -> list[str]:
    trigger = "RELOAD_RESTART" if settings.restart else "RELOAD_SIGNAL"
    out: list[str] = []
    if pod.spec.get("shareProcessNamespace") is not True:
        out.append(f"{trigger} needs shareProcessNamespace: true in the pod (else the app's process is not visible)")
    caps = ((sidecar.get("securityContext") or {}).get("capabilities") or {}).get("add") or []
    if "KILL" in caps or "CAP_KILL" in caps:
        return out
    uid = _security(pod, sidecar, "runAsUser")
    for app in pod.containers:
        theirs = _security(pod, app, "runAsUser")
        if not _is_ours(app) and (theirs != uid or uid is None):
            out.append(
                f"{trigger}: the sidecar runs as UID {_uid(uid)}, app container {app.get('name')} as {_uid(theirs)}: "
                "the kernel lets it signal only its own UID; set the same runAsUser (or add capability KILL)"
            )
    return out


def _uid(uid: object) -> str:
    return "(the image's user)" if uid is None else str(uid)


def _env(c: Container) -> dict[str, str]:
    """The container's RELOAD_* environment as the kubelet builds it (downward API stood in)."""
    env: dict[str, str] = {}
    for var in c.get("env") or []:
        name = str(var.get("name", ""))
        if "value" in var:
            env[name] = re.sub(r"\$\(([A-Za-z_]\w*)\)", lambda m: env.get(m[1], m[0]), str(var["value"]))
        elif field := ((var.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath"):
            env[name] = _STAND_INS.get(str(field), "x")
        # from a ConfigMap or Secret key: not known here, left out
    return {k: v for k, v in env.items() if k.startswith("RELOAD_")}


def _mount(c: Container, path: str) -> Mapping[str, Any] | None:
    return next(
        (m for m in c.get("volumeMounts") or [] if str(m.get("mountPath", "")).rstrip("/") == path.rstrip("/")), None
    )


def _security(pod: _Pod, c: Container, key: str) -> Any:
    own = c.get("securityContext") or {}
    return own[key] if key in own else (pod.spec.get("securityContext") or {}).get(key)


def _port_number(c: Container, port: object) -> int | None:
    if isinstance(port, int):
        return port
    return next((int(p["containerPort"]) for p in c.get("ports") or [] if p.get("name") == port), None)


def _quantity(text: str) -> int | None:
    """A Kubernetes quantity (`24Mi`, `64M`, plain bytes) in bytes, or None."""
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|k|M|G)?", text)
    return int(m[1]) * _UNITS[m[2] or ""] if m else None
