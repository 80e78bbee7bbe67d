"""A checker for the e2e tests that misbehaves on request: `python hostile_checker.py LOG_DIR CANDIDATE_DIR`.

It reads `app.conf` in the candidate: `print` writes 200 MB to stdout, `fork` forks up to 1,000 children
that sleep, `setsid` leaves a child in a session of its own, `env` prints the names of its environment
and fails; anything else passes. Every pid it makes is appended to LOG_DIR/pids, so a test can check
that none outlived the check. Everything ends by itself within 30 s, whoever runs it.
The tests that configure it import `HOSTILE`, `leftovers` and `zombie_children` from here.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def main(log_dir: str, candidate: str) -> int:
    mode = Path(candidate, "app.conf").read_text().strip()
    pids = open(os.path.join(log_dir, "pids"), "a")  # noqa: SIM115 - children inherit and keep it
    pids.write(f"{os.getpid()}\n")
    pids.flush()
    if mode == "print":
        for _ in range(3200):
            sys.stdout.buffer.write(b"x" * 65535 + b"\n")
        return 0
    if mode in ("fork", "setsid"):
        for _ in range(1000 if mode == "fork" else 1):
            pid = os.fork()
            if pid == 0:
                if mode == "setsid":
                    os.setsid()
                time.sleep(30)
                os._exit(0)
            pids.write(f"{pid}\n")
            pids.flush()
        return 0 if mode == "setsid" else _sleep()
    if mode == "env":
        print("environment:", " ".join(sorted(os.environ)))
        return 1
    return 0


def _sleep() -> int:
    time.sleep(30)
    return 0


# --- for the tests that run it --------------------------------------------------------------------------

HOSTILE = Path(__file__)


def leftovers(pids: Path) -> list[int]:
    """Pids from `pids` that still run the hostile checker (not gone, not a zombie)."""
    out = []
    for pid in {int(p) for p in pids.read_text().split()}:
        try:
            state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if state not in (b"Z", b"X") and str(HOSTILE).encode() in cmdline:
            out.append(pid)
    return out


def zombie_children(pid: int) -> list[int]:
    out = []
    for name in Path("/proc").iterdir():
        if name.name.isdigit():
            try:
                rest = (name / "stat").read_bytes().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if rest[0] == b"Z" and int(rest[1]) == pid:
                out.append(int(name.name))
    return out


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
