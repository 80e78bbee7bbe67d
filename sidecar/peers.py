"""Read the other sidecars of the workload: addresses from `RELOAD_PEERS`, identities from their `/status`.

A peer is known by the pod name its `/status` reports, never by its address (several pods may share
an IP, e.g. in tests on loopback). Addresses are resolved again on every round, so pods behind a
headless Service that come and go are seen; a peer that fails to answer for `forget_after_s`, or
whose address left the Service, is left out.

A round may read only the peers a decision needs (`want`): addresses whose pod is unknown are always
read, and every `full_every`-th round reads everybody, so membership stays current at a fraction of
the requests of reading the whole fleet every time.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog

__all__ = ["Fleet", "PeerView"]

log = structlog.get_logger("peers")


@dataclass(frozen=True, slots=True)
class PeerView:
    """One peer's `/status` as last read, and when (our monotonic clock)."""

    pod: str
    status: dict[str, Any]
    seen_at: float

    def version_state(self, version: str) -> tuple[str, float] | None:
        """(state, seconds in that state by the peer's own clock) for `version`, if the peer knows it."""
        entry = self.status.get("versions", {}).get(version)
        if not isinstance(entry, dict):
            return None
        try:
            since = float(entry.get("since", 0.0))
            now = float(self.status.get("now", since))
        except (TypeError, ValueError):
            return None
        return str(entry.get("state")), max(0.0, now - since)

    def failed(self, version: str) -> bool:
        state = self.version_state(version)
        return version in self.status.get("quarantined", {}) or (state is not None and state[0] == "failed")

    def holds(self, version: str) -> bool:
        state = self.version_state(version)
        return state is not None and state[0] == "held"


class Fleet:
    """The peers' latest views, refreshed by `poll()`."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        peers: tuple[tuple[str, int], ...],
        me: str,
        *,
        timeout_s: float = 1.0,
        forget_after_s: float = 10.0,
        full_every: int = 8,
        on_requests: Callable[[int], object] | None = None,
    ) -> None:
        self.session, self.peers, self.me = session, peers, me
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.forget_after_s, self.full_every = forget_after_s, full_every
        self.views: dict[str, PeerView] = {}
        self.on_requests = on_requests  # told how many /status reads each round made (a metric)
        self._names: dict[tuple[str, int], str] = {}
        self._failing_since: dict[str, float] = {}
        self._rounds = 0

    async def poll(self, want: set[str] | None = None) -> dict[str, PeerView]:
        """Read the peers (all, or those in `want` plus unknown addresses); returns the live views, self excluded."""
        addresses = await self._resolve()
        self._rounds += 1
        if want is None or self._rounds % self.full_every == 1:
            targets = addresses
        else:
            targets = [a for a in addresses if a not in self._names or self._names[a] in want]
        results = await asyncio.gather(*(self._read(host, port) for host, port in targets))
        if self.on_requests is not None:
            self.on_requests(len(targets))
        now = time.monotonic()
        for address, status in zip(targets, results, strict=True):
            name = self._names.get(address)
            if status is not None and isinstance(status.get("pod"), str):
                name = self._names[address] = status["pod"]
                self._failing_since.pop(name, None)
                if name != self.me:
                    self.views[name] = PeerView(name, status, now)
            elif name is not None:
                self._failing_since.setdefault(name, now)
        listed = {self._names[a] for a in addresses if a in self._names}
        for pod in list(self.views):
            failing = now - self._failing_since.get(pod, now)
            if pod not in listed or failing > self.forget_after_s:
                log.info("peer_forgotten", peer=pod, unreachable_s=round(failing, 1), listed=pod in listed)
                del self.views[pod]
                self._failing_since.pop(pod, None)
        return dict(self.views)

    async def _resolve(self) -> list[tuple[str, int]]:
        loop = asyncio.get_running_loop()
        out: set[tuple[str, int]] = set()
        for host, port in self.peers:
            try:
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError as e:
                peer = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                log.warning("peer_unresolvable", peer=peer, error=str(e))
                continue
            out.update((str(info[4][0]), port) for info in infos)
        return sorted(out)

    async def _read(self, host: str, port: int) -> dict[str, Any] | None:
        url = f"http://[{host}]:{port}/status" if ":" in host else f"http://{host}:{port}/status"
        try:
            async with self.session.get(url, timeout=self.timeout) as resp:
                if resp.status != 200:
                    return None
                doc = await resp.json(content_type=None)
                return doc if isinstance(doc, dict) else None
        except (TimeoutError, aiohttp.ClientError, ValueError):
            return None
