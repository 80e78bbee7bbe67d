"""Start-up checks of what the settings point at: the source and target dirs, the listen port, the
checker's program and the reload URL's host.

Each problem is one line, `NAME='value': what is wrong`, like a settings problem; the CLI prints them all
and exits 2 before anything starts. A port that turns busy between the check and the real bind (a race)
is reported the same way, through `StartupError`. What may be fine at start (an app not listening yet, a
DNS server not answering yet) is a warning instead, logged once the sidecar starts.
"""

from __future__ import annotations

import errno
import os
import socket
import urllib.parse
from pathlib import Path

__all__ = [
    "StartupError",
    "bind_problem",
    "command_problem",
    "directory_problem",
    "listen_failed",
    "listen_problem",
    "source_problem",
    "target_problem",
    "url_problem",
]

#: How long the start-up check of the reload URL waits for a TCP connection (it only warns).
CONNECT_TIMEOUT_S = 2.0


class StartupError(Exception):
    """Something the settings point at cannot be used; `str()` is the one line to print."""


def source_problem(name: str, path: Path) -> str | None:
    """Why `path` cannot serve as the source volume, or None: it must be a directory we can list."""
    why = directory_problem(path)
    if why == "does not exist":
        why += " (is it the ConfigMap volume's mountPath?)"
    return f"{name}={str(path)!r}: {why}" if why else None


def directory_problem(path: Path) -> str | None:
    """Why `path` is not a directory we can list (`validate DIR`, the source volume), or None."""
    if not path.exists():
        return "does not exist"
    if not path.is_dir():
        return "is not a directory"
    try:
        with os.scandir(path):
            pass
    except OSError as e:
        return f"cannot be read: {e.strerror}"
    return None


def target_problem(name: str, path: Path) -> str | None:
    """Why `path` cannot serve as the target dir, or None; created when missing, as the sidecar would.

    Only permissions and read-only mounts are checked, nothing is written: a full disk is not a
    mistake in the settings, and the sidecar retries it.
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        return f"{name}={str(path)!r}: is not a directory"
    except OSError as e:
        return f"{name}={str(path)!r}: cannot be created: {e.strerror}"
    if not path.is_dir():
        return f"{name}={str(path)!r}: is not a directory"
    if os.access(path, os.R_OK | os.W_OK | os.X_OK):
        return None
    if os.statvfs(path).f_flag & os.ST_RDONLY:
        return f"{name}={str(path)!r}: is on a read-only filesystem; mount an emptyDir there"
    return f"{name}={str(path)!r}: is not writable by uid {os.geteuid()}; mount an emptyDir there"


def listen_problem(name: str, shown: str, host: str, port: int) -> str | None:
    """Why the server could not listen on (host, port), found by binding a socket there and closing it."""
    why = bind_problem(host, port)
    return f"{name}={shown!r}: {why}" if why else None


def bind_problem(host: str, port: int) -> str | None:
    """Why (host, port) cannot be bound now, or None; port 0 (any free port) always can."""
    if port == 0:
        return None
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as e:
        return f"cannot resolve the host: {e.strerror}"
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds it
            try:
                sock.bind(address)
            except OSError as e:
                return _bind_failed(port, e)
    return None


def listen_failed(name: str, shown: str, port: int, e: OSError) -> str:
    """The one line for a failed bind of `port` by the server itself."""
    return f"{name}={shown!r}: {_bind_failed(port, e)}"


def _bind_failed(port: int, e: OSError) -> str:
    if e.errno == errno.EADDRINUSE:
        return f"port {port} is already in use by another process"
    if e.errno == errno.EACCES:
        return f"port {port} needs privileges (below 1024); use a higher port"
    if e.errno == errno.EADDRNOTAVAIL:
        return "the address is not one of this host's"
    return f"cannot listen: {e.strerror}"


def command_problem(name: str, shown: str, argv: tuple[str, ...]) -> str | None:
    """Why the checker `argv` could not be started here, or None (the webhook checks its profiles so too)."""
    if not argv:
        return None
    from .checker import program_problem  # only where a checker is configured (tests/test_lazy_imports.py)

    why = program_problem(argv[0])
    return f"{name}={shown!r}: {why} (the checker must be in the sidecar's image)" if why else None


def url_problem(name: str, url: str) -> tuple[str | None, str | None]:
    """(problem, warning) for the app's reload URL: a host that does not resolve is a mistake; one that
    cannot be asked now (DNS not answering) or where nothing listens yet only a warning, since the app
    may start after the sidecar."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except ValueError as e:  # a port out of range or not a number
        return f"{name}={url!r}: {e}", None
    except socket.gaierror as e:
        if e.errno == socket.EAI_AGAIN:
            return None, f"cannot resolve the host {host!r} now: {e.strerror}; the first reload tries again"
        return f"{name}={url!r}: cannot resolve the host {host!r}: {e.strerror}", None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.settimeout(CONNECT_TIMEOUT_S)
        try:
            sock.connect(address)
        except OSError as e:
            why = "connection refused" if isinstance(e, ConnectionRefusedError) else (e.strerror or "timed out")
            return None, f"{host}:{port}: {why}; fine if the app is not up yet, the first reload tries again"
    return None, None
