"""Run real nginx and Prometheus on 127.0.0.1 for end-to-end tests, as root or as an ordinary user.

nginx runs in the foreground (``daemon off;``) as the master process the test started, so the pid in
its pidfile is the Popen's pid and a ``SIGHUP`` sent through the pidfile reloads it. Every path nginx
touches (pid, error log, lock file, temp dirs) is absolute and under the test's prefix dir, so the same
file passes ``nginx -t -c <conf>`` run by the same user. Prometheus gets its own port, its TSDB under
the workdir and ``--web.enable-lifecycle`` so ``POST /-/reload`` works.

Every process is started in its own session with output to a log file under its dir; every wait is
bounded and raises :class:`AppError` with the log's tail; ``stop()`` sends SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, Self

__all__ = [
    "AppError",
    "NginxProc",
    "PromProc",
    "free_port",
    "http_get",
    "nginx_bin",
    "nginx_conf",
    "prometheus_bin",
    "prometheus_yml",
    "promtool_bin",
    "start_nginx",
    "start_prometheus",
]

START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0
HTTP_TIMEOUT_S = 2.0


class AppError(RuntimeError):
    """An app did not start, answer or stop in time (the message carries its log's tail)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _which(name: str, *fallbacks: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for path in fallbacks:
        if os.access(path, os.X_OK):
            return path
    raise AppError(f"{name} not found on PATH nor at {', '.join(fallbacks)}")


def nginx_bin() -> str:
    """Path of the nginx binary (PATH first, then /usr/sbin/nginx, which is not on a user's PATH)."""
    return _which("nginx", "/usr/sbin/nginx")


def prometheus_bin() -> str:
    return _which("prometheus", "/usr/bin/prometheus")


def promtool_bin() -> str:
    return _which("promtool", "/usr/bin/promtool")


def http_get(url: str, timeout: float = HTTP_TIMEOUT_S) -> tuple[int, str]:
    """GET ``url``; (status, body) for any HTTP answer, including 4xx/5xx."""
    return _http(urllib.request.Request(url), timeout)


def _http_post(url: str, timeout: float = HTTP_TIMEOUT_S) -> tuple[int, str]:
    return _http(urllib.request.Request(url, data=b"", method="POST"), timeout)


def _http(req: urllib.request.Request, timeout: float) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status), resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as err:
        with err:
            return int(err.code), err.read().decode("utf-8", "replace")


def _tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError as err:
        return f"<no log: {err}>"


class _Proc:
    """A started process with its log; base of :class:`NginxProc` and :class:`PromProc`."""

    name = "app"

    def __init__(self, argv: list[str], log_path: Path, cwd: Path) -> None:
        self.argv = argv
        self.log_path = log_path
        log: IO[bytes]
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started_at = time.monotonic()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, chars: int = 2000) -> str:
        return _tail(self.log_path, chars)

    def fail(self, why: str) -> AppError:
        cmd = " ".join(self.argv)
        return AppError(f"{self.name}: {why}\n$ {cmd}\n--- {self.log_path} (tail) ---\n{self.log_tail()}")

    def wait_until(self, ready: str, probe: Callable[[], bool], timeout: float = START_TIMEOUT_S) -> float:
        """Poll ``probe`` until it returns True; seconds it took. Raises if the process exits or time runs out."""
        end = time.monotonic() + timeout
        delay = 0.01
        while True:
            if not self.alive():
                raise self.fail(f"exited with {self.proc.returncode} before it was {ready}")
            with contextlib.suppress(OSError):
                if probe():
                    return time.monotonic() - self.started_at
            if time.monotonic() >= end:
                raise self.fail(f"not {ready} after {timeout:.0f} s")
            time.sleep(delay)
            delay = min(delay * 2, 0.2)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM the process group, SIGKILL it after ``timeout`` s; returns the exit code. Idempotent."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout)
        # nginx workers or other children left behind in the group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        return self.proc.returncode

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- nginx


