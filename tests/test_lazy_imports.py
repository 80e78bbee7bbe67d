"""Every pod pays for what the sidecar imports: optional parts are imported only when configured.

The real `reload-sidecar run` (and `once`) is started with `PYTHONPROFILEIMPORTTIME=1`, so its log lists
every module it imported; each run goes through a whole pass (promotion, reload request, health check).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.e2e.receiver import Receiver, serving
from tests.e2e.sidecar_proc import Sidecar, wait_for
from tests.kubelet import project

# Modules that only a configuration needs: jsonschema a schema, the text parser a metric check, watchfiles
# a host without inotify, the checker's module a validate command. (ssl and structlog.dev are not here:
# prometheus_client's exposition imports ssl and structlog's package imports its dev module, whatever
# the configuration.)
OPTIONAL = ("jsonschema", "prometheus_client.parser", "watchfiles", "sidecar.schema")
APP = "version: 1\nname: first\n"
SCHEMA = '{"type": "object", "required": ["version"]}'


def _imported(log: Path) -> set[str]:
    return set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$", log.read_text(errors="replace"), re.M))


def _run_one_reload(tmp_path: Path, rx: Receiver, **env: str) -> set[str]:
    """Start the sidecar, swap the volume once, wait for the reload request and the verified version."""
    volume, target = tmp_path / "volume", tmp_path / "target"
    project(volume, {"app.yaml": APP})
    car = Sidecar(
        volume,
        target,
        tmp_path,
        PYTHONPROFILEIMPORTTIME="1",
        RELOAD_RELOAD_URL=rx.url + "/-/reload",
        RELOAD_HEALTH_URL=rx.url + "/healthz",
        RELOAD_HEALTH_SUCCESSES="1",
        RELOAD_HEALTH_INTERVAL_S="0.05",
        **env,
    ).start()
    try:
        first = car.wait_current()["current"]
        project(volume, {"app.yaml": APP.replace("1", "2")})
        wait_for(lambda: rx.count("POST", "/-/reload") >= 1, 20, what=f"reload POST; log: {car.log_tail()}")
        wait_for(lambda: car.status()["current"] not in (None, first), 20, what=f"v2 live; log: {car.log_tail()}")
        wait_for(lambda: car.events("verified"), 20, what=f"v2 verified; log: {car.log_tail()}")
    finally:
        car.stop()
    return _imported(car.log_path)


def test_a_default_run_imports_no_optional_module(tmp_path: Path) -> None:
    """HTTP trigger, health URL, metrics on, no schema, metric check or command: none of `OPTIONAL`."""
    with serving(lambda m, p, n: (200, "ok\n")) as rx:
        imported = _run_one_reload(tmp_path, rx)
    assert {"aiohttp", "sidecar.reloader", "yaml"} <= imported  # the log does list the imports
    assert sorted(imported & set(OPTIONAL)) == []


def test_configured_parts_import_their_modules(tmp_path: Path) -> None:
    """A schema imports jsonschema, a metric check the Prometheus text parser: when they are used."""
    schema = tmp_path / "schema.json"
    schema.write_text(SCHEMA)
    with serving(lambda m, p, n: (200, "app_config_ok 1\n")) as rx:
        imported = _run_one_reload(
            tmp_path,
            rx,
            RELOAD_VALIDATE=f"auto,schema:{schema}",
            RELOAD_HEALTH_METRIC_URL=rx.url + "/metrics",
            RELOAD_HEALTH_METRIC="app_config_ok==1",
        )
    assert {"jsonschema", "prometheus_client.parser", "sidecar.schema"} <= imported
    assert "watchfiles" not in imported  # inotify works here: the fallback watcher stays unimported


def test_once_imports_no_http_client(tmp_path: Path) -> None:
    """`once` (an initContainer) has nobody to reload: no aiohttp, no HTTP server, no metrics."""
    volume, target = tmp_path / "volume", tmp_path / "target"
    project(volume, {"app.yaml": APP})
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELOAD_")}
    env |= {"RELOAD_SOURCE_DIR": str(volume), "RELOAD_TARGET_DIR": str(target), "PYTHONPROFILEIMPORTTIME": "1"}
    env["RELOAD_RELOAD_URL"] = "http://127.0.0.1:1/-/reload"  # configured for `run`; `once` never fires it
    log = tmp_path / "once.log"
    with log.open("wb") as out:
        done = subprocess.run(
            [sys.executable, "-m", "sidecar", "once"], env=env, stdout=out, stderr=subprocess.STDOUT, timeout=60
        )
    assert done.returncode == 0, log.read_text()[-1500:]
    assert (target / "app.yaml").read_text() == APP
    imported = _imported(log)
    assert "sidecar.reloader" in imported
    assert sorted(m for m in imported if m.split(".")[0] in ("aiohttp", "prometheus_client")) == []


_CA_PROBE = """
import json, os, sys
from sidecar.run import _import_aiohttp_without_ca_bundle
from sidecar.settings import Settings
env = {"RELOAD_RELOAD_URL": sys.argv[1], "RELOAD_HEALTH_URL": sys.argv[2]}
settings = Settings.from_env(env, require_dirs=False)
_import_aiohttp_without_ca_bundle(settings)
from aiohttp import connector
import ssl
print(json.dumps({
    "aiohttp": connector._SSL_CONTEXT_VERIFIED.cert_store_stats()["x509_ca"],
    "system": ssl.create_default_context().cert_store_stats()["x509_ca"],
    "env": os.environ.get("SSL_CERT_FILE"),
}))
"""


def _ca_certs_loaded(reload_url: str, health_url: str) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELOAD_") and k != "SSL_CERT_FILE"}
    out = subprocess.run(
        [sys.executable, "-c", _CA_PROBE, reload_url, health_url], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout))


def test_the_ca_bundle_is_loaded_only_for_https() -> None:
    """aiohttp's verifying TLS context holds no CA certificates unless a configured URL is https; the
    environment is left as it was either way."""
    plain = _ca_certs_loaded("http://127.0.0.1:9090/-/reload", "http://127.0.0.1:9090/-/healthy")
    assert plain["aiohttp"] == 0 and plain["env"] is None
    tls = _ca_certs_loaded("http://127.0.0.1:9090/-/reload", "https://app.example:8443/healthz")
    assert tls["env"] is None
    assert tls["aiohttp"] == tls["system"]
    if tls["system"] == 0:
        return  # no CA bundle on this host: nothing more to tell apart
    assert tls["aiohttp"] > 0
