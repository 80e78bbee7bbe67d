"""Real apps for the proof-of-load tests: nginx, Prometheus, Alertmanager and HAProxy (-W), from Debian.

Each runs as root *without* CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH (`setpriv --bounding-set`), so a file
owned by `nobody` with mode 0600 is one the sidecar's checker (root, full capabilities) can read and the
running app cannot: the "include the checker reads but the app's user cannot" case, refused at reload.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from sidecar.snapshot import read_snapshot
from tests.e2e.apps import AppError, _Proc, _which, http_get, nginx_bin, prometheus_bin
from tests.e2e.sidecar_proc import Sidecar, wait_for
from tests.kubelet import project
from tests.root import needs_root

__all__ = [
    "NO_DAC",
    "App",
    "apply",
    "busy_listen",
    "nginx_proof_env",
    "wait_settled",
    "alertmanager_bin",
    "alertmanager_yml",
    "amtool_bin",
    "haproxy_bin",
    "haproxy_cfg",
    "start_alertmanager",
    "start_haproxy",
    "start_nginx_no_dac",
    "start_prometheus_no_dac",
    "unreadable",
]

NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


class App(_Proc):
    """A started app with the URL it answers on and the pidfile the sidecar finds it by."""

    def __init__(self, name: str, argv: list[str], workdir: Path, url: str, pidfile: Path) -> None:
        needs_root("the app runs without CAP_DAC_OVERRIDE: setpriv drops it from the bounding set")
        self.name, self.url, self.pidfile = name, url, pidfile
        super().__init__(argv, workdir / f"{name}.out", workdir)

    def get(self, path: str) -> tuple[int, str]:
        return http_get(self.url + path)

    def write_pidfile(self) -> None:
        self.pidfile.write_text(f"{self.pid}\n")


def _started(app: App, probe: str) -> App:
    try:
        app.wait_until("serving", lambda: app.get(probe)[0] == 200)
    except BaseException:
        app.stop()
        raise
    return app


def unreadable(path: Path, text: str) -> Path:
    """`text` in `path`, owned by nobody, mode 0600: readable by root with CAP_DAC_OVERRIDE only."""
    needs_root("a file only root can read: chown to nobody")
    path.write_text(text)
    os.chown(path, 65534, 65534)
    path.chmod(0o600)
    return path


def start_nginx_no_dac(prefix: Path, conf: Path, port: int) -> App:
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    argv = [*NO_DAC, nginx_bin(), "-p", f"{prefix}/", "-c", str(conf)]
    return _started(App("nginx", argv, prefix, f"http://127.0.0.1:{port}", prefix / "nginx.pid"), "/health")


def start_prometheus_no_dac(workdir: Path, config: Path, port: int) -> App:
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [
        prometheus_bin(),
        f"--config.file={config}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-lifecycle",
        f"--storage.tsdb.path={workdir}/data",
        "--storage.tsdb.retention.time=1h",
        f"--web.console.templates={workdir}/consoles",
        f"--web.console.libraries={workdir}/console_libraries",
    ]
    return _prometheus_family("prometheus", argv, workdir, port)


def _prometheus_family(name: str, argv: list[str], workdir: Path, port: int) -> App:
    """Prometheus or Alertmanager, without CAP_DAC_OVERRIDE: ready at /-/ready; it writes no pidfile, so
    the test writes one for the sidecar to find it by."""
    app = App(name, [*NO_DAC, *argv], workdir, f"http://127.0.0.1:{port}", workdir / f"{name}.pid")
    _started(app, "/-/ready")
    app.write_pidfile()
    return app


def alertmanager_bin() -> str:
    found = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if not found:
        raise AppError("prometheus-alertmanager not found (Debian package prometheus-alertmanager)")
    return found


def amtool_bin() -> str:
    found = shutil.which("amtool")
    if not found:
        raise AppError("amtool not found (Debian package prometheus-alertmanager)")
    return found


def alertmanager_yml(receiver: str, template: str = "") -> str:
    templates = f"templates:\n  - {template!r}\n" if template else ""
    return f"""\
# rendered by tests/e2e/proof_apps.py
{templates}route:
  receiver: {receiver!r}
receivers:
  - name: {receiver!r}
"""


def start_alertmanager(workdir: Path, config: Path, port: int) -> App:
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [
        alertmanager_bin(),
        f"--config.file={config}",
        f"--web.listen-address=127.0.0.1:{port}",
        f"--storage.path={workdir}/data",
        "--cluster.listen-address=",
    ]
    return _prometheus_family("alertmanager", argv, workdir, port)


def haproxy_bin() -> str:
    return _which("haproxy", "/usr/sbin/haproxy")


def haproxy_cfg(port: int, body: str, extra: str = "", errorfile: str = "") -> str:
    errors = f"    errorfile 503 {errorfile}\n" if errorfile else ""
    return f"""\
# rendered by tests/e2e/proof_apps.py
global
    maxconn 64

defaults
    mode http
    timeout connect 1s
    timeout client 5s
    timeout server 5s
{errors}
frontend web
    bind 127.0.0.1:{port}
{extra}    monitor-uri /health
    http-request return status 200 content-type text/plain string "{body}"
"""


def start_haproxy(workdir: Path, config: Path, port: int) -> App:
    """`haproxy -W -db`: the master in the foreground (its pid in the pidfile), one worker; SIGUSR2 reloads."""
    workdir.mkdir(parents=True, exist_ok=True)
    pidfile = workdir / "haproxy.pid"
    argv = [*NO_DAC, haproxy_bin(), "-W", "-db", "-f", str(config), "-p", str(pidfile)]
    return _started(App("haproxy", argv, workdir, f"http://127.0.0.1:{port}", pidfile), "/health")


def apply(volume: Path, name: str, text: str) -> str:
    """Project one file as the ConfigMap's new version (a kubelet-style swap); returns its version hash."""
    project(volume, {name: text})
    return read_snapshot(volume).version


def wait_settled(car: Sidecar, version: str, what: str, timeout_s: float = 60) -> dict[str, Any]:
    """/status once `version` is committed (last good) or quarantined, and the loop idle again."""

    def done() -> dict[str, Any] | None:
        st = car.status()
        end = st["last_good"] == version or version in st["quarantined"]
        return st if end and st["state"] in ("idle", "degraded") else None

    return dict(wait_for(done, timeout_s, what=f"{what}; log: {car.log_tail(3000)}"))


def nginx_proof_env(prefix: Path, port: int) -> dict[str, str]:
    """The sidecar's settings for nginx under `prefix`: nginx -t, SIGHUP by pidfile, its error log, health."""
    return {
        "RELOAD_VALIDATE_COMMAND": f"{nginx_bin()} -t -q -c {{dir}}/nginx.conf",
        "RELOAD_SIGNAL": "SIGHUP",
        "RELOAD_PIDFILE": str(prefix / "nginx.pid"),
        "RELOAD_APP_ERROR_LOG": str(prefix / "error.log"),
        "RELOAD_HEALTH_URL": f"http://127.0.0.1:{port}/health",
    }


def busy_listen(conf: str, port: int, held: int) -> str:
    """nginx `conf` (listening on `port`) with a second `listen` on `held`, a port another process holds:
    `nginx -t` passes it, the running master refuses it."""
    return conf.replace(f"listen 127.0.0.1:{port};", f"listen 127.0.0.1:{port};\n        listen 127.0.0.1:{held};")
