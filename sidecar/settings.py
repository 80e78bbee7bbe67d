"""Environment -> one frozen `Settings`; every bad variable is reported at once."""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import shlex
import signal as _signal
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

from .validators import ValidatorSpec, parse_validators

__all__ = [
    "COMMAND_VARS",
    "ENV_VARS",
    "RETIRED",
    "Expect",
    "MetricCheck",
    "Settings",
    "SettingsError",
    "Stagger",
    "ValidatorSpec",
    "env_defaults",
    "parse_command",
    "parse_env_names",
    "parse_metric_check",
    "parse_ordinal",
    "parse_validators",
    "retired_in",
    "unknown_variables",
]

LogFormat = Literal["json", "console"]
LogLevel = Literal["debug", "info", "warning", "error"]
StaggerMode = Literal["none", "random", "ordinal", "waves"]

T = TypeVar("T")


class SettingsError(ValueError):
    """One or more `RELOAD_*` variables are missing or invalid; `problems` lists each as `NAME='raw': why`."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("invalid configuration:\n  " + "\n  ".join(self.problems))


@dataclass(frozen=True, slots=True)
class Expect:
    """Accepted HTTP statuses: explicit codes plus whole classes (`2` for `2xx`)."""

    codes: frozenset[int] = frozenset()
    classes: frozenset[int] = frozenset({2})

    def accepts(self, status: int) -> bool:
        return status in self.codes or status // 100 in self.classes

    def __str__(self) -> str:
        return ",".join([f"{c}xx" for c in sorted(self.classes)] + [str(c) for c in sorted(self.codes)])


@dataclass(frozen=True, slots=True)
class MetricCheck:
    """`RELOAD_HEALTH_METRIC` parsed: one sample of the app's metrics compared with a number."""

    name: str
    labels: tuple[tuple[str, str], ...]
    op: str
    value: float

    def __str__(self) -> str:
        labels = ",".join(f'{k}="{v}"' for k, v in self.labels)
        return f"{self.name}{{{labels}}}{self.op}{self.value:g}" if labels else f"{self.name}{self.op}{self.value:g}"


