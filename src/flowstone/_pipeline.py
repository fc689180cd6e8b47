"""The pipeline: a registry of asset definitions, validated as a whole.

No global state: every ``Pipeline`` object is its own registry, so tests build as many as they like::

    pipeline = flowstone.Pipeline("analytics")

    @pipeline.asset()
    def raw_events(context): ...

    @pipeline.asset()
    def cleaned(context, raw_events): ...

    pipeline.validate()        # raises PipelineInvalid listing every problem at once
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, ParamSpec, TypeVar, overload

from flowstone._assets import AssetDefinition, build_asset
from flowstone._errors import ConfigurationError, PipelineInvalid, Problem
from flowstone._graph import AssetGraph, unknown_asset
from flowstone._mappings import In, default_mapping
from flowstone._retry import RetryPolicy
from flowstone.io._registry import BUILTINS, builtin_class, missing_modules
from flowstone.partitions import PartitionsDefinition

P = ParamSpec("P")
R = TypeVar("R")


class Pipeline:
    """A named registry of assets. ``io_managers`` adds named I/O manager instances;
    ``retry_policy`` is the retry policy of every asset that has none of its own."""

    def __init__(
        self,
        name: str,
        *,
        io_managers: Mapping[str, Any] | None = None,
        default_io_manager: str = "filesystem",
        retry_policy: RetryPolicy | None = None,
        pool_limits: Mapping[str, int] | None = None,
    ) -> None:
        for pool, limit in (pool_limits or {}).items():
            if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
                raise ValueError(f"pool_limits[{pool!r}] must be a positive integer, got {limit!r}")
        # How many steps of each named pool (asset option ``pool=``) may run at once across all
        # queue workers, e.g. {"warehouse": 4}.
        self.pool_limits: dict[str, int] = dict(pool_limits or {})
        if retry_policy is not None and not isinstance(retry_policy, RetryPolicy):
            raise TypeError(f"retry_policy must be fs.RetryPolicy(...), got {type(retry_policy).__name__}")
        self.retry_policy = retry_policy
        if not isinstance(name, str) or not name.replace("-", "_").isidentifier():
            raise ValueError(f"pipeline name {name!r} must be an identifier (dashes allowed)")
        self.name = name
        self.io_managers: dict[str, Any] = dict(io_managers or {})
        self.default_io_manager = default_io_manager
        self._assets: dict[str, AssetDefinition[..., Any]] = {}
        self._duplicates: list[AssetDefinition[..., Any]] = []
        self._graph: AssetGraph | None = None
        # Schedules and sensors by name (flowstone.schedules); evaluated by `flowstone daemon`.
        self.schedules: dict[str, Any] = {}
        self.sensors: dict[str, Any] = {}
        self._automation_duplicates: list[tuple[str, Any]] = []

    def __repr__(self) -> str:
        return f"Pipeline({self.name!r}, {len(self._assets)} assets)"

    # ------------------------------------------------------------------ registration
    @overload
    def asset(self, fn: Callable[P, R], /) -> AssetDefinition[P, R]: ...

    @overload
    def asset(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        description: str | None = None,
        depends_on: Sequence[str | AssetDefinition[..., Any]] | None = None,
        io_manager: str | None = None,
        io_config: Mapping[str, Any] | Any | None = None,
        requires: Sequence[str] | None = None,
        tags: Mapping[str, str] | Sequence[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        code_version: str | None = None,
        partitioned_by: PartitionsDefinition | None = None,
        timeout: str | float | timedelta | None = None,
        ins: Mapping[str, In] | None = None,
        retry: RetryPolicy | None = None,
        queue: str | None = None,
        pool: str | None = None,
        automation: Any = None,
    ) -> Callable[[Callable[P, R]], AssetDefinition[P, R]]: ...

    def asset(
        self,
        fn: Callable[P, R] | None = None,
        /,
        **options: Any,
    ) -> AssetDefinition[P, R] | Callable[[Callable[P, R]], AssetDefinition[P, R]]:
        """Register a function as an asset; use bare (``@pipeline.asset``) or with options."""

        def register(func: Callable[P, R]) -> AssetDefinition[P, R]:
            definition = build_asset(func, **options)
            self.add(definition)
            return definition

        return register(fn) if fn is not None else register

    def checkpoint(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        description: str | None = None,
        depends_on: Sequence[str | AssetDefinition[..., Any]] | None = None,
        partitioned_by: PartitionsDefinition | None = None,
        ins: Mapping[str, In] | None = None,
        tags: Mapping[str, str] | Sequence[str] | None = None,
        io_manager: str | None = None,
        condition: Callable[..., Any] | None = None,
        message: Callable[..., Any] | str | None = None,
        approval_type: str = "manual",
        auto_decide: Callable[..., Any] | None = None,
        timeout: str | float | timedelta | None = None,
        on_timeout: Any = "escalate",
        escalate_to: Sequence[str] | str | None = None,
        on_approve: Callable[..., Any] | None = None,
        on_modify: Callable[..., Any] | None = None,
        on_reject: Callable[..., Any] | None = None,
    ) -> Any:
        """Register an approval gate (see :mod:`flowstone.checkpoints`): the function is its
        condition ``(context, **upstream) -> bool``; the gate passes its upstream's value on
        once approved (or the reviewer's value once modified). A gate with one partitioned
        upstream takes that upstream's partitions unless ``partitioned_by`` is given."""
        from flowstone._assets import _fail, location_of
        from flowstone.checkpoints._definition import build_spec

        def register(func: Callable[..., Any]) -> AssetDefinition[..., Any]:
            base = build_asset(
                func,
                name=name,
                description=description,
                depends_on=depends_on,
                io_manager=io_manager,
                tags=tags,
                partitioned_by=partitioned_by,
                ins=ins,
            )
            partitions = partitioned_by
            if partitions is None and len(base.deps) == 1 and base.deps[0] in self._assets:
                partitions = self._assets[base.deps[0]].partitioned_by
            spec = build_spec(
                func,
                deps=base.deps,
                fail=lambda text: _fail(text, asset=base.name, location=location_of(func)),
                message=message,
                approval_type=approval_type,
                auto_decide=auto_decide,
                timeout=timeout,
                on_timeout=on_timeout,
                escalate_to=escalate_to,
                on_approve=on_approve,
                on_modify=on_modify,
                on_reject=on_reject,
                condition=condition,
            )
            definition = dataclasses.replace(base, partitioned_by=partitions, checkpoint=spec)
            self.add(definition)
            return definition

        return register(fn) if fn is not None else register

    # ------------------------------------------------------------------ schedules and sensors
    def schedule(
        self,
        name: str | None = None,
        /,
        *,
        cron: str,
        target: Any,
        timezone: str = "UTC",
        partition: Callable[[Any], Any] | None = None,
        catch_up: str = "latest",
        max_catch_up: int = 50,
        description: str | None = None,
    ) -> Any:
        """Run ``target`` on a cron schedule (evaluated by ``flowstone daemon``).

        ``pipeline.schedule("nightly", cron="0 3 * * *", timezone="Europe/Oslo", target=[...])``
        registers it; without a name it decorates the function giving a tick's partition(s).
        ``catch_up`` says what happens to ticks missed while no daemon ran: ``latest`` (one run,
        for the most recent), ``all`` (one per tick, at most ``max_catch_up``) or ``none``.
        """
        from flowstone.schedules._definitions import build_schedule

        options = {
            "cron": cron,
            "target": target,
            "timezone": timezone,
            "catch_up": catch_up,
            "max_catch_up": max_catch_up,
            "description": description,
        }
        if name is not None:
            definition = build_schedule(name, partition=partition, **options)
            self._add_automation("schedule", definition)
            return definition

        def register(fn: Callable[..., Any]) -> Any:
            from flowstone._assets import location_of

            built = build_schedule(fn.__name__, partition=fn, location=location_of(fn), **options)
            self._add_automation("schedule", built)
            return built

        return register

    def sensor(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        target: Any,
        name: str | None = None,
        interval: str | float | timedelta = "30s",
        timeout: str | float | timedelta = "60s",
        description: str | None = None,
        location: str | None = None,
    ) -> Any:
        """Poll something with ``fn(context, cursor) -> SensorResult`` every ``interval`` (the
        daemon does) and run ``target`` for the partitions it asks for."""
        from flowstone.schedules._definitions import build_sensor

        def register(func: Callable[..., Any]) -> Any:
            built = build_sensor(
                func,
                name=name,
                interval=interval,
                target=target,
                timeout=timeout,
                description=description,
                location=location,
            )
            self._add_automation("sensor", built)
            return built

        return register(fn) if fn is not None else register

    def _add_automation(self, kind: str, definition: Any) -> None:
        table = self.schedules if kind == "schedule" else self.sensors
        if definition.name in self.schedules or definition.name in self.sensors:
            self._automation_duplicates.append((kind, definition))
        else:
            table[definition.name] = definition

    def _automation_problems(self) -> list[Problem]:
        found = []
        for kind, dup in self._automation_duplicates:
            found.append(
                Problem(
                    "duplicate_name",
                    f"{kind} '{dup.name}' is defined twice (schedules and sensors share one namespace)",
                    asset=None,
                    location=dup.location,
                )
            )
        for kind, table in (("schedule", self.schedules), ("sensor", self.sensors)):
            for definition in table.values():
                for expr in definition.target:
                    try:
                        self.graph.select([expr])
                    except Exception as exc:
                        found.append(
                            Problem(
                                "unknown_target",
                                f"{kind} '{definition.name}' targets {expr!r}: {exc}",
                                asset=None,
                                location=definition.location,
                            )
                        )
        from flowstone.schedules._definitions import schedule_target_problem

        for definition in self.schedules.values():
            problem = schedule_target_problem(definition, self)
            if problem:
                found.append(
                    Problem("schedule_partitions", problem, asset=None, location=definition.location)
                )
        return found

    @property
    def checkpoints(self) -> Mapping[str, AssetDefinition[..., Any]]:
        """The approval gates of the pipeline, by name."""
        return {n: a for n, a in self._assets.items() if a.checkpoint is not None}

    def add(self, definition: AssetDefinition[..., Any]) -> None:
        """Register a definition built elsewhere (e.g. generated in a loop)."""
        if definition.name in self._assets:
            self._duplicates.append(definition)
        else:
            self._assets[definition.name] = definition
        self._graph = None

    # ------------------------------------------------------------------ lookup
    @property
    def assets(self) -> Mapping[str, AssetDefinition[..., Any]]:
        return self._assets

    def get(self, name: str) -> AssetDefinition[..., Any]:
        """The asset called ``name``; unknown names raise AssetNotFound with suggestions."""
        try:
            return self._assets[name]
        except (KeyError, TypeError):
            raise unknown_asset(str(name), self._assets, pipeline=self.name) from None

    @property
    def graph(self) -> AssetGraph:
        if self._graph is None:
            self._graph = AssetGraph(
                {n: a.deps for n, a in self._assets.items()},
                {n: a.tags for n, a in self._assets.items()},
            )
        return self._graph

    # ------------------------------------------------------------------ validation
    def problems(
        self,
        *,
        io_managers: Mapping[str, Any] | Sequence[str] = (),
        resources: Sequence[str] | None = None,
    ) -> list[Problem]:
        """Every whole-pipeline problem, each naming the asset and its file:line.

        ``io_managers`` are I/O manager instances (or just names) bound besides the pipeline's
        own; each asset's ``io_config`` is checked by its manager's ``validate_config``.
        ``resources``, when given, are the resource names that will be available: an asset that
        ``requires`` another one is a problem (``FlowStone`` passes its own).
        """
        found: list[Problem] = []
        bound: dict[str, Any] = dict(self.io_managers)
        if isinstance(io_managers, Mapping):
            bound.update(io_managers)
        else:
            bound.update({name: None for name in io_managers})
        known_io = set(BUILTINS) | set(bound)
        for dup in self._duplicates:
            first = self._assets[dup.name]
            found.append(
                Problem(
                    "duplicate_asset",
                    f"is defined twice (first at {first.location})",
                    asset=dup.name,
                    location=dup.location,
                )
            )
        names = list(self._assets)
        for asset in self._assets.values():
            for dep in asset.deps:
                if dep not in self._assets:
                    guesses = difflib.get_close_matches(dep, names, n=1, cutoff=0.6)
                    hint = f"; did you mean '{guesses[0]}'?" if guesses else ""
                    found.append(
                        Problem(
                            "unknown_dependency",
                            f"depends on unknown asset '{dep}'{hint}",
                            asset=asset.name,
                            location=asset.location,
                        )
                    )
                    continue
                upstream = self._assets[dep]
                problem = _partition_problem(asset, upstream)
                if problem:
                    found.append(
                        Problem("partition_mismatch", problem, asset=asset.name, location=asset.location)
                    )
            for name in asset.requires:
                if resources is not None and name not in resources:
                    found.append(
                        Problem(
                            "unknown_resource",
                            f"requires resource '{name}' but none is configured "
                            f"(configured: {sorted(resources)})",
                            asset=asset.name,
                            location=asset.location,
                        )
                    )
            manager = asset.io_manager or self.default_io_manager
            if manager not in known_io:
                guesses = difflib.get_close_matches(manager, sorted(known_io), n=1, cutoff=0.6)
                hint = f"; did you mean '{guesses[0]}'?" if guesses else ""
                found.append(
                    Problem(
                        "unknown_io_manager",
                        f"uses unknown I/O manager '{manager}'{hint} (known: {sorted(known_io)})",
                        asset=asset.name,
                        location=asset.location,
                    )
                )
            else:
                found.extend(_io_problems(asset, manager, bound))
        found.extend(self._automation_problems())
        for cycle in self.graph.cycles():
            first = self._assets[cycle[0]]
            found.append(
                Problem(
                    "cycle",
                    "is part of a dependency cycle: " + " -> ".join(cycle),
                    asset=first.name,
                    location=first.location,
                )
            )
        return found

    def validate(
        self,
        *,
        io_managers: Mapping[str, Any] | Sequence[str] = (),
        resources: Sequence[str] | None = None,
    ) -> None:
        """Raise PipelineInvalid listing every problem, or return quietly."""
        problems = self.problems(io_managers=io_managers, resources=resources)
        if problems:
            raise PipelineInvalid(problems)


def _partition_problem(asset: AssetDefinition[..., Any], upstream: AssetDefinition[..., Any]) -> str | None:
    """Why the input ``upstream`` of ``asset`` cannot be mapped partition by partition, or None."""
    down, up = asset.partitioned_by, upstream.partitioned_by
    spec = asset.ins.get(upstream.name) or In()
    mapping = spec.mapping or default_mapping(down, up)
    if mapping is None:
        return (
            f"has no default partition mapping from its input '{upstream.name}' ({up!r}) to its own "
            f"partitions ({down!r}); give ins={{'{upstream.name}': fs.In(mapping=...)}}"
        )
    problem = mapping.problem(down, up)
    if problem:
        return f"input '{upstream.name}': {problem}"
    return None


def load_pipeline(target: str, *, search_path: Sequence[str | Path] = ()) -> Pipeline:
    """Import ``"package.module:attribute"`` and return the Pipeline it names.

    ``search_path`` entries (the project directory) are put first on ``sys.path`` so a pipeline
    module next to ``flowstone.toml`` imports without installing it.
    """
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigurationError(
            f"pipeline location {target!r} must look like 'package.module:pipeline'",
            context={"pipeline": target},
        )
    for entry in reversed([str(Path(p).resolve()) for p in search_path]):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (exc.name == module_name or module_name.startswith(exc.name + ".")):
            raise ConfigurationError(
                f"cannot import pipeline module {module_name!r}: {exc}",
                context={"pipeline": target},
                original=exc,
            ) from exc
        raise
    obj: Any = module
    for part in attr.split("."):
        if not part.isidentifier():
            raise ConfigurationError(f"bad attribute {attr!r} in {target!r}")
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigurationError(
                f"module {module_name!r} has no attribute {attr!r}", context={"pipeline": target}
            ) from None
    if not isinstance(obj, Pipeline):
        raise ConfigurationError(
            f"{target!r} is a {type(obj).__name__}, not a flowstone.Pipeline",
            context={"pipeline": target},
        )
    return obj


def _io_problems(asset: AssetDefinition[..., Any], manager: str, bound: Mapping[str, Any]) -> list[Problem]:
    """A missing extra for a built-in manager, and whatever its ``validate_config`` finds."""
    instance = bound.get(manager)
    if instance is None and manager in bound:
        return []  # bound by name only: nothing to ask
    if instance is None:
        missing = missing_modules(manager)
        if missing:
            extra = BUILTINS[manager].extra
            return [
                Problem(
                    "missing_extra",
                    f"uses I/O manager '{manager}', which needs the '{extra}' extra "
                    f"(not installed: {', '.join(missing)}): pip install 'flowstone[{extra}]'",
                    asset=asset.name,
                    location=asset.location,
                )
            ]
        instance = builtin_class(manager)
    validate = getattr(instance, "validate_config", None)
    if validate is None:
        return []
    return [
        Problem(
            "invalid_io_config",
            f"io_config for I/O manager '{manager}': {message}",
            asset=asset.name,
            location=asset.location,
        )
        for message in validate(asset.io_config)
    ]
