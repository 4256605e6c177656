"""Load YAML + environment once into frozen, typed settings; every error names its key path."""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from capbot.core.units import parse_size
from capbot.errors import ConfigError

T = TypeVar("T")
Parser = Callable[[Any, str], Any]

SEARCH_PATHS_HELP = (
    "--config PATH, $CAPBOT_CONFIG, ./config.yaml, $XDG_CONFIG_HOME/capbot/config.yaml, "
    "/etc/capbot/config.yaml"
)


def _err(path: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(f"{path}: {value!r} {expected}")


# --- field parsers: (raw value, key path) -> typed value -------------------------------------


def _number(lo: float | None = None, hi: float | None = None, *, integer: bool = False) -> Parser:
    def parse(v: Any, path: str) -> float | int:
        if isinstance(v, bool) or not isinstance(v, int | float | str):
            raise _err(path, v, "is not a number")
        try:
            num: float | int = int(v) if integer else float(v)
        except ValueError:
            raise _err(path, v, "is not a number") from None
        if integer and isinstance(v, float) and not v.is_integer():
            raise _err(path, v, "is not a whole number")
        if (lo is not None and num < lo) or (hi is not None and num > hi):
            rng = f"between {lo:g} and {hi:g}" if hi is not None else f"at least {lo:g}"
            raise _err(path, v, f"is out of range (must be {rng})")
        return num

    return parse


def _day_of_month(v: Any, path: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 31:
        raise _err(path, v, "is not a day of month (1-31)")
    return v


def _bool(v: Any, path: str) -> bool:
    if not isinstance(v, bool):
        raise _err(path, v, "is not true or false")
    return v


def _str(v: Any, path: str) -> str:
    if not isinstance(v, str | int | float) or isinstance(v, bool):
        raise _err(path, v, "is not a string")
    return str(v)


def _opt(inner: Parser) -> Parser:
    def parse(v: Any, path: str) -> Any:
        if v is None or (isinstance(v, str) and v.strip().lower() in ("", "none", "null")):
            return None
        return inner(v, path)

    return parse


def _choice(*options: str) -> Parser:
    def parse(v: Any, path: str) -> str:
        if v not in options:
            raise _err(path, v, f"is not one of {', '.join(options)}")
        return str(v)

    return parse


def _list(inner: Parser) -> Parser:
    def parse(v: Any, path: str) -> tuple[Any, ...]:
        if v is None:
            return ()
        if isinstance(v, str | int) and not isinstance(v, bool):
            v = [v]  # a single value where a list is expected is what the user meant
        if not isinstance(v, list):
            raise _err(path, v, "is not a list")
        return tuple(inner(item, f"{path}[{i}]") for i, item in enumerate(v))

    return parse


def _size(v: Any, path: str) -> int | None:
    if v is None or (isinstance(v, str) and v.strip().lower() in ("", "none", "unlimited")):
        return None
    try:
        return parse_size(v)
    except ValueError as exc:
        raise _err(path, v, str(exc)) from None


def _timezone(v: Any, path: str) -> str:
    if v is None or v == "":
        return system_timezone()
    try:
        ZoneInfo(str(v))
    except (ZoneInfoNotFoundError, ValueError):
        raise _err(path, v, "is not an IANA time zone (for example Europe/Berlin)") from None
    return str(v)


_WINDOW_RE = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


def _window(v: Any, path: str) -> tuple[int, int]:
    """`HH:MM-HH:MM` in local time -> minutes since midnight; an end before the start wraps midnight."""
    m = _WINDOW_RE.match(str(v)) if isinstance(v, str) else None
    if not m:
        raise _err(path, v, "is not a time window like 00:00-06:00")
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    if h1 > 24 or h2 > 24 or m1 > 59 or m2 > 59:
        raise _err(path, v, "is not a time window like 00:00-06:00")
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if start % 15 or end % 15:
        raise _err(
            path, v, "must start and end on a quarter hour (usage is kept in 15-minute buckets)"
        )
    if start == end:
        raise _err(path, v, "is an empty window")
    return start % 1440, end % 1440 if end != 1440 else 1440


def _clock_window(v: Any, path: str) -> tuple[int, int]:
    """Like `_window` but any minute is fine (quiet hours do not touch usage buckets)."""
    m = _WINDOW_RE.match(str(v)) if isinstance(v, str) else None
    if not m:
        raise _err(path, v, "is not a time window like 22:00-07:00")
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    if h1 > 24 or h2 > 24 or m1 > 59 or m2 > 59 or (h1 * 60 + m1) == (h2 * 60 + m2):
        raise _err(path, v, "is not a time window like 22:00-07:00")
    return (h1 * 60 + m1) % 1440, h2 * 60 + m2


def _one_window(v: Any, path: str) -> tuple[tuple[int, int], ...]:
    windows = _list(_clock_window)(v, path)
    if len(windows) > 1:
        raise _err(path, v, "has more than one window (one quiet period is supported)")
    return windows


def _int_id(v: Any, path: str) -> int:
    if isinstance(v, bool):
        raise _err(path, v, "is not a numeric id")
    try:
        return int(v)
    except (TypeError, ValueError):
        raise _err(path, v, "is not a numeric id") from None


def _interfaces(v: Any, path: str) -> tuple[str, ...] | str:
    if v is None or v == "auto":
        return "auto"
    return _list(_str)(v, path)


def _max_rate(v: Any, path: str) -> float | None:
    if v is None or v == "auto":
        return None
    return float(_number(0.001)(v, path))


# --- settings -----------------------------------------------------------------------------------


def _f(default: Any, parse: Parser, *, secret: bool = False) -> Any:
    if isinstance(default, list | dict | set):
        raise TypeError("use a tuple default")
    return field(default=default, metadata={"parse": parse, "secret": secret})


@dataclass(frozen=True)
class SamplerSettings:
    """How network counters are read."""

    interval: float = _f(5.0, _number(0.2, 300))
    interfaces: tuple[str, ...] | str = _f("auto", _interfaces)
    exclude: tuple[str, ...] = _f(
        (
            "lo", "docker*", "veth*", "br-*", "virbr*", "vnet*", "tun*", "tap*", "wg*",
            "tailscale*", "zt*", "vboxnet*", "vmnet*", "cni*", "flannel*", "cali*", "kube-*",
        ),
        _list(_str),
    )  # fmt: skip
    max_rate_mbps: float | None = _f(None, _max_rate)  # None = "auto": the NIC's link speed


@dataclass(frozen=True)
class StorageSettings:
    """Where and how often usage is written."""

    data_dir: str = _f("", _str)
    flush_interval: float = _f(60.0, _number(1, 3600))
    commit_interval: float = _f(600.0, _number(1, 86400))
    minute_retention_days: int = _f(35, _number(1, 3660, integer=True))


@dataclass(frozen=True)
class DatabaseSettings:
    """The database; default a SQLite file in the data dir."""

    url: str = _f("", _str, secret=True)


@dataclass(frozen=True)
class PlanSettings:
    """The internet plan as the ISP sells it."""

    cap: int | None = _f(None, _size)
    cycle_start_day: int = _f(1, _day_of_month)
    timezone: str = _f("", _timezone)
    counted: str = _f("both", _choice("both", "download", "upload"))
    unmetered: tuple[tuple[int, int], ...] = _f((), _list(_window))
    calibration: float = _f(1.0, _number(0.5, 2.0))
    cost_per_gb: float | None = _f(None, _opt(_number(0)))
    currency: str = _f("", _str)
    download_mbps: float | None = _f(None, _opt(_number(0.001)))
    upload_mbps: float | None = _f(None, _opt(_number(0.001)))


@dataclass(frozen=True)
class ServerSettings:
    """A speed-test server: `cloudflare` (any compatible base URL) or a generic download/upload URL."""

    name: str = _f("cloudflare", _str)
    kind: str = _f("cloudflare", _choice("cloudflare", "generic"))
    base_url: str = _f("https://speed.cloudflare.com", _str)
    download_url: str = _f("", _str)
    upload_url: str = _f("", _str)


def _server(v: Any, path: str) -> ServerSettings:
    if v == "cloudflare":
        return ServerSettings()
    if not isinstance(v, Mapping):
        raise _err(path, v, "is not `cloudflare` or a mapping with name/kind/base_url/download_url")
    server = _build(ServerSettings, v, path)
    if server.kind == "generic" and not server.download_url:
        raise ConfigError(f"{path}.download_url: is required for a generic server")
    return server


@dataclass(frozen=True)
class ProbeSettingsConfig:
    """Scheduled speed probes."""

    enabled: bool = _f(True, _bool)
    interval: float = _f(3600.0, _number(60))
    jitter: float = _f(300.0, _number(0))
    mode: str = _f("economy", _choice("economy", "thorough"))
    servers: tuple[ServerSettings, ...] = _f((ServerSettings(),), _list(_server))
    quiet_hours: tuple[tuple[int, int], ...] = _f((), _list(_clock_window))
    busy_threshold_mbps: float = _f(2.0, _number(0))
    skip_above_cap_percent: float = _f(95.0, _number(0, 1000))
    max_seconds: float | None = _f(None, _opt(_number(1, 120)))
    max_bytes: int | None = _f(None, _size)
    streams: int | None = _f(None, _opt(_number(1, 32, integer=True)))


ALERT_TAGS = (
    "info", "warning", "critical",  # severities
    "cap", "projection", "daily_budget", "cycle_summary", "throttle", "throttle_end",
    "bufferbloat", "outage",  # rules
)  # fmt: skip


@dataclass(frozen=True)
class NotifyTarget:
    """One Apprise URL, optionally limited to alerts of some severities (tags)."""

    url: str = _f("", _str, secret=True)
    tags: tuple[str, ...] = _f((), _list(_choice(*ALERT_TAGS)))


def _notify_target(v: Any, path: str) -> NotifyTarget:
    if isinstance(v, str):
        return NotifyTarget(url=v)
    if not isinstance(v, Mapping):
        raise _err(path, "<hidden>", "is not an Apprise URL or a mapping with url and tags")
    target = _build(NotifyTarget, v, path)
    if not target.url:
        raise ConfigError(f"{path}.url: is required")
    return target


@dataclass(frozen=True)
class NotifySettings:
    """Where alerts go and when."""

    urls: tuple[NotifyTarget, ...] = _f((), _list(_notify_target))
    quiet_hours: tuple[tuple[int, int], ...] = _f((), _one_window)
    max_attempts: int = _f(12, _number(1, 1000, integer=True))
    min_repeat_interval: float = _f(3600.0, _number(0))


@dataclass(frozen=True)
class ThrottleRuleSettings:
    """When a probe counts as slow, and how many slow probes make an alert."""

    plan_percent: float = _f(50.0, _number(1, 100))
    baseline_percent: float = _f(60.0, _number(1, 100))
    basis: str = _f("either", _choice("plan", "baseline", "either", "both"))
    slow_of_last: tuple[int, ...] = _f((3, 5), _list(_number(1, 100, integer=True)))
    baseline_window: int = _f(10, _number(3, 200, integer=True))
    bufferbloat_ms: float = _f(100.0, _number(1))


@dataclass(frozen=True)
class CapRuleSettings:
    """Data-cap alerts."""

    thresholds: tuple[float, ...] = _f((50.0, 80.0, 90.0, 100.0), _list(_number(1, 1000)))
    projection_warning: bool = _f(True, _bool)
    daily_budget: bool = _f(True, _bool)


@dataclass(frozen=True)
class OutageRuleSettings:
    """Outage detection between probes."""

    failures: int = _f(3, _number(1, 100, integer=True))
    check_interval: float = _f(60.0, _number(5))
    check_url: str = _f("https://speed.cloudflare.com/cdn-cgi/trace", _str)


@dataclass(frozen=True)
class RulesSettings:
    """Rule thresholds."""

    throttle: ThrottleRuleSettings = field(default_factory=ThrottleRuleSettings)
    cap: CapRuleSettings = field(default_factory=CapRuleSettings)
    outage: OutageRuleSettings = field(default_factory=OutageRuleSettings)


@dataclass(frozen=True)
class TelegramSettingsConfig:
    """The Telegram bot (off without a token)."""

    token: str = _f("", _str, secret=True)
    allowed_chat_ids: tuple[int, ...] = _f((), _list(_int_id))
    allowed_user_ids: tuple[int, ...] = _f((), _list(_int_id))
    alert_chat_ids: tuple[int, ...] = _f((), _list(_int_id))
    api_base_url: str = _f("https://api.telegram.org/bot", _str)
    file_base_url: str = _f("https://api.telegram.org/file/bot", _str)


@dataclass(frozen=True)
class DiscordSettingsConfig:
    """The Discord bot (off without a token)."""

    token: str = _f("", _str, secret=True)
    guild_ids: tuple[int, ...] = _f((), _list(_int_id))
    allowed_user_ids: tuple[int, ...] = _f((), _list(_int_id))
    allowed_guild_ids: tuple[int, ...] = _f((), _list(_int_id))
    allowed_channel_ids: tuple[int, ...] = _f((), _list(_int_id))
    alert_channel_ids: tuple[int, ...] = _f((), _list(_int_id))


@dataclass(frozen=True)
class ChatSettings:
    """Behaviour shared by the chat bots."""

    speedtest_cooldown: float = _f(300.0, _number(0))
    chart_theme: str = _f("light", _choice("light", "dark"))


@dataclass(frozen=True)
class Settings:
    """The whole, validated configuration."""

    host: str = _f("", _str)
    sampler: SamplerSettings = field(default_factory=SamplerSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    plan: PlanSettings = field(default_factory=PlanSettings)
    probe: ProbeSettingsConfig = field(default_factory=ProbeSettingsConfig)
    rules: RulesSettings = field(default_factory=RulesSettings)
    notify: NotifySettings = field(default_factory=NotifySettings)
    telegram: TelegramSettingsConfig = field(default_factory=TelegramSettingsConfig)
    discord: DiscordSettingsConfig = field(default_factory=DiscordSettingsConfig)
    chat: ChatSettings = field(default_factory=ChatSettings)
    source: str = field(default="defaults", compare=False)  # the file loaded, for the startup log

    @property
    def data_dir(self) -> Path:
        """The data directory (created on demand by the store)."""
        return Path(self.storage.data_dir).expanduser()

    @property
    def database_url(self) -> str:
        """The effective database URL."""
        return self.database.url or f"sqlite:///{self.data_dir / 'capbot.db'}"


# --- building -----------------------------------------------------------------------------------


def _build(cls: type[T], data: Any, path: str) -> T:
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise _err(path or "config", data, "is not a mapping of keys")
    known = {f.name: f for f in fields(cls) if f.name != "source"}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for key, raw in data.items():
        key_path = f"{path}.{key}" if path else str(key)
        if key not in known:
            hint = difflib.get_close_matches(str(key), known, n=1)
            did = f"; did you mean `{(path + '.') if path else ''}{hint[0]}`?" if hint else ""
            raise ConfigError(f"{key_path}: unknown key{did}")
        f = known[key]
        if "parse" in f.metadata:
            values[key] = f.metadata["parse"](raw, key_path)
        else:  # a nested section
            section_cls = f.default_factory
            assert section_cls is not MISSING
            values[key] = _build(section_cls, raw, key_path)  # type: ignore[arg-type]
    return cls(**values)


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _interpolate(node: Any, path: str, env: Mapping[str, str]) -> Any:
    """Replace `${VAR}` in every string with the environment's value (secrets stay out of the file)."""
    if isinstance(node, str):

        def sub(m: re.Match[str]) -> str:
            if m.group(1) not in env:
                raise ConfigError(
                    f"{path or 'config'}: environment variable {m.group(1)} is not set"
                )
            return env[m.group(1)]

        return _ENV_REF.sub(sub, node)
    if isinstance(node, list):
        return [_interpolate(v, f"{path}[{i}]", env) for i, v in enumerate(node)]
    if isinstance(node, dict):
        return {k: _interpolate(v, f"{path}.{k}" if path else str(k), env) for k, v in node.items()}
    return node


# Environment variables that override single keys (secrets, and what containers set).
ENV_OVERRIDES: dict[str, tuple[str, str]] = {
    "CAPBOT_TELEGRAM_TOKEN": ("telegram", "token"),
    "CAPBOT_DISCORD_TOKEN": ("discord", "token"),
    "CAPBOT_DATABASE_URL": ("database", "url"),
    "CAPBOT_DATA_DIR": ("storage", "data_dir"),
    "CAPBOT_NOTIFY_URLS": ("notify", "urls"),  # whitespace-separated Apprise URLs
}


def find_config_file(explicit: str | None, env: Mapping[str, str]) -> Path | None:
    """The first config file in the documented search order, or None to run on defaults."""
    if explicit:
        p = Path(explicit).expanduser()
        if not p.is_file():
            raise ConfigError(f"--config: {explicit!r} is not a readable file")
        return p
    if env.get("CAPBOT_CONFIG"):
        p = Path(env["CAPBOT_CONFIG"]).expanduser()
        if not p.is_file():
            raise ConfigError(f"CAPBOT_CONFIG: {env['CAPBOT_CONFIG']!r} is not a readable file")
        return p
    xdg = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    for candidate in (
        Path("config.yaml"),
        Path(xdg) / "capbot" / "config.yaml",
        Path("/etc/capbot/config.yaml"),
    ):
        if candidate.is_file():
            return candidate
    return None


def default_data_dir(env: Mapping[str, str]) -> str:
    """XDG data dir for a user, /var/lib/capbot for root-run services without a home."""
    xdg = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(xdg) / "capbot")


def system_timezone() -> str:
    """The host's IANA time zone name, or UTC when it cannot be told."""
    tz = os.environ.get("TZ", "").lstrip(":")
    candidates = [tz] if tz else []
    with contextlib.suppress(OSError):
        candidates.append(Path("/etc/timezone").read_text().strip())
    try:
        target = str(Path("/etc/localtime").resolve())
        if "zoneinfo/" in target:
            candidates.append(target.split("zoneinfo/", 1)[1])
    except OSError:
        pass
    for name in candidates:
        try:
            ZoneInfo(name)
            return name
        except (ZoneInfoNotFoundError, ValueError):
            continue
    return "UTC"


def load_settings(
    config_path: str | None = None,
    env: Mapping[str, str] | None = None,
    data_dir: str | None = None,
) -> Settings:
    """Find, read, interpolate, validate; raise ConfigError naming the key on any problem."""
    import yaml  # only the config loader needs it

    env = os.environ if env is None else env
    path = find_config_file(config_path, env)
    raw: Any = {}
    if path is not None:
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise ConfigError(
                f"{path}:{where} is not valid YAML: {getattr(exc, 'problem', exc)}"
            ) from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot be read: {exc.strerror}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    raw = _interpolate(raw, "", env)
    for var, (section, key) in ENV_OVERRIDES.items():
        if env.get(var):
            value: Any = env[var].split() if key == "urls" else env[var]
            raw.setdefault(section, {})
            if not isinstance(raw[section], dict):
                raise _err(section, raw[section], "is not a mapping of keys")
            raw[section][key] = value
    settings = _build(Settings, raw, "")
    probe_raw = raw.get("probe") if isinstance(raw.get("probe"), dict) else {}
    if "jitter" not in probe_raw and settings.probe.jitter >= settings.probe.interval / 4:
        # The default jitter suits the default hour; a short interval gets a quarter of itself.
        settings = replace(
            settings, probe=replace(settings.probe, jitter=settings.probe.interval / 4)
        )
    if settings.probe.jitter >= settings.probe.interval:
        raise ConfigError(
            f"probe.jitter: {settings.probe.jitter:g} must be less than probe.interval "
            f"({settings.probe.interval:g})"
        )
    if len(settings.rules.throttle.slow_of_last) != 2 or (
        settings.rules.throttle.slow_of_last[0] > settings.rules.throttle.slow_of_last[1]
    ):
        raise ConfigError(
            f"rules.throttle.slow_of_last: {list(settings.rules.throttle.slow_of_last)} "
            "is not [M, N] with M <= N"
        )
    storage = settings.storage
    if data_dir:
        storage = replace(storage, data_dir=data_dir)
    elif not storage.data_dir:
        storage = replace(storage, data_dir=default_data_dir(env))
    plan = (
        settings.plan
        if settings.plan.timezone
        else replace(settings.plan, timezone=system_timezone())
    )
    return replace(
        settings,
        storage=storage,
        plan=plan,
        host=settings.host or socket.gethostname(),
        source=str(path) if path else "defaults",
    )


def _mask(value: Any) -> Any:
    if not value:
        return value
    return "***"


def to_masked_dict(obj: Any) -> Any:
    """The settings as plain data with every secret replaced by `***` (for check-config and logs)."""
    if is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        for f in fields(obj):
            if f.name == "source":
                continue
            value = getattr(obj, f.name)
            if f.metadata.get("secret"):
                out[f.name] = _mask_url(value) if f.name == "url" else _mask(value)
            else:
                out[f.name] = to_masked_dict(value)
        return out
    if isinstance(obj, tuple):
        return [to_masked_dict(v) for v in obj]
    return obj


def _mask_url(url: str) -> str:
    """Keep the scheme (useful to see which service) and hide everything after it."""
    if not url:
        return url
    scheme, sep, _rest = url.partition("://")
    return f"{scheme}://***" if sep else "***"
