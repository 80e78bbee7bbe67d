"""`Settings.from_env`: every `RELOAD_*` variable parsed, every bad one reported at once."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar.cli import main
from sidecar.settings import ENV_VARS, Expect, MetricCheck, Settings, SettingsError, Stagger, ValidatorSpec

BASE = {"RELOAD_SOURCE_DIR": "/cm", "RELOAD_TARGET_DIR": "/app-config"}

# (variable, valid raw value, Settings attribute, expected parsed value, other variables it needs)
VALID: list[tuple[str, str, str, object, dict[str, str]]] = [
    ("RELOAD_SOURCE_DIR", "/etc/cm", "source_dir", Path("/etc/cm"), {}),
    ("RELOAD_TARGET_DIR", "/srv/conf", "target_dir", Path("/srv/conf"), {}),
    ("RELOAD_INCLUDE", "*.yaml, conf.d/*", "include", ("*.yaml", "conf.d/*"), {}),
    ("RELOAD_EXCLUDE", "*.bak,,secret*", "exclude", ("*.bak", "secret*"), {}),
    ("RELOAD_DEBOUNCE_MS", "750", "debounce_ms", 750, {}),
    ("RELOAD_RESYNC_S", "0", "resync_s", 0.0, {}),
    ("RELOAD_MAX_FILE_BYTES", "2048", "max_file_bytes", 2048, {}),
    ("RELOAD_MAX_TOTAL_BYTES", "8192", "max_total_bytes", 8192, {}),
    ("RELOAD_VALIDATE", "yaml, json", "validators", (ValidatorSpec("yaml"), ValidatorSpec("json")), {}),
    (
        "RELOAD_VALIDATE_COMMAND",
        "nginx -t -c '{dir}/my nginx.conf'",
        "validate_command",
        ("nginx", "-t", "-c", "{dir}/my nginx.conf"),
        {},
    ),
    ("RELOAD_VALIDATE_TIMEOUT_S", "2.5", "validate_timeout_s", 2.5, {}),
    ("RELOAD_VALIDATE_ENV", "HTTPS_PROXY, NO_PROXY", "validate_env", ("HTTPS_PROXY", "NO_PROXY"), {}),
    ("RELOAD_RELOAD_URL", "http://127.0.0.1:9090/-/reload", "reload_url", "http://127.0.0.1:9090/-/reload", {}),
    ("RELOAD_RELOAD_METHOD", "put", "reload_method", "PUT", {}),
    ("RELOAD_RELOAD_EXPECT", "200,204", "reload_expect", Expect(frozenset({200, 204}), frozenset()), {}),
    ("RELOAD_RELOAD_TIMEOUT_S", "0.5", "reload_timeout_s", 0.5, {}),
    ("RELOAD_RELOAD_RETRIES", "0", "reload_retries", 0, {}),
    ("RELOAD_SIGNAL", "hup", "signal", signal.SIGHUP, {"RELOAD_PROCESS": "nginx"}),
    ("RELOAD_PROCESS", "nginx", "process", "nginx", {"RELOAD_SIGNAL": "SIGHUP"}),
    ("RELOAD_PIDFILE", "/run/app.pid", "pidfile", Path("/run/app.pid"), {"RELOAD_SIGNAL": "SIGUSR1"}),
    ("RELOAD_RESTART", "True", "restart", True, {"RELOAD_PROCESS": "app"}),
    ("RELOAD_RESTART_SIGNAL", "int", "restart_signal", signal.SIGINT, {"RELOAD_RESTART": "1", "RELOAD_PROCESS": "a"}),
    ("RELOAD_RESTART_GRACE_S", "0", "restart_grace_s", 0.0, {"RELOAD_RESTART": "yes", "RELOAD_PIDFILE": "/a.pid"}),
    ("RELOAD_RESTART_WAIT_S", "600", "restart_wait_s", 600.0, {"RELOAD_RESTART": "on", "RELOAD_PROCESS": "app"}),
    (
        "RELOAD_RESTART_MIN_INTERVAL_S",
        "0",
        "restart_min_interval_s",
        0.0,
        {"RELOAD_RESTART": "true", "RELOAD_PROCESS": "app"},
    ),
    ("RELOAD_PROOF", "Workers", "proof", "workers", {"RELOAD_SIGNAL": "HUP", "RELOAD_PROCESS": "nginx"}),
    ("RELOAD_PROOF_TIMEOUT_S", "2.5", "proof_timeout_s", 2.5, {}),
    (
        "RELOAD_PROOF_METRIC",
        "prometheus_config",
        "proof_metric",
        "prometheus_config",
        {"RELOAD_PROOF_URL": "http://127.0.0.1:9090/metrics"},
    ),
    ("RELOAD_PROOF_URL", "http://127.0.0.1:9090/metrics", "proof_url", "http://127.0.0.1:9090/metrics", {}),
    ("RELOAD_APP_ERROR_LOG", "/var/log/nginx/error.log", "app_error_log", Path("/var/log/nginx/error.log"), {}),
    ("RELOAD_HEALTH_URL", "https://localhost:8443/healthz", "health_url", "https://localhost:8443/healthz", {}),
    ("RELOAD_HEALTH_SUCCESSES", "5", "health_successes", 5, {}),
    ("RELOAD_HEALTH_INTERVAL_S", "0.25", "health_interval_s", 0.25, {}),
    ("RELOAD_HEALTH_TIMEOUT_S", "12", "health_timeout_s", 12.0, {}),
    (
        "RELOAD_HEALTH_METRIC_URL",
        "http://127.0.0.1:9090/metrics",
        "health_metric_url",
        "http://127.0.0.1:9090/metrics",
        {"RELOAD_HEALTH_METRIC": "up==1"},
    ),
    (
        "RELOAD_HEALTH_METRIC",
        'prometheus_config_last_reload_successful{job="p"}==1',
        "health_metric",
        MetricCheck("prometheus_config_last_reload_successful", (("job", "p"),), "==", 1.0),
        {"RELOAD_HEALTH_METRIC_URL": "http://127.0.0.1:9090/metrics"},
    ),
    ("RELOAD_STAGGER", "ordinal:15", "stagger", Stagger("ordinal", 15.0), {"RELOAD_POD_NAME": "web-2"}),
    ("RELOAD_POD_NAME", "web-0", "pod_name", "web-0", {}),
    ("RELOAD_PEERS", "a:9533, [::1]:9533", "peers", (("a", 9533), ("::1", 9533)), {}),
    ("RELOAD_BAKE_S", "0", "bake_s", 0.0, {}),
    ("RELOAD_PEER_TIMEOUT_S", "2.5", "peer_timeout_s", 2.5, {}),
    ("RELOAD_PEER_FORGET_S", "90", "peer_forget_s", 90.0, {}),
    ("RELOAD_LISTEN", "127.0.0.1:9000", "listen", ("127.0.0.1", 9000), {}),
    ("RELOAD_HISTORY", "0", "history", 0, {}),
    ("RELOAD_LOG_FORMAT", "Console", "log_format", "console", {}),
    ("RELOAD_LOG_LEVEL", "DEBUG", "log_level", "debug", {}),
    ("RELOAD_WEBHOOK_LISTEN", ":8443", "webhook_listen", ("0.0.0.0", 8443), {}),
    ("RELOAD_WEBHOOK_CERT", "/tls/tls.crt", "webhook_cert", Path("/tls/tls.crt"), {}),
    ("RELOAD_WEBHOOK_KEY", "/tls/tls.key", "webhook_key", Path("/tls/tls.key"), {}),
    ("RELOAD_WEBHOOK_PROFILES", "/etc/profiles.yaml", "webhook_profiles", Path("/etc/profiles.yaml"), {}),
]

# Variables that take any non-empty string: no invalid value exists for them.
FREE_FORM = {
    "RELOAD_SOURCE_DIR",
    "RELOAD_TARGET_DIR",
    "RELOAD_INCLUDE",
    "RELOAD_EXCLUDE",
    "RELOAD_PROCESS",
    "RELOAD_PIDFILE",
    "RELOAD_APP_ERROR_LOG",
    "RELOAD_POD_NAME",
    "RELOAD_WEBHOOK_CERT",
    "RELOAD_WEBHOOK_KEY",
    "RELOAD_WEBHOOK_PROFILES",
}

# (variable, invalid raw value, words the reason must contain)
INVALID: list[tuple[str, str, str]] = [
    ("RELOAD_DEBOUNCE_MS", "fast", "integer"),
    ("RELOAD_DEBOUNCE_MS", "600001", "[0, 600000]"),
    ("RELOAD_RESYNC_S", "-1", "[0, inf]"),
    ("RELOAD_MAX_FILE_BYTES", "0", "[1, inf]"),
    ("RELOAD_MAX_TOTAL_BYTES", "4MB", "integer"),
    ("RELOAD_VALIDATE", "xml", "unknown validator 'xml'"),
    ("RELOAD_VALIDATE", "none,yaml", "'none' cannot be combined"),
    ("RELOAD_VALIDATE", "schema:/nonexistent/schema.json", "does not exist"),
    ("RELOAD_VALIDATE_COMMAND", "check 'unterminated {dir}", "cannot split"),
    ("RELOAD_VALIDATE_ENV", "HTTPS-PROXY", "'HTTPS-PROXY' is not an environment variable name"),
    ("RELOAD_VALIDATE_TIMEOUT_S", "0", "[0.1, inf]"),
    ("RELOAD_RELOAD_URL", "localhost:9090/-/reload", "http:// or https://"),
    ("RELOAD_RELOAD_METHOD", "FETCH", "HTTP method"),
    ("RELOAD_RELOAD_EXPECT", "ok", "not a status"),
    ("RELOAD_RELOAD_EXPECT", "600", "not a status"),
    ("RELOAD_RELOAD_TIMEOUT_S", "soon", "a number"),
    ("RELOAD_RELOAD_RETRIES", "101", "[0, 100]"),
    ("RELOAD_SIGNAL", "SIGFOO", "signal name"),
    ("RELOAD_RESTART", "maybe", "true or false"),
    ("RELOAD_RESTART_SIGNAL", "SIGNOPE", "signal name"),
    ("RELOAD_RESTART_GRACE_S", "-1", "[0, 3600]"),
    ("RELOAD_RESTART_WAIT_S", "0.5", "[1, 3600]"),
    ("RELOAD_RESTART_MIN_INTERVAL_S", "-1", "[0, 86400]"),
    ("RELOAD_PROOF", "health", "expected one of auto, workers, metric, http, process, marker, none"),
    ("RELOAD_PROOF_TIMEOUT_S", "0", "[0.1, 3600]"),
    ("RELOAD_PROOF_METRIC", "prometheus-config", "metric name prefix"),
    ("RELOAD_PROOF_URL", "localhost:9090/metrics", "http:// or https://"),
    ("RELOAD_HEALTH_URL", "ftp://x/healthz", "http:// or https://"),
    ("RELOAD_HEALTH_SUCCESSES", "0", "[1, 1000]"),
    ("RELOAD_HEALTH_INTERVAL_S", "0", "[0.01, inf]"),
    ("RELOAD_HEALTH_TIMEOUT_S", "0.01", "[0.1, inf]"),
    ("RELOAD_HEALTH_METRIC_URL", "127.0.0.1:9090/metrics", "http:// or https://"),
    ("RELOAD_HEALTH_METRIC", "reload is fine", "name{labels}<op>number"),
    ("RELOAD_HEALTH_METRIC", "up==1e", "name{labels}<op>number"),  # the number must be one
    ("RELOAD_STAGGER", "sometimes", "expected none, random:<max_s>"),
    ("RELOAD_STAGGER", "random:soon", "random:<seconds>"),
    ("RELOAD_STAGGER", "ordinal:-5", ">= 0"),
    ("RELOAD_PEERS", "peers.ns.svc", "host:port"),
    ("RELOAD_BAKE_S", "-1", "[0, inf]"),
    ("RELOAD_PEER_TIMEOUT_S", "0", "[0.05, 60]"),
    ("RELOAD_PEER_FORGET_S", "soon", "expected a number"),
    ("RELOAD_LISTEN", "9533", "host:port"),
    ("RELOAD_LISTEN", "0.0.0.0:70000", "host:port"),
    ("RELOAD_HISTORY", "1001", "[0, 1000]"),
    ("RELOAD_LOG_FORMAT", "xml", "json, console"),
    ("RELOAD_LOG_LEVEL", "trace", "debug, info, warning, error"),
    ("RELOAD_WEBHOOK_LISTEN", "localhost", "host:port"),
]


def _problems(env: dict[str, str], *, require_dirs: bool = True) -> tuple[str, ...]:
    with pytest.raises(SettingsError) as exc:
        Settings.from_env(env, require_dirs=require_dirs)
    return exc.value.problems


def test_defaults_match_the_design() -> None:
    """With only the two required directories, every other field has the documented default."""
    s = Settings.from_env(BASE)
    assert (s.source_dir, s.target_dir) == (Path("/cm"), Path("/app-config"))
    assert s.include == ("*",) and s.exclude == ()
    assert (s.debounce_ms, s.resync_s) == (200, 60.0)
    assert (s.max_file_bytes, s.max_total_bytes) == (1_048_576, 4_194_304)
    assert s.validators == (ValidatorSpec("auto"),)
    assert s.validate_command == () and s.validate_timeout_s == 10.0
    assert (s.reload_url, s.reload_method, s.reload_timeout_s, s.reload_retries) == ("", "POST", 5.0, 3)
    assert str(s.reload_expect) == "2xx" and s.reload_expect.accepts(204) and not s.reload_expect.accepts(301)
    assert (s.signal, s.process, s.pidfile) == (None, "", None)
    assert (s.restart, s.restart_signal, s.restart_grace_s, s.restart_wait_s) == (False, signal.SIGTERM, 30.0, 330.0)
    assert (s.health_url, s.health_successes, s.health_interval_s, s.health_timeout_s) == ("", 3, 1.0, 30.0)
    assert (s.health_metric_url, s.health_metric) == ("", None)
    assert s.stagger == Stagger("none", 0.0)
    assert (s.pod_name, s.peers, s.bake_s) == ("", (), 30.0)
    assert s.listen == ("0.0.0.0", 9533) and s.webhook_listen == ("0.0.0.0", 8443)
    assert (s.history, s.log_format, s.log_level) == (5, "json", "info")
    assert (s.webhook_cert, s.webhook_key, s.webhook_profiles) == (None, None, None)


def test_tables_cover_every_variable() -> None:
    """Every variable in ENV_VARS has a valid case, and an invalid case unless it is free-form text."""
    assert {row[0] for row in VALID} == set(ENV_VARS)
    assert {row[0] for row in INVALID} | FREE_FORM == set(ENV_VARS)
    assert all(name.startswith("RELOAD_") for name in ENV_VARS)


@pytest.mark.parametrize(("name", "raw", "attr", "expected", "extra"), VALID, ids=[row[0] for row in VALID])
def test_valid_value_is_parsed(name: str, raw: str, attr: str, expected: object, extra: dict[str, str]) -> None:
    """A valid value of each variable ends up, parsed and typed, in its Settings field."""
    s = Settings.from_env({**BASE, **extra, name: raw})
    assert getattr(s, attr) == expected


@pytest.mark.parametrize(("name", "raw", "why"), INVALID, ids=[f"{n}={r}" for n, r, _ in INVALID])
def test_invalid_value_is_reported_with_name_and_raw_value(name: str, raw: str, why: str) -> None:
    """An invalid value yields a problem `NAME='raw': why` that says what was expected."""
    extra = {"RELOAD_HEALTH_METRIC_URL": "http://127.0.0.1:1/metrics"} if name == "RELOAD_HEALTH_METRIC" else {}
    problems = _problems({**BASE, **extra, name: raw})
    mine = [p for p in problems if p.startswith(f"{name}={raw!r}:")]
    assert len(mine) == 1, problems
    assert why in mine[0]


def test_blank_value_means_unset() -> None:
    """An empty or all-space variable takes the default instead of failing."""
    s = Settings.from_env({**BASE, "RELOAD_HISTORY": "  ", "RELOAD_DEBOUNCE_MS": ""})
    assert (s.history, s.debounce_ms) == (5, 200)


def test_schema_validator_needs_an_existing_file(tmp_path: Path) -> None:
    """`schema:<path>` keeps the path of an existing schema file, in order with the other validators."""
    schema = tmp_path / "schema.json"
    schema.write_text("{}")
    s = Settings.from_env({**BASE, "RELOAD_VALIDATE": f"auto,schema:{schema}"})
    assert s.validators == (ValidatorSpec("auto"), ValidatorSpec("schema", schema))


def test_validate_none_means_no_builtin_validator() -> None:
    """`RELOAD_VALIDATE=none` leaves no built-in validator at all."""
    assert Settings.from_env({**BASE, "RELOAD_VALIDATE": "none"}).validators == ()


def test_stagger_modes() -> None:
    """`none`, `waves`, `random:<max>` and `ordinal:<step>` parse to mode plus seconds."""
    assert Settings.from_env({**BASE, "RELOAD_STAGGER": "random:30"}).stagger == Stagger("random", 30.0)
    waves = Settings.from_env({**BASE, "RELOAD_STAGGER": "waves", "RELOAD_PEERS": "a:1", "RELOAD_POD_NAME": "a"})
    assert waves.stagger == Stagger("waves", 0.0)


def test_expect_classes_and_codes() -> None:
    """`RELOAD_RELOAD_EXPECT=2xx,304` accepts the whole 2xx class plus 304, nothing else."""
    expect = Settings.from_env({**BASE, "RELOAD_RELOAD_EXPECT": "2xx,304"}).reload_expect
    assert [expect.accepts(c) for c in (200, 299, 304, 302, 404, 500)] == [True, True, True, False, False, False]
    assert str(expect) == "2xx,304"


def test_several_bad_variables_are_reported_in_one_error() -> None:
    """Every bad variable is named with its raw value in ONE SettingsError, not just the first."""
    env = {
        **BASE,
        "RELOAD_DEBOUNCE_MS": "soon",
        "RELOAD_HISTORY": "-3",
        "RELOAD_LOG_LEVEL": "loud",
        "RELOAD_RELOAD_URL": "not-a-url",
    }
    with pytest.raises(SettingsError) as exc:
        Settings.from_env(env)
    message = str(exc.value)
    assert len(exc.value.problems) == 4
    for fragment in (
        "RELOAD_DEBOUNCE_MS='soon'",
        "RELOAD_HISTORY='-3'",
        "RELOAD_LOG_LEVEL='loud'",
        "RELOAD_RELOAD_URL='not-a-url'",
    ):
        assert fragment in message


def test_missing_directories_are_required() -> None:
    """Without RELOAD_SOURCE_DIR and RELOAD_TARGET_DIR both are reported as required."""
    problems = _problems({})
    assert any(p.startswith("RELOAD_SOURCE_DIR is required") for p in problems)
    assert any(p.startswith("RELOAD_TARGET_DIR is required") for p in problems)
    assert len(problems) == 2


def test_require_dirs_false_allows_missing_directories() -> None:
    """`require_dirs=False` (the `validate` command) accepts an environment without the directories."""
    s = Settings.from_env({"RELOAD_VALIDATE": "yaml"}, require_dirs=False)
    assert s.validators == (ValidatorSpec("yaml"),)


def test_require_dirs_false_still_reports_bad_values() -> None:
    """`require_dirs=False` only relaxes the directories: other bad values still fail."""
    problems = _problems({"RELOAD_HISTORY": "many"}, require_dirs=False)
    assert problems == ("RELOAD_HISTORY='many': expected an integer",)


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"RELOAD_SIGNAL": "SIGHUP"}, "RELOAD_SIGNAL='SIGHUP': needs RELOAD_PROCESS or RELOAD_PIDFILE"),
        ({"RELOAD_PIDFILE": "/run/app.pid"}, "set without RELOAD_SIGNAL"),
        (
            {"RELOAD_RELOAD_URL": "http://127.0.0.1:1/-/reload", "RELOAD_SIGNAL": "HUP", "RELOAD_PROCESS": "app"},
            "RELOAD_RELOAD_URL and RELOAD_SIGNAL are both set",
        ),
        ({"RELOAD_STAGGER": "waves", "RELOAD_POD_NAME": "web-0"}, "waves mode needs RELOAD_PEERS"),
        ({"RELOAD_STAGGER": "ordinal:5"}, "RELOAD_STAGGER='ordinal:5': needs RELOAD_POD_NAME"),
        ({"RELOAD_STAGGER": "ordinal:5", "RELOAD_POD_NAME": "web"}, "RELOAD_POD_NAME='web': ordinal stagger"),
        ({"RELOAD_VALIDATE_COMMAND": "nginx -t"}, "RELOAD_VALIDATE_COMMAND='nginx -t': has no {dir}"),
        ({"RELOAD_HEALTH_METRIC": "up==1"}, "RELOAD_HEALTH_METRIC_URL and RELOAD_HEALTH_METRIC go together"),
        ({"RELOAD_HEALTH_METRIC_URL": "http://a:1/metrics"}, "go together"),
        ({"RELOAD_MAX_FILE_BYTES": "200", "RELOAD_MAX_TOTAL_BYTES": "100"}, "larger than RELOAD_MAX_TOTAL_BYTES"),
        (
            {"RELOAD_RESTART": "true", "RELOAD_SIGNAL": "HUP", "RELOAD_PROCESS": "app"},
            "RELOAD_RESTART=true and RELOAD_SIGNAL are both set: choose one trigger",
        ),
        (
            {"RELOAD_RESTART": "true", "RELOAD_RELOAD_URL": "http://127.0.0.1:1/-/reload", "RELOAD_PROCESS": "app"},
            "RELOAD_RESTART=true and RELOAD_RELOAD_URL are both set: choose one trigger",
        ),
        ({"RELOAD_RESTART": "true"}, "RELOAD_RESTART=true needs RELOAD_PROCESS or RELOAD_PIDFILE"),
        ({"RELOAD_PROOF": "workers", "RELOAD_RELOAD_URL": "http://a:1/r"}, "RELOAD_PROOF=workers needs RELOAD_SIGNAL"),
        ({"RELOAD_PROOF": "http", "RELOAD_RESTART": "1", "RELOAD_PROCESS": "a"}, "http needs RELOAD_RELOAD_URL"),
        ({"RELOAD_PROOF": "process", "RELOAD_RELOAD_URL": "http://a:1/r"}, "process needs RELOAD_RESTART=true"),
        ({"RELOAD_PROOF": "metric", "RELOAD_PROOF_URL": "http://a:1/metrics"}, "needs RELOAD_PROOF_METRIC"),
        ({"RELOAD_PROOF": "marker", "RELOAD_RELOAD_URL": "http://a:1/r"}, "marker needs RELOAD_PROOF_URL"),
        ({"RELOAD_PROOF_METRIC": "prometheus_config"}, "needs RELOAD_PROOF_URL or RELOAD_HEALTH_METRIC_URL"),
        (
            {"RELOAD_PROOF": "none", "RELOAD_PROOF_METRIC": "x", "RELOAD_PROOF_URL": "http://a:1/m"},
            "RELOAD_PROOF_METRIC is set but RELOAD_PROOF=none",
        ),
        ({"RELOAD_RESTART_GRACE_S": "5"}, "RELOAD_RESTART_GRACE_S is set without RELOAD_RESTART=true"),
        ({"RELOAD_RESTART_MIN_INTERVAL_S": "60"}, "RELOAD_RESTART_MIN_INTERVAL_S is set without RELOAD_RESTART=true"),
        ({"RELOAD_RESTART": "false", "RELOAD_PROCESS": "app"}, "set without RELOAD_SIGNAL or RELOAD_RESTART"),
    ],
    ids=[
        "signal-without-target",
        "pidfile-without-signal",
        "url-and-signal",
        "waves-without-peers",
        "ordinal-without-pod-name",
        "ordinal-pod-name-without-ordinal",
        "command-without-dir",
        "metric-without-url",
        "url-without-metric",
        "file-limit-over-total",
        "restart-and-signal",
        "restart-and-url",
        "restart-without-target",
        "proof-workers-without-signal",
        "proof-http-without-url",
        "proof-process-without-restart",
        "proof-metric-without-prefix",
        "proof-marker-without-url",
        "proof-metric-without-url",
        "proof-metric-with-another-kind",
        "restart-detail-without-restart",
        "restart-interval-without-restart",
        "restart-false-with-process",
    ],
)
def test_cross_checks(env: dict[str, str], fragment: str) -> None:
    """Variables that only make sense together are checked together, with a message saying what to set."""
    problems = _problems({**BASE, **env})
    assert any(fragment in p for p in problems), problems


def test_settings_are_frozen() -> None:
    """Settings cannot be changed after parsing (and have no __dict__ to sneak fields into)."""
    s = Settings.from_env(BASE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.history = 9  # type: ignore[misc]
    assert not hasattr(s, "__dict__")


@pytest.mark.parametrize("raw", ["nan", "NaN"])
def test_nan_is_not_a_number_of_seconds(raw: str) -> None:
    """A NaN duration is refused: it is in no range, and asyncio treats sleep(nan) as sleep(0)."""
    problems = _problems({**BASE, "RELOAD_HEALTH_INTERVAL_S": raw})
    assert any(p.startswith("RELOAD_HEALTH_INTERVAL_S=") for p in problems)


BAD_ENV = {
    "RELOAD_TARGET_DIR": "/tmp/x",
    "RELOAD_DEBOUNCE_MS": "soon",
    "RELOAD_LISTEN": "nowhere",
    "RELOAD_SIGNAL": "SIGNOPE",
}


def _clean_env() -> dict[str, str]:
    """BAD_ENV over our environment; PYTHONPATH makes the console script run this checkout, not an installed one."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELOAD_")}
    return {**env, **BAD_ENV, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}


