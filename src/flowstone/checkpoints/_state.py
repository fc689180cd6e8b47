"""The approval state machine: which decisions may follow which state.

    pending ──approve──▶ approved        escalated ──approve──▶ approved
       │    ──modify───▶ modified            │      ──modify───▶ modified
       │    ──reject───▶ rejected            │      ──reject───▶ rejected
       │    ──escalate─▶ escalated ──────────┘      ──expire───▶ expired
       │    ──extend───▶ pending (later timeout)    ──escalate─▶ escalated (again)
       └────expire─────▶ expired

approved, modified, rejected and expired are final: nothing follows them. The store applies a
transition with a conditional UPDATE on the current state, so of two reviewers deciding at the
same moment exactly one wins and the other is told who did.
"""

from __future__ import annotations

import enum

from flowstone._errors import ValidationError


class ApprovalStatus(enum.StrEnum):
    PENDING = "pending"
    ESCALATED = "escalated"
    APPROVED = "approved"
    MODIFIED = "modified"
    REJECTED = "rejected"
    EXPIRED = "expired"

    def __str__(self) -> str:
        return self.value

    @property
    def open(self) -> bool:
        """Still waiting for a decision."""
        return self in (ApprovalStatus.PENDING, ApprovalStatus.ESCALATED)


class Action(enum.StrEnum):
    APPROVE = "approve"
    MODIFY = "modify"
    REJECT = "reject"
    ESCALATE = "escalate"
    EXTEND = "extend"
    EXPIRE = "expire"


_OPEN = (ApprovalStatus.PENDING, ApprovalStatus.ESCALATED)

# action -> (states it may start from, state it leads to)
TRANSITIONS: dict[Action, tuple[tuple[ApprovalStatus, ...], ApprovalStatus]] = {
    Action.APPROVE: (_OPEN, ApprovalStatus.APPROVED),
    Action.MODIFY: (_OPEN, ApprovalStatus.MODIFIED),
    Action.REJECT: (_OPEN, ApprovalStatus.REJECTED),
    Action.ESCALATE: (_OPEN, ApprovalStatus.ESCALATED),
    Action.EXTEND: ((ApprovalStatus.PENDING,), ApprovalStatus.PENDING),
    Action.EXPIRE: (_OPEN, ApprovalStatus.EXPIRED),
}


class IllegalTransition(ValidationError):
    """A decision the request's current state does not allow (approve twice, approve after a
    rejection, decide an expired request)."""


def next_status(
    current: ApprovalStatus, action: Action, *, approval_id: str = "?", by: str | None = None
) -> ApprovalStatus:
    """The state ``action`` leads to from ``current``; raises :class:`IllegalTransition`."""
    sources, target = TRANSITIONS[action]
    if current in sources:
        return target
    who = f" by {by}" if by else ""
    if not current.open:
        message = f"approval {approval_id} is already {current.value}{who}; it cannot be {_past(action)}"
    else:
        message = f"approval {approval_id} is {current.value}; it cannot be {_past(action)}"
    raise IllegalTransition(
        message,
        context={
            "approval_id": approval_id,
            "status": current.value,
            "action": action.value,
            "decided_by": by,
        },
    )


def _past(action: Action) -> str:
    return {
        Action.APPROVE: "approved",
        Action.MODIFY: "modified",
        Action.REJECT: "rejected",
        Action.ESCALATE: "escalated",
        Action.EXTEND: "extended",
        Action.EXPIRE: "expired",
    }[action]
