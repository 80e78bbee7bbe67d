"""The waves protocol in-process: `stagger.wave_round` on hand-made peer views, then whole simulated fleets.

The first part feeds one pod's round with the `/status` documents its tree neighbours would serve. The
second runs the real gates of 30 to 300 pods over bench/fleet_sim.py's in-process network on a virtual
clock (dead pods, a partition, a pod joining a fleet that holds a version). tests/e2e/test_waves.py runs
the protocol through real sidecars.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from typing import Any

import pytest

from bench import fleet_sim
from sidecar import stagger
from sidecar.peers import PeerView
from sidecar.stagger import WaveView, wave_of

V = "abc123"
PODS = frozenset(f"web-{n}" for n in range(7))  # ranks 0; 1, 2; 3..6 -> waves 0, 1, 2; fan-out 2
BAKE_S = 30.0
NOW = 1000.0
VIEW = WaveView.of(V, PODS)
ORDER = VIEW.order
CANARY, WAVE1, WAVE2 = ORDER[0], ORDER[1:3], ORDER[3:]


def _status(pod: str, state: str | None = None, in_state_s: float = 0.0, **extra: Any) -> dict[str, Any]:
    """`pod`'s /status: `V` in `state` for `in_state_s` by its own clock, which reads 5000 (not ours)."""
    status: dict[str, Any] = {"pod": pod, "now": 5000.0, "versions": {}, "quarantined": {}, **extra}
    if state is not None:
        status["versions"][V] = {"state": state, "since": 5000.0 - in_state_s}
    return status


def _peer(pod: str, state: str | None = None, in_state_s: float = 0.0, doc: dict[str, Any] | None = None) -> PeerView:
    extra = {"waves": {V: doc}} if doc is not None else {}
    return PeerView(pod, _status(pod, state, in_state_s, **extra), seen_at=NOW)


def _own(pod: str, state: str | None = None, in_state_s: float = 0.0) -> PeerView:
    entry = {V: {"state": state, "since": NOW - in_state_s}} if state else {}
    return PeerView(pod, {"pod": pod, "now": NOW, "versions": entry, "quarantined": {}}, seen_at=NOW)


def _doc(**fields: Any) -> dict[str, Any]:
    """A neighbour's waves document on the same order; `down`/`up` times are ages in seconds (its clock)."""
    doc: dict[str, Any] = {"view": VIEW.key, "n": len(ORDER), "gone": [], "hold": None, **fields}
    if "down" in doc:
        doc["down"] = [None if age is None else 5000.0 - age for age in doc["down"]]
    if "up" in doc:
        doc["up"] = [[n, None if age is None else 5000.0 - age] for n, age in doc["up"]]
    return doc


def _round(me: str, *peers: PeerView, state: str | None = None, **kw: Any) -> stagger.WaveStep:
    return stagger.wave_round(VIEW, me, _own(me, state), {p.pod: p for p in peers}, BAKE_S, NOW, **kw)


def test_the_tree_is_at_most_three_levels_and_no_pod_serves_more_than_its_parent_and_children() -> None:
    """Fan-out F keeps 1 + F + F^2 + F^3 >= N: at 1,000 pods F = 10, at 5,000 F = 17 (18 readers at most)."""
    for n, f in [(7, 2), (100, 5), (1000, 10), (5000, 17)]:
        view = WaveView.of("v", frozenset(f"p{i}" for i in range(n)))
        assert view.fanout == f and stagger.tree_depth(n, f) <= 3
        readers = Counter(peer for pod in view.order for peer in view.neighbours(pod))
        assert max(readers.values()) <= f + 1 and sum(readers.values()) == 2 * (n - 1)
        assert view.waves == math.ceil(math.log2(n + 1))


def test_a_pod_alone_goes() -> None:
    """With no peers a pod is the canary of a fleet of one, and a majority of it."""
    view = WaveView.of(V, frozenset({"web-0"}))
    verdict = stagger.wave_round(view, "web-0", _own("web-0"), {}, BAKE_S, NOW)
    assert verdict.step == "go" and verdict.why == "wave 0 (rank 0 of 1)"


