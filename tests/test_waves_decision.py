"""The waves decision in-process: `stagger.wave_decision` on hand-made peer views (no sidecar processes).

The fleet tests (tests/e2e/test_waves.py) run it through real sidecars; these cover its branches one by one.
"""

from __future__ import annotations

from typing import Any

from sidecar import stagger  # the module, not the name: `decide` may be renamed
from sidecar.peers import PeerView

V = "abc123"
PODS = {f"web-{n}" for n in range(7)}  # ranks 0; 1, 2; 3..6 -> waves 0, 1, 2
BAKE_S = 30.0


def _view(pod: str, state: str | None = None, in_state_s: float = 0.0, **extra: Any) -> PeerView:
    """`pod`'s /status as a peer would serve it: `version` in `state` for `in_state_s` by its own clock."""
    status: dict[str, Any] = {"pod": pod, "now": 1000.0, "versions": {}, **extra}
    if state is not None:
        status["versions"][V] = {"state": state, "since": 1000.0 - in_state_s}
    return PeerView(pod, status, seen_at=0.0)


def _views(me: str, **states: tuple[str, float]) -> dict[str, PeerView]:
    """Views of every pod but `me`; `states` maps pod names (web_1 for web-1) to (state, seconds in it)."""
    given = {k.replace("_", "-"): v for k, v in states.items()}
    return {pod: _view(pod, *given.get(pod, (None, 0.0))) for pod in PODS - {me}}


ORDER = stagger.wave_order(V, PODS)
CANARY, WAVE1, WAVE2 = ORDER[0], ORDER[1:3], ORDER[3:]


def _named(pods: list[str], state: str, seconds: float) -> dict[str, tuple[str, float]]:
    return {pod.replace("-", "_"): (state, seconds) for pod in pods}


def test_a_pod_alone_goes() -> None:
    """With no peers a pod is the canary of a fleet of one."""
    verdict = stagger.wave_decision(V, "web-0", {}, BAKE_S)
    assert verdict.step == "go" and verdict.why == "wave 0 (rank 0 of 1)"


def test_the_canary_goes_at_once_whatever_the_others_do() -> None:
    verdict = stagger.wave_decision(V, CANARY, _views(CANARY), BAKE_S)
    assert verdict.step == "go" and verdict.why.startswith("wave 0 ")


def test_wave_1_waits_for_the_canary_to_bake_then_goes() -> None:
    """Unknown, then healthy for less than the bake time: wait, watching only the canary; baked: go."""
    me = WAVE1[0]
    for canary_state in [None, ("applying", 100.0), ("healthy", BAKE_S - 1)]:
        states = {} if canary_state is None else {CANARY.replace("-", "_"): canary_state}
        verdict = stagger.wave_decision(V, me, _views(me, **states), BAKE_S)
        assert verdict.step == "wait", canary_state
        assert verdict.watch == frozenset({CANARY}) and CANARY in verdict.why
    verdict = stagger.wave_decision(V, me, _views(me, **{CANARY.replace("-", "_"): ("healthy", BAKE_S)}), BAKE_S)
    assert verdict.step == "go" and verdict.why.startswith("wave 1 ")


def test_wave_2_reads_only_wave_1() -> None:
    """A pod of wave 2 waits for the pods of wave 1 only: by induction they went after the canary baked."""
    me = WAVE2[0]
    verdict = stagger.wave_decision(V, me, _views(me, **_named(WAVE1[:1], "healthy", BAKE_S)), BAKE_S)
    assert verdict.step == "wait" and verdict.watch == frozenset(WAVE1)
    assert WAVE1[1] in verdict.why and WAVE1[0] not in verdict.why
    verdict = stagger.wave_decision(V, me, _views(me, **_named(WAVE1, "healthy", BAKE_S)), BAKE_S)  # canary unknown
    assert verdict.step == "go" and verdict.why.startswith("wave 2 ")


def test_any_failed_peer_holds_every_wave() -> None:
    """A failure anywhere, even in a later wave, holds the version here, naming the failed pods in order."""
    late = sorted(WAVE2[1:3])
    for me in (CANARY, WAVE1[0], WAVE2[0]):
        verdict = stagger.wave_decision(V, me, _views(me, **_named(late, "failed", 1.0)), BAKE_S)
        assert verdict.step == "held" and verdict.why == f"reported failed by {', '.join(late)}"


def test_a_quarantined_version_counts_as_failed() -> None:
    me = WAVE1[0]
    views = _views(me)
    views[CANARY] = _view(CANARY, quarantined={V: "rolled back"})
    verdict = stagger.wave_decision(V, me, views, BAKE_S)
    assert verdict.step == "held" and CANARY in verdict.why


def test_a_hold_travels_one_wave_at_a_time() -> None:
    """A pod of the previous wave that holds the version holds it here too; a later wave's hold does not."""
    me = WAVE2[0]
    verdict = stagger.wave_decision(V, me, _views(me, **_named(WAVE1[1:], "held", 1.0)), BAKE_S)
    assert verdict.step == "held" and verdict.why.endswith(f"held by {WAVE1[1]}")
    verdict = stagger.wave_decision(V, WAVE1[0], _views(WAVE1[0], **_named(WAVE2, "held", 1.0)), BAKE_S)
    assert verdict.step == "wait"  # the canary has not baked; wave 2 holding is not its concern


def test_another_versions_state_is_not_this_ones() -> None:
    """A healthy peer on some other version is no evidence for this one."""
    me = WAVE1[0]
    views = _views(me)
    views[CANARY] = PeerView(
        CANARY, {"pod": CANARY, "now": 1000.0, "versions": {"other": {"state": "healthy", "since": 0.0}}}, 0.0
    )
    assert stagger.wave_decision(V, me, views, BAKE_S).step == "wait"


def test_every_pod_agrees_on_the_order() -> None:
    """Each pod computes the same waves from its own view: exactly one canary goes, the rest wait."""
    steps = {me: stagger.wave_decision(V, me, _views(me), BAKE_S).step for me in PODS}
    assert [pod for pod, step in steps.items() if step == "go"] == [CANARY]
