"""The approval state machine alone (flowstone.checkpoints._state), and the definition checks of
``@pipeline.checkpoint`` that need no store.

The property test walks random action sequences through ``next_status`` against a model written
out from the issue's table: nothing follows a final state, extend keeps a pending request pending,
and every refusal is an ``IllegalTransition`` (a ``ValidationError``) that names the request, its
state and who decided it.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import flowstone as fs
from flowstone._errors import DefinitionError, ValidationError
from flowstone.checkpoints import (
    Action,
    ApprovalStatus,
    Approve,
    Extend,
    IllegalTransition,
    Modify,
    Reject,
    approve,
    extend,
    modify,
    reject,
)
from flowstone.checkpoints._state import next_status

S = ApprovalStatus
A = Action
FINAL = {S.APPROVED, S.MODIFIED, S.REJECTED, S.EXPIRED}

# The state machine, written out by hand (not derived from the module's TRANSITIONS).
ALLOWED: dict[tuple[ApprovalStatus, Action], ApprovalStatus] = {
    (S.PENDING, A.APPROVE): S.APPROVED,
    (S.PENDING, A.MODIFY): S.MODIFIED,
    (S.PENDING, A.REJECT): S.REJECTED,
    (S.PENDING, A.ESCALATE): S.ESCALATED,
    (S.PENDING, A.EXPIRE): S.EXPIRED,
    (S.PENDING, A.EXTEND): S.PENDING,
    (S.ESCALATED, A.APPROVE): S.APPROVED,
    (S.ESCALATED, A.MODIFY): S.MODIFIED,
    (S.ESCALATED, A.REJECT): S.REJECTED,
    (S.ESCALATED, A.EXPIRE): S.EXPIRED,
    (S.ESCALATED, A.ESCALATE): S.ESCALATED,
}


@pytest.mark.parametrize("current", list(S))
@pytest.mark.parametrize("action", list(A))
def test_every_state_and_action_follows_the_table(current: ApprovalStatus, action: Action) -> None:
    expected = ALLOWED.get((current, action))
    if expected is not None:
        assert next_status(current, action) is expected
        return
    with pytest.raises(IllegalTransition) as caught:
        next_status(current, action, approval_id="a1b2c3", by="ana")
    assert isinstance(caught.value, ValidationError)
    assert caught.value.context["status"] == current.value
    assert caught.value.context["action"] == action.value
    assert "a1b2c3" in caught.value.message


def test_open_states_are_exactly_pending_and_escalated() -> None:
    assert {s for s in S if s.open} == {S.PENDING, S.ESCALATED}
    assert {s for s in S if not s.open} == FINAL


@pytest.mark.parametrize(
    ("current", "action", "words"),
    [
        (S.APPROVED, A.APPROVE, "already approved by ana; it cannot be approved"),
        (S.REJECTED, A.APPROVE, "already rejected by ana; it cannot be approved"),
        (S.EXPIRED, A.MODIFY, "already expired by ana; it cannot be modified"),
        (S.MODIFIED, A.REJECT, "already modified by ana; it cannot be rejected"),
    ],
)
def test_deciding_a_decided_request_names_who_decided(
    current: ApprovalStatus, action: Action, words: str
) -> None:
    with pytest.raises(IllegalTransition) as caught:
        next_status(current, action, approval_id="r1", by="ana")
    assert words in caught.value.message
    assert caught.value.context["decided_by"] == "ana"


def test_an_escalated_request_cannot_be_extended() -> None:
    with pytest.raises(IllegalTransition, match="is escalated; it cannot be extended"):
        next_status(S.ESCALATED, A.EXTEND, approval_id="r1")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(list(A)), max_size=25))
def test_random_action_sequences_never_reach_an_illegal_state(actions: list[Action]) -> None:
    """From pending, any sequence of attempts: accepted ones follow the table, refused ones leave
    the state as it was, a final state is never left, and at most one decision is accepted."""
    state = S.PENDING
    decisions = 0
    for action in actions:
        expected = ALLOWED.get((state, action))
        try:
            after = next_status(state, action, approval_id="x", by="someone")
        except IllegalTransition as exc:
            assert expected is None, f"{action} from {state} was refused: {exc.message}"
            assert exc.context["status"] == state.value
            continue
        assert expected is not None, f"{action} from {state} was accepted (-> {after})"
        assert after is expected
        assert state not in FINAL
        if after in FINAL:
            decisions += 1
        state = after
    assert decisions <= 1
    assert state in set(S)


# ---------------------------------------------------------------------- the decision helpers
def test_decision_helpers_build_their_decisions() -> None:
    assert approve() == Approve(None)
    assert approve("fine") == Approve("fine")
    assert reject("too big") == Reject("too big")
    assert modify({"limit": 3}, "capped") == Modify({"limit": 3}, "capped")
    assert extend("12h") == Extend(12 * 3600.0)
    assert extend(90) == Extend(90.0)


# ---------------------------------------------------------------------- definition checks
def _with_source() -> fs.Pipeline:
    pipeline = fs.Pipeline("defs")

    @pipeline.asset()
    def source(context: fs.Context) -> dict[str, Any]:
        return {}

    return pipeline


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"approval_type": "maybe"}, "approval_type must be 'manual' or 'automated'"),
        ({"approval_type": "automated"}, "an automated checkpoint needs auto_decide"),
        ({"on_timeout": "ignore"}, "on_timeout must be one of"),
        ({"timeout": "soon"}, "timeout:"),
        ({"escalate_to": [""]}, "escalate_to must be names"),
        ({"on_approve": "notify-ana"}, "on_approve must be a function"),
        ({"auto_decide": 3, "approval_type": "automated"}, "auto_decide must be a function"),
    ],
)
def test_bad_checkpoint_options_fail_at_definition_naming_the_gate(
    options: dict[str, Any], words: str
) -> None:
    pipeline = _with_source()
    with pytest.raises(DefinitionError) as caught:

        @pipeline.checkpoint(**options)
        def review(context: fs.Context, source: dict[str, Any]) -> bool:
            return True

    assert words in caught.value.message
    assert "review" in str(caught.value)


def test_a_checkpoint_needs_an_upstream_to_review() -> None:
    pipeline = fs.Pipeline("defs")
    with pytest.raises(DefinitionError, match="at least one upstream"):

        @pipeline.checkpoint()
        def review(context: fs.Context) -> bool:
            return True


def test_checkpoint_options_are_kept_on_its_spec() -> None:
    pipeline = _with_source()

    def hook(record: Any, *rest: Any) -> None:
        pass

    @pipeline.checkpoint(
        timeout="2h",
        on_timeout=extend("30m"),
        escalate_to="data-leads",
        message="look",
        on_approve=hook,
        on_modify=hook,
        on_reject=hook,
    )
    def review(context: fs.Context, source: dict[str, Any]) -> bool:
        return True

    spec = review.checkpoint
    assert spec is not None
    assert spec.timeout == 7200.0
    assert spec.on_timeout == Extend(1800.0)
    assert spec.escalate_to == ("data-leads",)
    assert spec.inputs == ("source",)
    assert spec.on_approve is hook and spec.on_modify is hook and spec.on_reject is hook
    assert pipeline.checkpoints == {"review": review}


@pytest.mark.parametrize(
    ("annotation", "expected"),
    [
        ("dict[str, Any]", dict),
        ("dict", dict),
        ("list[int]", list),
        ("str", str),
        ("int", int),
        ("float", float),
        ("bool", bool),
        ("Any", None),
        ("set[int]", None),
        ("dict[str, NotDefinedAnywhere]", dict),  # unresolvable: read from the text
    ],
)
def test_the_expected_type_of_a_modification_comes_from_the_upstream_annotation(
    annotation: str, expected: type | None
) -> None:
    """Also under ``from __future__ import annotations`` (as here), where annotations are text."""
    pipeline = _with_source()
    namespace: dict[str, Any] = {"fs": fs, "Any": Any}
    exec(
        f"def review(context: fs.Context, source: {annotation}) -> bool:\n    return True\n",
        namespace,
    )
    gate = pipeline.checkpoint(namespace["review"])
    assert gate.checkpoint is not None
    assert gate.checkpoint.value_type is expected


def test_a_gate_with_one_partitioned_upstream_takes_its_partitions() -> None:
    days = fs.DailyPartitions(start="2025-01-01", end="2025-02-01")
    pipeline = fs.Pipeline("defs")

    @pipeline.asset(partitioned_by=days)
    def daily(context: fs.Context) -> int:
        return 1

    @pipeline.checkpoint()
    def review(context: fs.Context, daily: int) -> bool:
        return True

    assert review.partitioned_by == days
