"""`Fleet` over real HTTP (`HttpTransport`) against loopback aiohttp servers, one per fake peer (no sidecars)."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sidecar.peers import NAMES_FILE, Fleet, HttpTransport, load_names, save_names


@dataclass
class FakePeer:
    """A peer's /status: `answer` is served as JSON (or `status` alone when it is not 200); reads are counted."""

    answer: Any
    status: int = 200
    reads: int = 0
    peers: dict[str, list[Any]] = field(default_factory=dict)  # what its /peers serves
    peer_reads: int = 0
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

    async def _peers(self, _request: web.Request) -> web.Response:
        self.peer_reads += 1
        return web.json_response({"pod": "x", "peers": self.peers})


def _status(pod: str, **versions: str) -> dict[str, Any]:
    return {"pod": pod, "now": 100.0, "versions": {v: {"state": s, "since": 50.0} for v, s in versions.items()}}


@contextlib.asynccontextmanager
async def _peers(*answers: Any) -> AsyncIterator[list[FakePeer]]:
    peers = [FakePeer(answer) for answer in answers]
    try:
        for peer in peers:
            app = web.Application()
            app.router.add_get("/status", peer._status)
            app.router.add_get("/peers", peer._peers)
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


def _fleet(session: aiohttp.ClientSession, peers: list[FakePeer], **kw: Any) -> Fleet:
    kw.setdefault("timeout_s", 10)
    return Fleet(HttpTransport(session), tuple(p.address for p in peers), "web-0", **kw)


async def test_peers_are_known_by_the_pod_name_they_report(session: aiohttp.ClientSession) -> None:
    """Members are the names each /status reports (not the addresses), this pod included; a read is keyed so."""
    async with _peers(_status("web-1", v1="healthy"), _status("web-2"), _status("web-0")) as peers:
        fleet = _fleet(session, peers)
        await fleet.refresh()
        assert fleet.members() == {"web-0", "web-1", "web-2"}
        views = await fleet.read(["web-1", "web-2", "web-0"])
    assert sorted(views) == ["web-1", "web-2"]  # never itself
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
        fleet = _fleet(session, peers)
        await fleet.refresh()
        assert fleet.members() == {"web-0", "web-2"}


async def test_a_closed_address_is_skipped(session: aiohttp.ClientSession) -> None:
    async with _peers(_status("web-1")) as peers:
        closed = peers[0].address
    async with _peers(_status("web-2")) as peers:
        fleet = Fleet(HttpTransport(session), (closed, peers[0].address), "web-0", timeout_s=10)
        await fleet.refresh()
        assert fleet.members() == {"web-0", "web-2"}


async def test_a_silent_peer_is_kept_until_forget_after_s(session: aiohttp.ClientSession) -> None:
    """A peer that stops answering keeps its last view while it may just be slow, and is then gone."""
    async with _peers(_status("web-1", v1="healthy"), _status("web-2")) as peers:
        patient = _fleet(session, peers, forget_after_s=3600)
        forgetful = _fleet(session, peers, forget_after_s=0)
        for fleet in (patient, forgetful):
            await fleet.refresh()
            assert sorted(await fleet.read(["web-1", "web-2"])) == ["web-1", "web-2"]
        peers[0].status = 503
        for _ in range(3):
            views = await patient.read(["web-1", "web-2"])
            assert views["web-1"].version_state("v1") == ("healthy", 50.0) and not patient.gone("web-1")
        await forgetful.read(["web-1"])  # the first failed read starts its clock
        await forgetful.read(["web-1"])
        assert forgetful.gone("web-1") and forgetful.gone_pods() == {"web-1"} and not forgetful.gone("web-2")
        peers[0].status = 200  # back: answering again at once
        await forgetful.read(["web-1"])
        assert not forgetful.gone("web-1")


async def test_a_peer_whose_address_left_the_list_is_dropped_at_the_next_refresh(
    session: aiohttp.ClientSession,
) -> None:
    async with _peers(_status("web-1"), _status("web-2")) as peers:
        fleet = _fleet(session, peers, forget_after_s=3600)
        await fleet.refresh()
        await fleet.read(["web-1", "web-2"])
        fleet.peers = (peers[1].address,)
        assert fleet.members() == {"web-0", "web-1", "web-2"}  # until the next refresh
        await fleet.refresh()
        assert fleet.members() == {"web-0", "web-2"} and sorted(fleet.views) == ["web-2"]


