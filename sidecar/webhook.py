"""`reload-sidecar webhook`: a ValidatingWebhook that refuses a bad ConfigMap before the API server stores it.

The API server POSTs an `admission.k8s.io/v1` AdmissionReview to `/validate`. A ConfigMap annotated
`reload-sidecar/profile: <name>` is run, on CREATE and UPDATE, through that profile's checks: the same
`validate()` the sidecar runs on a new version (parse, schema, the app's own checker on a private staged
copy), on a `Snapshot` built from the ConfigMap's `data` and `binaryData`. Anything else is let through.

TLS: the certificate and key are re-read when either file changes (cert-manager renews them in place);
every new handshake checks, through the SNI callback, and is served by the newest good pair. The
listening socket and the connections already open are never touched.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
import re
import shutil
import signal
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
import yaml
from aiohttp import web

from .settings import Settings, SettingsError, parse_command, parse_env_names, parse_validators
from .snapshot import snapshot_of
from .validate import Checks, validate

__all__ = [
    "ANNOTATION",
    "MAX_BODY_BYTES",
    "BadReview",
    "Decision",
    "Profile",
    "Review",
    "TlsFiles",
    "Webhook",
    "configmap_files",
    "load_profiles",
    "load_webhook",
    "make_app",
    "parse_review",
    "run_webhook",
]

log = structlog.get_logger("webhook")

#: The annotation that opts a ConfigMap in and names its profile.
ANNOTATION = "reload-sidecar/profile"
#: A ConfigMap is at most 1 MiB, but an UPDATE carries `object` and `oldObject`, and `binaryData` is
#: base64 in JSON (4/3): 8 MiB leaves room for both plus metadata. Bigger bodies are answered 413.
MAX_BODY_BYTES = 8 << 20
#: kubectl prints `status.message` on one line after "denied the request: ": keep it readable.
MESSAGE_CHARS = 1000
#: The API server gives a webhook at most 30 s (`timeoutSeconds`, default 10): a profile must finish first.
MAX_TIMEOUT_S = 29.0
DEFAULT_TIMEOUT_S = 5.0
# Reviews validated at once; checkers are processes, so a few per core keeps every CPU busy.
_CONCURRENCY = max(4, 2 * (os.cpu_count() or 1))
# A review that cannot even start within this is answered 503, and the API server applies failurePolicy.
_QUEUE_WAIT_S = 5.0
# Bodies above this are decoded in a worker thread so a big review does not stall the others.
_THREADED_JSON_BYTES = 64 * 1024
_KEY = re.compile(r"[-._a-zA-Z0-9]+")
_PROFILE_FIELDS = frozenset({"validate", "command", "timeout_s", "env"})


class BadReview(ValueError):
    """The request is not an AdmissionReview we can answer (HTTP 400 with this reason)."""


@dataclass(frozen=True, slots=True)
class Profile:
    """One entry of the profiles file: the checks a ConfigMap naming it must pass."""

    name: str
    checks: Checks


@dataclass(frozen=True, slots=True)
class Review:
    """The parts of an AdmissionReview request the webhook looks at."""

    uid: str
    operation: str
    kind: str
    namespace: str
    name: str
    object: Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to one review; `message` is what kubectl shows when it is denied."""

    allowed: bool
    message: str = ""
    profile: str | None = None
    version: str | None = None
    warnings: tuple[str, ...] = ()

    def response(self, uid: str) -> dict[str, Any]:
        """The AdmissionReview to send back for request `uid`."""
        resp: dict[str, Any] = {"uid": uid, "allowed": self.allowed}
        if not self.allowed:
            resp["status"] = {"code": 400, "message": self.message}
        if self.warnings:
            resp["warnings"] = list(self.warnings)
        return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": resp}


# --------------------------------------------------------------------------- start-up


