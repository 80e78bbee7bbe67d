"""`reload-sidecar webhook`: a ValidatingWebhook that refuses a bad ConfigMap before the API server stores it.

The API server POSTs an `admission.k8s.io/v1` AdmissionReview to `/validate`. A ConfigMap annotated
`reload-sidecar/profile: <name>` is run, on CREATE and UPDATE, through that profile's checks: the same
`validate()` the sidecar runs on a new version (parse, schema, the app's own checker on a private staged
copy), on a `Snapshot` built from the ConfigMap's `data` and `binaryData` with the sidecar's own size and
file-count limits. Anything else is let through. An UPDATE that drops or changes the annotation is judged
under the old object's profile too: removing the annotation must not switch the check off.

Deadlines: the API server calls `/validate?timeout=10s` and gives up after that. Each review's answer is
due a margin before that, counted from the request's arrival; waiting for one of the validation slots,
staging and the checkers all spend from it, and a checker still running when it runs out is killed and
the review denied saying so. A review that gets no slot in time, or finds the queue full, is answered
503 and the API server applies its failurePolicy. A client that disconnects cancels its review.

TLS: the certificate and key are re-read when either file changes (cert-manager renews them in place);
every new handshake checks, through the SNI callback, and is served by the newest good pair. The
listening socket and the connections already open are never touched.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import json
import math
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
from aiohttp.typedefs import Handler
from multidict import MultiMapping
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

from .settings import Settings, SettingsError, parse_command, parse_env_names, parse_validators
from .snapshot import Snapshot, snapshot_of
from .validate import Checks, validate

__all__ = [
    "ANNOTATION",
    "MAX_BODY_BYTES",
    "OUTCOMES",
    "BadReview",
    "Deadline",
    "Decision",
    "Profile",
    "Review",
    "TlsFiles",
    "Webhook",
    "configmap_files",
    "load_profiles",
    "load_webhook",
    "make_app",
    "parse_go_duration",
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
# Checker commands run at once (a slot each); they are processes, so a few per core keeps every CPU busy.
# Reviews without a command (parse, schema) need no slot: a slow checker cannot hold them up.
_CONCURRENCY = max(4, 2 * (os.cpu_count() or 1))
#: Reviews admitted beyond the checker slots (waiting for one, or being parsed); one more is answered
#: 503 at once, before its body is read. Each waits for a slot at most until its own deadline.
QUEUE_LENGTH = 128
#: The API server waits 30 s at most (timeoutSeconds): the deadline without `?timeout=`, and the cap.
MAX_CALLER_TIMEOUT_S = 30.0
# Less than this left after queueing: a checker is not worth starting.
_MIN_CHECK_S = 0.1
# ConfigMaps with more keys than this are decoded and measured in a worker thread.
_THREADED_KEYS = 64
# Key problems listed in a denial (a crafted ConfigMap can have 100,000 bad keys).
_MAX_KEY_PROBLEMS = 20
# Bodies above this are decoded in a worker thread so a big review does not stall the others.
_THREADED_JSON_BYTES = 64 * 1024
_KEY = re.compile(r"[-._a-zA-Z0-9]+")
_PROFILE_FIELDS = frozenset({"validate", "command", "timeout_s", "env"})


#: `reload_sidecar_webhook_answers_total{outcome}`: the first two are plain verdicts; `checker_deadline` is
#: a denial because the caller's time ran out; the rest are HTTP errors (the API server applies failurePolicy).
OUTCOMES = (
    "allowed",
    "denied",
    "checker_deadline",
    "queue_full",
    "queue_timeout",
    "unavailable",
    "bad_request",
    "too_large",
    "cancelled",
    "error",
)


class BadReview(ValueError):
    """The request is not an AdmissionReview we can answer (HTTP 400 with this reason)."""


class Unjudged(Exception):
    """No verdict could be given in time (HTTP 503 with this reason; the API server applies failurePolicy)."""

    def __init__(self, outcome: str, reason: str) -> None:
        super().__init__(reason)
        self.outcome, self.reason = outcome, reason


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
    old_object: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to one review; `message` is what kubectl shows when it is denied."""

    allowed: bool
    message: str = ""
    profile: str | None = None
    version: str | None = None
    warnings: tuple[str, ...] = ()
    # Denied because the caller's deadline ran out, not because the content is wrong.
    timed_out: bool = False

    @property
    def outcome(self) -> str:
        return "allowed" if self.allowed else "checker_deadline" if self.timed_out else "denied"

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
    try:
        validators = parse_validators(words, base=base)
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


