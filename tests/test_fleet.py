"""`Fleet.poll` in-process against loopback aiohttp servers, one per fake peer (no sidecar processes)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sidecar.peers import Fleet


@dataclass
class FakePeer:
    """A peer's /status: `answer` is served as JSON (or `status` alone when it is not 200); reads are counted."""

    answer: Any
    status: int = 200
    reads: int = 0
    port: int = 0
    runner: web.AppRunner | None = field(default=None, repr=False)

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    async def _status(self, _request: web.Request) -> web.Response:
        self.reads += 1
        if self.status != 200:
            return web.Response(status=self.status)
        return web.json_response(self.answer)


def _status(pod: str, **versions: str) -> dict[str, Any]:
    return {"pod": pod, "now": 100.0, "versions": {v: {"state": s, "since": 50.0} for v, s in versions.items()}}


@contextlib.asynccontextmanager
async def _peers(*answers: Any) -> AsyncIterator[list[FakePeer]]:
    peers = [FakePeer(answer) for answer in answers]
    try:
        for peer in peers:
            app = web.Application()
            app.router.add_get("/status", peer._status)
            peer.runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await peer.runner.setup()
            site = web.TCPSite(peer.runner, "127.0.0.1", 0)
            await site.start()
            peer.port = int(peer.runner.addresses[0][1])
        yield peers
    finally:
        for peer in peers:
            if peer.runner is not None:
                await peer.runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def test_peers_are_known_by_the_pod_name_they_report(session: aiohttp.ClientSession) -> None:
    """Views are keyed by the `pod` of each /status (not the address), and this pod's own entry is left out."""
    async with _peers(_status("web-1", v1="healthy"), _status("web-2"), _status("web-0")) as peers:
        fleet = Fleet(session, tuple(p.address for p in peers), "web-0", timeout_s=10)
        views = await fleet.poll()
    assert sorted(views) == ["web-1", "web-2"]
    assert views["web-1"].version_state("v1") == ("healthy", 50.0)
    assert views["web-2"].version_state("v1") is None


@pytest.mark.parametrize(
    ("answer", "status"),
    [({"pod": "web-1"}, 500), (["not", "an", "object"], 200), ({"no": "pod name"}, 200), ({"pod": 7}, 200)],
)
async def test_an_answer_without_a_pod_name_is_no_peer(
    session: aiohttp.ClientSession, answer: Any, status: int
) -> None:
    async with _peers(answer, _status("web-2")) as peers:
        peers[0].status = status
        fleet = Fleet(session, tuple(p.address for p in peers), "web-0", timeout_s=10)
        assert sorted(await fleet.poll()) == ["web-2"]


async def test_a_closed_address_is_skipped(session: aiohttp.ClientSession) -> None:
    async with _peers(_status("web-1")) as peers:
        closed = peers[0].address
    async with _peers(_status("web-2")) as peers:
        fleet = Fleet(session, (closed, peers[0].address), "web-0", timeout_s=10)
        assert sorted(await fleet.poll()) == ["web-2"]


async def test_a_silent_peer_is_kept_until_forget_after_s(session: aiohttp.ClientSession) -> None:
    """A peer that stops answering keeps its last view while it may just be slow, and is then forgotten."""
    async with _peers(_status("web-1", v1="healthy"), _status("web-2")) as peers:
        patient = Fleet(session, tuple(p.address for p in peers), "web-0", timeout_s=10, forget_after_s=3600)
        forgetful = Fleet(session, tuple(p.address for p in peers), "web-0", timeout_s=10, forget_after_s=0)
        for fleet in (patient, forgetful):
            assert sorted(await fleet.poll()) == ["web-1", "web-2"]
        peers[0].status = 503
        for _ in range(3):
            views = await patient.poll()
            assert sorted(views) == ["web-1", "web-2"] and views["web-1"].version_state("v1") == ("healthy", 50.0)
        await forgetful.poll()  # the first failed read starts its clock
        assert sorted(await forgetful.poll()) == ["web-2"]
        peers[0].status = 200  # back: known again at once
        assert sorted(await forgetful.poll()) == ["web-1", "web-2"]


async def test_a_peer_whose_address_left_the_list_is_forgotten(session: aiohttp.ClientSession) -> None:
    async with _peers(_status("web-1"), _status("web-2")) as peers:
        fleet = Fleet(session, tuple(p.address for p in peers), "web-0", timeout_s=10, forget_after_s=3600)
        assert sorted(await fleet.poll()) == ["web-1", "web-2"]
        fleet.peers = (peers[1].address,)
        assert sorted(await fleet.poll()) == ["web-2"]


async def test_a_round_reads_only_the_wanted_peers_and_every_nth_round_all(session: aiohttp.ClientSession) -> None:
    """With `want`, known peers outside it are not read (their last view is kept); round 1, 1 + n, ... read all."""
    counted: list[int] = []
    async with _peers(_status("web-1"), _status("web-2"), _status("web-3")) as peers:
        fleet = Fleet(
            session, tuple(p.address for p in peers), "web-0", timeout_s=10, full_every=3, on_requests=counted.append
        )
        assert sorted(await fleet.poll({"web-1"})) == ["web-1", "web-2", "web-3"]  # round 1: all, names unknown
        peers[2].answer = _status("web-3", v1="failed")
        views = await fleet.poll({"web-1"})  # round 2
        assert views["web-3"].version_state("v1") is None  # not re-read
        await fleet.poll({"web-1", "web-3"})  # round 3
        assert [p.reads for p in peers] == [3, 1, 2]
        views = await fleet.poll({"web-1"})  # round 4 = 1 + full_every: everybody
        assert views["web-3"].failed("v1")
        assert await fleet.poll() and counted == [3, 1, 2, 3, 3]  # no `want`: everybody
    assert [p.reads for p in peers] == [5, 3, 4]
