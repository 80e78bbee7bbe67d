"""`reload-sidecar run | once | validate DIR | webhook | demo`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import structlog

from .settings import Settings, SettingsError

__all__ = ["configure_logging", "main"]


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
        "Configured with RELOAD_* environment variables (see docs/reference.md).",
    )
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="the sidecar: watch RELOAD_SOURCE_DIR and keep RELOAD_TARGET_DIR on a good version")
    sub.add_parser("once", help="validate + promote once and exit (initContainer); exit 1 if refused")
    v = sub.add_parser("validate", help="run the configured validators on DIR; exit 1 listing the problems")
    v.add_argument("dir", type=Path)
    sub.add_parser(
        "webhook",
        help="HTTPS ValidatingWebhook: check ConfigMaps annotated reload-sidecar/profile (RELOAD_WEBHOOK_*)",
    )
    d = sub.add_parser("demo", help="a self-contained demo: volume, sidecar and a tiny app, in a temp dir")
    d.add_argument("--port", type=int, default=9533, help="the sidecar's HTTP port (default 9533)")
    d.add_argument("--no-wait", action="store_true", help="exit after the scripted steps instead of waiting")
    return ap


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = _parser().parse_args(argv)
    env = os.environ if environ is None else environ
    if args.command == "demo":
        from .demo import run_demo

        configure_logging("console", "info")
        return run_demo(args.port, wait=not args.no_wait)
    try:
        settings = Settings.from_env(env, require_dirs=args.command in ("run", "once"))
    except SettingsError as e:
        print(f"reload-sidecar: {e}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)
    if args.command == "validate":
        return asyncio.run(_validate(settings, args.dir))
    if args.command == "once":
        from .reloader import Reloader

        return 0 if asyncio.run(Reloader.once(settings)) else 1
    if args.command == "webhook":
        from .webhook import load_webhook, run_webhook

        try:
            hook = load_webhook(settings)
        except SettingsError as e:
            print(f"reload-sidecar: {e}", file=sys.stderr)
            return 2
        return asyncio.run(run_webhook(settings, hook))
    from .run import run_sidecar

    return run_sidecar(settings)


async def _validate(settings: Settings, directory: Path) -> int:
    from .snapshot import SourceError, read_configured
    from .validate import Checks, validate

    try:
        snap = read_configured(directory, settings)
    except SourceError as e:
        print(f"{directory}: {e}")
        return 1
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
