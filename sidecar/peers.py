"""Read the other sidecars of the workload: addresses from `RELOAD_PEERS`, identities from their `/status`.

A peer is known by the pod name its `/status` reports, never by its address (several pods may share
an IP, e.g. in tests on loopback). Addresses are resolved again on every round, so pods behind a
headless Service that come and go are seen; a peer not heard from for `forget_after_s` is left out.
"""

from __future__ import annotations

import asyncio
import socket
import time
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


class Fleet:
    """The peers' latest views, refreshed by `poll()`."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        peers: tuple[str, ...],
        me: str,
        *,
        timeout_s: float = 1.0,
        forget_after_s: float = 10.0,
    ) -> None:
        self.session, self.peers, self.me = session, peers, me
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.forget_after_s = forget_after_s
        self.views: dict[str, PeerView] = {}

    async def poll(self) -> dict[str, PeerView]:
        """Read every peer once (concurrently); returns the live views, self excluded."""
        addresses = await self._resolve()
        results = await asyncio.gather(*(self._read(host, port) for host, port in addresses))
        now = time.monotonic()
        for status in results:
            if status is not None and isinstance(status.get("pod"), str) and status["pod"] != self.me:
                self.views[status["pod"]] = PeerView(status["pod"], status, now)
        for pod in [p for p, v in self.views.items() if now - v.seen_at > self.forget_after_s]:
            log.info("peer_forgotten", peer=pod, unseen_s=round(now - self.views[pod].seen_at, 1))
            del self.views[pod]
        return dict(self.views)

    async def _resolve(self) -> list[tuple[str, int]]:
        loop = asyncio.get_running_loop()
        out: set[tuple[str, int]] = set()
        for peer in self.peers:
            host, _, port = peer.rpartition(":")
            host = host.strip("[]")
            try:
                infos = await loop.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
            except OSError as e:
                log.warning("peer_unresolvable", peer=peer, error=str(e))
                continue
            out.update((str(info[4][0]), int(port)) for info in infos)
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
