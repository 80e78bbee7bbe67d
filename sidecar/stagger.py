"""Version hash -> when this pod may promote it ("go"), or "held" when the fleet refused it.

`none` goes at once; `random:<max_s>` waits a delay drawn once per version; `ordinal:<step_s>` waits
ordinal x step (StatefulSet pod `web-3` -> 3 x step). The delay counts from when this pod first saw
the version, so a resync or a restart of the pass does not start it over.
"""

from __future__ import annotations

import asyncio
import random
import re
from typing import Literal, Protocol

from .settings import Settings

__all__ = ["DelayGate", "Decision", "Gate", "NoGate", "make_gate", "ordinal"]

Decision = Literal["go", "held"]


class Gate(Protocol):
    async def wait(self, version: str) -> Decision:
        """Return when `version` may be promoted on this pod, or that it is held."""
        ...

    def delay(self, version: str) -> float:
        """Seconds this pod waits for `version` after first seeing it (for logs)."""
        ...


class NoGate:
    async def wait(self, version: str) -> Decision:
        return "go"

    def delay(self, version: str) -> float:
        return 0.0


class DelayGate:
    """A fixed per-version delay: drawn at random, or from the pod ordinal."""

    def __init__(self, mode: Literal["random", "ordinal"], seconds: float, pod_name: str) -> None:
        self.mode, self.seconds, self.pod_name = mode, seconds, pod_name
        self._first_seen: dict[str, float] = {}
        self._delays: dict[str, float] = {}

    def delay(self, version: str) -> float:
        if version not in self._delays:
            if self.mode == "random":
                self._delays[version] = random.uniform(0, self.seconds)  # noqa: S311 - spreading, not security
            else:
                self._delays[version] = ordinal(self.pod_name) * self.seconds
            while len(self._delays) > 64:
                del self._delays[next(iter(self._delays))]
        return self._delays[version]

    async def wait(self, version: str) -> Decision:
        loop = asyncio.get_running_loop()
        first = self._first_seen.setdefault(version, loop.time())
        while len(self._first_seen) > 64:
            del self._first_seen[next(iter(self._first_seen))]
        left = first + self.delay(version) - loop.time()
        if left > 0:
            await asyncio.sleep(left)
        return "go"


def ordinal(pod_name: str) -> int:
    """StatefulSet ordinal from the pod name (`web-3` -> 3); ValueError when it has none."""
    m = re.search(r"-(\d+)$", pod_name)
    if not m:
        raise ValueError(f"pod name {pod_name!r} has no StatefulSet ordinal (expected <name>-<n>)")
    return int(m.group(1))


def make_gate(settings: Settings) -> Gate:
    mode = settings.stagger.mode
    if mode in ("random", "ordinal"):
        return DelayGate(mode, settings.stagger.seconds, settings.pod_name)
    return NoGate()
