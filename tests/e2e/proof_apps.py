"""Real apps for the proof-of-load tests: nginx, Prometheus, Alertmanager and HAProxy (-W), from Debian.

Each runs as root *without* CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH (`setpriv --bounding-set`), so a file
owned by `nobody` with mode 0600 is one the sidecar's checker (root, full capabilities) can read and the
running app cannot: the "include the checker reads but the app's user cannot" case, refused at reload.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tests.e2e.apps import AppError, _Proc, free_port, http_get, nginx_bin, prometheus_bin

__all__ = [
    "NO_DAC",
    "App",
    "alertmanager_bin",
    "alertmanager_yml",
    "amtool_bin",
    "haproxy_bin",
    "haproxy_cfg",
    "metric",
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
        self.name, self.url, self.pidfile = name, url, pidfile
        super().__init__(argv, workdir / f"{name}.out", workdir)

    def get(self, path: str) -> tuple[int, str]:
        return http_get(self.url + path)

    def write_pidfile(self) -> None:
        self.pidfile.write_text(f"{self.pid}\n")

    def children(self) -> list[int]:
        out = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == self.pid:
                    out.append(int(stat.parent.name))
            except (OSError, IndexError, ValueError):
                continue
        return out


def _started(app: App, probe: str) -> App:
    try:
        app.wait_until("serving", lambda: app.get(probe)[0] == 200)
    except BaseException:
        app.stop()
        raise
    return app


def unreadable(path: Path, text: str) -> Path:
    """`text` in `path`, owned by nobody, mode 0600: readable by root with CAP_DAC_OVERRIDE only."""
    path.write_text(text)
    os.chown(path, 65534, 65534)
    path.chmod(0o600)
    return path


def metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and (words[0] == name or words[0].startswith(name + "{")):
            return float(words[1])
    return None


def start_nginx_no_dac(prefix: Path, conf: Path, port: int) -> App:
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    argv = [*NO_DAC, nginx_bin(), "-p", f"{prefix}/", "-c", str(conf)]
    return _started(App("nginx", argv, prefix, f"http://127.0.0.1:{port}", prefix / "nginx.pid"), "/health")


def start_prometheus_no_dac(workdir: Path, config: Path, port: int) -> App:
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [
        *NO_DAC,
        prometheus_bin(),
        f"--config.file={config}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-lifecycle",
        f"--storage.tsdb.path={workdir}/data",
        "--storage.tsdb.retention.time=1h",
        f"--web.console.templates={workdir}/consoles",
        f"--web.console.libraries={workdir}/console_libraries",
    ]
    app = _started(App("prometheus", argv, workdir, f"http://127.0.0.1:{port}", workdir / "prometheus.pid"), "/-/ready")
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
        *NO_DAC,
        alertmanager_bin(),
        f"--config.file={config}",
        f"--web.listen-address=127.0.0.1:{port}",
        f"--storage.path={workdir}/data",
        "--cluster.listen-address=",
    ]
    app = _started(App("alertmanager", argv, workdir, f"http://127.0.0.1:{port}", workdir / "am.pid"), "/-/ready")
    app.write_pidfile()
    return app


def haproxy_bin() -> str:
    found = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.access("/usr/sbin/haproxy", os.X_OK) else "")
    if not found:
        raise AppError("haproxy not found (Debian package haproxy)")
    return found


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


def reserve_port() -> tuple[int, object]:
    """A port held by a listening socket of this test (a `bind` to it fails with EADDRINUSE)."""
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    port = free_port()
    sock.bind(("127.0.0.1", port))
    sock.listen(1)
    return port, sock
