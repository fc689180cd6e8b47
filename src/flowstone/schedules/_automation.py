"""Declarative automation: per-asset conditions the daemon evaluates incrementally.

To be completed (issue 8): ``eager()``, ``on_cron(...)``, ``freshness(max_lag=...)`` and the
``AutomationEvaluator`` the daemon calls each pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flowstone._app import FlowStone


@dataclass(frozen=True)
class AutomationRequest:
    """One run the conditions ask for: ``name`` and ``key`` identify it (exactly once)."""

    name: str
    key: str
    selection: Sequence[str]
    partitions: Sequence[str]


def check_condition(condition: Any) -> str | None:
    """None when ``condition`` is an automation condition, else what is wrong with it."""
    return f"expected eager(), on_cron(...) or freshness(...), got {condition!r}"


class AutomationEvaluator:
    def __init__(self, app: FlowStone) -> None:
        self.app = app

    def evaluate(self, now: datetime) -> list[AutomationRequest]:
        return []
