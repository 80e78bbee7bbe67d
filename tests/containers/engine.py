"""Run the shipped images with podman: the engine's own config, the images, and pods from tests/podspec.py.

Storage and config live in a directory the run owns (`CONTAINERS_CONF`, `CONTAINERS_STORAGE_CONF`), so a
test run never touches the machine's images or containers. `.ci/run` makes that directory with
`python -m tests.containers.engine env DIR`, builds the images there (scripts/stand-in-bases.sh,
scripts/local-images.sh build), and the tests find them; alone, the session fixture does the same in a
temp dir. Every container, pod and tmpfs a test starts is removed by id when it ends.

A pod gets a network namespace with only loopback (as a pod's own 127.0.0.1); the test reaches its
ports from a thread that has entered that namespace (setns), so nothing listens on the machine's
addresses and no bridge or NAT is set up.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import sidecar
from tests.podspec import Pod, pod_create_args, run_args

__all__ = [
    "APP_IMAGES",
    "IMAGES",
    "REPO",
    "Podman",
    "RunningPod",
    "engine_env",
    "ensure_images",
    "run_pod",
]

REPO = Path(__file__).resolve().parents[2]
_PREFIX = "ghcr.io/reload-sidecar"
IMAGES = {
    "plain": f"{_PREFIX}/reload-sidecar:{sidecar.__version__}",
    "nginx": f"{_PREFIX}/reload-sidecar-nginx:{sidecar.__version__}",
    "prometheus": f"{_PREFIX}/reload-sidecar-prometheus:{sidecar.__version__}",
}
# The apps the manifests run beside the sidecar (stand-ins where no registry is reachable).
APP_IMAGES = {
    "nginx": "docker.io/nginxinc/nginx-unprivileged:1.27-bookworm",
    "prometheus": "docker.io/prom/prometheus:v2.53.0",
}
_CLONE_NEWNET = 0x40000000
_T = TypeVar("_T")


def engine_env(directory: Path) -> dict[str, str]:
    """Write podman's storage and engine config into `directory`; the environment variables naming them.

    cgroupfs: no systemd needed to place containers; events to a file: no journald. runc where installed:
    crun refuses hybrid cgroup v1/v2 machines. The default ulimits podman asks for can exceed what a CI
    machine allows its root, so modest ones are set.
    """
    directory.mkdir(parents=True, exist_ok=True)
    storage, conf = directory / "storage.conf", directory / "containers.conf"
    # overlay cannot keep its upper layers on an overlayfs (CI inside a container, as ci.yml runs it): vfs.
    fs = subprocess.run(["stat", "-f", "-c", "%T", str(directory)], capture_output=True, text=True, check=True)
    driver = "vfs" if fs.stdout.strip() == "overlayfs" else "overlay"
    storage.write_text(
        f'[storage]\ndriver = "{driver}"\ngraphroot = "{directory / "storage"}"\nrunroot = "{directory / "run"}"\n'
    )
    runtime = 'runtime = "runc"\n' if shutil.which("runc") else ""
    conf.write_text(
        '[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n'
        f'[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n{runtime}'
    )
    return {"CONTAINERS_STORAGE_CONF": str(storage), "CONTAINERS_CONF": str(conf), "CONTAINER_ENGINE": "podman"}


@dataclass
class Podman:
    env: dict[str, str]
    timings: dict[str, float] = field(default_factory=dict)

    def __call__(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["podman", *args], env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"podman {' '.join(args)}: exit {done.returncode}\n{done.stdout}\n{done.stderr}")
        return done

    def out(self, *args: str, timeout: float = 120) -> str:
        return self(*args, timeout=timeout).stdout.strip()

    def exists(self, image: str) -> bool:
        return self("image", "exists", image, check=False).returncode == 0

    def script(self, *argv: str, timeout: float = 900) -> None:
        t = time.monotonic()
        done = subprocess.run(
            argv, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)}: exit {done.returncode}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
            )
        self.timings[" ".join(argv)] = time.monotonic() - t

    def size(self, image: str) -> int:
        return int(self.out("image", "inspect", "--format", "{{.Size}}", image))


def ensure_images(podman: Podman) -> None:
    """The stand-in bases and the three images, each built only if missing from this run's storage."""
    if not all(podman.exists(i) for i in [*APP_IMAGES.values(), "docker.io/library/debian:bookworm-slim"]):
        podman.script("scripts/stand-in-bases.sh")
    if not all(podman.exists(i) for i in IMAGES.values()):
        podman.script("scripts/local-images.sh", "build")


