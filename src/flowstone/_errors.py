"""One exception tree for everything FlowStone raises or records.

Every failure a user can meet is one of these types; foreign exceptions (psycopg, OSError,
whatever an asset raises) are wrapped at the seam where they happen and kept in ``original``::

    FlowStoneError              type                  retryable
    ├── DefinitionError         definition_error      no      a decorator or option is malformed
    │   └── PipelineInvalid     definition_error      no      whole-graph validation (all problems)
    ├── ConfigurationError      configuration_error   no      flowstone.toml / env / CLI flags
    ├── AssetNotFound           asset_not_found       no      unknown name (with "did you mean")
    ├── DependencyFailed        dependency_failed     no      an upstream step did not succeed
    ├── DependencyNotReady      dependency_not_ready  yes     upstream partition not there yet
    ├── IOManagerError          io_error              varies  load/store/delete failed
    │   └── ValueNotFound       io_error              no      nothing stored for that partition
    ├── ExecutionError          execution_error       no      the asset function raised or returned badly
    ├── StepTimeout             timeout               yes     the asset ran past its ``timeout``
    ├── ValidationError         validation_error      no      an input or data did not pass a check
    ├── ResourceUnavailable     resource_unavailable  yes     a resource failed setup or a call
    ├── CheckpointRejected      checkpoint_rejected   no      a reviewer rejected a gate
    ├── Retry                   retry_requested       yes     raised by an asset: try again (after=)
    └── StoreError              store_error           varies  the metadata database failed

(``Retry`` lives in :mod:`flowstone._retry`, beside the retry policy.) Each error carries a
short ``user_message`` (what happened, then its ``hint``: what to do) and a
``developer_message`` (class, type, context, original traceback); the CLI prints the first
and, with ``-v``, the second. The class gives the usual hint; pass ``hint=`` where the place
that raises knows better.
"""

from __future__ import annotations

import traceback
from collections.abc import Mapping
from typing import Any, ClassVar


