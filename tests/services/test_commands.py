"""The command table: replies for every command, charts, cooldown and bad arguments."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from capbot.adapters.charts import ChartRenderer
from capbot.core.model import CommandRequest, ProbeResult, Reply
from capbot.core.report import PlanRules
from capbot.services.commands import Commands, PlanFacts
from capbot.services.usage import PlanView, UsageService
from tests.builders import seeded_store

PNG = b"\x89PNG\r\n\x1a\n"


class FakeProber:
    """Answers run_now with a fixed result after reporting progress."""

    def __init__(self) -> None:
        self.running = False
        self.calls = 0

    async def run_now(self, trigger: str, progress=None) -> ProbeResult:  # type: ignore[no-untyped-def]
        self.calls += 1
        if progress:
            await progress("download 93.1 Mbit/s…")
        return ProbeResult(
            started_at=datetime.now(UTC),
            server="local",
            mode="economy",
            download_bps=93.1e6,
            upload_bps=19.5e6,
            latency_ms=12.3,
            jitter_ms=1.1,
            bytes_down=30_000_000,
            bytes_up=6_000_000,
        )


@pytest.fixture
def commands(tmp_path: Path) -> Commands:
    now = datetime.now(UTC)
    rows = [(now - timedelta(hours=h), "eth0", 1_000_000_000, 100_000_000) for h in range(0, 72, 3)]
    store = seeded_store(tmp_path / "c.db", "h1", rows)
    for i in range(5):
        store.add_probe(
            ProbeResult(
                started_at=now - timedelta(hours=i),
                server="cf",
                mode="economy",
                download_bps=(30e6 if i == 0 else 95e6),
                upload_bps=20e6,
                latency_ms=10.0,
            )
        )
    tz = ZoneInfo("Europe/Berlin")
    usage = UsageService(store, PlanView(PlanRules(cap_bytes=10**12), 1, tz))
    plan = PlanFacts(
        cap_bytes=10**12,
        cycle_start_day=1,
        timezone="Europe/Berlin",
        counted="both",
        download_bps=100e6,
        upload_bps=20e6,
        probe_max_bytes=40_000_000,
    )
    return Commands(
        usage=usage,
        probe_log=store,
        plan=plan,
        prober=FakeProber(),
        charts=ChartRenderer(mode="thread"),
        speedtest_cooldown_s=300,
    )


async def _ask(c: Commands, text: str) -> tuple[Reply, list[str]]:
    name, *args = text.lstrip("/").split()
    lines: list[str] = []

    async def progress(line: str) -> None:
        lines.append(line)

    return await c.handle(CommandRequest(name, tuple(args), "test", "1", "1"), progress), lines


async def test_usage_replies_with_text_and_chart(commands: Commands) -> None:
    """/usage answers with the cycle's usage, percent of cap and a PNG chart."""
    reply, _ = await _ask(commands, "/usage")
    assert "Counted" in reply.text and "% " not in reply.text[:0]
    assert "of 1.00 TB cap" in reply.text
    assert reply.png is not None and reply.png.startswith(PNG)


async def test_usage_today_uses_hourly_chart(commands: Commands) -> None:
    """/usage today answers with an hourly chart."""
    reply, _ = await _ask(commands, "/usage today")
    assert reply.png is not None and reply.png.startswith(PNG)


@pytest.mark.parametrize(
    "text",
    [
        "/usage fortnight",
        "/usage a b",
        "/history x",
        "/history 0",
        "/alerts x",
        "/speedtest now",
        "/frobnicate",
    ],
)
async def test_bad_arguments_get_a_hint_and_the_help(commands: Commands, text: str) -> None:
    """Unknown commands and bad arguments give a one-line hint plus the help, never an error."""
    reply, _ = await _ask(commands, text)
    first, _, rest = reply.text.partition("\n")
    assert first and "Commands:" in rest and "/usage" in rest


async def test_speedtest_states_cost_then_result_and_cools_down(commands: Commands) -> None:
    """/speedtest says its data cost first, reports the result, then refuses a rapid repeat."""
    reply, lines = await _ask(commands, "/speedtest")
    assert "40.0 MB" in lines[0] and "at most" in lines[0]
    assert "93.1 Mbit/s" in reply.text
    again, _ = await _ask(commands, "/speedtest")
    assert "wait" in again.text.lower()
    assert commands.prober.calls == 1  # type: ignore[union-attr]


async def test_speedtest_refused_while_a_probe_runs(commands: Commands) -> None:
    """Only one probe at a time: a running probe makes /speedtest say so."""
    commands.prober.running = True  # type: ignore[union-attr]
    reply, _ = await _ask(commands, "/speedtest")
    assert "already running" in reply.text


async def test_history_marks_slow_probes_and_draws_chart(commands: Commands) -> None:
    """/history lists probes, marks the slow one against the plan and attaches a chart."""
    reply, _ = await _ask(commands, "/history 5")
    assert "← slow" in reply.text
    assert reply.png is not None and reply.png.startswith(PNG)
    reply7, _ = await _ask(commands, "/history 7d")
    assert "Last 5 speed tests" in reply7.text


async def test_status_plan_and_help(commands: Commands) -> None:
    """/status, /plan and /help answer with their facts."""
    status, _ = await _ask(commands, "/status")
    assert "capbot" in status.text and "Cycle:" in status.text
    plan, _ = await _ask(commands, "/plan")
    assert "Cap: 1.00 TB" in plan.text and "day 1" in plan.text
    help_, _ = await _ask(commands, "/help")
    assert "/speedtest" in help_.text


async def test_commands_survive_concurrent_use(commands: Commands) -> None:
    """Several commands at once all answer."""
    replies = await asyncio.gather(
        *(_ask(commands, t) for t in ("/usage week", "/plan", "/status", "/history"))
    )
    assert all(r.text for r, _ in replies)
