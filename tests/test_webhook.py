"""The webhook's pure parts: `?timeout=` as the API server writes it, and the deadline a review gets from it.

The webhook itself (TLS, reviews, checkers) is tested end to end in tests/e2e/test_webhook.py.
"""

from __future__ import annotations

import pytest
from multidict import MultiDict

from sidecar.webhook import BadReview, Deadline, parse_go_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("10s", 10.0),  # what the API server sends for timeoutSeconds: 10
        ("30s", 30.0),
        ("1m30s", 90.0),
        ("2m0s", 120.0),  # Go's Duration.String() for 2 minutes
        ("1h", 3600.0),
        ("1h2m3.5s", 3723.5),
        ("1.5s", 1.5),
        (".5s", 0.5),
        ("500ms", 0.5),
        ("300us", 0.0003),
        ("300µs", 0.0003),  # U+00B5, as Duration.String() writes it
        ("300μs", 0.0003),  # U+03BC, also accepted by time.ParseDuration
        ("1500000ns", 0.0015),
        ("+2s", 2.0),
        ("0", 0.0),
    ],
)
def test_go_durations_parse(text: str, seconds: float) -> None:
    """Every form Go's time.ParseDuration accepts and the API server may write gives its seconds."""
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "10", "s", "1x", "1 s", " 1s", "1s ", "1S", "١s", "1e3s", "1..5s", "+", "-"])
def test_other_durations_refused(text: str) -> None:
    """No unit, unknown units, spaces, upper case, non-ASCII digits, exponents: refused, never guessed."""
    with pytest.raises(ValueError, match="invalid duration"):
        parse_go_duration(text)


def test_deadline_is_the_callers_timeout_less_a_margin() -> None:
    """Due 10 % before the caller gives up (at least 0.5 s, at most 1 s), counted from the request's arrival."""
    assert Deadline.of(MultiDict(timeout="2s"), 100.0).at == pytest.approx(101.5)
    assert Deadline.of(MultiDict(timeout="8s"), 100.0).at == pytest.approx(107.2)
    assert Deadline.of(MultiDict(timeout="10s"), 100.0).at == pytest.approx(109.0)
    assert Deadline.of(MultiDict(timeout="1h"), 100.0).at == pytest.approx(129.0)  # the API server's 30 s at most
    absent = Deadline.of(MultiDict(), 100.0)
    assert absent.at == pytest.approx(129.0) and absent.given is None
    assert "no ?timeout= given" in absent.describe()
    assert Deadline.of(MultiDict(timeout="2s"), 0.0).describe() == "the API server's ?timeout=2s"


@pytest.mark.parametrize(
    "query", [[("timeout", "10")], [("timeout", "0")], [("timeout", "-1s")], [("timeout", "1s")] * 2]
)
def test_bad_timeout_is_a_bad_review(query: list[tuple[str, str]]) -> None:
    """A value that is not one positive Go duration is answered 400 (BadReview), naming the parameter."""
    with pytest.raises(BadReview, match=r"\?timeout="):
        Deadline.of(MultiDict(query), 0.0)


async def test_internal_error_is_a_500_logged_and_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug while deciding is answered 500 with its reason, logged with the traceback and counted as `error`."""
    from aiohttp.test_utils import TestClient, TestServer
    from structlog.testing import capture_logs

    from sidecar import webhook
    from tests.e2e.webhook_proc import review

    async def broken(*args: object) -> webhook.Decision:
        raise RuntimeError("boom")

    monkeypatch.setattr(webhook.server, "decide", broken)  # the name the handler calls
    hook = webhook.Webhook({}, tls=None)  # type: ignore[arg-type]  # no TLS needed in-process
    async with TestClient(TestServer(webhook.make_app(hook))) as client:
        with capture_logs() as logs:
            resp = await client.post("/validate?timeout=10s", json=review("x", profile="yaml", data={"a": "b"}))
            assert resp.status == 500 and "RuntimeError('boom')" in await resp.text()
        metrics = await (await client.get("/metrics")).text()
    assert 'reload_sidecar_webhook_answers_total{outcome="error"} 1.0' in metrics
    assert [e["event"] for e in logs] == ["review_failed", "review_not_judged"]
    assert logs[1]["outcome"] == "error" and logs[1]["status"] == 500
