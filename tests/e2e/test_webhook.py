"""The real `reload-sidecar webhook` over real TLS on 127.0.0.1, with a CA and certificates made by `openssl`.

One webhook process serves most tests (module fixture, stopped with SIGTERM and checked to exit 0);
the rotation test runs its own, reading its pair from a kubelet-style Secret volume:

    tls/
    ├── ..2026_11_25_…/tls.crt, tls.key   the current pair
    ├── ..data -> ..2026_11_25_…          swapped in one rename(2) per rotation
    ├── tls.crt -> ..data/tls.crt          what RELOAD_WEBHOOK_CERT points at
    └── tls.key -> ..data/tls.key
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from sidecar.settings import ValidatorSpec
from sidecar.snapshot import read_snapshot
from sidecar.validate import Checks, validate
from sidecar.webhook import load_profiles
from tests.e2e.apps import nginx_bin, nginx_conf, promtool_bin
from tests.e2e.sidecar_proc import wait_for
from tests.e2e.webhook_proc import Webhook, configmap, issue, make_ca, review
from tests.kubelet import project

HANG_TIMEOUT_S = 1.0
# The `slow` profile's own timeout_s: an answer long before it proves the caller's ?timeout= was honoured.
SLOW_TIMEOUT_S = 25
MAX_FILE_BYTES, MAX_TOTAL_BYTES = 65536, 262144


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A test CA with one server certificate (CN webhook-v1, serial 1001)."""
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d)
    issue(ca, d, "webhook-v1", 1001)
    return d


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("webhook")
    (d / "nginx" / "tmp").mkdir(parents=True)
    (d / "pids").mkdir()
    return d


@pytest.fixture(scope="module")
def hook(pki: Path, work: Path) -> Iterator[Webhook]:
    """One webhook with profiles: yaml (parse), nginx (`nginx -t`), hang (a checker that never ends), probe,
    slow (never ends, records its pid in work/pids, timeout_s 25), ok (a checker that always passes)."""
    probe = work / "probe.txt"
    # records the staged dir's mode, its listing and its path (argv, no shell: sh is the checker here)
    probe_cmd = f'sh -c \'{{ stat -c %a "$0"; ls -A "$0"; echo "$0"; }} > {probe}\' {{dir}}'
    profiles = {
        "profiles": {
            "yaml": {"validate": ["auto"]},
            "nginx": {"validate": ["none"], "command": f"{nginx_bin()} -t -q -e stderr -c {{dir}}/nginx.conf"},
            "hang": {"command": 'sh -c "sleep 30" {dir}', "timeout_s": HANG_TIMEOUT_S},
            "probe": {"command": probe_cmd},
            # `exec` keeps the shell's pid: the file names the very process that must be killed
            "slow": {"command": f"sh -c 'echo > {work}/pids/$$; exec sleep 60' {{dir}}", "timeout_s": SLOW_TIMEOUT_S},
            "ok": {"command": "sh -c 'exit 0' {dir}"},
            # passes after 6 s, well within its own 8 s; a review that waited for a slot has less than that left
            "six": {"command": "sh -c 'sleep 6' {dir}", "timeout_s": 8},
        }
    }
    (work / "profiles.yaml").write_text(json.dumps(profiles))  # JSON is YAML
    wh = Webhook(
        work,
        pki / "ca.crt",
        pki / "webhook-v1.crt",
        pki / "webhook-v1.key",
        work / "profiles.yaml",
        RELOAD_MAX_FILE_BYTES=str(MAX_FILE_BYTES),
        RELOAD_MAX_TOTAL_BYTES=str(MAX_TOTAL_BYTES),
    ).start()
    yield wh
    assert wh.stop() == 0, wh.log_tail()


def test_valid_configmap_allowed(hook: Webhook) -> None:
    """A ConfigMap whose YAML parses is allowed, answered with the request's uid."""
    resp = hook.review(review("good-1", profile="yaml", data={"app.yaml": "a: 1\nb: [1, 2]\n", "notes.txt": "x"}))
    assert resp == {"uid": "good-1", "allowed": True}


