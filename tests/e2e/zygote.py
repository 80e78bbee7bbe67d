"""Start the real sidecar fast and often: a pre-imported parent that forks one sidecar per request.

A fresh `python -m sidecar run` spends ~0.5 s importing before it does anything; a test that kills
the sidecar hundreds of times mid-promotion would spend minutes on imports. The zygote imports the
package once; each `spawn()` forks it and the child runs exactly what the console script runs,
`sidecar.cli.main(["run"])`, in a new session (killed as a group), reaped by the zygote.

    test --"spawn\\n"--> zygote (imports done, no threads, no event loop) --fork--> sidecar child
         <--"<pid>\\n"--
"""

from __future__ import annotations

import subprocess
import sys

_ZYGOTE = r"""
import os, signal, sys
import aiohttp, structlog, yaml, prometheus_client, watchfiles
import sidecar.cli, sidecar.reloader, sidecar.run, sidecar.server
signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
for line in sys.stdin:
    pid = os.fork()
    if pid == 0:
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        code = 1
        try:
            code = sidecar.cli.main(["run"])
        finally:
            os._exit(code)
    print(pid, flush=True)
"""


class Zygote:
    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _ZYGOTE], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def spawn(self) -> int:
        """A new sidecar process (pid); it leads its own session."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("spawn\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def gone(pid: int) -> bool:
    """True once `pid` has exited and been reaped (or is a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


__all__ = ["Zygote", "gone"]
