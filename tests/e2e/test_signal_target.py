"""A signal target that cannot be the app's, end to end: the real sidecar refuses it and stays responsive.

volume/app.yaml -> ..data/app.yaml   (kubelet-style, written by tests.kubelet.project)
tmp/app.pid                          a FIFO, not a pidfile: reading it blocking would hang the event loop
"""

from __future__ import annotations

import os
from pathlib import Path

from tests.e2e.apps import http_get
from tests.e2e.sidecar_proc import running, wait_for
from tests.kubelet import project


def test_fifo_pidfile_is_refused_while_healthz_keeps_answering(tmp_path: Path) -> None:
    """RELOAD_PIDFILE is a FIFO: a new version's reload is refused, reported in /status, and /healthz stays 200."""
    volume, target, fifo = tmp_path / "volume", tmp_path / "target", tmp_path / "app.pid"
    os.mkfifo(fifo)
    project(volume, {"app.yaml": "version: 1\n"})
    env = {"RELOAD_SIGNAL": "SIGHUP", "RELOAD_PIDFILE": str(fifo), "RELOAD_RESYNC_S": "0"}
    with running(volume, target, tmp_path, **env) as car:
        car.wait_current()  # the start-up promotion signals nobody: the pidfile is not read yet
        project(volume, {"app.yaml": "version: 2\n"})
        answers: list[int | str] = []

        def refusal_reported() -> str | None:
            try:
                answers.append(http_get(car.url + "/healthz", timeout=5)[0])
            except OSError as e:
                answers.append(f"no answer: {e}")
            error = car.status()["last_error"]
            return error if error and "FIFO" in error else None

        try:
            error = wait_for(refusal_reported, 30, what="the FIFO refusal in /status")
        except AssertionError as e:
            raise AssertionError(f"{e}; last /healthz answers: {answers[-3:]}") from None
        assert f"pidfile {fifo} is a FIFO, not a regular file; refusing to read it" in error
        failed = car.events("reload_failed")
        assert failed and all("is a FIFO" in ev["error"] for ev in failed), failed
        for _ in range(5):
            answers.append(http_get(car.url + "/healthz", timeout=5)[0])
        assert set(answers) == {200}, answers
        assert car.alive()
