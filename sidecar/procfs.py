"""`/proc/<pid>/stat`, read one way for the checker's process tracking, the trigger's target checks and the
workers proof; the processes of `/proc`, listed one way."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ProcStat", "children", "processes", "read_stat"]


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


def processes(proc: str | Path = "/proc") -> list[ProcStat]:
    """The stat of every process in `proc` that could be read; `OSError` when `proc` cannot be listed."""
    names = (name for name in os.listdir(proc) if name.isascii() and name.isdigit())
    return [st for name in names if (st := read_stat(int(name), proc)) is not None]


def children(ppid: int, proc: str | Path = "/proc") -> list[ProcStat]:
    """The stat of each process whose parent is `ppid` (zombies included); `OSError` as `processes`."""
    return [st for st in processes(proc) if st.ppid == ppid]