def _nginx_string(text: str, what: str) -> str:
    """``text`` as a double-quoted nginx string. nginx cannot escape ``$`` (variables), so it is refused."""
    if "$" in text:
        raise ValueError(f"{what} must not contain '$' (nginx would expand it as a variable): {text!r}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def nginx_conf(
    port: int,
    body: str,
    prefix: Path | None,
    health: str = "ok",
    health_status: int = 200,
    listen: str = "127.0.0.1",
) -> str:
    """A minimal, self-contained nginx.conf serving ``body`` at ``/`` and ``health`` at ``/health``.

    Listens on 127.0.0.1:``port`` only; pid file, error log, lock file and all temp dirs are absolute
    paths under ``prefix`` (which must exist and be writable), so neither the server nor ``nginx -t``
    touches /run, /var/log or /var/lib. ``daemon off;`` keeps the master in the foreground as the process
    the test started. No ``user`` directive: as root, workers drop to nginx's default user (nobody),
    which needs no file access to answer ``return``; as non-root the directive would only draw a warning.

    With ``prefix=None`` every path is relative (nginx resolves it against its ``-p`` prefix), so the
    same text serves several pods, as one ConfigMap does; ``listen=""`` then listens on all addresses
    of the pod's own network namespace.
    """
    where = f"{Path(prefix).resolve()}/" if prefix is not None else ""
    address = f"{listen}:{port}" if listen else str(port)
    return f"""\
# rendered by tests/e2e/apps.py
daemon off;
master_process on;
worker_processes 1;
pid {where}nginx.pid;
lock_file {where}nginx.lock;
error_log {where}error.log notice;

events {{
    worker_connections 64;
}}

http {{
    access_log off;
    default_type text/plain;
    client_body_temp_path {where}tmp/client_body;
    proxy_temp_path {where}tmp/proxy;
    fastcgi_temp_path {where}tmp/fastcgi;
    uwsgi_temp_path {where}tmp/uwsgi;
    scgi_temp_path {where}tmp/scgi;

    server {{
        listen {address};
        location = /health {{
            return {health_status} {_nginx_string(health, "health")};
        }}
        location / {{
            return 200 {_nginx_string(body, "body")};
        }}
    }}
}}
"""


