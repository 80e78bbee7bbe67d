"""The webhook's HTTPS server: routes, the answer accounting middleware; start-up and shutdown via `Lifecycle`."""

from __future__ import annotations

import asyncio
import json
import ssl
import time

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST

from ..lifecycle import Lifecycle
from ..preflight import StartupError, listen_failed
from ..settings import Settings, SettingsError
from .profiles import Profile, load_profiles
from .review import BadReview, Deadline, Unjudged, Webhook, decide, parse_review
from .tls import TlsFiles

__all__ = ["HOOK", "MAX_BODY_BYTES", "load_webhook", "make_app", "run_webhook"]

log = structlog.get_logger("webhook")

#: A ConfigMap is at most 1 MiB, but an UPDATE carries `object` and `oldObject`, and `binaryData` is
#: base64 in JSON (4/3): 8 MiB leaves room for both plus metadata. Bigger bodies are answered 413.
MAX_BODY_BYTES = 8 << 20
# Bodies above this are decoded in a worker thread so a big review does not stall the others.
_THREADED_JSON_BYTES = 64 * 1024


def load_webhook(settings: Settings) -> Webhook:
    """Profiles and TLS files from the settings; one `SettingsError` lists every problem (exit 2)."""
    problems: list[str] = []
    for name, value in (
        ("RELOAD_WEBHOOK_CERT", settings.webhook_cert),
        ("RELOAD_WEBHOOK_KEY", settings.webhook_key),
        ("RELOAD_WEBHOOK_PROFILES", settings.webhook_profiles),
    ):
        if value is None:
            problems.append(f"{name} is required by the webhook command (a file path)")
    profiles: dict[str, Profile] = {}
    if settings.webhook_profiles is not None:
        try:
            profiles = load_profiles(settings.webhook_profiles)
        except SettingsError as e:
            problems += e.problems
    tls: TlsFiles | None = None
    if settings.webhook_cert is not None and settings.webhook_key is not None:
        try:
            tls = TlsFiles(settings.webhook_cert, settings.webhook_key)
        except (OSError, ssl.SSLError) as e:
            cert, key = str(settings.webhook_cert), str(settings.webhook_key)
            problems.append(f"RELOAD_WEBHOOK_CERT={cert!r}, RELOAD_WEBHOOK_KEY={key!r}: cannot load the pair: {e}")
    if problems or tls is None:
        raise SettingsError(problems)
    return Webhook(profiles, tls, settings.max_file_bytes, settings.max_total_bytes)


HOOK = web.AppKey("hook", Webhook)


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[HOOK].metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _validate(request: web.Request) -> web.Response:
    hook = request.app[HOOK]
    deadline = Deadline.of(request.query, asyncio.get_running_loop().time())
    if hook.in_flight >= hook.concurrency + hook.queue_length:
        # Refused before reading the body: a flood costs no memory.
        raise Unjudged(
            "queue_full",
            f"{hook.in_flight} reviews in progress ({hook.concurrency} checked at once, "
            f"{hook.queue_length} waiting at most); try again",
        )
    hook.in_flight += 1
    try:
        return await _review(request, hook, deadline)
    finally:
        hook.in_flight -= 1


async def _review(request: web.Request, hook: Webhook, deadline: Deadline) -> web.Response:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        # Refused on the header alone, before reading a byte of it.
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY_BYTES, actual_size=request.content_length)
    try:
        if request.content.is_eof():  # all there already (a small body comes with the headers)
            body = await request.read()
        else:
            async with asyncio.timeout_at(deadline.at):
                body = await request.read()  # a chunked body past client_max_size raises 413 here
    except TimeoutError:  # a client that sends headers and then stalls must not hold its place for long
        raise BadReview(f"the body did not arrive within {deadline.describe()}") from None
    start = time.perf_counter()
    try:
        doc = json.loads(body) if len(body) < _THREADED_JSON_BYTES else await asyncio.to_thread(json.loads, body)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise BadReview(f"body is not JSON: {e}") from None
    review = parse_review(doc)
    decision = await decide(hook, review, deadline)
    hook.count(decision.outcome)
    # A denial because time ran out is not a verdict on the content: a warning, like the other non-plain answers.
    emit = log.warning if decision.timed_out else log.info
    emit(
        "review",
        uid=review.uid,
        operation=review.operation,
        namespace=review.namespace,
        name=review.name,
        profile=decision.profile,
        version=decision.version,
        allowed=decision.allowed,
        outcome=decision.outcome,
        reason=decision.message or None,
        timeout=deadline.given,
        ms=round((time.perf_counter() - start) * 1000, 1),
    )
    return web.json_response(decision.response(review.uid))