async def test_a_read_reads_only_the_named_peers(session: aiohttp.ClientSession) -> None:
    """`read` asks exactly the peers named (a tree neighbourhood), each once, and counts them."""
    counted: list[int] = []
    async with _peers(_status("web-1"), _status("web-2"), _status("web-3")) as peers:
        fleet = _fleet(session, peers, on_requests=counted.append)
        await fleet.refresh()
        assert [p.reads for p in peers] == [1, 1, 1] and counted == [3]  # names learnt: one read each
        await fleet.read(["web-1", "web-1", "web-3", "web-9"])  # web-9: nobody knows it, not read
        assert [p.reads for p in peers] == [2, 1, 2] and counted == [3, 2]
        await fleet.refresh()  # every name known: a refresh resolves and reads nobody
        assert [p.reads for p in peers] == [2, 1, 2] and counted == [3, 2]


async def test_a_refresh_learns_many_names_in_bulk_from_one_peer(session: aiohttp.ClientSession) -> None:
    """More unknown addresses than `learn_per_round`: one peer's /peers names them; a few are read directly."""
    async with _peers(*(_status(f"web-{i}") for i in range(1, 7))) as peers:
        for p in peers:
            p.peers = {f"web-{i}": list(q.address) for i, q in enumerate(peers[:4], start=1)}
        fleet = _fleet(session, peers, learn_per_round=2)
        await fleet.refresh()
        assert sum(p.peer_reads for p in peers) == 1
        assert sum(p.reads for p in peers) == 2  # web-5 and web-6, which /peers did not name
        assert fleet.members() == {f"web-{i}" for i in range(7)}
        assert fleet.peers_doc()["peers"]["web-3"] == list(peers[2].address)


async def test_an_address_now_serving_another_pod_is_renamed(session: aiohttp.ClientSession) -> None:
    """An IP reused by a new pod: the read learns the new name and drops the old one."""
    async with _peers(_status("web-1"), _status("web-2")) as peers:
        fleet = _fleet(session, peers)
        await fleet.refresh()
        peers[0].answer = _status("web-7")
        assert await fleet.read(["web-1"]) == {}
        assert fleet.members() == {"web-0", "web-7", "web-2"}


async def test_an_address_that_never_answered_is_counted_unnamed(session: aiohttp.ClientSession) -> None:
    """A listed address nobody could name is still a pod (a silent one): counted by `unnamed()`, until named."""
    async with _peers(_status("web-1")) as peers:
        closed = peers[0].address
    async with _peers(_status("web-2"), _status("web-0")) as peers:
        fleet = Fleet(HttpTransport(session), (closed, *(p.address for p in peers)), "web-0", timeout_s=10)
        assert (fleet.members(), fleet.unnamed()) == ({"web-0"}, 0)  # nothing resolved yet
        await fleet.refresh()
        assert (fleet.members(), fleet.unnamed()) == ({"web-0", "web-2"}, 1)
        fleet.peers = tuple(p.address for p in peers)  # the closed address is no longer listed
        await fleet.refresh()
        assert (fleet.members(), fleet.unnamed()) == ({"web-0", "web-2"}, 0)


async def test_names_learnt_are_kept_for_the_next_life(session: aiohttp.ClientSession, tmp_path: Path) -> None:
    """The names are written (atomically) when they change; a new Fleet on the same file knows them without
    a read, and counts them even while they do not answer."""
    path = tmp_path / NAMES_FILE
    async with _peers(_status("web-1"), _status("web-2")) as peers:
        first = _fleet(session, peers, names_file=path)
        await first.refresh()
        assert load_names(path) == {peers[0].address: "web-1", peers[1].address: "web-2"}
        assert os.listdir(tmp_path) == [NAMES_FILE]  # no temp file left
        for p in peers:
            p.status = 503  # silent from now on: the next life cannot learn the names again
        second = _fleet(session, peers, names_file=path)
        await second.refresh()
        assert (second.members(), second.unnamed()) == ({"web-0", "web-1", "web-2"}, 0)
        assert sum(p.reads for p in peers) == 2  # the first life's reads only


@pytest.mark.parametrize("text", ["{not json", '["a list"]', '{"names": [["10.0.0.1", "9533", "web-1"], 7]}'])
def test_an_unusable_names_file_is_no_names(tmp_path: Path, text: str) -> None:
    path = tmp_path / NAMES_FILE
    path.write_text(text)
    assert load_names(path) == {}
    assert load_names(tmp_path / "missing") == {}
    save_names(path, {("10.0.0.1", 9533): "web-1"})
    assert json.loads(path.read_text()) == {"names": [["10.0.0.1", 9533, "web-1"]]}
