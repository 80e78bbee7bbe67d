"""TLS: the certificate and key are re-read when either file changes (cert-manager renews them in place);
every new handshake checks, through the SNI callback, and is served by the newest good pair. The
listening socket and the connections already open are never touched.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import structlog

__all__ = ["TlsFiles"]

log = structlog.get_logger("webhook")


class TlsFiles:
    """The certificate and key files, served as the newest pair that loads.

    `server_context` is what the server listens with; its SNI callback runs on every client hello (with
    or without SNI) and points the connection at the current context, re-reading both files first if
    either one's identity, size or mtime changed. A pair that does not load (a cert written before its
    key) keeps the previous one in service until a file changes again.
    """

    def __init__(self, cert: Path, key: Path) -> None:
        self.cert, self.key = cert, key
        self._seen = self._stat()
        self.server_context = self._load()
        self.server_context.sni_callback = self._on_client_hello
        self._current = self.server_context
        self.reloads = 0

    def _stat(self) -> tuple[int, ...]:
        out: list[int] = []
        for path in (self.cert, self.key):
            st = os.stat(path)  # follows the kubelet's ..data symlinks: a swap changes the inode
            out += [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]
        return tuple(out)

    def _load(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert, self.key)
        return ctx

    def current(self) -> ssl.SSLContext:
        """The context for a new connection, reloaded first if the files changed since the last look."""
        try:
            seen = self._stat()
        except OSError:
            return self._current  # a file is missing for a moment (mid-swap): keep the last good pair
        if seen != self._seen:
            self._seen = seen
            try:
                self._current = self._load()
            except (OSError, ssl.SSLError) as e:
                log.warning("tls_reload_failed", cert=str(self.cert), key=str(self.key), error=str(e))
            else:
                self.reloads += 1
                log.info("tls_reloaded", cert=str(self.cert), reloads=self.reloads)
        return self._current

    def _on_client_hello(self, conn: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext) -> None:
        try:
            ctx = self.current()
            if ctx is not context:
                conn.context = ctx
        except Exception as e:  # an exception here would only abort this handshake: log it and carry on
            log.error("tls_callback_failed", error=repr(e))
