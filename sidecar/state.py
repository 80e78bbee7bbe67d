"""What the sidecar knows about versions: current, last good, refused, quarantined; `/status` and the state file.

The state file (`..reload-sidecar-state.json` in the target dir: a `..` name, so neither the app's links
nor the kubelet-style layout ever show it) is written atomically so a restart keeps the last good
version and never retries a quarantined one.

Every collection here is bounded, so `/status` and the state file stay small however many versions
come and go: the newest 50 refused, quarantined, held and tracked versions are kept. A quarantined
version forgotten that way would be tried again if it ever came back (and quarantined again if it fails).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from .promote import fsync_dir
from .verdict import Verdict, VerdictError

if TYPE_CHECKING:
    from .verdict import Step

__all__ = ["STATE_FILE", "Phase", "Refusal", "State", "load_state", "save_state", "state_doc", "write_state"]

STATE_FILE = "..reload-sidecar-state.json"
T = TypeVar("T")
_KEEP_REFUSED = 50
_KEEP_QUARANTINED = 50
_KEEP_HELD = 50
_KEEP_VERSIONS = 50
_MAX_REASON = 1000  # characters of a quarantine reason kept (the state file is fsynced on every commit)

Phase = Literal[
    "starting",
    "idle",
    "validating",
    "waiting",
    "promoting",
    "reloading",
    "verifying",
    "rolling_back",
    "degraded",
    "held",
    "recording",  # ready, with the last commit's state write or pruning still running in the background
    "stopping",
]


@dataclass(slots=True)
class Refusal:
    """Why a version was not (or no longer) used, and when."""

    reason: str
    stage: str
    at: float = field(default_factory=time.time)


@dataclass(slots=True)
class State:
    pod: str
    phase: Phase = "starting"
    current: str | None = None
    last_good: str | None = None
    # Versions whose validation failed: skipped until the content changes (hash-keyed, bounded).
    refused: dict[str, Refusal] = field(default_factory=dict)
    # Versions that broke the app: never promoted again, persisted (the newest 50, oldest first).
    quarantined: dict[str, Refusal] = field(default_factory=dict)
    # Versions a peer reported failed before this pod promoted them (waves): skipped like refused ones.
    # version -> when it was held (the newest 50).
    held: dict[str, float] = field(default_factory=dict)
    # Per-version rollout state for peers: version -> (state, since).
    versions: dict[str, tuple[str, float]] = field(default_factory=dict)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    last_error: str | None = None
    last_error_at: float | None = None
    last_reload_at: float | None = None
    last_change_at: float | None = None
    started_at: float = field(default_factory=time.time)
    ready: bool = False
    ready_reason: str = "no version promoted yet"
    # The restart trigger's last restart of the app: old and new pid, signal, outcome, times (no contents).
    restart: dict[str, Any] | None = None
    # A version promoted but put back because the app's process could not be found or checked (nothing
    # was signalled): retried at each pass until it goes through or the source moves on.
    deferred: dict[str, Any] | None = None
    # The live version's life (verdict.py): its step and the evidence of each step; in the state file.
    verdict: Verdict | None = None
    # How each version was proven or refused (the proof's evidence), the newest 50.
    proofs: dict[str, str] = field(default_factory=dict)

    def step(self, version: str, step: Step, why: str = "") -> Verdict:
        """Move the live version's life to `step`; a version other than the verdict's starts a new life."""
        v = self.verdict
        if v is None or v.version != version or step in ("promoted", "rolling_back"):
            v = Verdict(version, step, why)
        else:
            try:
                v.to(step, why)
            except VerdictError as e:  # a path the machine does not know: recorded as a new life, never fatal
                self.error(str(e))
                v = Verdict(version, step, why)
        if step in ("proven", "refused", "unconfirmed"):
            _put(self.proofs, version, f"{step}: {why}", _KEEP_VERSIONS)
        self.verdict = v
        return v

    def pending(self) -> str | None:
        """After a restart with the last good version live: why it may not be answered ready on yet (its
        life did not end settled: a rollback or a re-check was under way, or the app was degraded)."""
        v, live = self.verdict, self.current
        if v is None or (v.version == live and v.settled):
            return None  # no verdict: a state file of an older release, or `once`'s
        why = f"{v.version}: {v.step}: {v.why}"[:300]
        return f"restarted before {live} was proven healthy again ({why}); re-checking it"

    def settled(self, version: str | None) -> bool:
        """Is `version`'s life over (committed, rolled back, or unconfirmed and healthy)? Then a pass that
        finds it live has nothing to do."""
        v = self.verdict
        return v is not None and v.version == version and (v.settled or v.step == "unconfirmed")

    def refuse(self, version: str, reason: str, stage: str) -> None:
        _put(self.refused, version, Refusal(reason, stage), _KEEP_REFUSED)
        self.error(f"version {version} refused at {stage}: {reason}")
        self.mark(version, "failed")

    def quarantine(self, version: str, reason: str, stage: str) -> None:
        """Never promote `version` again (while it is among the newest 50 quarantined)."""
        _put(self.quarantined, version, Refusal(reason[:_MAX_REASON], stage), _KEEP_QUARANTINED)
        self.mark(version, "failed")

    def defer(self, version: str, reason: str) -> int:
        """`version` was put back, nothing signalled: retried at each pass. Returns its attempts so far."""
        attempts = self.deferred["attempts"] + 1 if self.deferred and self.deferred["version"] == version else 1
        since = self.deferred["since"] if self.deferred and attempts > 1 else time.time()
        self.deferred = {
            "version": version,
            "reason": reason[:_MAX_REASON],
            "since": since,
            "at": time.time(),
            "attempts": attempts,
        }
        self.mark(version, "deferred")
        return attempts

    def undefer(self, unless: str | None = None) -> None:
        """Forget the deferred version (unless it is `unless`)."""
        if self.deferred is not None and self.deferred["version"] != unless:
            self.deferred = None

    def hold(self, version: str) -> None:
        _put(self.held, version, time.time(), _KEEP_HELD)
        self.mark(version, "held")

    def error(self, message: str) -> None:
        self.last_error, self.last_error_at = message, time.time()

    def mark(self, version: str, what: str) -> None:
        _put(self.versions, version, (what, time.time()), _KEEP_VERSIONS)

    def status(self) -> dict[str, Any]:
        """The `/status` document: hashes, sizes, reasons and times; never file contents."""
        return {
            "pod": self.pod,
            "state": self.phase,
            "ready": self.ready,
            "ready_reason": None if self.ready else self.ready_reason,
            "current": self.current,
            "last_good": self.last_good,
            "files": self.files,
            "refused": {v: asdict(r) for v, r in self.refused.items()},
            "quarantined": {v: asdict(r) for v, r in self.quarantined.items()},
            "held": sorted(self.held),
            "versions": {v: self._version_doc(v, s, t) for v, (s, t) in self.versions.items()},
            "verdict": self.verdict.doc() if self.verdict is not None else None,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "last_reload_at": self.last_reload_at,
            "last_change_at": self.last_change_at,
            "started_at": self.started_at,
            "restart": self.restart,
            "deferred": self.deferred,
            # peers compare `versions[...].since` with this, so clocks need not agree across pods
            "now": time.time(),
        }

    def _version_doc(self, version: str, state: str, since: float) -> dict[str, Any]:
        doc: dict[str, Any] = {"state": state, "since": since}
        if version in self.proofs:
            doc["proof"] = self.proofs[version]
        return doc


def _put(d: dict[str, T], key: str, value: T, keep: int) -> None:
    """Insert `key` as the newest entry of `d` and drop the oldest beyond `keep`."""
    d.pop(key, None)
    d[key] = value
    while len(d) > keep:
        del d[next(iter(d))]


def save_state(target: Path, state: State) -> None:
    """Persist what must survive a restart: last good, quarantine, the restart trigger's last restart
    (atomic: temp file + rename).

    The live version is not stored: `..data` says it, and a restart re-verifies it unless it is last good.
    """
    write_state(target, state_doc(state))


def state_doc(state: State) -> dict[str, Any]:
    """What `save_state` writes, taken at once (on the event loop: the write may then run in a thread
    while the loop changes `state`)."""
    return {
        "last_good": state.last_good,
        "quarantined": {v: asdict(r) for v, r in state.quarantined.items()},
        "restart": state.restart,
        # what the sidecar knew about the live version: a restart never answers ready on a pending one
        "verdict": state.verdict.doc() if state.verdict is not None else None,
    }


def write_state(target: Path, doc: dict[str, Any]) -> None:
    """Write a `state_doc` atomically and durably; one writer at a time (the temp name is per process)."""
    tmp = target / f"..tmp-state-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target / STATE_FILE)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)  # a failed write (ENOSPC) must not leave its partial copy taking space
        raise
    fsync_dir(target)  # makes this rename durable, and the ..data swap of the version being committed with it


def load_state(target: Path, state: State) -> str | None:
    """Fill `state` from the state file; returns a problem description if the file was unusable."""
    path = target / STATE_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        quarantined = {v: Refusal(**r) for v, r in doc.get("quarantined", {}).items()}
        last_good, restart = doc.get("last_good"), doc.get("restart")
        if last_good is not None and not isinstance(last_good, str):
            raise TypeError("last_good is not a version hash")
        if not isinstance(restart, dict):  # what /status shows, nothing decided on: not worth the file
            restart = None
        # Oldest first, the newest 50: a file written before the bound existed shrinks on the next commit.
        newest = sorted(quarantined.items(), key=lambda item: float(item[1].at))[-_KEEP_QUARANTINED:]
        state.last_good, state.quarantined, state.restart = last_good, dict(newest), restart
        raw = doc.get("verdict")
        state.verdict = Verdict.from_doc(raw) if raw is not None else None
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, AttributeError) as e:
        with contextlib.suppress(OSError):
            path.rename(path.with_name(STATE_FILE + ".corrupt"))
        return f"state file {path} unreadable ({e}); starting without it"
    return None
