"""The target dir as the reloader keeps it: promotion with room made, the last good version made live
again (rollback, repair), damage found and repaired, old and failed versions deleted.

`promote.py` knows the layout (one call, one atomic change); this module knows what the sidecar holds
about it: the last good version's files in memory, which versions are protected, the lock that keeps
background pruning out of a promotion. Readiness is not decided here: `check` says what it found and
did, and the reloader says what that means for `/readyz`.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import structlog

from . import promote as _promote
from .snapshot import Snapshot

if TYPE_CHECKING:
    from .metrics import Metrics
    from .settings import Settings
    from .state import State

__all__ = ["Check", "Target", "blocking"]

log = structlog.get_logger("reloader")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Check:
    """What `Target.check` found: `problem` (None: intact) and, when it could not be repaired, `error`."""

    problem: str | None = None
    error: str | None = None

    @property
    def repaired(self) -> bool:
        return self.problem is not None and self.error is None


class Target:
    """The target dir of `settings`, as `state` describes it."""

    def __init__(
        self, settings: Settings, state: State, metrics: Metrics, on_live: Callable[[str], None] | None = None
    ) -> None:
        self.dir, self.state, self.metrics = settings.target_dir, state, metrics
        # Called with a version made live again (rollback, put-back, repair): the marker proof's files,
        # which a version dir rebuilt from memory has lost, are written again there.
        self.on_live = on_live
        # The last good version's files (at most RELOAD_MAX_TOTAL_BYTES): a rollback or a repair can rebuild
        # it even if its dir was deleted and the source has moved on. None after a restart until the source
        # shows it again.
        self.good: Snapshot | None = None
        self.damaged = False  # the last check found damage it could not repair
        self.lock = asyncio.Lock()  # background pruning never runs during a promotion

    async def promote(self, snap: Snapshot) -> bool:
        """`promote.promote`; when the target is short of space, old history versions go first (one retry)."""
        # Files unchanged since the last good version are hard links to its (protected) dir, not copies.
        call = functools.partial(_promote.promote, snap, self.dir, base=self.good)
        try:
            return await blocking(snap.small, call)
        except _promote.NoSpaceError as e:
            removed = await asyncio.to_thread(self.prune, 0)
            if not removed:
                raise
            log.warning("pruned_for_space", versions=removed, error=str(e))
            return await blocking(snap.small, call)

    def make_live(self, good: str) -> None:
        """Point `..data` at the last good version again (blocking): rebuilt from its files in memory when we
        have them (so a deleted or damaged dir is no obstacle), else from its dir on disk."""
        kept = self.good
        if kept is not None and kept.version == good:
            _promote.restore(kept, self.dir)
            _promote.fsync_dir(self.dir)
        else:
            _promote.activate(self.dir, good)
        if self.on_live is not None:
            self.on_live(good)

    def prune(self, keep: int) -> list[str]:
        """Old versions beyond `keep` deleted (never the live or last good one); best effort."""
        protect = {v for v in (self.state.last_good, self.state.current) if v}
        try:
            removed = _promote.prune(self.dir, keep, protect)
        except OSError as e:
            log.warning("prune_failed", error=str(e))
            return []
        if removed:
            log.debug("pruned", versions=removed)
        return removed

    async def discard(self, bad: str) -> None:
        """Delete a failed version's dir once it is no longer live: it is quarantined by hash, and a run of
        bad versions must not fill the target."""
        try:
            if await asyncio.to_thread(_promote.discard, self.dir, bad):
                log.info("discarded", version=bad)
        except _promote.PromoteError as e:
            log.warning("discard_failed", version=bad, error=str(e))

    async def check(self, snap: Snapshot) -> Check:
        """Is the last good version still what the target shows? Repair it if not.

        Checked on each pass with nothing new to promote while the last good version is live (a few
        lstat/readlink calls): someone deleting `..data`, a link or the whole target must not leave
        /readyz at 200 with nothing served. A pass that promotes rewrites `..data` and the links anyway.
        Sets `damaged` while the damage stays; logs and counts what it did.
        """
        state, good = self.state, self.state.last_good
        if good is None or state.current != good:
            return Check()  # nothing verified is live (start-up, or a failure being handled)
        if snap.version == good:
            self.good = snap  # after a restart: the first time the source shows the last good version
        kept = self.good if self.good is not None and self.good.version == good else None
        names = _promote.top_level(kept) if kept else {n.split("/", 1)[0] for n in state.files}
        inspect = functools.partial(_promote.inspect, self.dir, good, names)
        problem = await blocking(snap.small, inspect)
        if problem is None:
            self.damaged = False  # repaired by someone else meanwhile, if it was damaged
            return Check()
        log.warning("target_damaged", version=good, problem=problem)
        try:
            await blocking(snap.small, functools.partial(self.make_live, good))
            still = await blocking(snap.small, inspect)
            if still is not None:
                raise _promote.PromoteError(still)
        except OSError as e:
            log.error("target_repair_failed", version=good, problem=problem, error=str(e))
            self.damaged = True
            return Check(problem, str(e))
        self.metrics.target_repairs.inc()
        log.warning("target_repaired", version=good, problem=problem)
        self.damaged = False
        return Check(problem)


async def blocking(inline: bool, call: Callable[[], T]) -> T:
    """Run blocking file work: inline when it is small (a thread hand-off, ~0.15 ms, costs more than the
    work and is most of the reload latency), in a worker thread otherwise so the event loop stays free."""
    return call() if inline else await asyncio.to_thread(call)