def test_invalid_configmap_denied_with_file_and_line_on_create_and_update(hook: Webhook) -> None:
    """Broken YAML is denied on CREATE and UPDATE with code 400 and `file:line:col: why` in status.message."""
    for op in ("CREATE", "UPDATE"):
        resp = hook.review(review(f"bad-{op}", profile="yaml", data={"app.yaml": "a: 1\nb: [1, 2\n"}, operation=op))
        assert resp["allowed"] is False and resp["status"]["code"] == 400, resp
        assert resp["status"]["message"].startswith("profile 'yaml': app.yaml:3:1: invalid YAML"), resp


def test_unannotated_delete_and_other_kinds_allowed(hook: Webhook) -> None:
    """No profile annotation, a DELETE, or a kind other than ConfigMap: allowed without checking anything."""
    bad = {"app.yaml": "a: [\n"}
    assert hook.review(review("plain", data=bad))["allowed"] is True
    assert hook.review(review("delete", profile="yaml", data=bad, operation="DELETE"))["allowed"] is True
    resp = hook.review(review("secret", profile="yaml", data=bad, kind="Secret"))
    assert resp["allowed"] is True and "ConfigMaps only" in resp["warnings"][0], resp


def test_unknown_profile_denied_naming_known_ones(hook: Webhook) -> None:
    """An annotation naming no profile is denied, and the message lists the profiles that exist."""
    resp = hook.review(review("unknown", profile="ngnix", data={"nginx.conf": "events {}\n"}))
    assert resp["allowed"] is False
    message = resp["status"]["message"]
    assert "unknown reload-sidecar profile 'ngnix'" in message, message
    assert "known: hang, nginx, ok, probe, six, slow, yaml" in message, message


def test_binary_data_decoded_and_checked(hook: Webhook) -> None:
    """`binaryData` is base64-decoded and validated like `data`."""
    good = base64.b64encode(b'{"a": 1}').decode()
    bad = base64.b64encode(b'{"a": 1,,}').decode()
    assert hook.review(review("bin-good", profile="yaml", binary={"c.json": good}))["allowed"] is True
    resp = hook.review(review("bin-bad", profile="yaml", data={"a.yaml": "a: 1\n"}, binary={"c.json": bad}))
    assert resp["allowed"] is False and "c.json:1:9: invalid JSON" in resp["status"]["message"], resp


def test_unsafe_keys_and_oversized_values_denied(hook: Webhook) -> None:
    """Keys the kubelet would refuse (`/`, `..`) and a value over RELOAD_MAX_FILE_BYTES are denied, naming each."""
    resp = hook.review(review("keys", profile="yaml", data={"../evil": "x", "a/b.yaml": "x", "..x": "x", "ok": "x"}))
    message = resp["status"]["message"]
    assert resp["allowed"] is False
    assert "key '../evil'" in message and "key 'a/b.yaml'" in message and "key '..x'" in message, message
    assert "'ok'" not in message
    resp = hook.review(review("big", profile="yaml", data={"big.txt": "x" * 70_000}))
    assert "big.txt: 70000 bytes exceeds RELOAD_MAX_FILE_BYTES=65536" in resp["status"]["message"], resp


def test_checker_runs_on_private_staged_copy_removed_after(hook: Webhook, work: Path) -> None:
    """The command sees every key as a file in a mode-0700 temp dir, which is gone once the review is answered."""
    data = {"a.yaml": "a: 1\n", "b.conf": "b\n"}
    binary = {"c.bin": base64.b64encode(b"\x00\x01").decode()}
    assert hook.review(review("probe", profile="probe", data=data, binary=binary))["allowed"] is True
    mode, *names, stage = (work / "probe.txt").read_text().split()
    assert mode == "700" and sorted(names) == ["a.yaml", "b.conf", "c.bin"]
    assert not Path(stage).exists()


