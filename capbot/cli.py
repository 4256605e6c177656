"""Command-line entry: `capbot run`, `usage`, `export`, `check-config`, ...; the only place that sets up logging."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from capbot import __version__
from capbot.config import SEARCH_PATHS_HELP, Settings, load_settings, to_masked_dict
from capbot.errors import CapbotError, ConfigError

log = logging.getLogger("capbot")

EXIT_CONFIG = 2


def setup_logging(level_name: str) -> None:
    """Log to stderr; under systemd (JOURNAL_STREAM) journald adds the timestamps itself."""
    level = getattr(logging, level_name.upper(), None)
    if not isinstance(level, int):
        raise ConfigError(f"--log-level: {level_name!r} is not one of debug, info, warning, error")
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not os.environ.get("JOURNAL_STREAM"):
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=level, format=fmt, stream=sys.stderr, force=True)
    # httpx logs each request URL at INFO, and Telegram's URLs carry the bot token.
    for noisy in ("httpx", "httpcore", "telegram.ext.Updater", "apprise", "discord", "asyncio"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", metavar="PATH", help=f"config file (default search: {SEARCH_PATHS_HELP})"
    )
    p.add_argument("--data-dir", metavar="DIR", help="data directory (overrides storage.data_dir)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="capbot",
        description="Watch what your ISP does to your capped or throttled line.",
    )
    parser.add_argument("--version", action="version", version=f"capbot {__version__}")
    parser.add_argument(
        "--log-level",
        default=os.environ.get("CAPBOT_LOG_LEVEL", "info"),
        help="debug, info, warning or error (default: $CAPBOT_LOG_LEVEL or info)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="run the service (sampling, probes, alerts, bots)")
    _common(p)

    p = sub.add_parser("usage", help="show usage for a period")
    _common(p)
    p.add_argument(
        "period",
        nargs="?",
        default="cycle",
        help="today, yesterday, week, month, cycle (default), last-cycle or YYYY-MM",
    )
    p.add_argument(
        "--from", dest="from_date", metavar="DATE", help="first day (YYYY-MM-DD), local time"
    )
    p.add_argument("--to", dest="to_date", metavar="DATE", help="last day (YYYY-MM-DD), inclusive")
    p.add_argument("--host", help="report another host sharing the database ('*' for all)")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("export", help="export usage rows as CSV or JSON")
    _common(p)
    p.add_argument("--format", choices=("csv", "json"), default="csv")
    p.add_argument(
        "--from", dest="from_date", metavar="DATE", help="first day (default: cycle start)"
    )
    p.add_argument(
        "--to", dest="to_date", metavar="DATE", help="last day, inclusive (default: today)"
    )
    p.add_argument("--resolution", choices=("minute", "hour", "day"), default="hour")

    p = sub.add_parser(
        "check-config", help="validate the configuration and print it, secrets masked"
    )
    _common(p)

    p = sub.add_parser("health", help="exit 0 if the service has written counters recently")
    _common(p)

    return parser


def _load(args: argparse.Namespace) -> Settings:
    return load_settings(getattr(args, "config", None), data_dir=getattr(args, "data_dir", None))


def _parse_date(text: str | None, flag: str) -> date | None:
    if text is None:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"{flag}: {text!r} is not a date (YYYY-MM-DD)") from None


def _open_existing_store(settings: Settings) -> Any:
    from capbot.app import open_store

    db = settings.database_url
    if db.startswith("sqlite:///"):
        path = db.removeprefix("sqlite:///")
        if not os.path.exists(path):
            raise CapbotError(
                f"no database at {path}: has `capbot run` been started with the same "
                "--data-dir / --config?"
            )
    return open_store(settings)


def cmd_run(args: argparse.Namespace) -> int:
    from capbot.app import run_service

    settings = _load(args)
    return asyncio.run(run_service(settings))


def cmd_check_config(args: argparse.Namespace) -> int:
    import yaml

    settings = _load(args)
    print(f"# configuration from {settings.source}: valid")
    print(yaml.safe_dump(to_masked_dict(settings), sort_keys=False, allow_unicode=True), end="")
    return 0


def _usage_period(args: argparse.Namespace, service: Any) -> Any:
    start = _parse_date(args.from_date, "--from")
    end = _parse_date(args.to_date, "--to")
    if start or end:
        today = datetime.now(service.plan.tz).date()
        start = start or service.cycle().start.astimezone(service.plan.tz).date()
        end = end or today
        if end < start:
            raise ConfigError("--to: is before --from")
        return service.custom(start, end)
    try:
        return service.period(args.period)
    except ValueError as exc:
        raise ConfigError(f"period: {exc}") from None


def cmd_usage(args: argparse.Namespace) -> int:
    from capbot.app import usage_service
    from capbot.services.render_text import usage_table

    settings = _load(args)
    store = _open_existing_store(settings)
    service = usage_service(settings, store)
    summary = service.report(_usage_period(args, service), host=args.host)
    if args.json:
        print(json.dumps(summary.to_json(), indent=2))
    else:
        print(usage_table(summary, settings.plan.timezone))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from capbot.app import usage_service
    from capbot.services.export import export_rows, write_csv

    settings = _load(args)
    store = _open_existing_store(settings)
    service = usage_service(settings, store)
    args.period = "cycle"
    period = _usage_period(args, service)
    rows = export_rows(store, period, args.resolution, service.plan.tz)
    if args.format == "json":
        print(json.dumps(rows, indent=1))
    else:
        write_csv(rows, sys.stdout)
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    import time

    settings = _load(args)
    store = _open_existing_store(settings)
    newest = max((s.wall_ts for s in store.counter_states().values()), default=None)
    limit = max(3 * settings.storage.flush_interval, 300)
    if newest is None or time.time() - newest > limit:
        print(f"unhealthy: no counters written in the last {limit:.0f} s")
        return 1
    print(f"healthy: counters written {time.time() - newest:.0f} s ago")
    return 0


COMMANDS = {
    "run": cmd_run,
    "usage": cmd_usage,
    "export": cmd_export,
    "check-config": cmd_check_config,
    "health": cmd_health,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `capbot` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        setup_logging(args.log_level)
    except ConfigError as exc:
        print(f"capbot: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if not args.command:
        parser.print_help()
        return EXIT_CONFIG
    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"capbot: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except CapbotError as exc:
        print(f"capbot: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