def _assert_one_message(stderr: str) -> None:
    """One line per problem, each `reload-sidecar: <problem>`, all of them, nothing else."""
    assert stderr.splitlines() == [
        "reload-sidecar: RELOAD_DEBOUNCE_MS='soon': expected an integer",
        "reload-sidecar: RELOAD_SIGNAL='SIGNOPE': expected a signal name such as SIGHUP or SIGUSR1",
        "reload-sidecar: RELOAD_LISTEN='nowhere': expected host:port, e.g. 0.0.0.0:9533",
        "reload-sidecar: RELOAD_SOURCE_DIR is required (a directory path)",
    ]


def test_main_run_with_bad_env_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """`main(["run"])` with bad variables prints one message listing them all and returns 2."""
    assert main(["run"], environ=BAD_ENV) == 2
    out, err = capsys.readouterr()
    assert out == ""
    _assert_one_message(err)


def test_run_with_restart_and_signal_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """The restart trigger combined with a reload trigger is refused at start with exit 2, saying which."""
    env = {**BASE, "RELOAD_RESTART": "true", "RELOAD_SIGNAL": "SIGHUP", "RELOAD_PIDFILE": "/run/app.pid"}
    assert main(["run"], environ=env) == 2
    err = capsys.readouterr().err
    assert "RELOAD_RESTART=true and RELOAD_SIGNAL are both set: choose one trigger" in err and "Traceback" not in err


