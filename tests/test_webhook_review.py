"""The webhook's review parsing and decision in-process: `parse_review`, `configmap_files`, and `/validate` on
`make_app` through aiohttp's test client (plain HTTP, no TLS, profiles without a checker command: no process);
then `decide` with a `sleep` checker and one slot, for what time lost in the queue makes of a review.

TLS, checkers and the API server's view are covered end to end in tests/e2e/test_webhook.py.
"""

from __future__ import annotations

import asyncio
import base64
import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from sidecar.webhook import BadReview, Webhook, configmap_files, load_profiles, make_app, parse_review
from sidecar.webhook.review import Deadline, Review, Unjudged, decide
from tests.e2e.webhook_proc import configmap, review

SCHEMA = "type: object\nrequired: [port]\nproperties:\n  port: {type: integer}\n"


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    (tmp_path / "port.schema.yaml").write_text(SCHEMA)
    (tmp_path / "profiles.yaml").write_text(
        "profiles:\n  yaml: {validate: [yaml]}\n  port: {validate: [auto, 'schema:port.schema.yaml']}\n"
    )
    hook = Webhook(load_profiles(tmp_path / "profiles.yaml"), tls=None)  # type: ignore[arg-type]  # no TLS in-process
    async with TestClient(TestServer(make_app(hook))) as c:
        yield c


async def _answer(client: TestClient[Any, Any], doc: dict[str, Any]) -> dict[str, Any]:
    resp = await client.post("/validate?timeout=10s", json=doc)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["apiVersion"] == "admission.k8s.io/v1" and body["kind"] == "AdmissionReview"
    assert body["response"]["uid"] == doc["request"]["uid"]
    response: dict[str, Any] = body["response"]
    return response


def test_parse_review_reads_the_request() -> None:
    got = parse_review(review("u1", profile="yaml", data={"a.yaml": "a: 1"}, operation="UPDATE"))
    assert (got.uid, got.operation, got.kind, got.namespace, got.name) == ("u1", "UPDATE", "ConfigMap", "default", "cm")
    assert got.object is not None and got.object["data"] == {"a.yaml": "a: 1"}
    assert got.old_object == got.object


def _broken(path: str, value: Any) -> dict[str, Any]:
    """A valid review with one field (dotted path under the document) replaced, or deleted when `value` is ...."""
    doc = copy.deepcopy(review("u1", profile="yaml", data={"a": "b"}))
    *parents, last = path.split(".")
    node = doc
    for key in parents:
        node = node[key]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return doc


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([], "expected a JSON object"),
        (_broken("apiVersion", "admission.k8s.io/v1beta1"), "admissionReviewVersions: \\[v1\\]"),
        (_broken("request", ...), "no request object"),
        (_broken("request.uid", ""), "request.uid"),
        (_broken("request.operation", 3), "request.operation"),
        (_broken("request.kind", "ConfigMap"), "GroupVersionKind"),
        (_broken("request.object", ...), "request.object is missing for CREATE"),
        (_broken("request.object", "text"), "request.object is not an object"),
        (_broken("request.namespace", 1), "request.namespace or request.name"),
    ],
)
def test_parse_review_says_what_is_wrong(doc: object, message: str) -> None:
    with pytest.raises(BadReview, match=message):
        parse_review(doc)


def test_configmap_files_decodes_data_and_binary_data_and_names_bad_keys() -> None:
    obj = configmap(
        data={"a.yaml": "x: é", "../evil": "x", "both": "1"},
        binary={"logo.bin": base64.b64encode(b"\x00\xff").decode(), "both": "MQ=="},
    )
    files, problems = configmap_files(obj)
    assert files == {"a.yaml": "x: é".encode(), "both": b"1", "logo.bin": b"\x00\xff"}
    assert problems == [
        "key '../evil': a ConfigMap key is a flat file name of letters, digits, '-', '_' and '.' (no '/')",
        "key 'both': in both data and binaryData",
    ]
    with pytest.raises(BadReview, match="cannot be decoded"):
        configmap_files(configmap(binary={"x": "not base64!"}))


async def test_good_content_is_allowed(client: TestClient[Any, Any]) -> None:
    resp = await _answer(client, review("u1", profile="port", data={"app.yaml": "port: 8080\n"}))
    assert resp == {"uid": "u1", "allowed": True}


async def test_bad_content_is_denied_with_the_file_and_line(client: TestClient[Any, Any]) -> None:
    resp = await _answer(client, review("u2", profile="yaml", data={"app.yaml": "a: 1\nb: [\n"}))
    assert resp["allowed"] is False and resp["status"]["code"] == 400
    assert resp["status"]["message"].startswith("profile 'yaml': ") and "app.yaml:" in resp["status"]["message"]


async def test_the_profiles_schema_applies(client: TestClient[Any, Any]) -> None:
    resp = await _answer(client, review("u3", profile="port", data={"app.yaml": "port: eighty\n"}))
    message = resp["status"]["message"]
    assert resp["allowed"] is False and message.startswith("profile 'port': app.yaml:1:")
    assert "expected integer" in message