class WebhookMetrics:
    """The webhook's own metrics (`GET /metrics` on its TLS port), on a private registry."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.answers = Counter(
            "reload_sidecar_webhook_answers",
            "Answers to POST /validate by outcome (allowed, denied, checker_deadline, queue_full, queue_timeout, "
            "bad_request, too_large, cancelled, error).",
            ["outcome"],
            registry=r,
        )
        self.in_flight = Gauge(
            "reload_sidecar_webhook_reviews_in_flight", "Reviews being checked or waiting for a slot.", registry=r
        )
        self.by_outcome = {outcome: self.answers.labels(outcome) for outcome in OUTCOMES}

    def render(self) -> bytes:
        return generate_latest(self.registry)


@dataclass(slots=True)
class Webhook:
    """Everything the server needs, loaded and checked before it starts."""

    profiles: dict[str, Profile]
    tls: TlsFiles
    max_file_bytes: int = 1 << 20
    max_total_bytes: int = 4 << 20
    concurrency: int = _CONCURRENCY
    queue_length: int = QUEUE_LENGTH
    metrics: WebhookMetrics = field(default_factory=WebhookMetrics, repr=False)
    in_flight: int = 0  # reviews admitted: being checked or waiting for a slot
    _slots: asyncio.Semaphore | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.metrics.in_flight.set_function(lambda: self.in_flight)  # read at scrape time, free per review

    @property
    def slots(self) -> asyncio.Semaphore:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.concurrency)
        return self._slots

    def count(self, outcome: str) -> None:
        self.metrics.by_outcome[outcome].inc()


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


# --------------------------------------------------------------------------- deadlines

_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_GO_PART = re.compile(r"([0-9]+\.?[0-9]*|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h)")


def parse_go_duration(text: str) -> float:
    """Seconds in Go's `time.ParseDuration` syntax, as the API server writes `?timeout=` (`10s`, `1m30s`,
    `1.5s`, `500ms`, `300us`); `ValueError` for anything else (no unit, unknown unit, spaces)."""
    body = text[1:] if text[:1] in ("+", "-") else text
    if body == "0":
        return 0.0
    if not body or len(text) > 64:
        raise ValueError(f"invalid duration {text!r}")
    total, pos = 0.0, 0
    while pos < len(body):
        part = _GO_PART.match(body, pos)
        if part is None:
            raise ValueError(f"invalid duration {text!r}")
        total += float(part[1]) * _GO_UNITS[part[2]]
        pos = part.end()
    return -total if text.startswith("-") else total


@dataclass(frozen=True, slots=True)
class Deadline:
    """When a review's answer is due: the caller's `?timeout=` counted from the request's arrival, less a
    margin to send the answer (10 %, at least 0.5 s, at most 1 s). Without `?timeout=`, 30 s."""

    start: float  # event-loop time at the request's arrival
    timeout_s: float = MAX_CALLER_TIMEOUT_S
    given: str | None = None  # `?timeout=` as sent

    @classmethod
    def of(cls, query: MultiMapping[str], start: float) -> Deadline:
        """From the request's query; `BadReview` (400) for a value that is not one positive Go duration."""
        values = query.getall("timeout", [])
        if not values:
            return cls(start)
        try:
            if len(values) > 1:
                raise ValueError("given more than once")
            seconds = parse_go_duration(values[0])
            if seconds <= 0:
                raise ValueError("not positive")
        except ValueError as e:
            raise BadReview(f"?timeout={values[0]!r}: expected one Go duration such as 10s or 1m30s ({e})") from None
        return cls(start, min(seconds, MAX_CALLER_TIMEOUT_S), values[0])

    @property
    def margin_s(self) -> float:
        return min(1.0, max(0.5, 0.1 * self.timeout_s))

    @property
    def at(self) -> float:
        return self.start + self.timeout_s - self.margin_s

    def left(self) -> float:
        return self.at - asyncio.get_running_loop().time()

    def describe(self) -> str:
        if self.given is None:
            return f"the webhook's {self.timeout_s:g} s limit (no ?timeout= given)"
        return f"the API server's ?timeout={self.given}"


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
    obj, old = req.get("object"), req.get("oldObject")
    if obj is not None and not isinstance(obj, dict):
        raise BadReview("request.object is not an object")
    if old is not None and not isinstance(old, dict):
        raise BadReview("request.oldObject is not an object")
    if obj is None and operation in ("CREATE", "UPDATE"):
        raise BadReview(f"request.object is missing for {operation}")
    namespace, name = req.get("namespace") or "", req.get("name") or ""
    if not isinstance(namespace, str) or not isinstance(name, str):
        raise BadReview("request.namespace or request.name is not a string")
    return Review(uid, operation, kind["kind"], namespace, name, obj, old)


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