def load_profiles(path: Path) -> dict[str, Profile]:
    """Parse the profiles file (format in DESIGN.md); one `SettingsError` lists every problem in it.

    `validate` takes the words of `RELOAD_VALIDATE` (a list or a comma string; a relative `schema:` path
    is relative to the profiles file), `command` follows the rules of `RELOAD_VALIDATE_COMMAND` and its
    program must exist here, `timeout_s` defaults to 5 and must stay under the API server's 30 s.
    """
    where = f"RELOAD_WEBHOOK_PROFILES={str(path)!r}"
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise SettingsError([f"{where}: cannot read: {e}"]) from e
    except yaml.YAMLError as e:
        raise SettingsError([f"{where}: invalid YAML: {e}"]) from e
    if not isinstance(doc, dict) or set(doc) != {"profiles"} or not isinstance(doc["profiles"], dict):
        raise SettingsError([f"{where}: expected a mapping with one key, profiles: {{name: {{validate: [auto]}}}}"])
    if not doc["profiles"]:
        raise SettingsError([f"{where}: no profiles defined"])
    problems: list[str] = []
    profiles: dict[str, Profile] = {}
    for name, body in doc["profiles"].items():
        try:
            profiles[str(name)] = _profile(str(name), body, path.parent)
        except ValueError as e:
            problems.append(f"{where}: profiles.{name}: {e}")
    if problems:
        raise SettingsError(problems)
    return profiles


def _profile(name: str, body: object, base: Path) -> Profile:
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise ValueError("expected a mapping with validate, command, timeout_s")
    if unknown := set(body) - _PROFILE_FIELDS:
        raise ValueError(
            f"unknown field(s) {', '.join(sorted(map(str, unknown)))}; expected {', '.join(_PROFILE_FIELDS)}"
        )
    words = body.get("validate", "auto")
    if isinstance(words, list) and all(isinstance(w, str) for w in words):
        words = ",".join(words)
    if not isinstance(words, str) or not words.strip():
        raise ValueError(f"validate: expected a list of words such as [auto], got {words!r}")
    words = ",".join(_relative_schema(w.strip(), base) for w in words.split(","))
    try:
        validators = parse_validators(words)
    except ValueError as e:
        raise ValueError(f"validate: {e}") from None
    command = body.get("command") or ""
    if not isinstance(command, str):
        raise ValueError(f"command: expected a string such as 'nginx -t -c {{dir}}/nginx.conf', got {command!r}")
    try:
        argv = parse_command(command)
    except ValueError as e:
        raise ValueError(f"command {command!r} {e}") from None
    if argv and shutil.which(argv[0]) is None:
        raise ValueError(f"command: {argv[0]!r} not found on PATH (the checker must be in the webhook's image)")
    timeout = body.get("timeout_s", DEFAULT_TIMEOUT_S)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0.1 <= timeout <= MAX_TIMEOUT_S:
        raise ValueError(f"timeout_s: expected seconds in [0.1, {MAX_TIMEOUT_S:g}], got {timeout!r}")
    return Profile(name, Checks(validators, argv, float(timeout), env=_env_names(body.get("env") or [])))


def _env_names(env: object) -> tuple[str, ...]:
    """A profile's `env`: names of the webhook's variables its checker gets (it gets no others)."""
    if not isinstance(env, list) or not all(isinstance(n, str) for n in env):
        raise ValueError(f"env: expected a list of environment variable names such as [HTTPS_PROXY], got {env!r}")
    try:
        return parse_env_names(",".join(env))
    except ValueError as e:
        raise ValueError(f"env: {e}") from None


def _relative_schema(word: str, base: Path) -> str:
    if word.startswith("schema:") and word[7:] and not Path(word[7:]).is_absolute():
        return f"schema:{base / word[7:]}"
    return word


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


@dataclass(slots=True)
class Webhook:
    """Everything the server needs, loaded and checked before it starts."""

    profiles: dict[str, Profile]
    tls: TlsFiles
    max_file_bytes: int = 1 << 20
    max_total_bytes: int = 4 << 20
    concurrency: int = _CONCURRENCY
    _slots: asyncio.Semaphore | None = field(default=None, repr=False)

    @property
    def slots(self) -> asyncio.Semaphore:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.concurrency)
        return self._slots


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


# --------------------------------------------------------------------------- one review