def in_netns(pid: int, fn: Callable[[], _T]) -> _T:
    """`fn()` run in a thread that has entered the network namespace of process `pid` (root only)."""
    result: list[_T] = []
    error: list[BaseException] = []

    def enter_and_run() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
            finally:
                os.close(fd)
            result.append(fn())
        except BaseException as e:  # handed to the caller's thread
            error.append(e)

    thread = threading.Thread(target=enter_and_run, daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def _fetch(url: str, data: bytes | None, context: ssl.SSLContext | None, timeout: float) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as answer:
            return int(answer.status), bytes(answer.read())
    except urllib.error.HTTPError as e:
        return int(e.code), bytes(e.read())


def cgroup_memory(pid: int) -> dict[str, int]:
    """The cgroup memory of process `pid`'s container: usage and working set (usage - inactive file, as the
    kubelet counts it against the limit), cgroup v1 or v2."""
    lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    v1 = [line.split(":", 2)[2] for line in lines if line.split(":", 2)[1] == "memory"]
    if v1:
        base = Path("/sys/fs/cgroup/memory") / v1[0].lstrip("/")
        usage = int((base / "memory.usage_in_bytes").read_text())
        inactive_key = "total_inactive_file"
    else:
        base = Path("/sys/fs/cgroup") / next(line.split(":", 2)[2] for line in lines if line.startswith("0::")).lstrip(
            "/"
        )
        usage = int((base / "memory.current").read_text())
        inactive_key = "inactive_file"
    stat = dict(line.split() for line in (base / "memory.stat").read_text().splitlines())
    return {"usage": usage, "working_set": usage - int(stat.get(inactive_key, 0))}


@dataclass
class RunningPod:
    podman: Podman
    pod: Pod
    name: str  # the podman pod's name
    infra_pid: int
    paths: dict[str, str]  # volume -> host path
    ids: dict[str, str] = field(default_factory=dict)  # container name -> podman id
    started: dict[str, float] = field(default_factory=dict)  # container -> monotonic time of `podman run`
    ready: dict[str, float] = field(default_factory=dict)  # container -> time its startup probe answered

    def http(
        self, url: str, data: bytes | None = None, *, context: ssl.SSLContext | None = None, timeout: float = 10
    ) -> tuple[int, bytes]:
        """GET (or POST `data`) `url` from inside the pod's network namespace."""
        return in_netns(self.infra_pid, lambda: _fetch(url, data, context, timeout))

    def answers(self, url: str, context: ssl.SSLContext | None = None) -> bool:
        try:
            return 200 <= self.http(url, context=context, timeout=2)[0] < 300
        except OSError:
            return False

    def inspect(self, container: str, template: str) -> str:
        return self.podman.out("inspect", "--format", template, self.ids[container])

    def pid(self, container: str) -> int:
        """The host PID of the container's main process (0 while it is not running)."""
        return int(self.inspect(container, "{{.State.Pid}}"))

    def running(self, container: str) -> bool:
        return self.inspect(container, "{{.State.Status}}") == "running"

    def restarts(self, container: str) -> int:
        return int(self.inspect(container, "{{.RestartCount}}"))

    def logs(self, container: str) -> str:
        done = self.podman("logs", self.ids[container])
        return done.stdout + done.stderr

    def events(self, container: str) -> list[dict[str, Any]]:
        """The container's structlog JSON lines, in order."""
        events = []
        for line in self.logs(container).splitlines():
            with contextlib.suppress(ValueError):
                if isinstance(event := json.loads(line), dict) and "event" in event:
                    events.append(event)
        return events

    def memory(self, container: str) -> dict[str, int]:
        return cgroup_memory(self.pid(container))

    def wait_for(self, what: str, check: Callable[[], bool], container: str, timeout: float = 120) -> None:
        """Poll `check` until it holds; fail with the container's log if it does not (hang protection only)."""
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {timeout} s\n{self.logs(container)[-6000:]}")
            time.sleep(0.05)


def _volume_dirs(pod: Pod, root: Path, projected: Mapping[str, Path], stack: contextlib.ExitStack) -> dict[str, str]:
    """Host paths for the pod's volumes: a sized tmpfs per emptyDir (mounted here, unmounted at exit) and
    the test's kubelet-style directory per configMap/secret volume."""
    paths = {}
    for volume in pod.volumes:
        if volume.kind != "emptyDir":
            paths[volume.name] = str(projected[volume.name])
            continue
        path = root / "volumes" / volume.name
        path.mkdir(parents=True)
        # An emptyDir is world-writable (0777); with fsGroup the kubelet makes it group-owned, setgid.
        mode = "2777" if volume.group is not None else "0777"
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={volume.size},mode={mode}", "tmpfs", str(path)],
            check=True,
            capture_output=True,
            timeout=30,
        )
        stack.callback(subprocess.run, ["umount", "-l", str(path)], check=False, capture_output=True, timeout=30)
        if volume.group is not None:
            os.chown(path, 0, volume.group)
        paths[volume.name] = str(path)
    return paths