def _annotation(obj: Mapping[str, Any] | None) -> str | None:
    if obj is None:
        return None
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


def _snapshot(hook: Webhook, obj: Mapping[str, Any]) -> tuple[Snapshot, list[str]]:
    """The ConfigMap as the sidecar would read it (same size and file-count limits, same wording), and
    problems with its keys (the kubelet would never write such a key)."""
    files, problems = configmap_files(obj)
    if len(problems) > _MAX_KEY_PROBLEMS:
        problems[_MAX_KEY_PROBLEMS:] = [f"{len(problems) - _MAX_KEY_PROBLEMS} more bad keys"]
    snap = snapshot_of(files, max_file_bytes=hook.max_file_bytes, max_total_bytes=hook.max_total_bytes)
    return snap, problems


def _keys(obj: Mapping[str, Any]) -> int:
    return sum(len(v) for v in (obj.get("data"), obj.get("binaryData")) if isinstance(v, dict))


async def decide(hook: Webhook, review: Review, deadline: Deadline | None = None) -> Decision:
    """Allow or deny one review; only annotated ConfigMaps on CREATE/UPDATE are checked.

    An UPDATE whose new object drops or changes the profile annotation is judged under the old object's
    profile as well as the new one: the content must pass both. `Unjudged` when no checker slot
    frees up before the deadline.
    """
    if deadline is None:
        deadline = Deadline(asyncio.get_running_loop().time())
    if review.operation not in ("CREATE", "UPDATE") or review.object is None:
        return Decision(True)
    if review.kind != "ConfigMap":
        return Decision(True, warnings=(f"reload-sidecar checks ConfigMaps only; {review.kind} not checked",))
    new = _annotation(review.object)
    old = _annotation(review.old_object) if review.operation == "UPDATE" else None
    if new is not None and new not in hook.profiles:
        known = ", ".join(sorted(hook.profiles))
        return Decision(
            False, _trim(f"unknown reload-sidecar profile {new!r} (annotation {ANNOTATION}); known: {known}")
        )
    names = [new] if new is not None else []
    prefix = ""  # names the change when both profiles apply
    warnings: tuple[str, ...] = ()
    if old is not None and old != new:
        change = f"profile changed from {old!r} to {'(none)' if new is None else repr(new)}"
        if old in hook.profiles:
            names.insert(0, old)
            prefix = f"{change}; judged under both: "
            warnings = (f"reload-sidecar: {change}; the content was checked under both",)
        else:  # a profile since removed from the webhook cannot be applied; it must not lock the ConfigMap
            warnings = (f"reload-sidecar: {change}; the old profile is unknown here and was not applied",)
    if not names:
        return Decision(True, warnings=warnings)
    label = ",".join(names)
    scope = prefix or f"profile {names[0]!r}: "  # for problems that do not depend on the profile
    obj = review.object
    snap, problems = (
        await asyncio.to_thread(_snapshot, hook, obj) if _keys(obj) > _THREADED_KEYS else _snapshot(hook, obj)
    )
    if problems:
        return Decision(False, _trim(scope + "; ".join(problems)), label, warnings=warnings)
    if snap.problems:  # over the limits: refused at once, in the sidecar's words, without a slot
        verdict = await validate(snap, hook.profiles[names[0]].checks)
        return Decision(False, _trim(scope + verdict.reason), label, snap.version, warnings)
    reasons, timed_out = await _judge_in_turn(hook, names, snap, deadline)
    if not reasons:
        return Decision(True, profile=label, version=snap.version, warnings=warnings)
    return Decision(False, _trim(prefix + "; ".join(reasons)), label, snap.version, warnings, timed_out)


