"""The real `reload-sidecar webhook` over real TLS with a hostile profile command (tests/e2e/hostile_checker.py).

work/profiles.yaml   profile `hostile`: the checker, `env: [RELOAD_TEST_PASSED]`
work/tmp/            the webhook's TMPDIR: the `..check-*` dirs of each review, gone after it
work/logs/pids       every pid the checker made, for the leftover check
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sidecar.settings import SettingsError
from sidecar.webhook import load_profiles
from tests.e2e.hostile_checker import HOSTILE, leftovers, zombie_children
from tests.e2e.webhook_proc import Webhook, issue, make_ca, review
from tests.tmpfs import fill, tmpfs

PY = sys.executable


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("webhook-checker")
    for sub in ("pki", "tmp", "logs"):
        (d / sub).mkdir()
    (d / "logs" / "pids").touch()
    return d


@pytest.fixture(scope="module")
def hook(work: Path) -> Iterator[Webhook]:
    ca = make_ca(work / "pki")
    cert, key = issue(ca, work / "pki", "webhook", 1)
    profiles = {
        "profiles": {
            "hostile": {
                "validate": ["none"],
                "command": f"{PY} {HOSTILE} {work / 'logs'} {{dir}}",
                "env": ["RELOAD_TEST_PASSED"],
                "timeout_s": 20,
            }
        }
    }
    (work / "profiles.yaml").write_text(json.dumps(profiles))
    env = {"TMPDIR": str(work / "tmp"), "RELOAD_TEST_PASSED": "yes", "APP_TEST_SECRET": "hunter2"}
    wh = Webhook(work, ca, cert, key, work / "profiles.yaml", **env).start()
    yield wh
    assert wh.stop() == 0, wh.log_tail()


def _message(hook: Webhook, uid: str, mode: str) -> str | None:
    """None if the review of a ConfigMap whose app.conf is `mode` is allowed, else the denial message."""
    resp = hook.review(review(uid, profile="hostile", data={"app.conf": mode + "\n"}))
    return None if resp["allowed"] else str(resp["status"]["message"])


def test_hostile_checkers_are_denied_and_the_webhook_stays_healthy(hook: Webhook, work: Path) -> None:
    """200 MB of output and 1,000 forks are denied with the reason, a setsid child does not outlive its
    review, a good ConfigMap reviewed at the same time is allowed; /healthz answers, nothing is left."""
    prefix = f"profile 'hostile': checker {PY!r}"
    assert _message(hook, "print", "print") == f"{prefix} printed more than 1 MiB of output; killed"
    assert _message(hook, "fork", "fork") == f"{prefix} started more than 64 processes; killed"
    assert _message(hook, "setsid", "setsid") is None
    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda m: _message(hook, f"par-{m}", m), ["print", "fork", "good"]))
    assert answers[0] is not None and "printed more than 1 MiB" in answers[0]
    assert answers[1] is not None and "started more than 64 processes" in answers[1]
    assert answers[2] is None
    assert hook.request("GET", "/healthz")[0] == 200
    assert _message(hook, "good", "good") is None
    assert leftovers(work / "logs" / "pids") == []
    assert hook.proc is not None and zombie_children(hook.proc.pid) == []
    assert list((work / "tmp").iterdir()) == []


def test_the_checker_gets_only_the_variables_its_profile_names(hook: Webhook) -> None:
    """The webhook's environment is not inherited: the checker sees PATH, HOME, TMPDIR, its cookie and
    what `env` names, never another variable of the webhook."""
    message = _message(hook, "env", "env")
    assert message is not None and "environment:" in message, message
    names = set(message.split("environment:", 1)[1].split()) - {"LC_CTYPE"}  # LC_CTYPE: Python's PEP 538
    assert names == {"HOME", "PATH", "RELOAD_SIDECAR_CHECK", "RELOAD_TEST_PASSED", "TMPDIR"}, message


def test_profile_env_must_be_a_list_of_names(tmp_path: Path) -> None:
    """`env` takes a list of variable names; anything else is reported at start-up."""
    path = tmp_path / "profiles.yaml"
    path.write_text("profiles:\n  a: {command: 'true {dir}', env: [HTTPS_PROXY, NO_PROXY]}\n")
    assert load_profiles(path)["a"].checks.env == ("HTTPS_PROXY", "NO_PROXY")
    for bad in ("HTTPS_PROXY", "[HTTPS-PROXY]", "[1]"):
        path.write_text(f"profiles:\n  a: {{command: 'true {{dir}}', env: {bad}}}\n")
        with pytest.raises(SettingsError, match=r"profiles\.a: env: "):
            load_profiles(path)


def test_a_full_tmpdir_is_no_verdict_but_a_503(tmp_path: Path) -> None:
    """(root: tmpfs) The checker's copy cannot be staged because the webhook's TMPDIR is full: that says
    nothing about the content, so the answer is a 503 `unavailable` (the API server applies failurePolicy),
    not a denial; once space returns the same ConfigMap is allowed."""
    for sub in ("pki", "logs"):
        (tmp_path / sub).mkdir()
    (tmp_path / "logs" / "pids").touch()
    ca = make_ca(tmp_path / "pki")
    cert, key = issue(ca, tmp_path / "pki", "webhook", 1)
    profile = {"validate": ["none"], "command": f"{PY} {HOSTILE} {tmp_path / 'logs'} {{dir}}"}
    (tmp_path / "profiles.yaml").write_text(json.dumps({"profiles": {"checked": profile}}))
    with tmpfs(tmp_path / "tmp", "1m") as tmp:
        wh = Webhook(tmp_path, ca, cert, key, tmp_path / "profiles.yaml", TMPDIR=str(tmp)).start()
        try:
            # The first review also fixes Python's temp dir: chosen on first use, skipping one that is full.
            doc = review("full", profile="checked", data={"app.conf": "good\n"})
            assert wh.review(doc)["allowed"] is True
            filler = fill(tmp)
            doc["request"]["object"]["data"]["app.conf"] = "good again\n"  # not answered from the verdict cache
            status, body = wh.post(doc)
            assert status == 503, (body, wh.log_tail())
            assert b"no space left on" in body and b"to stage the candidate for the checker" in body, body
            assert wh.answers().get("unavailable") == 1
            filler.unlink()
            assert wh.review(doc)["allowed"] is True
            assert list(tmp.iterdir()) == []
        finally:
            assert wh.stop() == 0, wh.log_tail()