def parse_review(doc: object) -> Review:
    """The request of an `admission.k8s.io/v1` AdmissionReview; `BadReview` says what is missing."""
    if not isinstance(doc, dict):
        raise BadReview("expected a JSON object (an AdmissionReview)")
    if doc.get("apiVersion") != "admission.k8s.io/v1" or doc.get("kind") != "AdmissionReview":
        raise BadReview(
            f"expected apiVersion admission.k8s.io/v1, kind AdmissionReview; got {doc.get('apiVersion')!r}, "
            f"{doc.get('kind')!r} (set admissionReviewVersions: [v1])"
        )
    req = doc.get("request")
    if not isinstance(req, dict):
        raise BadReview("the AdmissionReview has no request object")
    uid, operation, kind = req.get("uid"), req.get("operation"), req.get("kind")
    if not isinstance(uid, str) or not uid:
        raise BadReview("request.uid is missing or not a string")
    if not isinstance(operation, str):
        raise BadReview("request.operation is missing or not a string")
    if not isinstance(kind, dict) or not isinstance(kind.get("kind"), str):
        raise BadReview("request.kind is missing or not a GroupVersionKind")
    obj = req.get("object")
    if obj is not None and not isinstance(obj, dict):
        raise BadReview("request.object is not an object")
    if obj is None and operation in ("CREATE", "UPDATE"):
        raise BadReview(f"request.object is missing for {operation}")
    namespace, name = req.get("namespace") or "", req.get("name") or ""
    if not isinstance(namespace, str) or not isinstance(name, str):
        raise BadReview("request.namespace or request.name is not a string")
    return Review(uid, operation, kind["kind"], namespace, name, obj)


def configmap_files(obj: Mapping[str, Any]) -> tuple[dict[str, bytes], list[str]]:
    """A ConfigMap's `data` (UTF-8) and `binaryData` (base64) as files, plus problems for unsafe keys.

    Keys are checked as the API server checks ConfigMap keys (and as the kubelet relies on): flat names
    of `-._a-zA-Z0-9`, never `.`, `..` or `..`-prefixed, at most 253 characters. A key that fails is
    never written anywhere. Wrong types are `BadReview` (the API server never sends them).
    """
    files: dict[str, bytes] = {}
    problems: list[str] = []
    for section in ("data", "binaryData"):
        entries = obj.get(section)
        if entries is None:
            continue
        if not isinstance(entries, dict):
            raise BadReview(f"object.{section} is not a map")
        for key, value in entries.items():
            if not isinstance(value, str):
                raise BadReview(f"object.{section}[{key!r}] is not a string")
            if why := _key_problem(key):
                problems.append(f"key {key!r}: {why}")
            elif key in files:
                problems.append(f"key {key!r}: in both data and binaryData")
            else:
                files[key] = _decode(section, key, value)
    return files, problems


def _key_problem(key: str) -> str:
    if len(key) > 253:
        return "longer than 253 characters"
    if not _KEY.fullmatch(key):
        return "a ConfigMap key is a flat file name of letters, digits, '-', '_' and '.' (no '/')"
    if key in (".", "..") or key.startswith(".."):
        return "may not be '.' or start with '..'"
    return ""


def _decode(section: str, key: str, value: str) -> bytes:
    try:
        if section == "data":
            return value.encode("utf-8")
        return base64.b64decode(value, validate=True)
    except (UnicodeEncodeError, binascii.Error) as e:
        raise BadReview(f"object.{section}[{key!r}] cannot be decoded: {e}") from None


def _annotation(obj: Mapping[str, Any]) -> str | None:
    meta = obj.get("metadata") or {}
    if not isinstance(meta, dict):
        raise BadReview("object.metadata is not an object")
    annotations = meta.get("annotations") or {}
    if not isinstance(annotations, dict):
        raise BadReview("object.metadata.annotations is not a map")
    value = annotations.get(ANNOTATION)
    if value is not None and not isinstance(value, str):
        raise BadReview(f"annotation {ANNOTATION} is not a string")
    return value


def _trim(text: str, limit: int = MESSAGE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 20].rstrip() + f" … (+{len(text) - limit + 20} chars)"