async def _judge_in_turn(hook: Webhook, names: list[str], snap: Snapshot, deadline: Deadline) -> tuple[list[str], bool]:
    """`_judge`, in a checker slot if any of the profiles runs a command (waiting for one until the deadline)."""
    if not any(hook.profiles[n].checks.command for n in names):
        return await _judge(hook, names, snap, deadline)
    try:
        async with asyncio.timeout_at(deadline.at - _MIN_CHECK_S):
            await hook.slots.acquire()
    except TimeoutError:
        raise Unjudged(
            "queue_timeout",
            f"no checker slot became free before {deadline.describe()} ran out "
            f"({hook.concurrency} checkers run at once); try again",
        ) from None
    try:
        return await _judge(hook, names, snap, deadline)
    finally:
        hook.slots.release()


async def _judge(hook: Webhook, names: list[str], snap: Snapshot, deadline: Deadline) -> tuple[list[str], bool]:
    """`profile 'x': why` for each profile that refuses the snapshot, and whether the deadline cut it short.

    Each profile's checker gets its own timeout_s or what is left of the caller's time, whichever is
    shorter; the checker's "did not finish" is rewritten to name the limit that applied.
    """
    reasons: list[str] = []
    for name in names:
        left = deadline.left()
        if left < _MIN_CHECK_S:
            reasons.append(f"profile {name!r}: not checked: {deadline.describe()} ran out")
            return reasons, True
        checks = hook.profiles[name].checks
        if not checks.command and snap.small:  # parsed on the spot: nothing to time out
            verdict = await validate(snap, checks)
            if not verdict.ok:
                reasons.append(f"profile {name!r}: {verdict.reason}")
            continue
        caller_limits = left < checks.timeout_s
        timeout_s = min(checks.timeout_s, math.floor(left * 100) / 100)  # whole hundredths read well in a denial
        try:
            # A backstop: the checker's own timeout normally ends it well before this.
            async with asyncio.timeout_at(deadline.at + deadline.margin_s / 2):
                verdict = await validate(snap, dataclasses.replace(checks, timeout_s=timeout_s))
        except TimeoutError:
            reasons.append(f"profile {name!r}: staging and checking did not finish within {deadline.describe()}")
            return reasons, True
        if verdict.ok:
            continue
        if verdict.transient:  # e.g. /tmp full: no verdict on the content, so no denial either
            raise Unjudged("unavailable", f"profile {name!r}: {verdict.reason}")
        # The checker names the sidecar's variable; here the limit is the profile's own or the caller's.
        limit = f"what was left of {deadline.describe()}" if caller_limits else f"profile {name!r} timeout_s"
        reason = verdict.reason.replace("(RELOAD_VALIDATE_TIMEOUT_S)", f"({limit})")
        reasons.append(f"profile {name!r}: {reason}")
        if caller_limits and reason != verdict.reason:
            return reasons, True
    return reasons, False


# --------------------------------------------------------------------------- server

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
    """Serve HTTPS until SIGTERM/SIGINT, then let in-flight reviews finish (bounded) and exit 0."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    host, port = settings.webhook_listen
    # handler_cancellation: a client that disconnects cancels its review, which kills its checker.
    runner = web.AppRunner(make_app(hook), access_log=None, handle_signals=False, handler_cancellation=True)
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
            queue_length=hook.queue_length,
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
