"""One AdmissionReview: parsing, the deadline it must be answered by, the checker queue, the decision.

Deadlines: the API server calls `/validate?timeout=10s` and gives up after that. Each review's answer is
due a margin before that, counted from the request's arrival; waiting for one of the validation slots,
staging and the checkers all spend from it, and a checker still running when it runs out is killed and
the review denied saying so, unless the review waited for a slot: then our queue took the checker's
time, which says nothing about the content, and the answer is 503 like a review that gets no slot in
time or finds the queue full (the API server applies its failurePolicy). A client that disconnects
cancels its review.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from multidict import MultiMapping
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from ..metrics import add_process_metrics
from ..snapshot import Snapshot, snapshot_of
from ..validate import validate
from .profiles import Profile
from .tls import TlsFiles

__all__ = [
    "ANNOTATION",
    "MAX_CALLER_TIMEOUT_S",
    "OUTCOMES",
    "QUEUE_LENGTH",
    "BadReview",
    "Deadline",
    "Decision",
    "Review",
    "Unjudged",
    "Webhook",
    "WebhookMetrics",
    "configmap_files",
    "decide",
    "parse_go_duration",
    "parse_review",
]

#: The annotation that opts a ConfigMap in and names its profile.
ANNOTATION = "reload-sidecar/profile"
#: kubectl prints `status.message` on one line after "denied the request: ": keep it readable.
MESSAGE_CHARS = 1000
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
_KEY = re.compile(r"[-._a-zA-Z0-9]+")


#: `reload_sidecar_webhook_answers_total{outcome}`: the first two are plain verdicts; `checker_deadline` is
#: a denial because the caller's time ran out (the review had a slot at once: a cut after waiting for one is a
#: `queue_timeout`); the rest are HTTP errors (the API server applies failurePolicy).
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


class WebhookMetrics:
    """The webhook's own metrics (`GET /metrics` on its TLS port), on a private registry."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        add_process_metrics(r)
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
    frees up before the deadline, or when waiting for one left a checker too little of the deadline.
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
    """`_judge`, in a checker slot if any of the profiles runs a command (waiting for one until the deadline).

    `Unjudged` (503) when no slot frees up in time, and when the review had to wait for one and the
    deadline then cut a checker short (unless an earlier profile refused the content: that denial stands).
    """
    if not any(hook.profiles[n].checks.command for n in names):
        return await _judge(hook, names, snap, deadline)
    loop = asyncio.get_running_loop()
    queued_at = loop.time() if hook.slots.locked() else None  # None: a slot was free, no time lost here
    try:
        async with asyncio.timeout_at(deadline.at - _MIN_CHECK_S):
            await hook.slots.acquire()
    except TimeoutError:
        raise Unjudged(
            "queue_timeout",
            f"no checker slot became free before {deadline.describe()} ran out "
            f"({hook.concurrency} checkers run at once); try again",
        ) from None
    waited_s = 0.0 if queued_at is None else loop.time() - queued_at
    try:
        reasons, timed_out = await _judge(hook, names, snap, deadline)
    finally:
        hook.slots.release()
    if timed_out and queued_at is not None:
        # The caller's deadline cut a checker short after the review waited in our queue: with the time
        # the queue took, it might have finished. Not the content's fault, so no denial (a denial is final).
        if reasons[:-1]:  # an earlier profile refused the content itself: that verdict stands
            return reasons[:-1], False
        raise Unjudged(
            "queue_timeout",
            f"{reasons[-1]}; not a verdict on the content: the review first waited {waited_s:.2f} s for a "
            f"checker slot ({hook.concurrency} checkers run at once); try again",
        )
    return reasons, timed_out


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
