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
from typing import Any, Literal

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

    p = sub.add_parser("speedtest", help="run one speed test now and store it")
    _common(p)
    p.add_argument(
        "--server",
        metavar="URL|NAME",
        help="a Cloudflare-compatible base URL (serving /__down and /__up) or a configured server name",
    )
    p.add_argument("--mode", choices=("economy", "thorough"), help="default: probe.mode")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("history", help="recent speed tests")
    _common(p)
    p.add_argument("--limit", type=int, default=20, metavar="N")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("alerts", help="raised alerts and their delivery")
    _common(p)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--pending", action="store_true", help="only alerts still to be delivered")
    which.add_argument("--failed", action="store_true", help="only alerts that gave up (dead)")
    p.add_argument("--limit", type=int, default=50, metavar="N")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("notify-test", help="send a test notification to every notify.urls entry")
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
    return run_service(settings)


def cmd_check_config(args: argparse.Namespace) -> int:
    import yaml

    settings = _load(args)
    print(f"# configuration from {settings.source}: valid")
    if settings.notify.urls:
        from capbot.adapters.notifier import public_ntfy_warning

        for target in settings.notify.urls:
            warning = public_ntfy_warning(target.url)
            if warning:
                print(f"# warning: {warning}")
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


def _probe_line(result: Any) -> str:
    from capbot.core.units import format_bps, format_bytes

    when = result.started_at.astimezone().strftime("%Y-%m-%d %H:%M")
    if result.status != "ok":
        return f"{when}  {result.status} ({result.error_kind}): {result.error}  [{result.server}]"
    lat = f"  {result.latency_ms:.1f} ms" if result.latency_ms is not None else ""
    jit = f" ±{result.jitter_ms:.1f}" if result.jitter_ms is not None else ""
    loaded = (
        f" (loaded {result.loaded_latency_ms:.0f} ms)"
        if result.loaded_latency_ms is not None
        else ""
    )
    used = format_bytes(result.bytes_down + result.bytes_up)
    return (
        f"{when}  down {format_bps(result.download_bps)}  up {format_bps(result.upload_bps)}"
        f"{lat}{jit}{loaded}  used {used}  [{result.server}]"
    )


def cmd_speedtest(args: argparse.Namespace) -> int:
    from capbot.app import probe_servers, probe_settings
    from capbot.core.probe import ServerSpec

    settings = _load(args)
    servers = probe_servers(settings)
    if args.server:
        named = [s for s in servers if s.name == args.server]
        if named:
            server = named[0]
        elif "://" in args.server:
            try:
                server = ServerSpec.from_url(args.server)
            except ValueError as exc:
                raise ConfigError(f"--server: {exc}") from None
        else:
            names = ", ".join(s.name for s in servers)
            raise ConfigError(
                f"--server: {args.server!r} is neither a URL nor a configured server ({names})"
            )
    else:
        server = servers[0]
    result = asyncio.run(_run_probe(server, probe_settings(settings, args.mode), quiet=args.json))
    store = None
    db = settings.database_url
    if not db.startswith("sqlite:///") or os.path.exists(db.removeprefix("sqlite:///")):
        try:
            store = _open_existing_store(settings)
            store.add_probe(result)
        except CapbotError as exc:
            print(f"capbot: probe not stored: {exc}", file=sys.stderr)
    if args.json:
        out = result.to_json()
        out["stored"] = store is not None
        print(json.dumps(out, indent=2))
    else:
        print(_probe_line(result))
    return 0 if result.status == "ok" else 1


async def _run_probe(server: Any, settings: Any, quiet: bool) -> Any:
    from capbot.adapters.speedtest import SpeedProbe

    probe = SpeedProbe()
    if quiet or not sys.stderr.isatty():
        return await probe.run(server, settings, None, trigger="manual")
    from rich.console import Console

    console = Console(stderr=True)
    with console.status(f"speed test against {server.name}…") as status:

        async def progress(line: str) -> None:
            status.update(line)

        return await probe.run(server, settings, progress, trigger="manual")


def cmd_history(args: argparse.Namespace) -> int:
    settings = _load(args)
    store = _open_existing_store(settings)
    probes = store.probes(limit=max(args.limit, 1))
    if args.json:
        print(json.dumps([p.to_json() for p in probes], indent=2))
    elif not probes:
        print("no speed tests yet (run `capbot speedtest`)")
    else:
        for p in probes:
            print(_probe_line(p))
    return 0


def cmd_alerts(args: argparse.Namespace) -> int:
    from capbot.adapters.store.alerts import AlertStore
    from capbot.services.commands import alert_status

    settings = _load(args)
    store = _open_existing_store(settings)
    which: Literal["all", "pending", "failed"] = (
        "pending" if args.pending else "failed" if args.failed else "all"
    )
    alerts = asyncio.run(AlertStore(store.engine, settings.host).list_alerts(which, args.limit))
    if args.json:
        print(json.dumps([{**_alert_json(a), "status": alert_status(a)} for a in alerts], indent=2))
        return 0
    if not alerts:
        print(f"no {which if which != 'all' else ''} alerts".replace("  ", " "))
    for a in alerts:
        when = a.raised_at.astimezone().strftime("%Y-%m-%d %H:%M")
        print(f"{when}  {a.severity:<8} {alert_status(a):<10} {a.title}")
        for d in a.deliveries:
            err = f"  ({d.last_error})" if d.last_error else ""
            print(f"    {d.target:<24} {d.status:<9} attempts {d.attempts}{err}")
    return 0


def _alert_json(a: Any) -> dict[str, Any]:
    import dataclasses

    def conv(v: Any) -> Any:
        if isinstance(v, datetime):
            return v.isoformat()
        if isinstance(v, list | tuple):
            return [conv(x) for x in v]
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        return v

    out: dict[str, Any] = conv(a)
    return out


def cmd_notify_test(args: argparse.Namespace) -> int:
    from capbot.adapters.notifier import AppriseNotifier, NotifyUrl, public_ntfy_warning

    settings = _load(args)
    if not settings.notify.urls:
        print("no notify.urls configured")
        return 1
    for t in settings.notify.urls:
        warning = public_ntfy_warning(t.url)
        if warning:
            print(f"warning: {warning}")
    notifier = AppriseNotifier([NotifyUrl(t.url, frozenset(t.tags)) for t in settings.notify.urls])
    results = asyncio.run(notifier.test_all())
    for masked_url, ok, error in results:
        print(f"{'ok    ' if ok else 'FAILED'} {masked_url}{'' if ok else f'  ({error})'}")
    return 0 if all(ok for _, ok, _ in results) else 1


def cmd_health(args: argparse.Namespace) -> int:
    import time

    settings = _load(args)
    store = _open_existing_store(settings)
    stamps = [s.wall_ts for s in store.counter_states().values()]
    record = store.pending_journal()  # flushes between commits live in the journal
    if record:
        stamps += [int(c[5]) for c in record["states"]]
    newest = max(stamps, default=None)
    limit = max(3 * settings.storage.flush_interval, 900)
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
    "speedtest": cmd_speedtest,
    "history": cmd_history,
    "alerts": cmd_alerts,
    "notify-test": cmd_notify_test,
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
