"""`reload-sidecar run | once | validate DIR | webhook | demo | fleet | check-manifests [FILE...]`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import structlog

from . import __version__
from .settings import COMMAND_VARS, Settings, SettingsError, env_defaults, retired_in

__all__ = ["configure_logging", "main"]

log = structlog.get_logger("cli")

_COMMANDS = {
    "run": "the sidecar: watch RELOAD_SOURCE_DIR and keep RELOAD_TARGET_DIR on a good version",
    "once": "validate + promote once and exit (initContainer); exit 1 if refused",
    "validate": "run the configured validators on DIR; exit 1 listing the problems",
    "webhook": "HTTPS ValidatingWebhook: check ConfigMaps annotated reload-sidecar/profile (RELOAD_WEBHOOK_*)",
    "demo": "a self-contained demo: volume, sidecar and a tiny app, in a temp dir",
    "fleet": "every pod at a glance (version, state, wave, last error) and each version in flight: reads /status "
    "and /peers of this pod's sidecar (RELOAD_LISTEN), then each peer's /status (RELOAD_PEERS)",
    "check-manifests": "check the wiring of the pods in `kubectl kustomize` output (FILE or stdin); exit 1 listing"
    " the mistakes",
}


def configure_logging(fmt: str = "json", level: str = "info") -> None:
    """structlog to stderr: JSON lines in production, a console renderer for humans."""
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="reload-sidecar",
        description="Validate, promote atomically, stagger, signal and verify config reloads. "
        "Configured with RELOAD_* environment variables: each command's --help lists the ones it reads.",
    )
    ap.add_argument("--version", action="version", version=f"reload-sidecar {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    parsers = {
        name: sub.add_parser(
            name,
            help=text,
            description=text,
            epilog=env_help(name),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        for name, text in _COMMANDS.items()
    }
    parsers["validate"].add_argument("dir", type=Path)
    d = parsers["demo"]
    d.add_argument("--port", type=int, help="the sidecar's HTTP port (default: 9533 if free, else any free port)")
    d.add_argument("--no-wait", action="store_true", help="exit after the scripted steps instead of waiting")
    f = parsers["fleet"]
    f.add_argument("--watch", action="store_true", help="redraw every --interval seconds until Ctrl-C")
    f.add_argument("--json", action="store_true", help="print the same as one JSON document (a line each with --watch)")
    f.add_argument("--interval", type=float, default=1.0, help="seconds between two looks with --watch (default 1)")
    parsers["check-manifests"].add_argument(
        "files", nargs="*", type=Path, help="YAML of Kubernetes objects (default: stdin; - is stdin too)"
    )
    return ap


def env_help(command: str) -> str:
    """The `--help` epilog of `command`: the variables it reads and their defaults, from the settings registry."""
    names = COMMAND_VARS.get(command, ())
    if not names:
        why = "; the demo configures its own sidecar" if command == "demo" else ""
        return f"environment: no RELOAD_* variable is read{why}."
    defaults = env_defaults()
    width = max(map(len, names))
    rows = "\n".join(f"  {name:<{width}}  {defaults[name]}" for name in names)
    return f"environment variables read (default):\n{rows}"


def _fail(problems: Sequence[str]) -> int:
    """A mistake in the set-up: one stderr line per problem, exit 2."""
    for problem in problems:
        print(f"reload-sidecar: {problem}", file=sys.stderr)
    return 2


def _preflight(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """What the settings point at, checked before anything starts (see preflight.py): (problems, warnings)."""
    from .preflight import (
        command_problem,
        directory_problem,
        listen_problem,
        source_problem,
        target_problem,
        url_problem,
    )

    command: str = args.command
    problems: list[str | None] = []
    warnings: list[str | None] = []
    if command == "validate" and (why := directory_problem(args.dir)):
        problems.append(f"{args.dir}: {why}")
    if command in ("run", "once"):
        problems.append(source_problem("RELOAD_SOURCE_DIR", settings.source_dir))
        problems.append(target_problem("RELOAD_TARGET_DIR", settings.target_dir))
    if command in ("run", "once", "validate"):
        shown = env.get("RELOAD_VALIDATE_COMMAND", "").strip()
        problems.append(command_problem("RELOAD_VALIDATE_COMMAND", shown, settings.validate_command))
    if command == "run" and settings.reload_url:
        problem, warning = url_problem("RELOAD_RELOAD_URL", settings.reload_url)
        problems.append(problem)
        warnings.append(warning)
    listen = {"run": ("RELOAD_LISTEN", settings.listen), "webhook": ("RELOAD_WEBHOOK_LISTEN", settings.webhook_listen)}
    if command in listen:
        name, (host, port) = listen[command]
        problems.append(listen_problem(name, env.get(name, "").strip() or f"{host}:{port}", host, port))
    return [p for p in problems if p], [w for w in warnings if w]


def _profile_env(env: Mapping[str, str]) -> set[str]:
    """Names the webhook's profiles hand on to their checkers (best effort: the profiles are checked later)."""
    raw = env.get("RELOAD_WEBHOOK_PROFILES", "").strip()
    if not raw:
        return set()
    import yaml

    try:
        profiles = yaml.safe_load(Path(raw).read_text(encoding="utf-8"))["profiles"]
        lists = [body.get("env") or [] for body in profiles.values()]
    except (OSError, ValueError, yaml.YAMLError, TypeError, KeyError, AttributeError):
        return set()
    return {name for names in lists if isinstance(names, list) for name in names if isinstance(name, str)}


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """The CLI; returns the exit code: 0, 1 (refused / problems found), 2 (a mistake in the set-up)."""
    from .preflight import StartupError

    args = _parser().parse_args(argv)
    env = os.environ if environ is None else environ
    try:
        return _command(args, env)
    except SettingsError as e:
        return _fail(e.problems)
    except StartupError as e:
        return _fail([str(e)])