def test_garbage_bodies_answered_400_and_server_keeps_serving(hook: Webhook) -> None:
    """Bodies that are not an AdmissionReview get HTTP 400 with a reason; the server answers the next review."""
    valid = review("x", profile="yaml", data={"a.yaml": "a: 1\n"})
    cases: dict[bytes, str] = {
        b"": "not JSON",
        b"not json": "not JSON",
        b"\xff\xfe{": "not JSON",
        b"[" * 100_000 + b"]" * 100_000: "not JSON",
        b"[]": "expected a JSON object",
        b'{"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1beta1"}': "admissionReviewVersions",
        b'{"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1"}': "no request",
        json.dumps({**valid, "request": {**valid["request"], "uid": 7}}).encode(): "uid",
        json.dumps({**valid, "request": {**valid["request"], "object": "cm"}}).encode(): "request.object",
        json.dumps({**valid, "request": {**valid["request"], "object": None}}).encode(): "missing for CREATE",
        json.dumps(review("y", profile="yaml", binary={"a": "%%%"})).encode(): "cannot be decoded",
        json.dumps(review("z", profile="yaml", data={"a": 1})).encode(): "is not a string",  # type: ignore[dict-item]
    }
    for body, reason in cases.items():
        status, text = hook.request("POST", "/validate", body)
        assert status == 400 and reason in text.decode(), (body[:80], status, text)
    assert hook.request("GET", "/validate")[0] == 405
    assert hook.review(valid)["allowed"] is True


def test_oversized_body_answered_413(hook: Webhook) -> None:
    """A body over 8 MiB gets 413, with a Content-Length and when chunked; the server keeps serving."""
    status, text = hook.request("POST", "/validate", b"x" * (9 << 20))
    assert status == 413, text
    conn = hook.connect()
    try:
        chunks = (b"y" * 65536 for _ in range(9 * 16))
        conn.request("POST", "/validate", body=chunks, encode_chunked=True)
        assert conn.getresponse().status == 413
    finally:
        conn.close()
    assert hook.request("GET", "/healthz") == (200, b"ok\n")


def test_hanging_checker_killed_and_denied_at_profile_timeout(hook: Webhook) -> None:
    """A checker that never exits is killed at the profile's timeout_s and the review denied saying so."""
    start = time.monotonic()
    resp = hook.review(review("hang", profile="hang", data={"a.yaml": "a: 1\n"}))
    elapsed = time.monotonic() - start
    # Never before the timeout; after it, the kill and the HTTPS answer take what a busy machine gives them
    # (the message below says which limit applied).
    assert HANG_TIMEOUT_S * 0.9 <= elapsed < HANG_TIMEOUT_S + 8.0, elapsed
    assert resp["allowed"] is False
    message = resp["status"]["message"]
    assert "did not finish within 1 s (profile 'hang' timeout_s); killed" in message, message


def test_nginx_profile_runs_real_nginx_t(hook: Webhook, work: Path) -> None:
    """`nginx -t` allows a real nginx.conf and denies a broken one with nginx's own `[emerg] … nginx.conf:LINE`."""
    conf = nginx_conf(8080, "v1", work / "nginx")
    assert hook.review(review("nginx-good", profile="nginx", data={"nginx.conf": conf}))["allowed"] is True
    broken = conf.replace("worker_connections 64;", "worker_connections 64")
    resp = hook.review(review("nginx-bad", profile="nginx", data={"nginx.conf": broken}))
    assert resp["allowed"] is False
    message = resp["status"]["message"]
    assert "exited 1" in message and "[emerg]" in message and "in nginx.conf:" in message, message
    assert len(message) <= 1000


def test_fifty_concurrent_reviews_all_answered_with_their_uids(hook: Webhook, work: Path) -> None:
    """50 reviews at once (parse and nginx -t, good and bad) each get their own uid and the right verdict."""
    conf = nginx_conf(8080, "v1", work / "nginx")

    def one(i: int) -> tuple[int, bool, bool]:
        if i % 3 == 0:
            doc = review(f"c-{i}", profile="nginx", data={"nginx.conf": conf})
            expected = True
        else:
            expected = i % 3 == 1
            doc = review(f"c-{i}", profile="yaml", data={"a.yaml": "a: 1\n" if expected else "a: [\n"})
        return i, expected, hook.review(doc)["allowed"]  # review() asserts the uid matches

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(one, range(50)))
    assert len(results) == 50
    assert all(allowed == expected for _, expected, allowed in results), results


# --------------------------------------------------------------------------- UPDATE: the old profile still applies


