"""`/proc/<pid>/stat`, read one way for the checker's process tracking and the trigger's target checks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["ProcStat", "read_stat"]


@dataclass(frozen=True, slots=True)
class ProcStat:
    pid: int
    ppid: int
    pgid: int
    sid: int
    start: int  # clock ticks after boot: with the pid, names one process even after its pid is reused
    dead: bool  # a zombie (or exiting), waiting to be reaped


def read_stat(pid: int, proc: str | Path = "/proc") -> ProcStat | None:
    """`pid`'s stat line in `proc`, or None when there is none (gone, or not in our PID namespace)."""
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            data = f.read()
        rest = data.rsplit(b")", 1)[1].split()  # the command name before it may hold spaces and ')'
        return ProcStat(pid, int(rest[1]), int(rest[2]), int(rest[3]), int(rest[19]), rest[0] in (b"Z", b"X"))
    except (OSError, ValueError, IndexError):
        return None