async def test_an_unknown_profile_is_denied_naming_the_known_ones(client: TestClient[Any, Any]) -> None:
    resp = await _answer(client, review("u4", profile="nope", data={"a": "b"}))
    assert resp["allowed"] is False
    assert resp["status"]["message"] == (
        "unknown reload-sidecar profile 'nope' (annotation reload-sidecar/profile); known: port, yaml"
    )


@pytest.mark.parametrize(
    ("doc", "warned"),
    [
        (review("u5", data={"app.yaml": "a: ["}), False),  # no annotation: not checked
        (review("u6", profile="yaml", data={"app.yaml": "a: ["}, operation="DELETE"), False),
        (review("u7", profile="yaml", data={"app.yaml": "a: ["}, kind="Secret"), True),
    ],
)
async def test_what_is_not_checked_is_allowed(client: TestClient[Any, Any], doc: dict[str, Any], warned: bool) -> None:
    resp = await _answer(client, doc)
    assert resp["allowed"] is True and "status" not in resp
    assert ("warnings" in resp) is warned


async def test_dropping_the_annotation_on_update_does_not_skip_the_check(client: TestClient[Any, Any]) -> None:
    """An UPDATE that removes the annotation is judged under the old object's profile, and says so."""
    old = configmap("yaml", {"app.yaml": "a: 1\n"})
    resp = await _answer(client, review("u8", data={"app.yaml": "a: ["}, operation="UPDATE", old=old))
    assert resp["allowed"] is False
    assert resp["status"]["message"].startswith("profile changed from 'yaml' to (none); judged under both: ")
    assert resp["warnings"] == [
        "reload-sidecar: profile changed from 'yaml' to (none); the content was checked under both"
    ]
    good = await _answer(client, review("u9", data={"app.yaml": "a: 2\n"}, operation="UPDATE", old=old))
    assert good["allowed"] is True and len(good["warnings"]) == 1


async def test_an_old_profile_unknown_here_is_not_applied(client: TestClient[Any, Any]) -> None:
    old = configmap("retired", {"app.yaml": "a: 1\n"})
    resp = await _answer(client, review("u10", data={"app.yaml": "a: ["}, operation="UPDATE", old=old))
    assert resp["allowed"] is True
    assert resp["warnings"] == [
        "reload-sidecar: profile changed from 'retired' to (none); the old profile is unknown here and was not applied"
    ]


async def test_a_bad_key_is_denied_without_checking(client: TestClient[Any, Any]) -> None:
    resp = await _answer(client, review("u11", profile="yaml", data={"sub/app.yaml": "a: 1\n"}))
    assert resp["allowed"] is False
    assert resp["status"]["message"].startswith("profile 'yaml': key 'sub/app.yaml': ")


async def test_answers_are_counted_by_outcome(client: TestClient[Any, Any]) -> None:
    await _answer(client, review("a", profile="yaml", data={"a.yaml": "a: 1\n"}))
    await _answer(client, review("b", profile="yaml", data={"a.yaml": "a: ["}))
    resp = await client.post("/validate?timeout=10s", data=b"{not json")
    assert resp.status == 400 and (await resp.text()).startswith("body is not JSON")
    metrics = await (await client.get("/metrics")).text()
    for outcome in ("allowed", "denied", "bad_request"):
        assert f'reload_sidecar_webhook_answers_total{{outcome="{outcome}"}} 1.0' in metrics, outcome


async def test_a_checker_cut_short_after_waiting_for_a_slot_is_unjudged_not_denied(tmp_path: Path) -> None:
    """One checker slot, held by the test until 1 s in; a review due at 2.5 s (?timeout=3s) then has 1.5 s of
    its checker's 5 s: killed at the deadline, it is a 503 (the queue's fault). Without the wait, the same cut
    is a denial (the profile allows more than the caller gives), and so is a checker that had its whole own
    timeout_s."""
    (tmp_path / "profiles.yaml").write_text(
        "profiles:\n"
        "  slow: {command: \"sh -c 'exec sleep 30' {dir}\", timeout_s: 5}\n"
        "  short: {command: \"sh -c 'exec sleep 30' {dir}\", timeout_s: 0.5}\n"
    )
    hook = Webhook(load_profiles(tmp_path / "profiles.yaml"), tls=None, concurrency=1)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()

    def slow(uid: str, profile: str = "slow") -> Review:
        return parse_review(review(uid, profile=profile, data={"a.txt": uid}))

    await hook.slots.acquire()
    loop.call_later(1.0, hook.slots.release)  # timers fire in order: long before the review's 2.4 s slot limit
    with pytest.raises(Unjudged) as cut:
        await decide(hook, slow("queued"), Deadline(loop.time(), 3.0, "3s"))
    assert cut.value.outcome == "queue_timeout"
    assert "killed; not a verdict on the content: the review first waited" in cut.value.reason, cut.value.reason
    alone = await decide(hook, slow("alone"), Deadline(loop.time(), 1.0, "1s"))
    assert not alone.allowed and alone.outcome == "checker_deadline", alone
    assert "(what was left of the API server's ?timeout=1s); killed" in alone.message
    await hook.slots.acquire()
    loop.call_later(0.2, hook.slots.release)
    own = await decide(hook, slow("own", "short"), Deadline(loop.time(), 10.0, "10s"))
    assert not own.allowed and own.outcome == "denied", own
    assert "(profile 'short' timeout_s); killed" in own.message
