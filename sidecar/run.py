"""`reload-sidecar run`: assemble the sidecar (HTTP session, trigger, gate, reloader, server) and run it.

Nothing here is imported at module level beyond the settings: aiohttp must not be imported before
`_import_aiohttp_without_ca_bundle` had its say (see there).
"""

from __future__ import annotations

import asyncio
import os
import sys

import structlog

from .lifecycle import Lifecycle
from .preflight import StartupError, listen_failed
from .settings import Settings

__all__ = ["run_sidecar", "serve_sidecar"]

log = structlog.get_logger("run")


def run_sidecar(settings: Settings) -> int:
    """The sidecar until SIGTERM/SIGINT; the process's exit code."""
    _import_aiohttp_without_ca_bundle(settings)
    return asyncio.run(_main(settings))


async def _main(settings: Settings) -> int:
    async with Lifecycle(cleanup_timeout_s=5) as life:
        return await serve_sidecar(settings, life)


async def serve_sidecar(settings: Settings, life: Lifecycle) -> int:
    """Server up, reload loop until `life.stop`, then `life`'s orderly shutdown."""
    import aiohttp

    from .metrics import Metrics
    from .reloader import Reloader
    from .server import Api, make_app, start_server
    from .stagger import make_gate
    from .state import State
    from .trigger import make_trigger
    from .verify import HealthCheck

    state, metrics = State(pod=settings.pod_name or os.uname().nodename), Metrics()
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16, use_dns_cache=False))
    life.on_close(session.close)
    gate = make_gate(settings, session, state.pod, metrics.peer_requests.inc, own_status=state.status)
    reloader = Reloader(
        settings,
        state,
        metrics,
        make_trigger(settings, session, state=state, metrics=metrics),
        gate,
        session,
        HealthCheck.from_settings(settings),
    )
    extra, peers = getattr(gate, "status_extra", None), getattr(gate, "peers_doc", None)
    api = Api(state, metrics, lambda: reloader.alive, extra, peers)
    try:
        runner, port = await start_server(make_app(api), *settings.listen)
    except OSError as e:  # taken since the CLI's check (see preflight.py)
        host, port = settings.listen
        raise StartupError(listen_failed("RELOAD_LISTEN", f"{host}:{port}", port, e)) from None
    life.own(runner)

    def not_ready() -> None:
        state.ready = False

    life.on_stopping(not_ready)
    log.info(
        "listening",
        host=settings.listen[0],
        port=port,
        source=str(settings.source_dir),
        target=str(settings.target_dir),
        trigger=reloader.trigger.method,
    )
    await life.run(reloader.run(life.stop))
    return 0


def _import_aiohttp_without_ca_bundle(settings: Settings) -> None:
    """Import aiohttp with an empty CA bundle when no configured URL is https.

    aiohttp builds a verifying SSL context at import time, loading the system CA bundle: ~2 MB of RSS
    and 50-100 ms of start-up in every pod, for a sidecar that speaks plain HTTP to its app and its
    peers. The variable is restored right after, so checker commands see the environment unchanged.
    """
    urls = (settings.reload_url, settings.health_url, settings.health_metric_url)
    if any(u.startswith("https:") for u in urls) or "aiohttp" in sys.modules:
        return
    before = os.environ.get("SSL_CERT_FILE")
    os.environ["SSL_CERT_FILE"] = os.devnull
    try:
        import aiohttp  # noqa: F401 - imported for its side effect, see above
    finally:
        if before is None:
            del os.environ["SSL_CERT_FILE"]
        else:
            os.environ["SSL_CERT_FILE"] = before
