"""What a checkpoint step does when it runs: check its condition, decide or ask."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from flowstone._assets import AssetDefinition, Output
from flowstone._context import Context
from flowstone._errors import CheckpointRejected, ExecutionError
from flowstone.checkpoints._definition import Approve, Modify, Reject, passed_value


def summarize(value: Any) -> dict[str, Any]:
    """A short, JSON-safe description of a value for a reviewer (type, size, a preview)."""
    summary: dict[str, Any] = {"type": type(value).__name__}
    with contextlib.suppress(TypeError):
        summary["length"] = len(value)
    preview = repr(value)
    summary["preview"] = preview if len(preview) <= 500 else preview[:497] + "..."
    return summary


def evaluate_gate(
    asset: AssetDefinition[..., Any], context: Context, inputs: Mapping[str, Any]
) -> tuple[Any, dict[str, Any] | None]:
    """(the value to store, the request to open or None when the gate decided on its own)."""
    spec = asset.checkpoint
    assert spec is not None
    value = passed_value(spec, inputs)
    try:
        needed = spec.condition(context, **inputs)
    except Exception as exc:
        raise ExecutionError(
            f"checkpoint '{asset.name}': its condition raised {type(exc).__name__}: {exc}",
            context={"asset": asset.name, "location": asset.location},
            original=exc,
        ) from exc
    if not isinstance(needed, bool):
        # A numpy/pandas comparison (``frame["x"].abs().max() > 0.2``) gives a numpy bool: its
        # Python value counts.
        item = getattr(needed, "item", None)
        if callable(item):
            with contextlib.suppress(Exception):
                needed = item()
    if not isinstance(needed, bool):
        raise ExecutionError(
            f"checkpoint '{asset.name}': its condition must return True (ask) or False (pass), "
            f"got {type(needed).__name__}",
            context={"asset": asset.name, "location": asset.location},
        )
    if not needed:
        return Output(value, metadata={"checkpoint": "auto-passed"}), None
    if spec.approval_type == "automated":
        assert spec.auto_decide is not None
        decision = spec.auto_decide(context, **inputs)
        if isinstance(decision, Approve):
            return Output(value, metadata={"checkpoint": "auto-approved", "reason": decision.reason}), None
        if isinstance(decision, Modify):
            return Output(
                decision.value, metadata={"checkpoint": "auto-modified", "reason": decision.reason}
            ), None
        if isinstance(decision, Reject):
            raise CheckpointRejected(
                f"checkpoint '{asset.name}' was rejected automatically: {decision.reason}",
                context={"asset": asset.name, "reason": decision.reason, "decided_by": "auto_decide"},
            )
        raise ExecutionError(
            f"checkpoint '{asset.name}': auto_decide must return approve(), reject(reason) or "
            f"modify(value), got {decision!r}",
            context={"asset": asset.name, "location": asset.location},
        )
    message = spec.message
    if callable(message):
        message = str(message(context, **inputs))
    text = message or f"review '{asset.name}'" + (
        f" [{context.partition_key}]" if context.partition_key else ""
    )
    return value, {"message": text, "summary": summarize(value)}