async def decide(hook: Webhook, review: Review) -> Decision:
    """Allow or deny one review; only annotated ConfigMaps on CREATE/UPDATE are checked."""
    if review.operation not in ("CREATE", "UPDATE") or review.object is None:
        return Decision(True)
    if review.kind != "ConfigMap":
        return Decision(True, warnings=(f"reload-sidecar checks ConfigMaps only; {review.kind} not checked",))
    name = _annotation(review.object)
    if name is None:
        return Decision(True)
    profile = hook.profiles.get(name)
    if profile is None:
        known = ", ".join(sorted(hook.profiles))
        return Decision(
            False, _trim(f"unknown reload-sidecar profile {name!r} (annotation {ANNOTATION}); known: {known}")
        )
    files, problems = configmap_files(review.object)
    if problems:
        return Decision(False, _trim(f"profile {name!r}: " + "; ".join(problems)), name)
    snap = snapshot_of(files, max_file_bytes=hook.max_file_bytes, max_total_bytes=hook.max_total_bytes)
    try:
        async with asyncio.timeout(_QUEUE_WAIT_S):
            await hook.slots.acquire()
    except TimeoutError:
        raise web.HTTPServiceUnavailable(text=f"{hook.concurrency} reviews in progress; try again\n") from None
    try:
        verdict = await validate(snap, profile.checks)
    finally:
        hook.slots.release()
    if verdict.ok:
        return Decision(True, profile=name, version=snap.version)
    # run_command names the sidecar's variable; here the limit is the profile's own.
    reason = verdict.reason.replace("(RELOAD_VALIDATE_TIMEOUT_S)", f"(profile {name!r} timeout_s)")
    return Decision(False, _trim(f"profile {name!r}: {reason}"), name, snap.version)


# --------------------------------------------------------------------------- server

HOOK = web.AppKey("hook", Webhook)


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _validate(request: web.Request) -> web.Response:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        # Refused on the header alone, before reading a byte of it.
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY_BYTES, actual_size=request.content_length)
    body = await request.read()  # a chunked body past client_max_size raises 413 here
    start = time.perf_counter()
    try:
        doc = json.loads(body) if len(body) < _THREADED_JSON_BYTES else await asyncio.to_thread(json.loads, body)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return _bad_request(f"body is not JSON: {e}", len(body))
    try:
        review = parse_review(doc)
        decision = await decide(request.app[HOOK], review)
    except BadReview as e:
        return _bad_request(str(e), len(body))
    log.info(
        "review",
        uid=review.uid,
        operation=review.operation,
        namespace=review.namespace,
        name=review.name,
        profile=decision.profile,
        version=decision.version,
        allowed=decision.allowed,
        reason=decision.message or None,
        ms=round((time.perf_counter() - start) * 1000, 1),
    )
    return web.json_response(decision.response(review.uid))


def _bad_request(reason: str, size: int) -> web.Response:
    log.warning("bad_review", reason=reason[:300], bytes=size)
    return web.Response(status=400, text=reason + "\n")


def make_app(hook: Webhook) -> web.Application:
    """The webhook's routes: `POST /validate`, `GET /healthz`."""
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[HOOK] = hook
    app.router.add_post("/validate", _validate)
    app.router.add_get("/healthz", _healthz)
    return app


async def run_webhook(settings: Settings, hook: Webhook) -> int:
    """Serve HTTPS until SIGTERM/SIGINT, then let in-flight reviews finish (bounded) and exit 0."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    host, port = settings.webhook_listen
    runner = web.AppRunner(make_app(hook), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, ssl_context=hook.tls.server_context, reuse_address=True)
        try:
            await site.start()
        except OSError as e:
            log.error("listen_failed", host=host, port=port, error=str(e))
            return 1
        log.info(
            "webhook_listening",
            host=host,
            port=int(runner.addresses[0][1]),
            profiles=sorted(hook.profiles),
            concurrency=hook.concurrency,
        )
        await stop.wait()
        log.info("stopping")
    finally:
        try:
            await asyncio.wait_for(runner.cleanup(), 10)
        except TimeoutError:
            log.warning("server_cleanup_timeout")
    log.info("stopped")
    return 0
