"""Pods of their own on one machine: a network namespace per pod, joined by a bridge (needs root).

    root ns: bridge rs<id> 10.213.<k>.254/24
      ├─ veth ─ netns rs<id>-0: eth0 10.213.<k>.1, lo (the pod's own 127.0.0.1)
      ├─ veth ─ netns rs<id>-1: eth0 10.213.<k>.2, lo
      └─ ...

`cut_off` partitions one pod from the others with unreachable routes in its namespace (`heal` undoes it).

Each pod's sidecar and app share that pod's loopback, exactly as containers of one Kubernetes pod do,
so one ConfigMap text (same port, same relative paths) serves every pod, and peers reach each other
at their pod IPs.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from tests.root import needs_root


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@contextmanager
def pod_network(n: int) -> Iterator[list[tuple[str, str]]]:
    """`n` (netns name, pod IP) pairs, removed afterwards."""
    needs_root("a network namespace per pod: CAP_NET_ADMIN")
    tag = secrets.token_hex(2)
    subnet = f"10.213.{int(tag, 16) % 250}"
    bridge = f"rs{tag}"
    pods = [(f"rs{tag}-{i}", f"{subnet}.{i + 1}") for i in range(n)]
    try:
        _ip("link", "add", bridge, "type", "bridge")
        _ip("addr", "add", f"{subnet}.254/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        for i, (ns, address) in enumerate(pods):
            _ip("netns", "add", ns)
            _ip("link", "add", f"rs{tag}v{i}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("link", "set", f"rs{tag}v{i}", "master", bridge, "up")
            _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield pods
    finally:
        for ns, _ in pods:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True, timeout=10)


def cut_off(netns: str, others: Iterable[str]) -> None:
    """A partition: the pod in `netns` can no longer reach the pod IPs `others`, nor answer them (its replies
    are routed nowhere, so their reads time out). The test, at the bridge's address, still reaches it."""
    for ip in others:
        _ip("-n", netns, "route", "add", "unreachable", f"{ip}/32")


def heal(netns: str, others: Iterable[str]) -> None:
    """Undo `cut_off`."""
    for ip in others:
        _ip("-n", netns, "route", "del", "unreachable", f"{ip}/32")