def _command(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    if args.command == "demo":
        from .demo import run_demo

        configure_logging("console", "info")
        return run_demo(args.port, wait=not args.no_wait)
    if args.command == "check-manifests":
        from .manifests import check_manifests

        return check_manifests(args.files)
    passed = _profile_env(env) if args.command == "webhook" else set()
    settings = Settings.from_env(env, require_dirs=args.command in ("run", "once"), passed=passed)
    problems, warnings = _preflight(args, settings, env)
    if problems:
        raise SettingsError(problems)
    configure_logging(settings.log_format, settings.log_level)
    for name, why in retired_in(env):
        log.warning("variable_retired", variable=name, detail=f"ignored; {why}")
    for why in warnings:
        log.warning("reload_url_unreachable", variable="RELOAD_RELOAD_URL", detail=why)
    if args.command == "validate":
        return asyncio.run(_validate(settings, args.dir))
    if args.command == "once":
        from .reloader import Reloader

        return 0 if asyncio.run(Reloader.once(settings)) else 1
    if args.command == "fleet":
        from .fleetview import run_fleet

        return run_fleet(settings, watch=args.watch, as_json=args.json, interval_s=max(0.1, args.interval))
    if args.command == "webhook":
        from .webhook import load_webhook, run_webhook

        return asyncio.run(run_webhook(settings, load_webhook(settings)))
    from .run import run_sidecar

    return run_sidecar(settings)


async def _validate(settings: Settings, directory: Path) -> int:
    from .snapshot import SourceError, read_configured
    from .validate import Checks, validate

    try:
        snap = read_configured(directory, settings)
    except SourceError as e:  # gone or changed since the start-up check; the error names the path
        return _fail([str(e)])
    verdict = await validate(snap, Checks.from_settings(settings))
    if verdict.ok:
        print(f"{directory}: ok ({len(snap.files)} files, version {snap.version})")
        return 0
    print(f"{directory}: {len(verdict.problems)} problem(s), version {snap.version}:")
    for problem in verdict.problems:
        print(f"  - {problem}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
