"""`State`: the `/status` document (never file contents) and the state file that survives restarts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sidecar.snapshot import read_snapshot
from sidecar.state import STATE_FILE, Refusal, State, load_state, save_state

MARKER = "hunter2-TOP-MARKER-7f3a"


def test_status_never_contains_file_contents(tmp_path: Path) -> None:
    """A `/status` built from a snapshot holding a secret has names and sizes, never the secret itself."""
    source = tmp_path / "source"
    source.mkdir()
    (source / "db.yaml").write_text(f"password: {MARKER}\n")
    (source / "app.yaml").write_text("a: 1\n")
    snap = read_snapshot(source)
    state = State(pod="web-0", current=snap.version, last_good=snap.version)
    state.files = {name: {"bytes": snap.sizes[name]} for name in snap.files}
    state.refuse("0123456789abcdef", "db.yaml:1:11: invalid YAML", "validate")
    text = json.dumps(state.status())
    assert MARKER not in text
    assert json.loads(text)["files"] == {"app.yaml": {"bytes": 5}, "db.yaml": {"bytes": 10 + len(MARKER) + 1}}


def test_status_document_shape() -> None:
    """`/status` reports pod, state, readiness, versions and errors as plain JSON values."""
    state = State(pod="web-1", phase="idle", current="aa", last_good="aa")
    state.quarantined["bb"] = Refusal("HTTP 500", "verify", at=123.0)
    state.mark("aa", "healthy")
    status = json.loads(json.dumps(state.status()))
    assert status["pod"] == "web-1" and status["state"] == "idle"
    assert (status["current"], status["last_good"]) == ("aa", "aa")
    assert status["ready"] is False and status["ready_reason"] == "no version promoted yet"
    assert status["quarantined"] == {"bb": {"reason": "HTTP 500", "stage": "verify", "at": 123.0}}
    assert status["versions"]["aa"]["state"] == "healthy"
    state.ready = True
    assert state.status()["ready_reason"] is None


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    """last_good and the quarantine survive a restart through the state file, written atomically."""
    state = State(pod="p", current="c0ffee", last_good="c0ffee")
    state.quarantined["badbad"] = Refusal("not healthy: HTTP 500 x3", "verify", at=1700000000.5)
    save_state(tmp_path, state)
    assert (tmp_path / STATE_FILE).is_file()
    assert [p.name for p in tmp_path.iterdir()] == [STATE_FILE]  # no temp file left behind
    fresh = State(pod="p")
    assert load_state(tmp_path, fresh) is None
    assert fresh.last_good == "c0ffee"
    assert fresh.quarantined == {"badbad": Refusal("not healthy: HTTP 500 x3", "verify", at=1700000000.5)}


def test_the_restart_record_survives_a_restart(tmp_path: Path) -> None:
    """The restart trigger's last restart (`/status` `restart`) is in the state file; a record of the wrong
    shape is dropped alone, never at the cost of the last good version and the quarantine."""
    record = {"old_pid": 10, "new_pid": 11, "signal": "SIGTERM", "outcome": "restarted", "at": 1.0}
    save_state(tmp_path, State(pod="p", last_good="c0ffee", restart=record))
    fresh = State(pod="p")
    assert load_state(tmp_path, fresh) is None and fresh.restart == record and fresh.status()["restart"] == record
    (tmp_path / STATE_FILE).write_text('{"last_good": "c0ffee", "quarantined": {}, "restart": [1]}')
    fresh = State(pod="p")
    assert load_state(tmp_path, fresh) is None and (fresh.last_good, fresh.restart) == ("c0ffee", None)


def test_state_file_is_hidden_from_the_app() -> None:
    """The state file has a `..` name, like the kubelet's own entries, so no top-level link ever shows it."""
    assert STATE_FILE.startswith("..")


def test_missing_state_file_is_no_problem(tmp_path: Path) -> None:
    """A first start without a state file loads nothing and reports nothing."""
    state = State(pod="p")
    assert load_state(tmp_path, state) is None
    assert (state.last_good, state.quarantined) == (None, {})