_HTTP_OUTCOMES = {413: "too_large"}


@web.middleware
async def _account(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every answer to /validate that is not a verdict is logged with its reason and counted by outcome."""
    if request.path != "/validate":
        return await handler(request)
    hook = request.app[HOOK]
    outcome, status, reason = "", 0, ""
    try:
        return await handler(request)
    except BadReview as e:
        outcome, status, reason = "bad_request", 400, str(e)
        return web.Response(status=400, text=reason + "\n")
    except Unjudged as e:
        outcome, status, reason = e.outcome, 503, e.reason
        return _status(503, "ServiceUnavailable", reason)
    except web.HTTPException as e:  # 413, 405 from aiohttp itself
        outcome, status, reason = _HTTP_OUTCOMES.get(e.status, "bad_request"), e.status, e.text or e.reason
        raise
    except asyncio.CancelledError:  # the client closed the connection (handler_cancellation) or shutdown
        outcome, reason = "cancelled", "the client went away before the answer; its checkers were stopped"
        raise
    except ConnectionError:  # the same, noticed first while its body was being read
        outcome, reason = "cancelled", "the client went away while sending the review"
        return web.Response(status=400)
    except Exception as e:
        outcome, status, reason = "error", 500, f"internal error: {e!r}"
        log.error("review_failed", exc_info=True)
        return web.Response(status=500, text=reason + "\n")
    finally:
        if outcome:
            hook.count(outcome)
            log.warning("review_not_judged", outcome=outcome, status=status or None, reason=reason[:300])


def _status(code: int, why: str, message: str) -> web.Response:
    """An error answer as a `metav1.Status` (the API server's client reads `message` from it)."""
    body = {"apiVersion": "v1", "kind": "Status", "status": "Failure", "message": message, "reason": why, "code": code}
    return web.json_response(body, status=code)


def make_app(hook: Webhook) -> web.Application:
    """The webhook's routes: `POST /validate`, `GET /healthz`, `GET /metrics`."""
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_account])
    app[HOOK] = hook
    app.router.add_post("/validate", _validate)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", _metrics)
    return app


async def run_webhook(settings: Settings, hook: Webhook) -> int:
    """Serve HTTPS until SIGTERM/SIGINT, then let in-flight reviews finish (bounded) and exit 0.

    A port that cannot be bound raises `StartupError` (the CLI's one line, exit 2).
    """
    host, port = settings.webhook_listen
    async with Lifecycle(cleanup_timeout_s=10) as life:
        # handler_cancellation: a client that disconnects cancels its review, which kills its checker.
        runner = web.AppRunner(make_app(hook), access_log=None, handle_signals=False, handler_cancellation=True)
        await runner.setup()
        life.own(runner)
        site = web.TCPSite(runner, host, port, ssl_context=hook.tls.server_context, reuse_address=True)
        try:
            await site.start()
        except OSError as e:  # taken since the CLI's check (see preflight.py)
            raise StartupError(listen_failed("RELOAD_WEBHOOK_LISTEN", f"{host}:{port}", port, e)) from None
        log.info(
            "webhook_listening",
            host=host,
            port=int(runner.addresses[0][1]),
            profiles=sorted(hook.profiles),
            concurrency=hook.concurrency,
            queue_length=hook.queue_length,
        )
        await life.run()
    return 0
