"""The life of the live version as one explicit state machine, each step with its evidence.

    promoted -> signalled -> proven -> healthy -> committed
                          \\-> unconfirmed -> healthy -> unconfirmed (kept live, never last good)
    any step before committed -> refused -> (the last good version's life) rolling_back
    rolling_back -> signalled -> proven -> healthy -> rolled_back, or -> degraded

The reloader drives it; the state file holds the live version's verdict (so a restarted sidecar knows a
rollback was pending or the app was degraded, see `pending`), and `/status`, the metrics, readiness and
waves read it. Only a version whose life reached `committed` is last good, counted successful, used for a
rollback or baked by waves; `unconfirmed` (no proof kind, RELOAD_PROOF=none) is never counted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

__all__ = ["SETTLED", "STEPS", "Step", "Verdict", "VerdictError"]

Step = Literal[
    "promoted",
    "signalled",
    "proven",
    "unconfirmed",
    "healthy",
    "committed",
    "refused",
    "rolling_back",
    "rolled_back",
    "degraded",
]
STEPS: tuple[Step, ...] = get_args(Step)
# Where a life may go from each step. A re-check (after degraded, or after a restart) signals again.
_NEXT: dict[Step, frozenset[Step]] = {
    "promoted": frozenset({"signalled", "committed", "refused", "degraded"}),
    "signalled": frozenset({"proven", "unconfirmed", "refused", "degraded"}),
    "proven": frozenset({"healthy", "refused", "degraded"}),
    "unconfirmed": frozenset({"healthy", "unconfirmed", "refused", "degraded", "signalled"}),
    "healthy": frozenset({"committed", "unconfirmed", "rolled_back", "degraded"}),
    "committed": frozenset({"signalled", "degraded"}),
    "refused": frozenset({"degraded"}),
    "rolling_back": frozenset({"signalled", "degraded"}),
    "rolled_back": frozenset({"signalled", "degraded"}),
    "degraded": frozenset({"signalled", "rolling_back", "degraded"}),
}
# The app is known to run this version (or nothing better can be known): a restarted sidecar may answer
# ready on it at once. Any other step means the sidecar died mid-way: it finishes the work first.
SETTLED: frozenset[Step] = frozenset({"committed", "rolled_back"})
_KEEP_STEPS = 12
_MAX_EVIDENCE = 500


class VerdictError(ValueError):
    """A step the state machine does not allow from the current one (a bug in the caller)."""


@dataclass(slots=True)
class Verdict:
    """What is known about `version`: its current step, why, and the steps that led there."""

    version: str
    step: Step
    why: str = ""
    at: float = field(default_factory=time.time)
    # The version being rolled back from, while this (last good) version's life is a rollback.
    rolling_back_from: str | None = None
    steps: list[tuple[Step, float, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.steps:
            self.steps.append((self.step, self.at, self.why))

    def to(self, step: Step, why: str = "") -> None:
        """Move to `step` with its evidence; `VerdictError` for a move the machine does not allow."""
        if step not in _NEXT[self.step]:
            raise VerdictError(f"version {self.version}: {self.step} -> {step} is not a step of its life")
        self.step, self.why, self.at = step, why[:_MAX_EVIDENCE], time.time()
        self.steps.append((step, self.at, self.why))
        del self.steps[:-_KEEP_STEPS]

    @property
    def settled(self) -> bool:
        return self.step in SETTLED

    def evidence(self, step: Step) -> str | None:
        """The evidence of the last time this life reached `step` (e.g. how it was proven)."""
        return next((why for s, _, why in reversed(self.steps) if s == step), None)

    def doc(self) -> dict[str, Any]:
        """For `/status` and the state file: no file contents, only hashes, steps, times and reasons."""
        return {
            "version": self.version,
            "step": self.step,
            "why": self.why,
            "at": self.at,
            "rolling_back_from": self.rolling_back_from,
            "steps": [{"step": s, "at": t, "why": w} for s, t, w in self.steps],
        }

    @classmethod
    def from_doc(cls, doc: object) -> Verdict:
        """The inverse of `doc`; `ValueError`/`TypeError` for anything else (the state file is then unusable)."""
        if not isinstance(doc, dict):
            raise TypeError("verdict is not an object")
        version, step = doc.get("version"), doc.get("step")
        if not isinstance(version, str) or step not in STEPS:
            raise ValueError("verdict has no version or no known step")
        back = doc.get("rolling_back_from")
        steps = [
            (s["step"], float(s["at"]), str(s.get("why", "")))
            for s in doc.get("steps", [])
            if isinstance(s, dict) and s.get("step") in STEPS
        ]
        return cls(
            version,
            step,
            str(doc.get("why", "")),
            float(doc.get("at", 0.0)),
            back if isinstance(back, str) else None,
            steps[-_KEEP_STEPS:],
        )