class FlowStoneError(Exception):
    """Base of every FlowStone error: a typed value, not just a message.

    ``context`` holds JSON-safe facts (asset, partition, run id ...); ``original`` is the foreign
    exception this one translates, if any.
    """

    type: ClassVar[str] = "flowstone_error"
    default_retryable: ClassVar[bool] = False
    # What to do about it, in a sentence; a class default that one instance may override.
    hint: str = "Run the command again with -v for the error's context and traceback."
    exit_code: ClassVar[int] = 1

    def __init__(
        self,
        message: str,
        *,
        context: Mapping[str, Any] | None = None,
        retryable: bool | None = None,
        original: BaseException | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.context: dict[str, Any] = dict(context or {})
        self.retryable = self.default_retryable if retryable is None else retryable
        self.original = original
        if hint is not None:
            self.hint = hint

    def __str__(self) -> str:
        return self.message

    @property
    def user_message(self) -> str:
        """What happened, then what to do: ``message`` followed by ``hint``."""
        if not self.hint:
            return self.message
        message = self.message.rstrip()
        if "\n" in message:  # a list of problems: the advice goes below it
            return f"{message}\n{self.hint}"
        return f"{message} {self.hint}" if message.endswith((".", "!", "?")) else f"{message}. {self.hint}"

    @property
    def developer_message(self) -> str:
        lines = [
            f"[{self.type}] {self.message}",
            f"error: {type(self).__qualname__}",
            f"retryable: {self.retryable}",
        ]
        for key, value in self.context.items():
            lines.append(f"{key}: {value}")
        if self.original is not None:
            lines.append("original exception:")
            lines.append(
                "".join(
                    traceback.format_exception(
                        type(self.original), self.original, self.original.__traceback__
                    )
                ).rstrip()
            )
        return "\n".join(lines)

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled (to cross a process boundary) with its type, message, context and retryable;
        # the original exception stays behind (its traceback text travels with the step).
        state = {k: v for k, v in self.__dict__.items() if k != "original"}
        return (_restore, (type(self), self.message, state))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form, as recorded on a materialization and sent in events."""
        return {
            "type": self.type,
            "message": self.message,
            "retryable": self.retryable,
            "context": {k: _json_safe(v) for k, v in self.context.items()},
        }


def _restore(cls: type[FlowStoneError], message: str, state: dict[str, Any]) -> FlowStoneError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    error.original = None
    return error


def _json_safe(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    return str(value)


class DefinitionError(FlowStoneError):
    """A definition is wrong in a way one decorator (or one option) can see alone."""

    type = "definition_error"
    hint = "Fix the definition at the location shown, then run `flowstone check`."
    exit_code = 2


class PipelineInvalid(DefinitionError):
    """Whole-pipeline validation failed; ``problems`` lists every problem found at once."""

    hint = "Fix each problem listed, then run `flowstone check` again."

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        lines = [f"pipeline has {len(problems)} problem(s):"]
        lines += [f"  - {p}" for p in problems]
        super().__init__("\n".join(lines), context={"problems": [str(p) for p in problems]})


class Problem:
    """One validation finding: which asset, where it is defined, what is wrong."""

    __slots__ = ("asset", "code", "location", "message")

    def __init__(self, code: str, message: str, *, asset: str | None, location: str) -> None:
        self.code = code
        self.message = message
        self.asset = asset
        self.location = location

    def __str__(self) -> str:
        who = f"asset '{self.asset}' " if self.asset else ""
        return f"{self.location}: {who}{self.message}"

    def __repr__(self) -> str:
        return f"Problem({self.code!r}, {str(self)!r})"


class ConfigurationError(FlowStoneError):
    type = "configuration_error"
    hint = (
        "Fix what it names (flowstone.toml, [tool.flowstone] in pyproject.toml, FLOWSTONE_* "
        "variables, an option, or an extra to install); `flowstone doctor` checks the setup."
    )
    exit_code = 2


class AssetNotFound(FlowStoneError):
    type = "asset_not_found"
    hint = "Run `flowstone assets` to list the pipeline's assets."
    exit_code = 2


class DependencyFailed(FlowStoneError):
    type = "dependency_failed"
    hint = "Fix the upstream asset first (its error is on its own step), then materialize again."


class DependencyNotReady(FlowStoneError):
    type = "dependency_not_ready"
    default_retryable = True
    hint = "Materialize the upstream partitions it needs first, or run it again once they exist."


class IOManagerError(FlowStoneError):
    type = "io_error"
    hint = "Check the I/O manager's configuration and the storage it writes to."


class ValueNotFound(IOManagerError):
    """Nothing is stored for that asset and partition (distinct from a failing store)."""

    hint = "Materialize that asset and partition first (`flowstone materialize`), then load it."


class ExecutionError(FlowStoneError):
    type = "execution_error"
    hint = "Fix the asset function: see its traceback with -v or `flowstone run show RUN_ID`."


class StepTimeout(FlowStoneError):
    type = "timeout"
    default_retryable = True
    hint = "Increase the asset's timeout or make it faster."


class ValidationError(FlowStoneError):
    """Input did not pass a check: a partition key, a setting, or data an asset validates."""

    type = "validation_error"
    hint = "Correct the value named above and try again."
    exit_code = 2


class ResourceUnavailable(FlowStoneError):
    """A resource an asset needs failed: its setup, or a call to it (an API that timed out)."""

    type = "resource_unavailable"
    default_retryable = True
    hint = (
        "Try again later (it may be a passing outage); if it persists, run `flowstone doctor` "
        "to check the resource's settings and health."
    )

    def __init__(
        self,
        message: str,
        *,
        context: Mapping[str, Any] | None = None,
        retryable: bool | None = None,
        original: BaseException | None = None,
        hint: str | None = None,
    ) -> None:
        if hint is None and retryable is False:  # waiting will not help: say what to fix
            hint = (
                "Fix what the message names (the resource's settings or the service), then run "
                "`flowstone doctor` to check it."
            )
        super().__init__(message, context=context, retryable=retryable, original=original, hint=hint)


class CheckpointRejected(FlowStoneError):
    type = "checkpoint_rejected"
    hint = "Address the reviewer's reason, then materialize the asset again for a new review."


class StoreError(FlowStoneError):
    type = "store_error"
    hint = "Check that the metadata database is reachable (`flowstone doctor` tests it), then try again."


def format_traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
