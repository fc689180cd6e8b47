"""``@pipeline.checkpoint``: a human (or automated) approval gate that sits in the graph like an
asset.

The decorated function is the gate's *condition*: it receives the upstream values like an asset
and returns True when a person must look (False: the gate passes on its own, recorded as
``auto-passed``). The value the gate passes downstream is its upstream's value (a dict of them
when it has several) — or, after ``modify``, the reviewer's value::

    @pipeline.checkpoint(timeout="24h", on_timeout="escalate", escalate_to=["data-leads"],
                         message=lambda ctx, daily_report: f"{len(daily_report)} rows moved")
    def report_review(context, daily_report) -> bool:
        return daily_report["change_pct"].abs().max() > 0.2

``approval_type="automated"`` with ``auto_decide(ctx, **deps)`` returning ``approve()``,
``reject(reason)`` or ``modify(value)`` decides without a person. ``on_timeout`` is
``"escalate"`` (status escalated, ``escalate_to`` notified; a second timeout expires it),
``"auto_approve"``, ``"auto_reject"`` or ``extend("12h")``.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from flowstone._durations import parse_duration
from flowstone._errors import DefinitionError


@dataclass(frozen=True)
class Approve:
    reason: str | None = None


@dataclass(frozen=True)
class Reject:
    reason: str


@dataclass(frozen=True)
class Modify:
    value: Any
    reason: str | None = None


Decision = Approve | Reject | Modify


def approve(reason: str | None = None) -> Approve:
    """An automated gate's decision: pass the value on as it is."""
    return Approve(reason)


def reject(reason: str) -> Reject:
    """An automated gate's decision: fail the gate (its downstream is skipped)."""
    return Reject(reason)


def modify(value: Any, reason: str | None = None) -> Modify:
    """An automated gate's decision: pass ``value`` on instead."""
    return Modify(value, reason)


@dataclass(frozen=True)
class Extend:
    seconds: float


def extend(duration: str | float | timedelta) -> Extend:
    """``on_timeout=extend("12h")``: give the reviewers more time (once per timeout)."""
    return Extend(parse_duration(duration))


ON_TIMEOUT = ("escalate", "auto_approve", "auto_reject")


@dataclass(frozen=True)
class CheckpointSpec:
    """How one gate asks and decides (see the module docstring)."""

    condition: Callable[..., Any]
    message: Callable[..., Any] | str | None = None
    approval_type: str = "manual"
    auto_decide: Callable[..., Any] | None = None
    timeout: float | None = None
    on_timeout: str | Extend = "escalate"
    escalate_to: tuple[str, ...] = ()
    on_approve: Callable[..., Any] | None = None
    on_modify: Callable[..., Any] | None = None
    on_reject: Callable[..., Any] | None = None
    # The type of the value under review (dict/list/str/int/float/bool, from the annotation of
    # the single upstream parameter), to check a reviewer's modification against; None: unchecked.
    value_type: type | None = None
    inputs: tuple[str, ...] = field(default=())


def _callable(value: Any, option: str, fail: Callable[[str], DefinitionError]) -> Callable[..., Any] | None:
    if value is not None and not callable(value):
        raise fail(f"{option} must be a function (ctx, **upstream) -> ..., got {value!r}")
    return value  # type: ignore[no-any-return]


def build_spec(
    fn: Callable[..., Any],
    *,
    deps: Sequence[str],
    fail: Callable[[str], DefinitionError],
    message: Callable[..., Any] | str | None = None,
    approval_type: str = "manual",
    auto_decide: Callable[..., Any] | None = None,
    timeout: str | float | timedelta | None = None,
    on_timeout: str | Extend = "escalate",
    escalate_to: Sequence[str] | str | None = None,
    on_approve: Callable[..., Any] | None = None,
    on_modify: Callable[..., Any] | None = None,
    on_reject: Callable[..., Any] | None = None,
    condition: Callable[..., Any] | None = None,
) -> CheckpointSpec:
    if approval_type not in ("manual", "automated"):
        raise fail(f"approval_type must be 'manual' or 'automated', got {approval_type!r}")
    if approval_type == "automated" and auto_decide is None:
        raise fail(
            "an automated checkpoint needs auto_decide=(ctx, **upstream) -> "
            "approve() | reject(...) | modify(...)"
        )
    if message is not None and not isinstance(message, str):
        _callable(message, "message", fail)
    timeout_s = None
    if timeout is not None:
        try:
            timeout_s = parse_duration(timeout)
        except ValueError as exc:
            raise fail(f"timeout: {exc}") from None
    if not isinstance(on_timeout, Extend) and on_timeout not in ON_TIMEOUT:
        raise fail(f"on_timeout must be one of {list(ON_TIMEOUT)} or extend('12h'), got {on_timeout!r}")
    if isinstance(escalate_to, str):
        escalate_to = [escalate_to]
    targets = tuple(escalate_to or ())
    if not all(isinstance(t, str) and t for t in targets):
        raise fail(f"escalate_to must be names of notification targets, got {escalate_to!r}")
    if not deps:
        raise fail("a checkpoint needs at least one upstream asset to review")
    value_type = _value_type(fn, deps[0]) if len(deps) == 1 else None
    return CheckpointSpec(
        condition=_callable(condition, "condition", fail) or fn,
        message=message,
        approval_type=approval_type,
        auto_decide=_callable(auto_decide, "auto_decide", fail),
        timeout=timeout_s,
        on_timeout=on_timeout,
        escalate_to=targets,
        on_approve=_callable(on_approve, "on_approve", fail),
        on_modify=_callable(on_modify, "on_modify", fail),
        on_reject=_callable(on_reject, "on_reject", fail),
        value_type=value_type,
        inputs=tuple(deps),
    )


# The annotations a reviewer's modification is checked against (by name when the annotation is
# still a string: ``from __future__ import annotations``, or a forward reference).
CHECKED_TYPES: dict[str, type] = {t.__name__: t for t in (dict, list, str, int, float, bool)}


def _value_type(fn: Callable[..., Any], param: str) -> type | None:
    """The type the gate passes on, from its single upstream parameter's annotation: ``dict``,
    ``list``, ``str``, ``int``, ``float`` or ``bool`` (``dict[str, Any]`` counts as ``dict``), else
    None (not checked)."""
    try:
        annotation: Any = typing.get_type_hints(fn).get(param, inspect.Parameter.empty)
    except Exception:  # an unresolvable forward reference: read the annotation's text
        found = inspect.signature(fn).parameters.get(param)
        annotation = found.annotation if found is not None else inspect.Parameter.empty
    if isinstance(annotation, str):
        name = annotation.split("[", 1)[0].strip().removeprefix("builtins.")
        return CHECKED_TYPES.get(name)
    origin = typing.get_origin(annotation) or annotation
    if isinstance(origin, type) and origin in CHECKED_TYPES.values():
        return origin
    return None


def passed_value(spec: CheckpointSpec, inputs: Mapping[str, Any]) -> Any:
    """What the gate passes on unless modified: its upstream's value (or all of them)."""
    if len(spec.inputs) == 1:
        return inputs[spec.inputs[0]]
    return {name: inputs[name] for name in spec.inputs}