def test_update_dropping_the_yaml_profile_is_judged_under_the_old_one(hook: Webhook) -> None:
    """An UPDATE that removes the annotation and breaks the YAML is denied under the old object's profile."""
    old = configmap("yaml", {"app.yaml": "a: 1\n"})
    resp = hook.review(review("drop-yaml", data={"app.yaml": "a: [\n"}, operation="UPDATE", old=old), timeout="10s")
    assert resp["allowed"] is False, resp
    message = resp["status"]["message"]
    assert message.startswith("profile changed from 'yaml' to (none); judged under both: profile 'yaml': "), message
    assert "app.yaml:2:1: invalid YAML" in message, message
    # the same UPDATE with good content goes through, with a warning kubectl prints
    resp = hook.review(review("drop-yaml-ok", data={"app.yaml": "a: 2\n"}, operation="UPDATE", old=old))
    assert resp["allowed"] is True and "profile changed from 'yaml' to (none)" in resp["warnings"][0], resp


def test_update_dropping_the_nginx_profile_is_judged_under_the_old_one(hook: Webhook, work: Path) -> None:
    """An UPDATE that removes the annotation and breaks nginx.conf is denied by `nginx -t`, naming the old profile."""
    conf = nginx_conf(8080, "v1", work / "nginx")
    broken = conf.replace("worker_connections 64;", "worker_connections 64")
    old = configmap("nginx", {"nginx.conf": conf})
    resp = hook.review(review("drop-nginx", data={"nginx.conf": broken}, operation="UPDATE", old=old), timeout="10s")
    assert resp["allowed"] is False, resp
    message = resp["status"]["message"]
    assert message.startswith("profile changed from 'nginx' to (none); judged under both: profile 'nginx': "), message
    assert "[emerg]" in message and "in nginx.conf:" in message, message


def test_update_to_a_weaker_profile_must_still_pass_the_old_one(hook: Webhook, work: Path) -> None:
    """nginx -> yaml with a broken nginx.conf is denied by the old profile; content good under both is allowed."""
    conf = nginx_conf(8080, "v1", work / "nginx")
    broken = conf.replace("worker_connections 64;", "worker_connections 64")
    old = configmap("nginx", {"nginx.conf": conf})
    doc = review("weaker", profile="yaml", data={"nginx.conf": broken}, operation="UPDATE", old=old)
    resp = hook.review(doc, timeout="10s")
    assert resp["allowed"] is False, resp
    message = resp["status"]["message"]
    assert message.startswith("profile changed from 'nginx' to 'yaml'; judged under both: profile 'nginx': "), message
    assert "profile 'yaml'" not in message, message  # the new profile had nothing against it
    resp = hook.review(review("weaker-ok", profile="yaml", data={"nginx.conf": conf}, operation="UPDATE", old=old))
    assert resp["allowed"] is True and "checked under both" in resp["warnings"][0], resp
    # the reverse (yaml -> nginx) is judged under both as well: broken YAML is refused by the old profile
    doc = review("stronger", profile="nginx", data={"nginx.conf": conf, "a.yaml": "a: [\n"}, operation="UPDATE")
    doc["request"]["oldObject"] = configmap("yaml", {"a.yaml": "a: 1\n"})
    message = hook.review(doc)["status"]["message"]
    assert "from 'yaml' to 'nginx'" in message and "profile 'yaml': a.yaml:2:1: invalid YAML" in message, message


def test_update_from_a_profile_this_webhook_does_not_know_is_judged_under_the_new_one(hook: Webhook) -> None:
    """An old profile since removed from the profiles file cannot be applied: a warning says so (no lock-out)."""
    old = configmap("retired", {"app.yaml": "a: 1\n"})
    resp = hook.review(review("retired", profile="yaml", data={"app.yaml": "a: 2\n"}, operation="UPDATE", old=old))
    assert resp["allowed"] is True and "old profile is unknown here" in resp["warnings"][0], resp


# --------------------------------------------------------------------------- the caller's deadline


def _clear_pids(work: Path) -> None:
    for path in (work / "pids").iterdir():
        path.unlink()


def _pids(work: Path) -> set[int]:
    return {int(path.name) for path in (work / "pids").iterdir()}