def test_the_canary_goes_once_a_majority_reported_on_its_order() -> None:
    """Rank 0 waits until more than half the order reached it through the tree ("seen"), then goes."""
    alone = _round(CANARY)
    assert alone.step == "wait" and "1 of 7 pods agree" in alone.why
    three = _round(CANARY, _peer(WAVE1[0], doc=_doc(seen=2)), _peer(WAVE1[1], doc=_doc(seen=0)))
    assert three.step == "wait" and three.doc["seen"] == 3
    other_order = {**_doc(seen=3), "view": "another"}
    assert _round(CANARY, _peer(WAVE1[0], doc=_doc(seen=2)), _peer(WAVE1[1], doc=other_order)).step == "wait"
    four = _round(CANARY, _peer(WAVE1[0], doc=_doc(seen=2)), _peer(WAVE1[1], doc=_doc(seen=1)))
    assert four.step == "go" and four.why == "wave 0 (rank 0 of 7)"


def test_a_canary_needs_a_majority_of_every_listed_pod_not_just_of_its_order() -> None:
    """A side of 3 pods of 7 (a partition) has forgotten 3 of the other 4 but not yet the fourth: an order of
    4 of which its 3 agree, a majority of that order but not of the fleet: its canary waits. (Counted against
    the order alone, as before, it went: the other side could have had a canary too.)"""
    view = WaveView.of(V, frozenset(ORDER[:4]))
    canary = view.order[0]
    child = view.children(0)[0]  # reports itself and its own child: 3 with the canary
    peers = {child: _peer(child, doc={**_doc(seen=2), "view": view.key, "n": 4})}
    cut = stagger.wave_round(view, canary, _own(canary), peers, BAKE_S, NOW, ORDER[4:], (), listed=7)
    assert cut.step == "wait" and "3 of 7 pods agree" in cut.why, cut.why
    assert stagger.wave_round(view, canary, _own(canary), peers, BAKE_S, NOW, ORDER[4:], (), listed=4).step == "go"


def test_counts_go_up_and_the_canary_says_since_when_each_wave_is_whole() -> None:
    """The canary sums its children's per-wave counts; a wave's "down" time exists once all its pods are in."""
    left = _peer(WAVE1[0], doc=_doc(up=[[0, None], [1, 40.0], [1, 5.0]], seen=3))
    right = _peer(WAVE1[1], doc=_doc(up=[[0, None], [1, 50.0], [1, 9.0]], seen=3))
    verdict = _round(CANARY, left, right, state="healthy")
    assert verdict.doc["up"][1][0] == 2 and verdict.doc["up"][2][0] == 2
    assert verdict.doc["down"][0] == NOW and verdict.doc["down"][1] == NOW - 40.0  # the later of the two
    assert verdict.doc["down"][2] is None and verdict.doc["done"] is False  # 2 of 4 in wave 2


def test_wave_1_waits_for_the_canary_to_bake_then_goes() -> None:
    """Nothing from the parent, or wave 0 healthy for less than the bake time: wait; baked: go."""
    me = WAVE1[0]
    for doc in [None, _doc(down=[None, None, None]), _doc(down=[BAKE_S - 1, None, None])]:
        assert _round(me, _peer(CANARY, "healthy", doc=doc)).step == "wait", doc
    verdict = _round(me, _peer(CANARY, "healthy", doc=_doc(down=[BAKE_S, None, None])))
    assert verdict.step == "go" and verdict.why.startswith("wave 1 ")


def test_wave_2_goes_on_its_parents_word_for_every_lower_wave() -> None:
    """Its parent relays the canary's "down"; wave 1 must have baked too, not only the canary."""
    me = WAVE2[0]
    parent = VIEW.parent(VIEW.rank[me])
    assert parent in WAVE1
    assert _round(me, _peer(parent, doc=_doc(down=[100.0, BAKE_S - 5, None]))).step == "wait"
    assert _round(me, _peer(parent, doc=_doc(down=[100.0, BAKE_S, None]))).step == "go"


def test_a_silent_parent_is_bypassed_through_an_uncle_then_the_grandparent() -> None:
    """While the parent does not answer, "down" (the same everywhere) comes from one of the parent's
    siblings, picked by rank so a dead pod's children spread out, or failing that from the canary."""
    me = ORDER[4]  # parent rank 1, its sibling rank 2, then the canary
    parent, uncle = ORDER[1], ORDER[2]
    assert VIEW.upstream(me) == (parent, uncle, CANARY)
    baked = _doc(down=[100.0, 100.0, None])
    assert _round(me, _peer(uncle, doc=baked)).step == "wait"  # the parent is not known to be silent
    assert _round(me, _peer(uncle, doc=baked), unreachable={parent}).step == "go"
    assert _round(me, _peer(CANARY, doc=baked), unreachable={parent, uncle}).step == "go"
    assert _round(me, _peer(CANARY, doc=baked), unreachable={parent}).step == "wait"  # the uncle's word first