@contextlib.contextmanager
def run_pod(podman: Podman, pod: Pod, root: Path, projected: Mapping[str, Path]) -> Iterator[RunningPod]:
    """Start `pod` as the kubelet would: init containers in order (a native sidecar held until its startup
    probe answers), then the app containers; the pod, its containers and tmpfs volumes are removed at exit.
    `projected`: configMap/secret volume name -> the test's kubelet-style directory."""
    name = f"rs-{pod.name}-{os.urandom(3).hex()}"
    with contextlib.ExitStack() as stack:
        for path in projected.values():
            path.chmod(0o755)  # the kubelet's volume dirs are world-readable; the test's tmp dirs are not
        paths = _volume_dirs(pod, root, projected, stack)
        pod_id = podman.out(*pod_create_args(pod, name))
        stack.callback(podman, "pod", "rm", "--force", "--time", "0", pod_id, check=False)
        podman("pod", "start", pod_id)  # the infra (pause) container: the pod's namespaces
        infra = podman.out("pod", "inspect", "--format", "{{.InfraContainerID}}", pod_id)
        infra_pid = int(podman.out("inspect", "--format", "{{.State.Pid}}", infra))
        running = RunningPod(podman, pod, name, infra_pid, paths)
        for container in pod.containers:
            _start(running, container.name)
        yield running


def _start(running: RunningPod, name: str) -> None:
    container = running.pod.container(name)
    args = run_args(container, pod=running.name, name=f"{running.name}-{name}", volume_paths=running.paths)
    running.started[name] = time.monotonic()
    running.ids[name] = running.podman.out(*args)
    if container.init:
        code = running.podman.out("wait", running.ids[name], timeout=300)
        assert code == "0", f"init container {name} exited {code}\n{running.logs(name)}"
    elif container.startup_url:
        url = container.startup_url

        def up() -> bool:
            if not running.running(name):
                raise AssertionError(f"{name} stopped before its startup probe answered\n{running.logs(name)}")
            return running.answers(url)

        running.wait_for(f"{name} startup probe {url}", up, name)
        running.ready[name] = time.monotonic()


if __name__ == "__main__":
    # `python -m tests.containers.engine env DIR`: shell assignments for .ci/run (export them).
    if len(sys.argv) != 3 or sys.argv[1] != "env":
        sys.exit("usage: python -m tests.containers.engine env DIR")
    for key, value in engine_env(Path(sys.argv[2])).items():
        print(f"export {key}={value}")
