"""A Secret-like value in invalid config never leaves the file: not in /status, /metrics, the state file,
the sidecar's logs, the webhook's denial or the webhook's logs (real processes, real TLS).

Each case is a version that the built-in validators refuse *because of* the value (its type, enum,
pattern, const, an unexpected key, a YAML tag, a broken quote or indent around it, bad JSON around it).
The refusal must say where and what kind of problem (the expected reason is checked, so an absent
secret cannot be an absent refusal), and the value must appear nowhere.

    volume/  kubelet-style (tests.kubelet.project), one swap per case
    target/  the sidecar's; its state file is read too
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.apps import http_get
from tests.e2e.sidecar_proc import running, wait_for
from tests.e2e.webhook_proc import Webhook, issue, make_ca, review
from tests.kubelet import project
from tests.secret import SECRET, SECRET_SCHEMA

GOOD = {"app.yaml": "port: 8080\nmode: fast\nname: web\nlevel: 3\n"}

# case -> (files of the version, what its refusal must say)
CASES: dict[str, tuple[dict[str, str], str]] = {
    "type": ({"app.yaml": f"port: {SECRET}\n"}, "app.yaml:1:7: schema: at port: wrong type (expected integer"),
    "enum": ({"app.yaml": f"mode: {SECRET}\n"}, "app.yaml:1:7: schema: at mode: not one of the allowed values"),
    "pattern": ({"app.yaml": f"name: {SECRET}\n"}, "app.yaml:1:7: schema: at name: does not match the required"),
    "const": ({"app.yaml": f"level: {SECRET}\n"}, "app.yaml:1:8: schema: at level: not the required value 3"),
    "extra_key": ({"app.yaml": f"password: {SECRET}\n"}, "schema: at (root): property 'password' not allowed"),
    "yaml_tag": ({"app.yaml": f"name: !{SECRET} x\n"}, "app.yaml:1:7: invalid YAML: unknown tag"),
    "yaml_int_tag": ({"app.yaml": f"port: !!int {SECRET}\n"}, "app.yaml:1:7: invalid YAML: not a valid !!int"),
    "yaml_quote": ({"app.yaml": f"name: '{SECRET}\n"}, "app.yaml:2:1: invalid YAML: found unexpected end of stream"),
    "yaml_indent": ({"app.yaml": f"name: {SECRET}\n  port: 1\n"}, "app.yaml:2:7: invalid YAML: mapping values"),
    "json_bare": ({"app.json": f'{{"name": {SECRET}}}'}, "app.json:1:10: invalid JSON: Expecting value"),
    "json_control": ({"app.json": f'{{"name": "{SECRET}\t"}}'}, "app.json:1:28: invalid JSON: Invalid control"),
}


def _assert_no_secret(where: str, text: str) -> None:
    for part in ("hunter2", "topsecret"):
        assert part not in text.lower(), (
            f"{where} shows the secret: ...{text[max(0, text.lower().find(part) - 200) :][:400]}"
        )


@pytest.fixture(scope="module")
def schema(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("schema") / "app.schema.json"
    path.write_text(json.dumps(SECRET_SCHEMA))
    return path


def test_sidecar_never_shows_the_value_it_refused(tmp_path: Path, schema: Path) -> None:
    """Every case is refused with its reason, and the secret is in no /status field, metric, log line or state."""
    volume, target = tmp_path / "volume", tmp_path / "target"
    project(volume, GOOD)
    with running(volume, target, tmp_path, RELOAD_VALIDATE=f"auto,schema:{schema}", RELOAD_RESYNC_S="0.5") as car:
        good = car.wait_current()["current"]
        for n, (case, (files, _)) in enumerate(CASES.items(), start=1):
            project(volume, files)
            wait_for(lambda n=n: len(car.status()["refused"]) == n, 15, what=f"{case} refused; {car.log_tail()}")
        status = car.status()
        reasons = sorted(r["reason"] for r in status["refused"].values())
        for case, (_, expected) in CASES.items():
            assert any(expected in r for r in reasons), (case, expected, reasons)
        assert status["current"] == good and status["ready"] is True
        _assert_no_secret("/status", http_get(car.url + "/status")[1])
        _assert_no_secret("/metrics", http_get(car.url + "/metrics")[1])
        _assert_no_secret("the state file", (target / "..reload-sidecar-state.json").read_text())
        log = car.log_path.read_text(errors="replace")
        assert len(car.events("refused")) == len(CASES), log[-3000:]
        assert not car.events("pass_failed") and "Traceback" not in log
        _assert_no_secret("the sidecar's log", log)


@pytest.fixture(scope="module")
def hook(tmp_path_factory: pytest.TempPathFactory, schema: Path) -> Iterator[Webhook]:
    """A webhook over TLS with one profile: parse by extension, then the schema."""
    work = tmp_path_factory.mktemp("webhook")
    ca = make_ca(work / "pki")
    cert, key = issue(ca, work / "pki", "webhook", 1)
    profiles = work / "profiles.yaml"
    profiles.write_text(json.dumps({"profiles": {"app": {"validate": ["auto", f"schema:{schema}"]}}}))
    wh = Webhook(work, ca, cert, key, profiles, RELOAD_LOG_LEVEL="debug").start()
    yield wh
    assert wh.stop() == 0, wh.log_tail()


def test_webhook_denial_and_logs_never_show_the_value(hook: Webhook) -> None:
    """The writer is told where and why (kubectl shows status.message); neither the denial nor the log has the value."""
    for case, (files, expected) in CASES.items():
        resp = hook.review(review(f"secret-{case}", profile="app", data=files))
        assert resp["allowed"] is False and resp["status"]["code"] == 400, resp
        assert expected in resp["status"]["message"], (case, resp)
        _assert_no_secret(f"the denial of {case}", json.dumps(resp))
    log = hook.log_path.read_text(errors="replace")
    assert len(hook.events("review")) == len(CASES), log[-3000:]
    _assert_no_secret("the webhook's log", log)
