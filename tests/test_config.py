"""Configuration: defaults, the example file, environment secrets and errors that name their key."""

from __future__ import annotations

from pathlib import Path

import pytest

from capbot.config import ConfigError, load_settings, to_masked_dict

EXAMPLE = Path(__file__).resolve().parents[1] / "config.example.yaml"


def test_example_file_documents_exactly_the_defaults() -> None:
    """config.example.yaml loads and yields the same settings as no file at all."""
    assert load_settings(str(EXAMPLE), env={}) == load_settings(None, env={})


def test_every_option_appears_in_the_example() -> None:
    """Each key of the settings tree is documented in config.example.yaml."""
    text = EXAMPLE.read_text()

    def keys(tree: object, prefix: str = "") -> list[str]:
        out = []
        if isinstance(tree, dict):
            for k, v in tree.items():
                out.append(k)
                out.extend(keys(v, f"{prefix}{k}."))
        return out

    missing = [k for k in keys(to_masked_dict(load_settings(None, env={}))) if f"{k}:" not in text]
    assert missing == []


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("plan:\n  cycle_start_day: 32\n", "plan.cycle_start_day: 32 is not a day of month (1-31)"),
        ("plan:\n  cycle_start_day: 0\n", "plan.cycle_start_day: 0 is not a day of month"),
        (
            "plan:\n  cycel_start_day: 3\n",
            "plan.cycel_start_day: unknown key; did you mean `plan.cycle_start_day`?",
        ),
        ("plna:\n  cap: 1 TB\n", "plna: unknown key; did you mean `plan`?"),
        ("plan:\n  cap: lots\n", "plan.cap: 'lots' is not a size"),
        (
            "plan:\n  timezone: Mars/Olympus\n",
            "plan.timezone: 'Mars/Olympus' is not an IANA time zone",
        ),
        (
            "plan:\n  counted: sideways\n",
            "plan.counted: 'sideways' is not one of both, download, upload",
        ),
        (
            "plan:\n  unmetered: ['25:00-06:00']\n",
            "plan.unmetered[0]: '25:00-06:00' is not a time window",
        ),
        (
            "plan:\n  unmetered: ['00:10-06:00']\n",
            "plan.unmetered[0]: '00:10-06:00' must start and end on a quarter hour",
        ),
        ("plan:\n  calibration: 7\n", "plan.calibration: 7 is out of range"),
        ("plan:\n  download_mbps: fast\n", "plan.download_mbps: 'fast' is not a number"),
        ("sampler:\n  interval: 0\n", "sampler.interval: 0 is out of range"),
        ("sampler:\n  max_rate_mbps: -1\n", "sampler.max_rate_mbps: -1 is out of range"),
        ("storage:\n  flush_interval: soon\n", "storage.flush_interval: 'soon' is not a number"),
        ("probe:\n  mode: turbo\n", "probe.mode: 'turbo' is not one of economy, thorough"),
        ("probe:\n  servers: [{kind: generic}]\n", "probe.servers[0].download_url: is required"),
        (
            "telegram:\n  allowed_chat_ids: [abc]\n",
            "telegram.allowed_chat_ids[0]: 'abc' is not a numeric id",
        ),
        (
            "notify:\n  urls: ['json://u:${NOPE}@h']\n",
            "notify.urls[0]: environment variable NOPE is not set",
        ),
        ("rules:\n  throttle:\n    basis: vibes\n", "rules.throttle.basis: 'vibes' is not one of"),
        ("plan: 3\n", "plan: 3 is not a mapping of keys"),
        ("- a\n- b\n", "the top level must be a mapping"),
        ("plan: [\n", "is not valid YAML"),
    ],
)
def test_config_errors_name_their_key(tmp_path: Path, yaml_text: str, message: str) -> None:
    """A bad value gives one message naming the key path, the value and what is expected."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml_text)
    with pytest.raises(ConfigError) as err:
        load_settings(str(cfg), env={})
    assert message in str(err.value)


def test_secrets_from_environment_and_references(tmp_path: Path) -> None:
    """Tokens come from CAPBOT_* variables or ${VAR} references and are masked when printed."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("notify:\n  urls: ['json://user:${PW}@127.0.0.1:9/x']\n")
    s = load_settings(str(cfg), env={"PW": "hunter2", "CAPBOT_TELEGRAM_TOKEN": "123:SECRET"})
    assert s.telegram.token == "123:SECRET"
    assert s.notify.urls[0].url == "json://user:hunter2@127.0.0.1:9/x"
    shown = repr(to_masked_dict(s))
    assert "hunter2" not in shown and "SECRET" not in shown


def test_search_order_prefers_explicit_then_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--config beats $CAPBOT_CONFIG, which beats ./config.yaml; none found means defaults."""
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("plan:\n  cycle_start_day: 5\n")
    b.write_text("plan:\n  cycle_start_day: 6\n")
    monkeypatch.chdir(tmp_path)
    assert load_settings(None, env={}).source == "defaults"
    (tmp_path / "config.yaml").write_text("plan:\n  cycle_start_day: 7\n")
    assert load_settings(None, env={}).plan.cycle_start_day == 7
    assert load_settings(None, env={"CAPBOT_CONFIG": str(b)}).plan.cycle_start_day == 6
    assert load_settings(str(a), env={"CAPBOT_CONFIG": str(b)}).plan.cycle_start_day == 5
    with pytest.raises(ConfigError, match="--config"):
        load_settings(str(tmp_path / "missing.yaml"), env={})


def test_sizes_and_windows_parse() -> None:
    """Caps accept SI and IEC units; free hours become minutes since midnight."""
    from capbot.config import PlanSettings, _build

    plan = _build(PlanSettings, {"cap": "500 GiB", "unmetered": ["23:00-06:00"]}, "plan")
    assert plan.cap == 500 * 2**30
    assert plan.unmetered == ((23 * 60, 6 * 60),)
    assert _build(PlanSettings, {"cap": "1 TB"}, "plan").cap == 10**12


def test_probe_jitter_follows_a_short_interval_and_is_checked(tmp_path: Path) -> None:
    """An unset jitter shrinks to a quarter of a short interval; an explicit one must be smaller."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("probe:\n  interval: 120\n")
    assert load_settings(str(cfg), env={}).probe.jitter == 30
    cfg.write_text("probe:\n  interval: 120\n  jitter: 200\n")
    with pytest.raises(ConfigError, match=r"probe\.jitter: 200 must be less than probe\.interval"):
        load_settings(str(cfg), env={})
    cfg.write_text("rules:\n  throttle:\n    slow_of_last: [6, 5]\n")
    with pytest.raises(ConfigError, match=r"rules\.throttle\.slow_of_last"):
        load_settings(str(cfg), env={})
