"""Run the real `reload-sidecar webhook` as a process, with a test CA made by the `openssl` CLI.

Shared by tests/e2e/test_webhook.py and bench/webhook.py. Certificates are EC P-256 (made in a few ms),
valid for IP 127.0.0.1 and DNS localhost, signed by a throw-away CA the client trusts.
"""

from __future__ import annotations

import http.client
import json
import ssl
import subprocess
from pathlib import Path
from typing import Any

from tests.e2e.apps import free_port
from tests.e2e.sidecar_proc import SidecarProcess, wait_for

OPENSSL = "openssl"


def _openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run([OPENSSL, *map(str, args)], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_ca(directory: Path) -> Path:
    """A self-signed CA in `directory` (ca.crt, ca.key); returns the path of ca.crt."""
    directory.mkdir(parents=True, exist_ok=True)
    _openssl(
        *("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"),
        *("-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=reload-sidecar test CA"),
        cwd=directory,
    )
    return directory / "ca.crt"


def issue(ca: Path, directory: Path, name: str, serial: int) -> tuple[Path, Path]:
    """A server certificate `<name>.crt`/`<name>.key` with CN=`name` and `serial`, signed by `ca`."""
    directory.mkdir(parents=True, exist_ok=True)
    ext = directory / f"{name}.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    _openssl(
        *("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"),
        *("-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}"),
        cwd=directory,
    )
    _openssl(
        *("x509", "-req", "-in", f"{name}.csr", "-CA", ca, "-CAkey", ca.with_suffix(".key")),
        *("-set_serial", str(serial), "-days", "2", "-extfile", ext.name, "-out", f"{name}.crt"),
        cwd=directory,
    )
    return directory / f"{name}.crt", directory / f"{name}.key"


def client_context(ca: Path) -> ssl.SSLContext:
    """A client context that trusts only the test CA and checks the host name / IP."""
    return ssl.create_default_context(cafile=str(ca))


def configmap(
    profile: str | None = None,
    data: dict[str, str] | None = None,
    binary: dict[str, str] | None = None,
    kind: str = "ConfigMap",
) -> dict[str, Any]:
    """A labelled ConfigMap `cm` in `default`, annotated with `profile` if given."""
    meta: dict[str, Any] = {"name": "cm", "namespace": "default", "labels": {"reload-sidecar/validate": "true"}}
    if profile is not None:
        meta["annotations"] = {"reload-sidecar/profile": profile}
    obj: dict[str, Any] = {"apiVersion": "v1", "kind": kind, "metadata": meta}
    if data is not None:
        obj["data"] = data
    if binary is not None:
        obj["binaryData"] = binary
    return obj


def review(
    uid: str,
    *,
    profile: str | None = None,
    data: dict[str, str] | None = None,
    binary: dict[str, str] | None = None,
    operation: str = "CREATE",
    kind: str = "ConfigMap",
    old: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An AdmissionReview v1 request for a ConfigMap `cm` in `default` as the API server sends it.

    An UPDATE carries `old` as `oldObject` (by default the new object itself), a DELETE only `oldObject`.
    """
    obj = configmap(profile, data, binary, kind)
    request: dict[str, Any] = {
        "uid": uid,
        "kind": {"group": "", "version": "v1", "kind": kind},
        "resource": {"group": "", "version": "v1", "resource": "configmaps"},
        "name": "cm",
        "namespace": "default",
        "operation": operation,
        "userInfo": {"username": "kubernetes-admin"},
        "object": None if operation == "DELETE" else obj,
        "oldObject": (old or obj) if operation in ("UPDATE", "DELETE") else None,
        "dryRun": False,
    }
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


class Webhook(SidecarProcess):
    """One `reload-sidecar webhook` process on 127.0.0.1 (a free port) with its log in `workdir`."""

    def __init__(self, workdir: Path, ca: Path, cert: Path, key: Path, profiles: Path, **env: str) -> None:
        self.workdir, self.ca = workdir, ca
        self.port = free_port()
        self.context = client_context(ca)
        self.env = {
            "RELOAD_WEBHOOK_LISTEN": f"127.0.0.1:{self.port}",
            "RELOAD_WEBHOOK_CERT": str(cert),
            "RELOAD_WEBHOOK_KEY": str(key),
            "RELOAD_WEBHOOK_PROFILES": str(profiles),
            **env,
        }
        self.log_path = workdir / f"webhook-{self.port}.log"

    command = "webhook"

    def start(self) -> Webhook:
        self.spawn()
        wait_for(lambda: self.alive() and self.request("GET", "/healthz")[0] == 200, 20, what=self.log_tail())
        return self

    def connect(self, server_hostname: str = "127.0.0.1", timeout: float = 10.0) -> http.client.HTTPSConnection:
        """A verified HTTPS connection; `localhost` makes the client send SNI, an IP does not."""
        conn = http.client.HTTPSConnection(server_hostname, self.port, context=self.context, timeout=timeout)
        conn.connect()
        return conn

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        conn: http.client.HTTPSConnection | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        """(status, body) of one request, on `conn` (kept open) or on a new connection (closed)."""
        own = conn is None
        c = self.connect() if conn is None else conn
        try:
            c.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
            resp = c.getresponse()
            return resp.status, resp.read()
        finally:
            if own:
                c.close()

    def post(
        self, doc: dict[str, Any], timeout: str | None = None, conn: http.client.HTTPSConnection | None = None
    ) -> tuple[int, bytes]:
        """POST one AdmissionReview to `/validate`, with `?timeout=` as the API server adds it."""
        path = "/validate" if timeout is None else f"/validate?timeout={timeout}"
        return self.request("POST", path, json.dumps(doc).encode(), conn)

    def review(
        self, doc: dict[str, Any], conn: http.client.HTTPSConnection | None = None, timeout: str | None = None
    ) -> dict[str, Any]:
        """POST one AdmissionReview; the `response` object of the answer (asserts HTTP 200 and the uid)."""
        status, body = self.post(doc, timeout, conn)
        assert status == 200, (status, body)
        answer = json.loads(body)
        assert answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview", answer
        assert answer["response"]["uid"] == doc["request"]["uid"], answer
        return dict(answer["response"])

    def metrics(self) -> dict[str, float]:
        """Samples of the webhook's /metrics as `name{labels}` -> value."""
        status, body = self.request("GET", "/metrics")
        assert status == 200, body
        out: dict[str, float] = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                out[key] = float(value)
        return out

    def answers(self) -> dict[str, float]:
        """`reload_sidecar_webhook_answers_total` by outcome."""
        prefix = 'reload_sidecar_webhook_answers_total{outcome="'
        return {k[len(prefix) : -2]: v for k, v in self.metrics().items() if k.startswith(prefix)}

    def peer_cert(self, server_hostname: str = "127.0.0.1") -> tuple[int, str]:
        """(serial, CN) of the certificate a new connection is served."""
        conn = self.connect(server_hostname)
        try:
            assert conn.sock is not None
            cert = conn.sock.getpeercert()  # type: ignore[attr-defined]
        finally:
            conn.close()
        subject = dict(pair for rdn in cert["subject"] for pair in rdn)
        return int(cert["serialNumber"], 16), subject["commonName"]