@dataclass(frozen=True, slots=True)
class Stagger:
    """`RELOAD_STAGGER` parsed: mode plus its number (max delay for random, step for ordinal)."""

    mode: StaggerMode = "none"
    seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class Settings:
    # The ConfigMap/Secret volume (read-only); kubelet `..data` layout or a plain directory.
    source_dir: Path
    # The emptyDir the app reads; the sidecar owns everything in it.
    target_dir: Path
    # File-name globs (relative paths, fnmatch) to take and to leave out.
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    # Quiet time after the last change before acting on a burst.
    debounce_ms: int = 200
    # Full rescan period in case an inotify event was missed; 0 = off.
    resync_s: float = 60.0
    # Inputs over these sizes are refused, never partially read.
    max_file_bytes: int = 1_048_576
    max_total_bytes: int = 4_194_304
    # Built-in validators, in order.
    validators: tuple[ValidatorSpec, ...] = (ValidatorSpec("auto"),)
    # The app's own checker as argv (`{dir}` = candidate dir); empty = none.
    validate_command: tuple[str, ...] = ()
    validate_timeout_s: float = 10.0
    # Variables passed from our environment to the checker (it gets only PATH, HOME and TMPDIR besides).
    validate_env: tuple[str, ...] = ()
    # HTTP reload trigger; empty url = no HTTP reload.
    reload_url: str = ""
    reload_method: str = "POST"
    reload_expect: Expect = field(default_factory=Expect)
    reload_timeout_s: float = 5.0
    reload_retries: int = 3
    # Unix signal trigger, sent to the process found by pidfile or by command name.
    signal: _signal.Signals | None = None
    process: str = ""
    pidfile: Path | None = None
    # Restart trigger (apps that read their config only at start): end the process found as above with
    # `restart_signal`, SIGKILL after `restart_grace_s`; the kubelet starts it again on the new version.
    restart: bool = False
    restart_signal: _signal.Signals = _signal.SIGTERM
    restart_grace_s: float = 30.0
    # How long to wait for the app's new process; covers the kubelet's restart back-off (at most 300 s).
    restart_wait_s: float = 330.0
    # At least this long between two restarts for new versions (not rollbacks); versions arriving meanwhile
    # coalesce to the newest. 600 s: the kubelet forgets a container's restart back-off once it has run
    # 10 minutes, so a paced restart never waits in CrashLoopBackOff (docs/restart.md). 0 = off.
    restart_min_interval_s: float = 600.0
    # Proof of load (proof.py): the evidence that the app runs the new version, checked before health.
    # auto = chosen from the trigger; workers, metric, http, process, marker or none (unconfirmed, never counted).
    proof: str = "auto"
    # How long the proof waits; covers nginx's 5 x 500 ms retries of a busy `listen` with room to spare.
    proof_timeout_s: float = 10.0
    # metric proof: the app's metric prefix (`<prefix>_last_reload_successful`, ..._success_timestamp_seconds)
    # and the URL of its metrics (default RELOAD_HEALTH_METRIC_URL); marker proof: the URL whose answer shows
    # the version id (default RELOAD_HEALTH_URL).
    proof_metric: str = ""
    proof_url: str = ""
    # The app's error log: its lines after a refused reload are the quarantine reason (nginx's [emerg]).
    app_error_log: Path | None = None
    # Verification after a reload (used by the verify stage).
    health_url: str = ""
    health_successes: int = 3
    health_interval_s: float = 1.0
    health_timeout_s: float = 30.0
    health_metric_url: str = ""
    health_metric: MetricCheck | None = None
    # Staggering across the pods of a workload.
    stagger: Stagger = field(default_factory=Stagger)
    pod_name: str = ""
    # The StatefulSet ordinal at the end of `pod_name` (`web-3` -> 3), None when it has none.
    pod_ordinal: int | None = None
    # (host, port) of each `RELOAD_PEERS` entry; a name is resolved again at each membership refresh.
    peers: tuple[tuple[str, int], ...] = ()
    bake_s: float = 30.0
    # Peer read timeout and how long an unanswering peer is kept; None = derived (stagger.py).
    peer_timeout_s: float | None = None
    peer_forget_s: float | None = None
    # The sidecar's own HTTP server (host, port).
    listen: tuple[str, int] = ("0.0.0.0", 9533)  # noqa: S104 - a pod-wide probe/metrics port by design
    # Old versions kept in the target dir besides the current one.
    history: int = 5
    log_format: LogFormat = "json"
    log_level: LogLevel = "info"
    # `webhook` command.
    webhook_listen: tuple[str, int] = ("0.0.0.0", 8443)  # noqa: S104 - the API server must reach it
    webhook_cert: Path | None = None
    webhook_key: Path | None = None
    webhook_profiles: Path | None = None

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str], *, require_dirs: bool = True, passed: Collection[str] = ()
    ) -> Settings:
        """Parse every `RELOAD_*` variable; raise one `SettingsError` listing all the bad ones.

        An unknown `RELOAD_*` name is one of them, unless it is in `passed` or `RELOAD_VALIDATE_ENV`
        (variables handed on to a checker).
        """
        p = _Parser(environ)
        kw: dict[str, object] = {}
        for name, key, parse in _FIELDS:
            value = p.get(name, parse)
            if value is not None:
                kw[key] = value
        handed_on = {*passed, *kw.get("validate_env", ())}  # type: ignore[misc]
        p.problems[:0] = unknown_variables(environ, handed_on)
        for name, key in (("RELOAD_SOURCE_DIR", "source_dir"), ("RELOAD_TARGET_DIR", "target_dir")):
            if key not in kw:
                if require_dirs:
                    p.problems.append(f"{name} is required (a directory path)")
                kw[key] = Path()
        _cross_checks(p, kw)
        if p.problems:
            raise SettingsError(p.problems)
        return cls(**kw)  # type: ignore[arg-type]


class _Parser:
    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.problems: list[str] = []

    def get(self, name: str, parse: Callable[[str], T]) -> T | None:
        raw = self.environ.get(name)
        if raw is None or raw.strip() == "":
            return None
        try:
            return parse(raw.strip())
        except ValueError as e:
            self.problems.append(f"{name}={raw!r}: {e}")
            return None


def _number(kind: type[int] | type[float], lo: float, hi: float | None = None) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = kind(raw)
        except ValueError:
            raise ValueError(f"expected {'an integer' if kind is int else 'a number'}") from None
        if not math.isfinite(value):
            raise ValueError("expected a finite number")
        if value < lo or (hi is not None and value > hi):
            raise ValueError(f"expected a value in [{lo:g}, {'inf' if hi is None else f'{hi:g}'}]")
        return value

    return parse