class NginxProc(_Proc):
    """A foreground nginx master started by :func:`start_nginx`."""

    name = "nginx"

    def __init__(self, prefix: Path, conf_path: Path, port: int, netns: str = "", host: str = "127.0.0.1") -> None:
        self.prefix = prefix
        self.conf_path = conf_path
        self.port = port
        self.url = f"http://{host}:{port}"
        self.pid_file = prefix / "nginx.pid"
        self.error_log = prefix / "error.log"
        super().__init__(
            # `ip netns exec` execs nginx in place, so the pid is still nginx's
            (["ip", "netns", "exec", netns] if netns else []) + [nginx_bin(), "-p", f"{prefix}/", "-c", str(conf_path)],
            prefix / "nginx.out",
            prefix,
        )

    def get(self, path: str = "/") -> tuple[int, str]:
        return http_get(self.url + path)

    def master_pid(self) -> int:
        """The pid written in the pid file (the master, i.e. :attr:`pid`)."""
        return int(self.pid_file.read_text().strip())

    def reload(self) -> None:
        """SIGHUP the master through its pid file, as a reload sidecar would."""
        os.kill(self.master_pid(), signal.SIGHUP)

    def workers(self) -> dict[int, str]:
        """The master's live children: pid -> process title ("nginx: worker process[ is shutting down]")."""
        out: dict[int, str] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == self.pid:
                    title = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").strip()
                    out[int(stat.parent.name)] = title.decode("utf-8", "replace")
        return out

    def settled(self) -> bool:
        """True when exactly one generation of workers runs (after a HUP old and new both answer for a while).

        The conf of :func:`nginx_conf` has ``worker_processes 1`` and no cache manager, so settled means a
        single child that is not "shutting down".
        """
        titles = list(self.workers().values())
        return len(titles) == 1 and "shutting down" not in titles[0]

    def wait_body(self, path: str, text: str, timeout: float = START_TIMEOUT_S) -> float:
        """Wait until ``path`` answers ``text`` with only current-generation workers alive; seconds waited.

        Right after a SIGHUP the draining old workers still accept connections, so one matching answer
        is not enough: an old worker may answer the next request with the old content.
        """
        start = time.monotonic()

        def ok() -> bool:
            return self.settled() and self.get(path)[1] == text and self.settled()

        self.wait_until(f"answering {text!r} at {path}", ok, timeout)
        return time.monotonic() - start

    def log_tail(self, chars: int = 2000) -> str:
        return _tail(self.log_path, chars // 2) + "\n--- error.log ---\n" + _tail(self.error_log, chars)


def _nginx_ready(ngx: NginxProc) -> bool:
    try:
        if ngx.master_pid() != ngx.pid:
            return False
    except (OSError, ValueError):  # not written yet, or caught between nginx's create and write
        return False
    ngx.get("/health")  # any HTTP answer means it is serving
    return True


def start_nginx(
    prefix: Path, conf_path: Path, port: int | None = None, netns: str = "", host: str = "127.0.0.1"
) -> NginxProc:
    """Start nginx with ``conf_path`` (see :func:`nginx_conf`) and wait until it answers on ``port``.

    ``port`` defaults to the one in the conf's ``listen 127.0.0.1:PORT`` line. ``prefix`` holds the pid
    file, logs and temp dirs; it is created if missing.
    """
    prefix = Path(prefix).resolve()
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    if port is None:
        port = _listen_port(Path(conf_path).read_text())
    ngx = NginxProc(prefix, Path(conf_path).absolute(), port, netns, host)  # not resolve(): keep the symlink
    try:
        ngx.wait_until("serving", lambda: _nginx_ready(ngx))
    except BaseException:
        ngx.stop()
        raise
    return ngx


def _listen_port(conf: str) -> int:
    for line in conf.splitlines():
        words = line.strip().rstrip(";").split()
        if len(words) >= 2 and words[0] == "listen" and words[1].startswith("127.0.0.1:"):
            return int(words[1].rsplit(":", 1)[1])
    raise ValueError("no 'listen 127.0.0.1:PORT' line in the nginx conf; pass port=")


# --------------------------------------------------------------------------- Prometheus


def prometheus_yml(job: str, target: str, interval: str = "1s") -> str:
    """A tiny valid prometheus.yml with one static scrape job ``job`` scraping ``target`` (host:port)."""
    return f"""\
# rendered by tests/e2e/apps.py
global:
  scrape_interval: {interval}
  evaluation_interval: {interval}
scrape_configs:
  - job_name: {json.dumps(job)}
    static_configs:
      - targets: [{json.dumps(target)}]
"""


class PromProc(_Proc):
    """A Prometheus server started by :func:`start_prometheus`."""

    name = "prometheus"

    def __init__(self, workdir: Path, config_file: Path, port: int) -> None:
        self.workdir = workdir
        self.config_file = config_file
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        super().__init__(
            [
                prometheus_bin(),
                f"--config.file={config_file}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--web.enable-lifecycle",
                f"--storage.tsdb.path={workdir}/data",
                "--storage.tsdb.retention.time=1h",
                "--log.level=info",
                # the Debian defaults live under /etc and /usr/share; keep them out of the test
                f"--web.console.templates={workdir}/consoles",
                f"--web.console.libraries={workdir}/console_libraries",
            ],
            workdir / "prometheus.log",
            workdir,
        )

    def get(self, path: str) -> tuple[int, str]:
        return http_get(self.url + path)

    def reload(self) -> tuple[int, str]:
        """POST /-/reload (what a reload sidecar does); (status, body)."""
        return _http_post(self.url + "/-/reload", timeout=10.0)

    def config_text(self) -> str:
        """The YAML of the configuration Prometheus is running (GET /api/v1/status/config)."""
        status, body = self.get("/api/v1/status/config")
        if status != 200:
            raise self.fail(f"/api/v1/status/config answered {status}: {body[:200]}")
        yaml: str = json.loads(body)["data"]["yaml"]
        return yaml

    def metric(self, name: str) -> float:
        """Value of the unlabelled sample ``name`` (e.g. ``prometheus_config_last_reload_successful``) in /metrics."""
        status, body = self.get("/metrics")
        if status != 200:
            raise self.fail(f"/metrics answered {status}")
        for line in body.splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] == name:
                return float(words[1])
        raise KeyError(f"no sample {name!r} in {self.url}/metrics")


def start_prometheus(workdir: Path, config_file: Path, port: int | None = None) -> PromProc:
    """Start Prometheus on 127.0.0.1 (``port`` or a free one) and wait until ``/-/ready`` answers 200."""
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    prom = PromProc(workdir, Path(config_file).absolute(), free_port() if port is None else port)
    try:
        prom.wait_until("ready", lambda: prom.get("/-/ready")[0] == 200)
    except BaseException:
        prom.stop()
        raise
    return prom
