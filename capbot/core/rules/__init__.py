"""Alert rules as pure functions: (state, observation, settings, tz) -> Outcome(new state, alerts, events).

States are small dataclasses that round-trip through JSON (`to_json`/`from_json`); the service
stores them in the same transaction as the alerts they raise.
"""

from __future__ import annotations

from capbot.core.rules.cap import CapState, evaluate_cap, reach_date, rolled_over
from capbot.core.rules.delivery import backoff_s, compose, hold_until, quiet_until
from capbot.core.rules.outage import OutageState, check_from_probe, observe_line
from capbot.core.rules.pattern import Pattern, classify_episode, classify_hours, hour_counts
from capbot.core.rules.settings import (
    BufferbloatSettings,
    CapRuleSettings,
    DeliverySettings,
    OutageSettings,
    PlanSpeeds,
    RuleSettings,
    ThrottleSettings,
)
from capbot.core.rules.speed import SpeedState, Verdict, judge, observe_speed
from capbot.core.rules.summary import cycle_summary
from capbot.core.rules.types import (
    CapSnapshot,
    Delivery,
    Event,
    JsonState,
    LineCheck,
    Outcome,
    ProbeObservation,
)

__all__ = [
    "BufferbloatSettings",
    "CapRuleSettings",
    "CapSnapshot",
    "CapState",
    "Delivery",
    "DeliverySettings",
    "Event",
    "JsonState",
    "LineCheck",
    "OutageSettings",
    "OutageState",
    "Outcome",
    "Pattern",
    "PlanSpeeds",
    "ProbeObservation",
    "RuleSettings",
    "SpeedState",
    "ThrottleSettings",
    "Verdict",
    "backoff_s",
    "check_from_probe",
    "classify_episode",
    "classify_hours",
    "compose",
    "cycle_summary",
    "evaluate_cap",
    "hold_until",
    "hour_counts",
    "judge",
    "observe_line",
    "observe_speed",
    "quiet_until",
    "reach_date",
    "rolled_over",
]
