"""The CLI catches set-up mistakes: one stderr line per problem, exit 2, never a traceback.

Each mistake is tried on the real `python -m sidecar` (and the `reload-sidecar` console script where it
matters), its stderr compared line by line. The pure parts (did-you-mean, service links, the `--help`
tables) are unit-tested below.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import sidecar
from sidecar.cli import env_help, main
from sidecar.settings import COMMAND_VARS, ENV_VARS, RETIRED, Settings, SettingsError, env_defaults, unknown_variables
from tests.root import needs_root
from tests.test_readme import _env_table

ROOT = Path(__file__).resolve().parent.parent
# Beside the Python running the tests (a venv's bin/, activated or not), else on PATH.
SCRIPT = shutil.which("reload-sidecar", path=os.path.dirname(sys.executable)) or shutil.which("reload-sidecar")


def _env(**extra: str) -> dict[str, str]:
    """Our environment without RELOAD_*, plus `extra`; PYTHONPATH makes the console script run this checkout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELOAD_")}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


def _cli(
    *args: str, env: dict[str, str], script: bool = False, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    exe = [SCRIPT] if script and SCRIPT else [sys.executable, "-m", "sidecar"]
    return subprocess.run([*exe, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def _lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr.splitlines()


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, str]:
    """A plain source dir with one YAML file and a target path, as RELOAD_SOURCE_DIR / RELOAD_TARGET_DIR."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "app.yaml").write_text("a: 1\n")
    return {"RELOAD_SOURCE_DIR": str(tmp_path / "src"), "RELOAD_TARGET_DIR": str(tmp_path / "target")}


@contextlib.contextmanager
def _busy_port() -> Iterator[int]:
    """A loopback port some other process (here: this one) listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


# --- unknown and retired variables ------------------------------------------------------------------------


@pytest.mark.parametrize("script", [False, True], ids=["python-m", "console-script"])
def test_misspelt_variable_is_one_line_with_did_you_mean(dirs: dict[str, str], tmp_path: Path, script: bool) -> None:
    """`RELOAD_RELOAD_ULR` is refused with the name meant, exit 2, and nothing is promoted."""
    assert SCRIPT or not script, (
        f"no reload-sidecar console script beside {sys.executable} nor on PATH: pip install -e ."
    )
    proc = _cli("once", env=_env(**dirs, RELOAD_RELOAD_ULR="http://127.0.0.1:1/-/reload"), script=script)
    assert (proc.returncode, _lines(proc)) == (
        2,
        ["reload-sidecar: RELOAD_RELOAD_ULR: unknown; did you mean RELOAD_RELOAD_URL?"],
    )
    assert not (tmp_path / "target").exists()


def test_unknown_names_are_reported_with_every_other_problem(tmp_path: Path) -> None:
    """A typo'd name, a bad value and the required variable the typo left unset: all at once, one per line."""
    env = _env(RELOAD_SOURCE_DIRR=str(tmp_path), RELOAD_TARGET_DIR=str(tmp_path / "t"), RELOAD_DEBOUNCE_MS="soon")
    proc = _cli("run", env=env)
    assert (proc.returncode, _lines(proc)) == (
        2,
        [
            "reload-sidecar: RELOAD_SOURCE_DIRR: unknown; did you mean RELOAD_SOURCE_DIR?",
            "reload-sidecar: RELOAD_DEBOUNCE_MS='soon': expected an integer",
            "reload-sidecar: RELOAD_SOURCE_DIR is required (a directory path)",
        ],
    )


def test_a_name_like_none_is_unknown_without_a_guess(dirs: dict[str, str]) -> None:
    """A name close to no variable gets no guess, and its value (maybe a secret) is never printed."""
    proc = _cli("once", env=_env(**dirs, RELOAD_APP_TOKN="hunter2"))
    assert (proc.returncode, _lines(proc)) == (
        2,
        ["reload-sidecar: RELOAD_APP_TOKN: unknown (each command's --help lists the variables it reads)"],
    )


def test_retired_pod_ip_is_one_warning_and_ignored(dirs: dict[str, str], tmp_path: Path) -> None:
    """An old manifest's RELOAD_POD_IP still starts: one `variable_retired` warning, then the command runs."""
    proc = _cli("once", env=_env(**dirs, RELOAD_POD_IP="10.1.2.3"))
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in _lines(proc)]
    warned = [e for e in events if e["event"] == "variable_retired"]
    assert len(warned) == 1 and warned[0]["variable"] == "RELOAD_POD_IP" and warned[0]["level"] == "warning"
    assert "RELOAD_POD_NAME" in warned[0]["detail"]
    assert [e["event"] for e in events if e["event"] != "variable_retired"] == ["promoted"]
    assert (tmp_path / "target" / "app.yaml").read_text() == "a: 1\n"


BASE = {"RELOAD_SOURCE_DIR": "/cm", "RELOAD_TARGET_DIR": "/app-config"}


@pytest.mark.parametrize(
    "extra",
    [
        {"RELOAD_WEBHOOK_LISTEN": ":8443"},  # another command's variable: not a mistake in a `run` pod
        {"RELOAD_SIDECAR_CHECK": "token"},  # the checker's token: `reload-sidecar validate` as a checker
        {"RELOAD_SIDECAR_SERVICE_HOST": "10.0.0.7", "RELOAD_SIDECAR_SERVICE_PORT": "9533"},
        {"RELOAD_SIDECAR_SERVICE_PORT_METRICS": "9533", "RELOAD_SIDECAR_PORT": "tcp://10.0.0.7:9533"},
        {"RELOAD_SIDECAR_PORT_9533_TCP": "tcp://10.0.0.7:9533", "RELOAD_SIDECAR_PORT_9533_TCP_PROTO": "tcp"},
        {"RELOAD_SIDECAR_PORT_9533_TCP_PORT": "9533", "RELOAD_SIDECAR_PORT_9533_TCP_ADDR": "10.0.0.7"},
        {"RELOAD_PORT": "tcp://10.0.0.8:80", "RELOAD_SERVICE_HOST": "10.0.0.8"},  # a Service named `reload`
        {"RELOAD_VALIDATE_ENV": "RELOAD_APP_TOKEN", "RELOAD_APP_TOKEN": "x"},  # handed on to the checker
        {"RELOAD_POD_IP": "10.1.2.3"},  # retired: warned about by the CLI, not an error
    ],
    ids=[
        "other-command",
        "checker-token",
        "svc-host",
        "svc-named-port",
        "svc-tcp",
        "svc-addr",
        "svc-reload",
        "passed",
        "retired",
    ],
)
def test_names_that_are_not_mistakes(extra: dict[str, str]) -> None:
    """Variables of another command, the checker's token, Kubernetes service links and handed-on names pass."""
    Settings.from_env({**BASE, **extra})


def test_webhook_profile_env_names_are_not_unknown() -> None:
    """Names a webhook profile hands on (`passed`) are not reported; others still are."""
    env = {"RELOAD_TEST_PASSED": "yes", "RELOAD_TEST_SECRET": "x"}
    assert unknown_variables(env, passed={"RELOAD_TEST_PASSED"}) == [
        "RELOAD_TEST_SECRET: unknown (each command's --help lists the variables it reads)"
    ]


@pytest.mark.parametrize(
    ("name", "meant"),
    [
        ("RELOAD_RELOAD_ULR", "RELOAD_RELOAD_URL"),
        ("RELOAD_DEBOUNCE", "RELOAD_DEBOUNCE_MS"),
        ("RELOAD_STAGER", "RELOAD_STAGGER"),
        ("RELOAD_LOGLEVEL", "RELOAD_LOG_LEVEL"),
        ("RELOAD_HEALTH_TIMEOUT", "RELOAD_HEALTH_TIMEOUT_S"),
        ("RELOAD_VALIDATE_CMD", "RELOAD_VALIDATE_COMMAND"),
        ("RELOAD_METHOD", "RELOAD_RELOAD_METHOD"),
        ("RELOAD_LISTEN_PORT", "RELOAD_LISTEN"),  # 9533 is no service link's value: a typo
    ],
)
def test_did_you_mean(name: str, meant: str) -> None:
    """The guess is the closest known name, compared without the RELOAD_ every name shares."""
    assert unknown_variables({name: "9533"}) == [f"{name}: unknown; did you mean {meant}?"]


def test_retired_names_are_not_variables() -> None:
    """A retired name is read by nothing (it is no Settings variable), and RELOAD_POD_IP is retired."""
    assert "RELOAD_POD_IP" in RETIRED and not set(RETIRED) & set(ENV_VARS)
    assert "pod_ip" not in Settings.__dataclass_fields__


# --- what the settings point at ----------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["run", "once"])
def test_missing_source_dir_is_one_line(dirs: dict[str, str], tmp_path: Path, command: str) -> None:
    """A RELOAD_SOURCE_DIR that does not exist: one line, exit 2 (it was a never-ready sidecar / exit 1)."""
    dirs["RELOAD_SOURCE_DIR"] = missing = str(tmp_path / "no-such-volume")
    proc = _cli(command, env=_env(**dirs, RELOAD_LISTEN="127.0.0.1:0"))
    assert (proc.returncode, _lines(proc)) == (
        2,
        [f"reload-sidecar: RELOAD_SOURCE_DIR={missing!r}: does not exist (is it the ConfigMap volume's mountPath?)"],
    )


def test_source_that_is_a_file_is_one_line(dirs: dict[str, str]) -> None:
    """A RELOAD_SOURCE_DIR naming a file (the ConfigMap key's path instead of the volume's): one line, exit 2."""
    dirs["RELOAD_SOURCE_DIR"] = path = str(Path(dirs["RELOAD_SOURCE_DIR"]) / "app.yaml")
    proc = _cli("once", env=_env(**dirs))
    assert (proc.returncode, _lines(proc)) == (2, [f"reload-sidecar: RELOAD_SOURCE_DIR={path!r}: is not a directory"])


def test_target_under_a_file_is_one_line(dirs: dict[str, str]) -> None:
    """A target that cannot be created: one line, exit 2 (it was a traceback)."""
    dirs["RELOAD_TARGET_DIR"] = path = str(Path(dirs["RELOAD_SOURCE_DIR"]) / "app.yaml" / "target")
    proc = _cli("once", env=_env(**dirs))
    assert (proc.returncode, _lines(proc)) == (
        2,
        [f"reload-sidecar: RELOAD_TARGET_DIR={path!r}: cannot be created: Not a directory"],
    )


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A read-only tmpfs (needs root): what a target on a readOnlyRootFilesystem without its emptyDir is."""
    needs_root("mounts a read-only tmpfs: CAP_SYS_ADMIN")
    path = tmp_path / "ro"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)], check=True, timeout=10)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False, timeout=10)


@pytest.mark.parametrize("command", ["run", "once"])
def test_read_only_target_is_one_line(dirs: dict[str, str], read_only_dir: Path, command: str) -> None:
    """A target on a read-only filesystem: one line, exit 2 (`run` used to start and fail every promotion)."""
    dirs["RELOAD_TARGET_DIR"] = str(read_only_dir)
    proc = _cli(command, env=_env(**dirs, RELOAD_LISTEN="127.0.0.1:0"))
    assert (proc.returncode, _lines(proc)) == (
        2,
        [
            f"reload-sidecar: RELOAD_TARGET_DIR={str(read_only_dir)!r}: is on a read-only filesystem; "
            "mount an emptyDir there"
        ],
    )


def test_busy_listen_port_is_one_line(dirs: dict[str, str]) -> None:
    """RELOAD_LISTEN on a port in use: one line naming it, exit 2 (it was a traceback, exit 1)."""
    with _busy_port() as port:
        proc = _cli("run", env=_env(**dirs, RELOAD_LISTEN=f"127.0.0.1:{port}"))
    assert (proc.returncode, _lines(proc)) == (
        2,
        [f"reload-sidecar: RELOAD_LISTEN='127.0.0.1:{port}': port {port} is already in use by another process"],
    )


def test_start_up_problems_are_reported_together(tmp_path: Path) -> None:
    """A missing source, an unusable target and a busy port: three lines in one go."""
    env = _env(RELOAD_SOURCE_DIR=str(tmp_path / "nope"), RELOAD_TARGET_DIR="/proc/target")
    with _busy_port() as port:
        proc = _cli("run", env={**env, "RELOAD_LISTEN": f"127.0.0.1:{port}"})
    assert proc.returncode == 2
    assert [line.split(":", 2)[1].strip().split("=")[0] for line in _lines(proc)] == [
        "RELOAD_SOURCE_DIR",
        "RELOAD_TARGET_DIR",
        "RELOAD_LISTEN",
    ]


def test_busy_webhook_port_is_one_line(tmp_path: Path) -> None:
    """RELOAD_WEBHOOK_LISTEN on a port in use: one line, exit 2 (it was a JSON log line, exit 1)."""
    with _busy_port() as port:
        proc = _cli("webhook", env=_env(RELOAD_WEBHOOK_LISTEN=f"127.0.0.1:{port}"))
    assert (proc.returncode, _lines(proc)) == (
        2,
        [f"reload-sidecar: RELOAD_WEBHOOK_LISTEN='127.0.0.1:{port}': port {port} is already in use by another process"],
    )


# --- the checker, the reload URL, validate's directory ----------------------------------------------------


@pytest.mark.parametrize("command", ["run", "once", "validate"])
def test_checker_not_on_path_is_one_line(dirs: dict[str, str], tmp_path: Path, command: str) -> None:
    """A checker the image does not have: one line, exit 2, for every command that runs it (`run` used to start
    and refuse every version, `once` and `validate` to exit 1 as if the config were bad)."""
    command_line = "nosuchchecker-h23 -t {dir}"
    args = [command, dirs["RELOAD_SOURCE_DIR"]] if command == "validate" else [command]
    proc = _cli(*args, env=_env(**dirs, RELOAD_VALIDATE_COMMAND=command_line, RELOAD_LISTEN="127.0.0.1:0"))
    assert (proc.returncode, _lines(proc)) == (
        2,
        [
            f"reload-sidecar: RELOAD_VALIDATE_COMMAND={command_line!r}: 'nosuchchecker-h23' not found on PATH "
            "(the checker must be in the sidecar's image)"
        ],
    )
    assert not (tmp_path / "target" / "app.yaml").exists()  # nothing promoted


def test_checker_path_that_is_missing_or_not_executable(dirs: dict[str, str], tmp_path: Path) -> None:
    """A checker named by path: one that does not exist and one without an execute bit, each its own line."""
    script = tmp_path / "check.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o644)
    for path, why in ((tmp_path / "gone.sh", "does not exist"), (script, f"is not executable by uid {os.geteuid()}")):
        line = f"{path} {{dir}}"
        proc = _cli("validate", dirs["RELOAD_SOURCE_DIR"], env=_env(RELOAD_VALIDATE_COMMAND=line))
        assert (proc.returncode, _lines(proc)) == (
            2,
            [
                f"reload-sidecar: RELOAD_VALIDATE_COMMAND={line!r}: {str(path)!r} {why} "
                "(the checker must be in the sidecar's image)"
            ],
        )


def test_checker_that_exists_runs(dirs: dict[str, str]) -> None:
    """The start-up check passes a checker that is there: `validate` runs it on the directory."""
    line = f"{sys.executable} -c 'import sys, os; sys.exit(not os.path.isdir(sys.argv[1]))' {{dir}}"
    proc = _cli("validate", dirs["RELOAD_SOURCE_DIR"], env=_env(RELOAD_VALIDATE_COMMAND=line))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"{dirs['RELOAD_SOURCE_DIR']}: ok (1 files, version ")


def test_reload_url_host_that_does_not_resolve_is_one_line(dirs: dict[str, str]) -> None:
    """A reload URL whose host does not resolve (.invalid never does): one line, exit 2; it was found only at
    the first change."""
    url = "http://web.nosuch.invalid:9090/-/reload"
    proc = _cli("run", env=_env(**dirs, RELOAD_RELOAD_URL=url, RELOAD_LISTEN="127.0.0.1:0"))
    assert proc.returncode == 2
    (line,) = _lines(proc)
    assert line.startswith(f"reload-sidecar: RELOAD_RELOAD_URL={url!r}: cannot resolve the host 'web.nosuch.invalid': ")


def test_reload_url_refused_is_a_warning_and_the_sidecar_starts(dirs: dict[str, str]) -> None:
    """Nothing listening on the reload URL's port yet (the app starts after the sidecar): one warning that says
    so, then the sidecar starts and promotes as usual."""
    with socket.socket() as sock:  # a port nothing listens on: bound, never listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        env = _env(**dirs, RELOAD_RELOAD_URL=f"http://127.0.0.1:{port}/-/reload", RELOAD_LISTEN="127.0.0.1:0")
        with subprocess.Popen(
            [sys.executable, "-m", "sidecar", "run"], env=env, stderr=subprocess.PIPE, text=True, cwd=ROOT
        ) as proc:
            hang = threading.Timer(60, proc.kill)  # hang protection: the file then ends
            hang.start()
            try:
                assert proc.stderr is not None
                events = []
                for line in proc.stderr:
                    events.append(json.loads(line))
                    if events[-1]["event"] == "promoted":
                        break
            finally:
                hang.cancel()
                proc.terminate()
                proc.wait(30)
    assert events[0] == {
        **events[0],
        "event": "reload_url_unreachable",
        "level": "warning",
        "variable": "RELOAD_RELOAD_URL",
        "detail": f"127.0.0.1:{port}: connection refused; fine if the app is not up yet, the first reload tries again",
    }
    assert [e["event"] for e in events].count("reload_url_unreachable") == 1
    assert events[-1]["event"] == "promoted"


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_validate_dir_that_is_no_directory_is_one_line(tmp_path: Path, kind: str) -> None:
    """`validate /nonexistent`: one line naming the path once, exit 2 (it printed the path twice and exited 1,
    as if the config were bad)."""
    path = tmp_path / "nonexistent"
    if kind == "file":
        path.write_text("a: 1\n")
    proc = _cli("validate", str(path), env=_env())
    why = "does not exist" if kind == "missing" else "is not a directory"
    assert (proc.returncode, proc.stdout, _lines(proc)) == (2, "", [f"reload-sidecar: {path}: {why}"])


def test_every_mistake_of_a_webhook_profile_is_reported(tmp_path: Path) -> None:
    """One profile with five mistakes: five lines, with the missing TLS settings, exit 2 (only the first was
    reported; the docs promise every problem)."""
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(
        "profiles:\n"
        "  web:\n"
        "    validate: [auto, xml]\n"
        "    command: nosuchchecker-h23 -t {dir}\n"
        "    timeout_s: 60\n"
        "    env: [1]\n"
        "    timeout: 5\n"
    )
    proc = _cli("webhook", env=_env(RELOAD_WEBHOOK_PROFILES=str(profiles), RELOAD_WEBHOOK_LISTEN="127.0.0.1:0"))
    where = f"reload-sidecar: RELOAD_WEBHOOK_PROFILES={str(profiles)!r}: profiles.web:"
    assert (proc.returncode, _lines(proc)) == (
        2,
        [
            "reload-sidecar: RELOAD_WEBHOOK_CERT is required by the webhook command (a file path)",
            "reload-sidecar: RELOAD_WEBHOOK_KEY is required by the webhook command (a file path)",
            f"{where} unknown field(s) timeout; expected validate, command, timeout_s, env",
            f"{where} validate: unknown validator 'xml'; expected auto, yaml, json, schema:<path> or none",
            f"{where} command: 'nosuchchecker-h23' not found on PATH (the checker must be in the webhook's image)",
            f"{where} timeout_s: expected seconds in [0.1, 29], got 60",
            f"{where} env: expected a list of environment variable names such as [HTTPS_PROXY], got [1]",
        ],
    )


# --- numbers -------------------------------------------------------------------------------------------------

FLOATS = [name for name in ENV_VARS if name.endswith("_S")]


@pytest.mark.parametrize("raw", ["nan", "inf", "-inf", "1e999"])
@pytest.mark.parametrize("name", FLOATS)
def test_non_finite_seconds_are_refused(name: str, raw: str) -> None:
    """No `*_S` variable takes nan or infinity (asyncio sleeps 0 on nan; `inf` would wait forever)."""
    with pytest.raises(SettingsError) as exc:
        Settings.from_env({**BASE, name: raw})
    assert exc.value.problems == (f"{name}={raw!r}: expected a finite number",)


@pytest.mark.parametrize("raw", ["random:nan", "random:inf", "ordinal:nan", "ordinal:-inf", "random:1e999"])
def test_non_finite_stagger_is_refused(raw: str) -> None:
    """`random:nan` used to be accepted (nan < 0 is False); every non-finite stagger is refused."""
    mode = raw.split(":")[0]
    with pytest.raises(SettingsError) as exc:
        Settings.from_env({**BASE, "RELOAD_STAGGER": raw, "RELOAD_POD_NAME": "web-0"})
    assert exc.value.problems == (f"RELOAD_STAGGER={raw!r}: seconds must be a finite number >= 0, e.g. {mode}:30",)


def test_infinite_metric_threshold_is_refused() -> None:
    """`up<1e999` overflows to infinity: refused like a malformed check."""
    with pytest.raises(SettingsError):
        Settings.from_env(
            {**BASE, "RELOAD_HEALTH_METRIC_URL": "http://a:1/metrics", "RELOAD_HEALTH_METRIC": "up<1e999"}
        )


def test_random_nan_on_the_command_line(dirs: dict[str, str]) -> None:
    """`RELOAD_STAGGER=random:nan` on the real CLI: one line, exit 2."""
    proc = _cli("run", env=_env(**dirs, RELOAD_STAGGER="random:nan"))
    assert (proc.returncode, _lines(proc)) == (
        2,
        ["reload-sidecar: RELOAD_STAGGER='random:nan': seconds must be a finite number >= 0, e.g. random:30"],
    )


# --- --version and --help ------------------------------------------------------------------------------------


def test_version() -> None:
    """`--version` prints `reload-sidecar X.Y.Z` from sidecar.__version__, exit 0."""
    proc = _cli("--version", env=_env())
    assert (proc.returncode, proc.stdout) == (0, f"reload-sidecar {sidecar.__version__}\n")
    assert re.fullmatch(r"\d+\.\d+\.\d+", sidecar.__version__)


def _help_table(text: str) -> dict[str, str]:
    """`NAME  default` rows under "environment variables read (default):" in a --help text."""
    _, _, rest = text.partition("environment variables read (default):\n")
    rows = {}
    for line in rest.splitlines():
        if m := re.fullmatch(r"  (RELOAD_\w+) +(\S.*)", line):
            rows[m[1]] = m[2]
    return rows


@pytest.mark.parametrize("command", ["run", "once", "validate", "webhook", "fleet"])
def test_help_lists_the_variables_of_the_command(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`<command> --help` lists exactly the variables it reads, with Settings' defaults (as docs/reference.md)."""
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    rows = _help_table(capsys.readouterr().out)
    assert list(rows) == list(COMMAND_VARS[command])
    assert rows == {name: env_defaults()[name] for name in COMMAND_VARS[command]}
    documented = {name: entries[0][0].replace("`", "") for name, entries in _env_table().items()}
    assert rows == {name: documented[name] for name in rows}


def test_help_covers_every_variable() -> None:
    """Every variable in ENV_VARS is read by some command; `run` reads all but the webhook's own."""
    assert set().union(*COMMAND_VARS.values()) == set(ENV_VARS)
    assert set(ENV_VARS) - set(COMMAND_VARS["run"]) == {n for n in ENV_VARS if n.startswith("RELOAD_WEBHOOK_")}
    assert COMMAND_VARS["demo"] == () and "no RELOAD_* variable" in env_help("demo")


def test_run_help_on_the_console_script() -> None:
    """The installed `reload-sidecar run --help` prints the same table."""
    proc = _cli("run", "--help", env=_env(), script=True)
    assert proc.returncode == 0, proc.stderr
    assert _help_table(proc.stdout) == {name: env_defaults()[name] for name in COMMAND_VARS["run"]}