def test_corrupt_state_file_is_reported_and_moved_aside(tmp_path: Path) -> None:
    """An unreadable state file gives a problem string and is renamed `.corrupt` so the next start is clean."""
    (tmp_path / STATE_FILE).write_text('{"last_good": "abc", "quarantined": {')
    state = State(pod="p")
    problem = load_state(tmp_path, state)
    assert problem is not None
    assert problem.startswith(f"state file {tmp_path / STATE_FILE} unreadable (")
    assert problem.endswith("starting without it")
    assert not (tmp_path / STATE_FILE).exists()
    assert (tmp_path / (STATE_FILE + ".corrupt")).read_text().startswith('{"last_good"')
    assert state.quarantined == {} and state.last_good is None
    assert load_state(tmp_path, state) is None


def test_wrong_shape_state_file_is_reported(tmp_path: Path) -> None:
    """Valid JSON of the wrong shape (a list; a quarantine entry with unknown fields) is a problem too."""
    for content in ("[1, 2]", '{"quarantined": {"v": {"why": "x"}}}', '{"quarantined": {"v": "x"}}'):
        (tmp_path / STATE_FILE).write_text(content)
        problem = load_state(tmp_path, State(pod="p"))
        assert problem is not None and "unreadable" in problem, content
        assert not (tmp_path / STATE_FILE).exists()
        os.unlink(tmp_path / (STATE_FILE + ".corrupt"))


def test_rejected_state_file_leaves_the_state_untouched(tmp_path: Path) -> None:
    """A state file rejected as unreadable contributes nothing, not even the fields read before the error."""
    (tmp_path / STATE_FILE).write_text('{"last_good": "abc", "quarantined": {"v": "not a refusal"}}')
    state = State(pod="p")
    assert load_state(tmp_path, state) is not None
    assert state.last_good is None


def test_refused_versions_are_bounded() -> None:
    """Refusing many versions keeps only the newest 50, and records the last error."""
    state = State(pod="p")
    for i in range(60):
        state.refuse(f"v{i:02}", f"reason {i}", "validate")
    assert len(state.refused) == 50
    assert "v00" not in state.refused and "v09" not in state.refused
    assert "v10" in state.refused and "v59" in state.refused
    assert state.refused["v59"].reason == "reason 59" and state.refused["v59"].stage == "validate"
    assert state.last_error == "version v59 refused at validate: reason 59"
    assert len(state.versions) <= 50 and state.versions["v59"][0] == "failed"
    assert len(json.dumps(state.status())) < 20_000


def test_quarantine_is_bounded_and_keeps_the_newest() -> None:
    """Quarantining 425 versions keeps the newest 50 (a forgotten one would be tried again if it came back);
    reasons are capped, so /status and the state file stay small."""
    state = State(pod="p")
    for i in range(425):
        state.quarantine(f"v{i:03}", "not healthy: " + "HTTP 500 x9, " * 200, "verify")
    assert list(state.quarantined) == [f"v{i:03}" for i in range(375, 425)]
    assert all(len(r.reason) <= 1000 for r in state.quarantined.values())
    assert state.versions["v424"][0] == "failed"
    assert len(json.dumps(state.status())) < 80_000


def test_held_and_versions_are_bounded() -> None:
    """Held versions (waves) and the per-version rollout states keep the newest 50 each."""
    state = State(pod="p")
    for i in range(200):
        state.hold(f"h{i:03}")
        state.mark(f"m{i:03}", "healthy")
    assert len(state.held) == 50 and "h199" in state.held and "h149" not in state.held
    assert len(state.versions) == 50 and "m199" in state.versions
    assert state.status()["held"] == sorted(state.held)


def test_loading_a_large_quarantine_keeps_the_newest(tmp_path: Path) -> None:
    """A state file with 425 quarantined versions (written before the bound) loads as the newest 50 by time."""
    doc = {
        "last_good": "g",
        "quarantined": {f"v{i:03}": {"reason": "r", "stage": "verify", "at": 1000.0 + i} for i in range(425)},
    }
    (tmp_path / STATE_FILE).write_text(json.dumps(doc))
    state = State(pod="p")
    assert load_state(tmp_path, state) is None
    assert list(state.quarantined) == [f"v{i:03}" for i in range(375, 425)]
    save_state(tmp_path, state)
    assert len(json.loads((tmp_path / STATE_FILE).read_text())["quarantined"]) == 50


def test_failed_save_leaves_no_temp_file(tmp_path: Path) -> None:
    """A state write that fails (here a directory is in the way of the rename) raises and leaves no temp file."""
    (tmp_path / STATE_FILE / "x").mkdir(parents=True)
    state = State(pod="p", last_good="g")
    with pytest.raises(OSError):
        save_state(tmp_path, state)
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATE_FILE]