def _int(lo: int, hi: int | None = None) -> Callable[[str], int]:
    return _number(int, lo, hi)  # type: ignore[return-value]


def _float(lo: float, hi: float | None = None) -> Callable[[str], float]:
    return _number(float, lo, hi)


def _globs(raw: str) -> tuple[str, ...]:
    return tuple(g.strip() for g in raw.split(",") if g.strip())


def _path(raw: str) -> Path:
    return Path(raw)


def _url(raw: str) -> str:
    if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", raw):
        raise ValueError("expected an http:// or https:// URL")
    return raw


def parse_command(raw: str) -> tuple[str, ...]:
    """A checker command line -> argv (split like a shell would, never run by one); it must use `{dir}`."""
    try:
        argv = tuple(shlex.split(raw))
    except ValueError as e:
        raise ValueError(f"cannot split into arguments: {e}") from None
    if argv and not any("{dir}" in a for a in argv):
        raise ValueError(
            "has no {dir}; the checker must be pointed at the candidate, e.g. nginx -t -c {dir}/nginx.conf"
        )
    return argv


def parse_env_names(raw: str) -> tuple[str, ...]:
    """`RELOAD_VALIDATE_ENV` (also a webhook profile's `env`): a comma list of environment variable names."""
    names = _globs(raw)
    for name in names:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"{name!r} is not an environment variable name")
    return names


def _method(raw: str) -> str:
    if raw.upper() not in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"):
        raise ValueError("expected an HTTP method such as POST or GET")
    return raw.upper()


def _expect(raw: str) -> Expect:
    codes: set[int] = set()
    classes: set[int] = set()
    for word in (w.strip().lower() for w in raw.split(",") if w.strip()):
        if re.fullmatch(r"[1-5]xx", word):
            classes.add(int(word[0]))
        elif re.fullmatch(r"[1-5]\d\d", word):
            codes.add(int(word))
        else:
            raise ValueError(f"{word!r} is not a status; expected e.g. 2xx or 200,204")
    return Expect(frozenset(codes), frozenset(classes))


def _signal_name(raw: str) -> _signal.Signals:
    name = raw.upper() if raw.upper().startswith("SIG") else "SIG" + raw.upper()
    try:
        return _signal.Signals[name]
    except KeyError:
        raise ValueError("expected a signal name such as SIGHUP or SIGUSR1") from None


def _bool(raw: str) -> bool:
    if raw.lower() in ("true", "1", "yes", "on"):
        return True
    if raw.lower() in ("false", "0", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _stagger(raw: str) -> Stagger:
    mode, _, arg = raw.partition(":")
    if mode in ("none", "waves") and not arg:
        return Stagger(mode)  # type: ignore[arg-type]
    if mode in ("random", "ordinal"):
        try:
            seconds = float(arg)
        except ValueError:
            raise ValueError(f"expected {mode}:<seconds>, e.g. {mode}:30") from None
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"seconds must be a finite number >= 0, e.g. {mode}:30")
        return Stagger(mode, seconds)  # type: ignore[arg-type]
    raise ValueError("expected none, random:<max_s>, ordinal:<step_s> or waves")