def _gone(pid: int) -> bool:
    """Killed: no such process, or a zombie its parent has not reaped yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _listening(hook: Webhook) -> dict[str, int]:
    event = hook.events("webhook_listening")[-1]
    return {"concurrency": int(event["concurrency"]), "queue_length": int(event["queue_length"])}


def test_checker_that_never_ends_is_answered_within_the_callers_timeout(hook: Webhook, work: Path) -> None:
    """Under ?timeout=2s a checker that never ends (its profile allows 25 s) is killed and the review denied
    saying the API server's time ran out, long before the profile's own timeout."""
    _clear_pids(work)
    before = hook.answers()
    start = time.monotonic()
    resp = hook.review(review("slow-1", profile="slow", data={"a.txt": "x"}), timeout="2s")
    elapsed = time.monotonic() - start
    assert resp["allowed"] is False, resp
    message = resp["status"]["message"]
    assert message.startswith("profile 'slow': checker 'sh' did not finish within "), message
    assert "(what was left of the API server's ?timeout=2s); killed" in message, message
    assert elapsed < 10, elapsed  # target 2.5 s; anything near 25 s would be the profile's timeout
    (pid,) = _pids(work)
    wait_for(lambda: _gone(pid), 10, what=f"checker {pid} to be killed")
    assert hook.answers()["checker_deadline"] == before["checker_deadline"] + 1


def test_eight_slow_reviews_leave_room_for_a_good_one(hook: Webhook, work: Path) -> None:
    """8 never-ending checkers under ?timeout=2s at once, then a good nginx review: it is allowed within its own
    timeout; each slow one that got a slot at once is denied at its deadline, the others are answered 503."""
    concurrency = _listening(hook)["concurrency"]
    _clear_pids(work)
    conf = nginx_conf(8080, "v1", work / "nginx")
    with ThreadPoolExecutor(8) as pool:
        slow = [
            pool.submit(hook.post, review(f"slow-{i}", profile="slow", data={"a.txt": str(i)}), "2s") for i in range(8)
        ]
        wait_for(lambda: len(_pids(work)) >= min(8, concurrency), 10, what="every checker slot busy")
        start = time.monotonic()
        good = hook.review(review("good-after-slow", profile="nginx", data={"nginx.conf": conf}), timeout="10s")
        elapsed = time.monotonic() - start
        answers = [f.result(30) for f in slow]
    assert good == {"uid": "good-after-slow", "allowed": True}
    assert elapsed < 10, elapsed
    for status, body in answers:
        if status == 200:
            message = json.loads(body)["response"]["status"]["message"]
            assert "the API server's ?timeout=2s" in message, message
        else:
            # no slot in time, or one so late that the deadline cut its checker short: the queue's fault, a 503
            assert status == 503 and b"the API server's ?timeout=2s" in body and b"try again" in body, body
    pids = _pids(work)
    wait_for(lambda: all(_gone(pid) for pid in pids), 10, what=f"checkers {pids} to be killed")


def test_time_lost_waiting_for_a_checker_slot_is_never_a_denial(hook: Webhook) -> None:
    """3 x the checker slots of reviews at once, under ?timeout=10s (9 s to answer), of a checker that passes
    after 6 s (its profile allows 8 s): the first wave is allowed; a review that got its slot only after
    waiting has less than 3 s left, so its checker is killed at the API server's deadline. The time was lost in
    the webhook's queue, not the content's fault: 503 (the API server applies failurePolicy), never a denial."""
    concurrency = _listening(hook)["concurrency"]
    before = hook.answers()
    n = 3 * concurrency
    with ThreadPoolExecutor(n) as pool:
        answers = list(
            pool.map(lambda i: hook.post(review(f"six-{i}", profile="six", data={"a.txt": str(i)}), "10s"), range(n))
        )
    allowed, unjudged = 0, []
    for status, body in answers:
        if status == 200:
            resp = json.loads(body)["response"]
            message = resp.get("status", {}).get("message", "")
            # A denial only if the checker had its profile's whole 8 s (a machine too busy to run it in time).
            assert resp["allowed"] or "(profile 'six' timeout_s); killed" in message, message
            allowed += resp["allowed"]
        else:
            assert status == 503, (status, body)
            unjudged.append(json.loads(body)["message"])
    assert allowed >= 1 and len(unjudged) >= concurrency, (allowed, unjudged)
    for message in unjudged:
        assert "the API server's ?timeout=10s" in message and "try again" in message, message
    after = hook.answers()
    assert after["checker_deadline"] == before["checker_deadline"], "no denial at the caller's deadline"
    assert after["queue_timeout"] - before["queue_timeout"] == len(unjudged)


def test_client_that_disconnects_cancels_its_review(hook: Webhook, work: Path) -> None:
    """Closing the connection while the checker runs kills the checker (its profile would allow 25 s)."""
    _clear_pids(work)
    before = hook.answers()
    conn = hook.connect()
    body = json.dumps(review("gone", profile="slow", data={"a.txt": "x"})).encode()
    conn.request("POST", "/validate?timeout=30s", body=body, headers={"Content-Type": "application/json"})
    pid = wait_for(lambda: max(_pids(work), default=0), 10, what="the checker to start")
    conn.close()
    wait_for(lambda: _gone(pid), 10, what=f"checker {pid} to be killed once its client went away")
    wait_for(lambda: hook.answers()["cancelled"] == before["cancelled"] + 1, 10, what="the cancellation counted")
    assert [e["outcome"] for e in hook.events("review_not_judged")][-1] == "cancelled"


# --------------------------------------------------------------------------- the sidecar's limits


def test_configmap_over_the_sidecars_limits_is_denied_with_the_sidecars_reason(hook: Webhook, tmp_path: Path) -> None:
    """20,000 keys (the sidecar reads at most 10,000 files) and 5 x 60 KB (over its total) are denied at once,
    with the very reason a sidecar reading the same ConfigMap from its volume gives."""
    cases = {
        "many": {f"k{i:05d}": "x" for i in range(20_000)},
        "big": {f"{c}.txt": c * 60_000 for c in "abcde"},
    }
    for name, data in cases.items():
        volume = tmp_path / name
        project(volume, data)
        snap = read_snapshot(volume, max_file_bytes=MAX_FILE_BYTES, max_total_bytes=MAX_TOTAL_BYTES)
        sidecar = asyncio.run(validate(snap, Checks((ValidatorSpec("none"),))))
        assert not sidecar.ok
        start = time.monotonic()
        resp = hook.review(review(name, profile="ok", data=data), timeout="10s")
        elapsed = time.monotonic() - start
        assert resp["allowed"] is False, resp
        assert resp["status"]["message"] == f"profile 'ok': {sidecar.reason}"
        assert elapsed < 10, elapsed
    assert "more than 10000 files" in hook.review(review("m", profile="ok", data=cases["many"]))["status"]["message"]


# --------------------------------------------------------------------------- answers that are not verdicts


def _stalled(hook: Webhook, timeout: str) -> ssl.SSLSocket:
    """A connection that sends a review's headers and never its body."""
    raw = socket.create_connection(("127.0.0.1", hook.port), timeout=10)
    sock = hook.context.wrap_socket(raw, server_hostname="127.0.0.1")
    head = f"POST /validate?timeout={timeout} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    sock.sendall(head.encode() + b"Content-Length: 1000\r\n\r\n")
    return sock


