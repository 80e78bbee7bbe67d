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

import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from sidecar.webhook import load_profiles
from tests.e2e.apps import nginx_bin, nginx_conf
from tests.e2e.sidecar_proc import wait_for
from tests.e2e.webhook_proc import Webhook, issue, make_ca, review
from tests.kubelet import project

HANG_TIMEOUT_S = 1.0


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
    return d


@pytest.fixture(scope="module")
def hook(pki: Path, work: Path) -> Iterator[Webhook]:
    """One webhook with profiles: yaml (parse), nginx (`nginx -t`), hang (a checker that never ends), probe."""
    probe = work / "probe.txt"
    # records the staged dir's mode, its listing and its path (argv, no shell: sh is the checker here)
    probe_cmd = f'sh -c \'{{ stat -c %a "$0"; ls -A "$0"; echo "$0"; }} > {probe}\' {{dir}}'
    profiles = {
        "profiles": {
            "yaml": {"validate": ["auto"]},
            "nginx": {"validate": ["none"], "command": f"{nginx_bin()} -t -q -e stderr -c {{dir}}/nginx.conf"},
            "hang": {"command": 'sh -c "sleep 30" {dir}', "timeout_s": HANG_TIMEOUT_S},
            "probe": {"command": probe_cmd},
        }
    }
    (work / "profiles.yaml").write_text(json.dumps(profiles))  # JSON is YAML
    wh = Webhook(
        work,
        pki / "ca.crt",
        pki / "webhook-v1.crt",
        pki / "webhook-v1.key",
        work / "profiles.yaml",
        RELOAD_MAX_FILE_BYTES="65536",
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
    assert "unknown reload-sidecar profile 'ngnix'" in message and "nginx, probe, yaml" in message, message


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
    assert HANG_TIMEOUT_S * 0.9 <= elapsed < HANG_TIMEOUT_S + 1.0, elapsed
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