def _address(raw: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` -> (host, port); the host may be empty."""
    host, sep, port = raw.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError("expected host:port, e.g. 0.0.0.0:9533")
    return host.strip("[]"), int(port)


def _host_port(raw: str) -> tuple[str, int]:
    host, port = _address(raw)
    return (host or "0.0.0.0", port)  # noqa: S104 - ':9533' means all interfaces


def _choice(*options: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw.lower() not in options:
            raise ValueError(f"expected one of {', '.join(options)}")
        return raw.lower()

    return parse


def _metric_prefix(raw: str) -> str:
    if not re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", raw):
        raise ValueError("expected a metric name prefix, e.g. prometheus_config or alertmanager_config")
    return raw.removesuffix("_last_reload_successful")


def _peers(raw: str) -> tuple[tuple[str, int], ...]:
    return tuple(_address(peer) for peer in _globs(raw))


_METRIC_CHECK = re.compile(r"\s*([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})?\s*(==|!=|>=|<=|>|<)\s*([-+0-9.eE]+)\s*")


def parse_metric_check(text: str) -> MetricCheck:
    """`name{a="b"}>=1` -> MetricCheck; `ValueError` says what is expected."""
    m = _METRIC_CHECK.fullmatch(text)
    try:
        value = float(m.group(4)) if m else None
    except ValueError:
        value = None
    if m is None or value is None or not math.isfinite(value):
        raise ValueError("expected name{labels}<op>number, e.g. prometheus_config_last_reload_successful==1")
    labels = tuple(
        sorted(
            (k.strip(), v.strip().strip('"'))
            for k, _, v in (p.partition("=") for p in (m.group(2) or "").split(",") if p.strip())
        )
    )
    return MetricCheck(m.group(1), labels, m.group(3), value)


_ORDINAL = re.compile(r"-(\d+)$")


def parse_ordinal(pod_name: str) -> int | None:
    """The StatefulSet ordinal of a pod name (`web-3` -> 3), None when it has none."""
    m = _ORDINAL.search(pod_name)
    return int(m.group(1)) if m else None


_FIELDS: tuple[tuple[str, str, Callable[[str], object]], ...] = (
    ("RELOAD_SOURCE_DIR", "source_dir", _path),
    ("RELOAD_TARGET_DIR", "target_dir", _path),
    ("RELOAD_INCLUDE", "include", _globs),
    ("RELOAD_EXCLUDE", "exclude", _globs),
    ("RELOAD_DEBOUNCE_MS", "debounce_ms", _int(0, 600_000)),
    ("RELOAD_RESYNC_S", "resync_s", _float(0)),
    ("RELOAD_MAX_FILE_BYTES", "max_file_bytes", _int(1)),
    ("RELOAD_MAX_TOTAL_BYTES", "max_total_bytes", _int(1)),
    ("RELOAD_VALIDATE", "validators", parse_validators),
    ("RELOAD_VALIDATE_COMMAND", "validate_command", parse_command),
    ("RELOAD_VALIDATE_TIMEOUT_S", "validate_timeout_s", _float(0.1)),
    ("RELOAD_VALIDATE_ENV", "validate_env", parse_env_names),
    ("RELOAD_RELOAD_URL", "reload_url", _url),
    ("RELOAD_RELOAD_METHOD", "reload_method", _method),
    ("RELOAD_RELOAD_EXPECT", "reload_expect", _expect),
    ("RELOAD_RELOAD_TIMEOUT_S", "reload_timeout_s", _float(0.01)),
    ("RELOAD_RELOAD_RETRIES", "reload_retries", _int(0, 100)),
    ("RELOAD_SIGNAL", "signal", _signal_name),
    ("RELOAD_PROCESS", "process", str),
    ("RELOAD_PIDFILE", "pidfile", _path),
    ("RELOAD_RESTART", "restart", _bool),
    ("RELOAD_RESTART_SIGNAL", "restart_signal", _signal_name),
    ("RELOAD_RESTART_GRACE_S", "restart_grace_s", _float(0, 3600)),
    ("RELOAD_RESTART_WAIT_S", "restart_wait_s", _float(1, 3600)),
    ("RELOAD_RESTART_MIN_INTERVAL_S", "restart_min_interval_s", _float(0, 86400)),
    ("RELOAD_PROOF", "proof", _choice("auto", "workers", "metric", "http", "process", "marker", "none")),
    ("RELOAD_PROOF_TIMEOUT_S", "proof_timeout_s", _float(0.1, 3600)),
    ("RELOAD_PROOF_METRIC", "proof_metric", _metric_prefix),
    ("RELOAD_PROOF_URL", "proof_url", _url),
    ("RELOAD_APP_ERROR_LOG", "app_error_log", _path),
    ("RELOAD_HEALTH_URL", "health_url", _url),
    ("RELOAD_HEALTH_SUCCESSES", "health_successes", _int(1, 1000)),
    ("RELOAD_HEALTH_INTERVAL_S", "health_interval_s", _float(0.01)),
    ("RELOAD_HEALTH_TIMEOUT_S", "health_timeout_s", _float(0.1)),
    ("RELOAD_HEALTH_METRIC_URL", "health_metric_url", _url),
    ("RELOAD_HEALTH_METRIC", "health_metric", parse_metric_check),
    ("RELOAD_STAGGER", "stagger", _stagger),
    ("RELOAD_POD_NAME", "pod_name", str),
    ("RELOAD_PEERS", "peers", _peers),
    ("RELOAD_BAKE_S", "bake_s", _float(0)),
    ("RELOAD_PEER_TIMEOUT_S", "peer_timeout_s", _float(0.05, 60)),
    ("RELOAD_PEER_FORGET_S", "peer_forget_s", _float(0.1)),
    ("RELOAD_LISTEN", "listen", _host_port),
    ("RELOAD_HISTORY", "history", _int(0, 1000)),
    ("RELOAD_LOG_FORMAT", "log_format", _choice("json", "console")),
    ("RELOAD_LOG_LEVEL", "log_level", _choice("debug", "info", "warning", "error")),
    ("RELOAD_WEBHOOK_LISTEN", "webhook_listen", _host_port),
    ("RELOAD_WEBHOOK_CERT", "webhook_cert", _path),
    ("RELOAD_WEBHOOK_KEY", "webhook_key", _path),
    ("RELOAD_WEBHOOK_PROFILES", "webhook_profiles", _path),
)

#: Every variable `Settings.from_env` reads (docs/reference.md is tested against this).
ENV_VARS: tuple[str, ...] = tuple(name for name, _, _ in _FIELDS)

#: Variables older releases read and this one ignores: name -> why. Warned about (one log line), never an error,
#: so a manifest written for an older release still starts.
RETIRED: Mapping[str, str] = {
    "RELOAD_POD_IP": "never used: peers are identified by RELOAD_POD_NAME; remove it",
}

_LOG_VARS = ("RELOAD_LOG_FORMAT", "RELOAD_LOG_LEVEL")
_CHECK_VARS = (
    "RELOAD_INCLUDE",
    "RELOAD_EXCLUDE",
    "RELOAD_MAX_FILE_BYTES",
    "RELOAD_MAX_TOTAL_BYTES",
    "RELOAD_VALIDATE",
    "RELOAD_VALIDATE_COMMAND",
    "RELOAD_VALIDATE_TIMEOUT_S",
    "RELOAD_VALIDATE_ENV",
)
_WEBHOOK_ONLY = tuple(name for name in ENV_VARS if name.startswith("RELOAD_WEBHOOK_"))

#: The variables each command reads (its `--help` lists them). `run` reads all but the webhook's own.
COMMAND_VARS: Mapping[str, tuple[str, ...]] = {
    "run": tuple(name for name in ENV_VARS if name not in _WEBHOOK_ONLY),
    "once": ("RELOAD_SOURCE_DIR", "RELOAD_TARGET_DIR", *_CHECK_VARS, "RELOAD_POD_NAME", *_LOG_VARS),
    "validate": (*_CHECK_VARS, *_LOG_VARS),
    "webhook": (*_WEBHOOK_ONLY, "RELOAD_MAX_FILE_BYTES", "RELOAD_MAX_TOTAL_BYTES", *_LOG_VARS),
    "demo": (),
    "fleet": (
        "RELOAD_LISTEN",
        "RELOAD_PEERS",
        "RELOAD_POD_NAME",
        "RELOAD_STAGGER",
        "RELOAD_BAKE_S",
        "RELOAD_PEER_TIMEOUT_S",
        *_LOG_VARS,
    ),
}

# Filled in at run time, not in `Settings`: name -> the default as docs/reference.md writes it.
_RUNTIME_DEFAULTS = {
    "RELOAD_POD_NAME": "(host name)",  # run.serve_sidecar falls back to os.uname().nodename
    # stagger.make_gate derives them from RELOAD_BAKE_S and the fleet size (docs/stagger.md)
    "RELOAD_PEER_TIMEOUT_S": "(derived)",
    "RELOAD_PEER_FORGET_S": "(derived)",
}


def env_defaults() -> dict[str, str]:
    """Each variable's default as a user would write it in the environment: `(required)`, `(none)` or a value."""
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    out: dict[str, str] = {}
    for name, key, _ in _FIELDS:
        f = fields[key]
        if name in _RUNTIME_DEFAULTS:
            out[name] = _RUNTIME_DEFAULTS[name]
        elif f.default is not dataclasses.MISSING:
            out[name] = _as_written(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            out[name] = _as_written(f.default_factory())
        else:
            out[name] = "(required)"
    return out


def _as_written(value: object) -> str:
    """A `Settings` default as a user writes it in the environment, `(none)` when unset."""
    if value is None or value == "" or value == ():
        return "(none)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, _signal.Signals):  # an int too: written by name
        return value.name
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, Stagger):
        return value.mode if value.mode in ("none", "waves") else f"{value.mode}:{value.seconds:g}"
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], int):  # (host, port)
        return f"{value[0]}:{value[1]}"
    if isinstance(value, tuple):
        return ",".join(v.kind if isinstance(v, ValidatorSpec) else str(v) for v in value)
    return str(value)


# The checker's per-check token (checker.COOKIE): a `reload-sidecar validate` run as a checker inherits it.
_SET_BY_THE_SIDECAR = frozenset({"RELOAD_SIDECAR_CHECK"})

# What Kubernetes puts in every container for each Service of the namespace (service links): a Service named
# `reload-sidecar` gives RELOAD_SIDECAR_SERVICE_HOST, RELOAD_SIDECAR_PORT=tcp://10.0.0.7:9533, ...
_SERVICE_LINK = re.compile(
    r"RELOAD(_\w+)?_(SERVICE_HOST|SERVICE_PORT(_\w+)?|PORT_\d+_(TCP|UDP|SCTP)(_(PROTO|PORT|ADDR))?)"
)
_SERVICE_LINK_PORT = re.compile(r"RELOAD(_\w+)?_PORT")
_SERVICE_URL = re.compile(r"(tcp|udp|sctp)://\S+")


def _service_link(name: str, value: str) -> bool:
    if _SERVICE_LINK.fullmatch(name):
        return True
    # `<SVC>_PORT` alone only with a service link's value: RELOAD_LISTEN_PORT=9533 is a typo to report
    return bool(_SERVICE_LINK_PORT.fullmatch(name) and _SERVICE_URL.fullmatch(value.strip()))


def unknown_variables(environ: Mapping[str, str], passed: Collection[str] = ()) -> list[str]:
    """One problem per `RELOAD_*` name no command reads, with the likeliest meant name when there is one.

    Not reported: retired names (see `retired_in`), names in `passed` (handed on to a checker), the
    checker's token and Kubernetes service-link variables.
    """
    problems = []
    for name in sorted(environ):
        if not name.startswith("RELOAD_") or name in ENV_VARS or name in RETIRED or name in passed:
            continue
        if name in _SET_BY_THE_SIDECAR or _service_link(name, environ[name]):
            continue
        meant = _did_you_mean(name)
        problems.append(
            f"{name}: unknown; did you mean {meant}?"
            if meant
            else f"{name}: unknown (each command's --help lists the variables it reads)"
        )
    return problems


def _did_you_mean(name: str) -> str | None:
    """The known name closest to `name`, compared without the common `RELOAD_` (it would make all look alike)."""
    by_suffix = {known.removeprefix("RELOAD_"): known for known in ENV_VARS}
    suffix = name.removeprefix("RELOAD_")
    close = difflib.get_close_matches(suffix, list(by_suffix), n=1, cutoff=0.6)
    if close:
        return by_suffix[close[0]]
    tails = [known for s, known in by_suffix.items() if s.endswith("_" + suffix)]  # RELOAD_URL -> RELOAD_RELOAD_URL
    return tails[0] if len(tails) == 1 else None


def retired_in(environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """(name, why) of each retired variable set in `environ`: to warn about, then ignore."""
    return [(name, why) for name, why in RETIRED.items() if name in environ]


def _cross_checks(p: _Parser, kw: dict[str, object]) -> None:
    env = p.environ
    if kw.get("signal") is not None and not (kw.get("process") or kw.get("pidfile")):
        p.problems.append(
            f"RELOAD_SIGNAL={env['RELOAD_SIGNAL']!r}: needs RELOAD_PROCESS or RELOAD_PIDFILE to find the app"
        )
    if (kw.get("process") or kw.get("pidfile")) and kw.get("signal") is None and not kw.get("restart"):
        p.problems.append(
            "RELOAD_PROCESS/RELOAD_PIDFILE set without RELOAD_SIGNAL or RELOAD_RESTART: which signal should be sent?"
        )
    if kw.get("reload_url") and kw.get("signal") is not None:
        p.problems.append("RELOAD_RELOAD_URL and RELOAD_SIGNAL are both set: choose one reload trigger")
    _restart_checks(p, kw)
    _proof_checks(p, kw)
    # a set but invalid RELOAD_HEALTH_METRIC is reported as such, not also as missing
    if bool(kw.get("health_metric_url")) != bool(env.get("RELOAD_HEALTH_METRIC", "").strip()):
        p.problems.append("RELOAD_HEALTH_METRIC_URL and RELOAD_HEALTH_METRIC go together: set both or neither")
    stagger = kw.get("stagger")
    if isinstance(stagger, Stagger) and stagger.mode == "waves" and not kw.get("peers"):
        p.problems.append(f"RELOAD_STAGGER={env['RELOAD_STAGGER']!r}: waves mode needs RELOAD_PEERS")
    if isinstance(stagger, Stagger) and stagger.mode in ("ordinal", "waves") and not kw.get("pod_name"):
        p.problems.append(f"RELOAD_STAGGER={env['RELOAD_STAGGER']!r}: needs RELOAD_POD_NAME (downward API)")
    if kw.get("pod_name"):
        kw["pod_ordinal"] = parse_ordinal(str(kw["pod_name"]))
    if isinstance(stagger, Stagger) and stagger.mode == "ordinal" and kw.get("pod_name"):
        if kw["pod_ordinal"] is None:
            p.problems.append(
                f"RELOAD_POD_NAME={env['RELOAD_POD_NAME']!r}: ordinal stagger needs a StatefulSet pod name "
                "ending in -<ordinal>, e.g. web-3"
            )
    if "max_file_bytes" in kw and "max_total_bytes" in kw and kw["max_file_bytes"] > kw["max_total_bytes"]:  # type: ignore[operator]
        p.problems.append("RELOAD_MAX_FILE_BYTES is larger than RELOAD_MAX_TOTAL_BYTES")


def _proof_checks(p: _Parser, kw: dict[str, object]) -> None:
    """An explicit proof kind needs its trigger (or its metric); the metric proof needs a URL to read.
    With no trigger at all the proof is `none` whatever it says (an image's default must not stop `once`)."""
    proof = kw.get("proof", "auto")
    needs = {"workers": ("signal", "RELOAD_SIGNAL"), "http": ("reload_url", "RELOAD_RELOAD_URL")}
    needs |= {"process": ("restart", "RELOAD_RESTART=true")}
    triggered = any(kw.get(k) for k in ("signal", "reload_url", "restart"))  # no trigger: the proof is none
    if proof in needs and triggered and not kw.get(needs[str(proof)][0]):
        p.problems.append(f"RELOAD_PROOF={proof} needs {needs[str(proof)][1]} (its evidence comes from that trigger)")
    if proof == "metric" and not kw.get("proof_metric"):
        p.problems.append("RELOAD_PROOF=metric needs RELOAD_PROOF_METRIC (e.g. prometheus_config)")
    metric = kw.get("proof_metric") and proof in ("auto", "metric")
    if metric and not (kw.get("proof_url") or kw.get("health_metric_url")):
        p.problems.append("RELOAD_PROOF_METRIC needs RELOAD_PROOF_URL or RELOAD_HEALTH_METRIC_URL (the app's /metrics)")
    if proof == "marker" and triggered and not (kw.get("proof_url") or kw.get("health_url")):
        p.problems.append("RELOAD_PROOF=marker needs RELOAD_PROOF_URL or RELOAD_HEALTH_URL (where the app shows it)")
    if kw.get("proof_metric") and proof not in ("auto", "metric"):
        p.problems.append(f"RELOAD_PROOF_METRIC is set but RELOAD_PROOF={proof}: set RELOAD_PROOF=metric or auto")


def _restart_checks(p: _Parser, kw: dict[str, object]) -> None:
    """The restart trigger is a third trigger: alone, with a way to find the app; its details need it on."""
    if kw.get("restart"):
        others = [n for n, k in (("RELOAD_RELOAD_URL", "reload_url"), ("RELOAD_SIGNAL", "signal")) if kw.get(k)]
        if others:
            p.problems.append(
                f"RELOAD_RESTART=true and {' and '.join(others)} are both set: choose one trigger (restart is "
                "for apps that cannot reload)"
            )
        if not (kw.get("process") or kw.get("pidfile")):
            p.problems.append("RELOAD_RESTART=true needs RELOAD_PROCESS or RELOAD_PIDFILE to find the app")
        return
    for name in (
        "RELOAD_RESTART_SIGNAL",
        "RELOAD_RESTART_GRACE_S",
        "RELOAD_RESTART_WAIT_S",
        "RELOAD_RESTART_MIN_INTERVAL_S",
    ):
        already = any(problem.startswith(f"{name}=") for problem in p.problems)  # one line per mistake
        if p.environ.get(name, "").strip() and not already:
            p.problems.append(f"{name} is set without RELOAD_RESTART=true: the restart trigger is off")