def test_every_answer_that_is_not_a_verdict_is_counted_and_logged(hook: Webhook, work: Path) -> None:
    """Bad ?timeout=, a stalled body, 413, no slot before the deadline, a full queue, clients gone: each answered
    as documented, logged with its reason and counted in reload_sidecar_webhook_answers_total{outcome}."""
    limits = _listening(hook)
    concurrency = limits["concurrency"]
    good = review("good", profile="yaml", data={"a.yaml": "a: 1\n"})
    before = hook.answers()
    # Go durations as the API server writes them are taken; anything else is a 400
    for value in ("10s", "1m30s", "1.5s", "2m", "1h", "9000ms"):
        assert hook.review(good, timeout=value)["allowed"] is True, value
    for value in ("10", "ten", "10%20s", "-5s", "0", "1x", "1s&timeout=2s"):
        status, text = hook.post(good, value)
        assert status == 400 and b"?timeout=" in text, (value, status, text)
    sock = _stalled(hook, "1s")
    try:
        assert b"400 Bad Request" in sock.recv(4096)  # the body did not arrive in time
    finally:
        sock.close()
    assert hook.request("POST", "/validate", b"x" * (9 << 20))[0] == 413
    # every checker slot busy until its 5 s deadline: a review that must answer within 1 s gets no slot
    _clear_pids(work)
    conf = nginx_conf(8080, "v1", work / "nginx")
    with ThreadPoolExecutor(concurrency) as pool:
        slow = [
            pool.submit(hook.post, review(f"hold-{i}", profile="slow", data={"a.txt": str(i)}), "5s")
            for i in range(concurrency)
        ]
        wait_for(lambda: len(_pids(work)) == concurrency, 10, what="every checker slot busy")
        status, body = hook.post(review("late", profile="nginx", data={"nginx.conf": conf}), "1s")
        assert status == 503, body
        answer = json.loads(body)
        assert answer["kind"] == "Status" and answer["code"] == 503, answer
        assert "no checker slot became free before the API server's ?timeout=1s ran out" in answer["message"]
        assert all(f.result(30)[0] == 200 for f in slow)
    # fill the queue with clients that never send their body; one more is refused at once
    full = limits["concurrency"] + limits["queue_length"]
    stalled = [_stalled(hook, "30s") for _ in range(full)]
    try:
        wait_for(lambda: hook.metrics()["reload_sidecar_webhook_reviews_in_flight"] == full, 20, what="queue full")
        status, body = hook.post(good, "10s")
        assert status == 503 and b"reviews in progress" in body, (status, body)
    finally:
        for s in stalled:
            s.close()
    wait_for(lambda: hook.metrics()["reload_sidecar_webhook_reviews_in_flight"] == 0, 20, what="queue drained")
    assert hook.review(good, timeout="10s")["allowed"] is True
    after = hook.answers()
    delta = {k: after[k] - before[k] for k in after if after[k] != before[k]}
    assert delta == {
        "allowed": 7,
        "bad_request": 8,
        "too_large": 1,
        "checker_deadline": concurrency,
        "queue_timeout": 1,
        "queue_full": 1,
        "cancelled": full,
    }, delta
    logged = {e["outcome"] for e in hook.events("review_not_judged") if e.get("reason")}
    assert {"bad_request", "too_large", "queue_timeout", "queue_full", "cancelled"} <= logged, logged


