"""What ``FlowStone.materialize`` returns: the run's status and each step's outcome."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from flowstone._errors import FlowStoneError
from flowstone._records import Materialization, RunStatus, StepStatus

_NOT_KEPT = object()


@dataclass
class StepResult:
    asset: str
    partition_key: str | None
    status: StepStatus
    materialization: Materialization | None = None
    error: FlowStoneError | None = None
    reason: str | None = None
    duration_ms: float | None = None
    attempts: int = 1
    _value: Any = field(default=_NOT_KEPT, repr=False)

    @property
    def value(self) -> Any:
        """The value the asset produced (only kept when materialize(..., values=True))."""
        if self._value is _NOT_KEPT:
            raise LookupError(
                f"value of '{self.asset}' was not kept; call materialize(..., values=True)"
                if self.status is StepStatus.SUCCEEDED
                else f"step '{self.asset}' did not succeed ({self.status})"
            )
        return self._value


class StepResults(Mapping[Any, StepResult]):
    """Step outcomes by asset name, or by ``(asset, partition_key)`` when a run spans partitions."""

    def __init__(self, results: list[StepResult]) -> None:
        self._by_key = {(r.asset, r.partition_key): r for r in results}
        self._by_name: dict[str, list[StepResult]] = {}
        for r in results:
            self._by_name.setdefault(r.asset, []).append(r)

    def __getitem__(self, key: Any) -> StepResult:
        if isinstance(key, tuple):
            return self._by_key[key]
        matches = self._by_name[key]
        if len(matches) > 1:
            raise KeyError(f"'{key}' ran for several partitions; index with (asset, partition_key)")
        return matches[0]

    def __iter__(self) -> Iterator[Any]:
        for asset, key in self._by_key:
            yield asset if len(self._by_name[asset]) == 1 else (asset, key)

    def __len__(self) -> int:
        return len(self._by_key)


@dataclass
class RunResult:
    run_id: str
    status: RunStatus
    steps: StepResults
    started_at: datetime
    finished_at: datetime
    up_to_date: list[tuple[str, str | None]] = field(default_factory=list)

    @property
    def success(self) -> bool:
        return self.status is RunStatus.SUCCEEDED

    @property
    def failures(self) -> list[StepResult]:
        return [s for s in self.steps.values() if s.status is StepStatus.FAILED]

    def raise_on_failure(self) -> RunResult:
        """Raise the first failed step's error (handy in tests and scripts)."""
        for step in self.failures:
            if step.error is not None:
                raise step.error
        return self

    def __repr__(self) -> str:
        counts: dict[str, int] = {}
        for step in self.steps.values():
            counts[step.status.value] = counts.get(step.status.value, 0) + 1
        return f"RunResult({self.run_id[:8]}, {self.status.value}, steps={counts})"