def test_python_m_sidecar_run_with_bad_env_exits_2() -> None:
    """`python -m sidecar run` with bad variables exits 2 with one stderr message listing all of them."""
    proc = subprocess.run(
        [sys.executable, "-m", "sidecar", "run"], env=_clean_env(), capture_output=True, text=True, timeout=20
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    _assert_one_message(proc.stderr)


def test_console_script_run_with_bad_env_exits_2() -> None:
    """The `reload-sidecar run` console script behaves like `python -m sidecar run` on bad variables."""
    exe = shutil.which("reload-sidecar", path=os.path.dirname(sys.executable)) or shutil.which("reload-sidecar")
    assert exe, f"no reload-sidecar console script beside {sys.executable} nor on PATH: pip install -e ."
    proc = subprocess.run([exe, "run"], env=_clean_env(), capture_output=True, text=True, timeout=20)
    assert proc.returncode == 2, proc.stderr
    _assert_one_message(proc.stderr)


def test_bad_metric_check_is_one_problem_with_the_old_text() -> None:
    """An unparsable RELOAD_HEALTH_METRIC is reported once, as itself, not also as missing its partner."""
    env = {**BASE, "RELOAD_HEALTH_METRIC_URL": "http://a:1/metrics", "RELOAD_HEALTH_METRIC": "reload is fine"}
    assert _problems(env) == (
        "RELOAD_HEALTH_METRIC='reload is fine': expected name{labels}<op>number, "
        "e.g. prometheus_config_last_reload_successful==1",
    )


@pytest.mark.parametrize(("pod", "ordinal"), [("web-3", 3), ("my-app-v2-12", 12), ("web-7f9c8d6b5-x2kqz", None)])
def test_pod_ordinal_is_parsed_with_the_pod_name(pod: str, ordinal: int | None) -> None:
    """The StatefulSet ordinal is read once, with RELOAD_POD_NAME, into the value the stagger gate uses."""
    assert Settings.from_env({**BASE, "RELOAD_POD_NAME": pod}).pod_ordinal == ordinal


def test_metric_check_and_peers_are_typed_values() -> None:
    """The metric check and the peers' host:port are parsed into the values verify and the fleet use."""
    s = Settings.from_env(
        {
            **BASE,
            "RELOAD_HEALTH_METRIC_URL": "http://a:1/metrics",
            "RELOAD_HEALTH_METRIC": "up >= 1",
            "RELOAD_PEERS": "peers.ns.svc:9533",
        }
    )
    assert s.health_metric == MetricCheck("up", (), ">=", 1.0)
    assert s.peers == (("peers.ns.svc", 9533),)