def test_metrics_pass_promtool(hook: Webhook, tmp_path: Path) -> None:
    """The webhook's /metrics (same TLS port) is valid Prometheus text with every outcome exported."""
    status, body = hook.request("GET", "/metrics")
    assert status == 200
    done = subprocess.run([promtool_bin(), "check", "metrics"], input=body, capture_output=True, timeout=30)
    assert done.returncode == 0, done
    assert set(hook.answers()) >= {"allowed", "denied", "checker_deadline", "queue_full", "error"}


def test_certificate_rotated_while_running(pki: Path, tmp_path: Path) -> None:
    """A new pair swapped into the Secret volume is served to the next connection; a half-written pair never is."""
    ca = pki / "ca.crt"
    pairs = {n: issue(ca, tmp_path / "pki", f"webhook-v{n}", 1000 * n + n) for n in (1, 2, 3)}

    def payload(cert_of: int, key_of: int) -> dict[str, bytes]:
        return {"tls.crt": pairs[cert_of][0].read_bytes(), "tls.key": pairs[key_of][1].read_bytes()}

    volume = tmp_path / "tls"
    project(volume, payload(1, 1))
    (tmp_path / "profiles.yaml").write_text("profiles:\n  yaml:\n    validate: [auto]\n")
    wh = Webhook(tmp_path, ca, volume / "tls.crt", volume / "tls.key", tmp_path / "profiles.yaml").start()
    try:
        assert wh.peer_cert() == wh.peer_cert("localhost") == (1001, "webhook-v1")
        kept = wh.connect()  # a keep-alive connection made with the old pair
        doc = review("kept", profile="yaml", data={"a.yaml": "a: 1\n"})
        assert wh.review(doc, kept)["allowed"] is True

        project(volume, payload(2, 2))
        assert wh.peer_cert() == (2002, "webhook-v2")  # the very next handshake
        assert wh.peer_cert("localhost") == (2002, "webhook-v2")  # with SNI too
        assert wh.review(doc, kept)["allowed"] is True  # the old connection is not dropped

        project(volume, payload(3, 2))  # a writer that renews the cert before the key
        assert wh.peer_cert() == (2002, "webhook-v2")
        assert wh.events("tls_reload_failed"), wh.log_tail()
        project(volume, payload(3, 3))
        assert wh.peer_cert() == (3003, "webhook-v3")
        assert [e["reloads"] for e in wh.events("tls_reloaded")] == [1, 2]
        kept.close()
    finally:
        assert wh.stop() == 0, wh.log_tail()