@pytest.mark.parametrize("who", [CANARY, WAVE1[0], WAVE2[0]])
def test_a_failed_or_holding_neighbour_holds_every_wave(who: str) -> None:
    """Failed, quarantined or held on a neighbour, or a hold in its document (even on another order): held."""
    other = next(p for p in ORDER if p != who)
    for peer in [
        _peer(other, "failed", 1.0),
        PeerView(other, _status(other, quarantined={V: {"reason": "rolled back"}}), NOW),
        _peer(other, "held", 1.0),
        _peer(other, doc={**_doc(), "view": "another order", "hold": "reported failed by web-9"}),
    ]:
        verdict = _round(who, peer)
        assert verdict.step == "held" and other in verdict.why and verdict.doc["hold"] == verdict.why


def test_a_pod_that_failed_holds_its_own_document() -> None:
    verdict = _round(CANARY, state="failed")
    assert verdict.step == "held" and verdict.doc["hold"] == "failed here"


def test_a_late_pod_goes_once_a_neighbour_reports_its_order_done_and_baked() -> None:
    """Whatever order the neighbour used (it may have left this pod out), done and baked is enough."""
    me = WAVE2[0]
    done = {**_doc(down=[300.0, 200.0, BAKE_S + 1]), "view": "an order without me", "done": True}
    verdict = _round(me, _peer(ORDER[1], doc=done))
    assert verdict.step == "go" and "every wave done and baked" in verdict.why
    young = {**done, "down": [4700.0, 4800.0, 5000.0 - BAKE_S + 1]}
    assert _round(me, _peer(ORDER[1], doc=young)).step == "wait"


def test_another_versions_state_is_not_this_ones() -> None:
    """A healthy peer on some other version is no evidence for this one."""
    me = WAVE1[0]
    status = {"pod": CANARY, "now": 5000.0, "versions": {"other": {"state": "healthy", "since": 0.0}}}
    status["waves"] = {"other": _doc(down=[100.0, None, None])}
    assert _round(me, PeerView(CANARY, status, NOW)).step == "wait"


def test_every_pod_agrees_on_the_order() -> None:
    """Each pod computes the same order whatever the order of its member set; one canary per version."""
    assert WaveView.of(V, frozenset(sorted(PODS, reverse=True))).order == ORDER
    assert WaveView.of("another", PODS).order != ORDER
    assert [wave_of(r) for r in range(7)] == [0, 1, 1, 2, 2, 2, 2]


def test_derived_peer_timeout_and_forget_time() -> None:
    """timeout = bake / 10 within [1, 5] s; forget = max(bake, 4 x timeout) + 2 x tree depth x round."""
    assert stagger.default_peer_timeout_s(1.0) == 1.0
    assert stagger.default_peer_timeout_s(30.0) == 3.0
    assert stagger.default_peer_timeout_s(600.0) == 5.0
    assert stagger.default_peer_forget_s(30.0, 3.0, 1000) == 30.0 + 2 * 3 * 1.0
    assert stagger.default_peer_forget_s(1.0, 1.0, 8) == 4.0 + 2 * 3 * 0.25  # 8 pods: F = 2, 3 levels


# Whole fleets: the real gates over bench/fleet_sim.py's simulated network, on a virtual clock.


def test_a_fleet_rolls_out_in_log2_waves_and_a_bad_version_reaches_the_canary_only() -> None:
    """300 pods: 9 waves, none before the lower waves baked; linear traffic; the hold reaches all in 3 rounds."""
    r = fleet_sim.run(fleet_sim.Options(300, seed=3))
    assert r["waves"] == r["waves_target"] == 9 and r["early_starts"] == 0 and r["rollout_complete"]
    assert r["requests_per_round"] <= 4 * 300 and r["busiest_pod_requests_per_round"] <= 20
    assert r["bad_version_pods"] == 1 and r["bad_settled"]
    assert r["hold_rounds"] is not None and r["hold_rounds"] <= 3.5  # a hop is one round, plus read latency
    assert r["idle_requests"] == 0


