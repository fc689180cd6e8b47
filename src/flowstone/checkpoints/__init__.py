"""Checkpoints: asset-level approval gates.

Define one with ``@pipeline.checkpoint`` (see :mod:`flowstone.checkpoints._definition`); decide
its requests through ``app.approvals`` or ``flowstone approvals ...``::

    @pipeline.checkpoint(timeout="24h", on_timeout="escalate", escalate_to=["data-leads"])
    def report_review(context, daily_report) -> bool:
        return daily_report["change_pct"].abs().max() > 0.2

    app.approvals.approve(request.id, by="ana", reason="checked with finance")
"""

from __future__ import annotations

from flowstone.checkpoints._api import Approvals, LogNotifier, Notifier
from flowstone.checkpoints._definition import (
    Approve,
    CheckpointSpec,
    Extend,
    Modify,
    Reject,
    approve,
    extend,
    modify,
    reject,
)
from flowstone.checkpoints._state import Action, ApprovalStatus, IllegalTransition
from flowstone.checkpoints._store import ApprovalRecord

__all__ = [
    "Action",
    "ApprovalRecord",
    "ApprovalStatus",
    "Approvals",
    "Approve",
    "CheckpointSpec",
    "Extend",
    "IllegalTransition",
    "LogNotifier",
    "Modify",
    "Notifier",
    "Reject",
    "approve",
    "extend",
    "modify",
    "reject",
]