def _refused(wh: Webhook) -> bool:
    try:
        wh.connect().close()
    except ConnectionRefusedError:
        return True
    return False


def test_sigterm_answers_reviews_in_flight_then_exits_0(pki: Path, tmp_path: Path) -> None:
    """On SIGTERM the listener closes at once, a review already running is still answered, and the exit is 0."""
    started = tmp_path / "checker-started"
    (tmp_path / "profiles.yaml").write_text(
        f"profiles:\n  slow:\n    command: sh -c 'touch {started}; sleep 1' {{dir}}\n"
    )
    wh = Webhook(tmp_path, pki / "ca.crt", pki / "webhook-v1.crt", pki / "webhook-v1.key", tmp_path / "profiles.yaml")
    wh.start()
    try:
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(wh.review, review("in-flight", profile="slow", data={"a.txt": "x"}))
            wait_for(started.exists, 10, what="the checker to start")
            assert wh.proc is not None
            wh.proc.send_signal(signal.SIGTERM)
            wait_for(lambda: _refused(wh), 5, what="the listener to close")
            assert answer.result(10) == {"uid": "in-flight", "allowed": True}
        assert wh.proc.wait(10) == 0, wh.log_tail()
    finally:
        wh.stop()


def test_bad_profiles_file_is_a_startup_error_listing_every_problem(pki: Path, tmp_path: Path) -> None:
    """Each bad profile is named with why; missing TLS files are reported with them; exit status 2."""
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(
        "profiles:\n"
        "  a: {validate: [auto, xml]}\n"
        "  b: {command: nginx -t}\n"
        "  c: {timeout_s: 60}\n"
        "  d: {timeout: 5}\n"
        "  e: {command: 'no-such-checker-xyz {dir}'}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELOAD_")}
    env |= {
        "RELOAD_WEBHOOK_PROFILES": str(profiles),
        "RELOAD_WEBHOOK_CERT": str(tmp_path / "missing.crt"),
        "RELOAD_WEBHOOK_KEY": str(pki / "webhook-v1.key"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "sidecar", "webhook"], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2, done
    err = done.stderr
    assert "profiles.a: validate: unknown validator 'xml'" in err, err
    assert "profiles.b: command 'nginx -t' has no {dir}" in err, err
    assert "profiles.c: timeout_s: expected seconds in [0.1, 29]" in err, err
    assert "profiles.d: unknown field(s) timeout" in err, err
    assert "profiles.e: command: 'no-such-checker-xyz' not found on PATH" in err, err
    assert "missing.crt" in err and "cannot load the pair" in err, err
    assert "Traceback" not in err


def test_manifest_profiles_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The profiles ConfigMap in manifests/webhook/ is a valid profiles file (yaml and nginx profiles)."""
    manifest = Path(__file__).resolve().parents[2] / "manifests" / "webhook" / "profiles.yaml"
    (tmp_path / "profiles.yaml").write_text(yaml.safe_load(manifest.read_text())["data"]["profiles.yaml"])
    monkeypatch.setenv("PATH", os.environ.get("PATH", "") + os.pathsep + str(Path(nginx_bin()).parent))
    profiles = load_profiles(tmp_path / "profiles.yaml")
    assert sorted(profiles) == ["nginx", "yaml"]
    assert profiles["nginx"].checks.command[:2] == ("nginx", "-t") and profiles["nginx"].checks.timeout_s == 5