def test_a_dead_canary_is_left_out_and_the_next_pod_is_the_canary() -> None:
    """The canary of each version is dead from the start: the others leave it out after the forget time
    and go on with a new canary; the bad version still reaches one pod."""
    r = fleet_sim.run(fleet_sim.Options(60, kill_canary=True))
    assert r["rollout_complete"] and r["healthy_pods"] == 58 and r["early_starts"] == 0
    assert r["bad_version_pods"] == 1 and r["bad_settled"]


def test_a_partitioned_tenth_neither_blocks_the_rest_nor_makes_a_second_canary() -> None:
    """10 % of the pods cut off during each version: the rest roll out (the cut side waits for a majority
    it cannot see, then catches up once healed); a bad version reaches one pod, and every pod holds it."""
    for seed in (1, 2):
        r = fleet_sim.run(fleet_sim.Options(100, partition=0.1, seed=seed))
        assert r["rollout_complete"] and r["healthy_pods"] == 100 and r["early_starts"] == 0, r
        assert r["bad_version_pods"] == 1 and r["bad_settled"], r


def test_pods_cut_off_before_they_named_their_peers_count_them_and_wait() -> None:
    """The cut-off tenth starts knowing no name (sidecars restarted): it counts the 90 addresses it cannot
    name as silent pods, so it is a minority and never makes an order of its own; one pod gets the bad
    version (before: the cut pods that named each other made orders of their own, and 3 pods got it)."""
    r = fleet_sim.run(fleet_sim.Options(100, partition=0.1, cold_cut=True, seed=1))
    assert r["rollout_complete"] and r["healthy_pods"] == 100 and r["early_starts"] == 0, r
    assert r["bad_version_pods"] == 1 and r["bad_settled"], r


async def _joining(o: fleet_sim.Options) -> tuple[str, str, int]:
    sim = fleet_sim.Sim(o)
    await sim.version(fleet_sim.GOOD, bad=False)
    on_good = await sim.newcomer(fleet_sim.GOOD)
    await sim.version(fleet_sim.BAD, bad=True)
    on_bad = await sim.newcomer(fleet_sim.BAD)
    return on_good, on_bad, await sim.idle()


def test_a_starting_pod_never_starts_on_a_held_version_and_a_settled_fleet_goes_idle() -> None:
    """A pod joining after a good version rolled out takes it; one joining after the fleet held a version
    refuses it (a few random peers know). Once everything is settled, no pod reads any other."""
    on_good, on_bad, idle_requests = fleet_sim.run(fleet_sim.Options(50), _joining)
    assert (on_good, on_bad) == ("go", "held")
    assert idle_requests == 0


async def _superseded(o: fleet_sim.Options) -> tuple[bool, bool, Any]:
    sim = fleet_sim.Sim(o)
    gate = sim.pods[0].gate
    older = asyncio.ensure_future(gate.wait("v-old"))  # waits: nobody else has seen it
    await asyncio.sleep(5)
    newer = asyncio.ensure_future(gate.wait("v-new"))
    await asyncio.sleep(1)
    result = older.cancelled() or older.exception()
    newer.cancel()
    return older.done(), gate.published["v-old"].get("superseded", False), result


def test_a_newer_version_ends_the_older_ones_rounds_and_its_waiter() -> None:
    """Starting to wait for a newer version stops the rounds of the older one (its document says
    superseded, so pods that went with it stop too) and never leaves a waiter of the older one hanging."""
    done, superseded, result = fleet_sim.run(fleet_sim.Options(8), _superseded)
    assert done and superseded and result is True


async def _one_never_sees_it(o: fleet_sim.Options) -> tuple[bool, int, int, int]:
    sim = fleet_sim.Sim(o)
    late = sim.live.pop(7)  # its volume never shows the version (a kubelet far behind): it answers, without a part
    sim.majority.remove(late)
    good = await sim.version(fleet_sim.GOOD, bad=False)
    healthy = sum(p.state.versions.get(fleet_sim.GOOD, ("",))[0] == "healthy" for p in sim.live)
    await asyncio.sleep(60)  # the last rounds: "done" crossing the tree, the left-out pod's name spreading
    return good["settled_all"], healthy, len(sim.live), await sim.idle()


def test_a_pod_that_answers_but_never_takes_part_is_left_out() -> None:
    """A live pod without a document for the version (it has not seen it, or started on it) does not
    block its wave: after the forget time it is left out like a silent one, and the rest finish and stop."""
    settled, healthy, live, idle_requests = fleet_sim.run(fleet_sim.Options(40), _one_never_sees_it)
    assert settled and healthy == live == 39 and idle_requests == 0
