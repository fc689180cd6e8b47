"""Asset definitions: what one ``@pipeline.asset`` decorator declares, checked on its own.

Everything a single decorator can see (bad name, bad signature, option of the wrong type,
``depends_on`` disagreeing with the parameters) is raised here, at decoration time, with the file
and line of the function. Whole-graph problems (unknown dependency, cycles, duplicates) are the
pipeline's job, so that they can be reported all at once.
"""

from __future__ import annotations

import dataclasses
import inspect
import keyword
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from flowstone._durations import parse_duration
from flowstone._errors import DefinitionError
from flowstone._mappings import In
from flowstone._retry import RetryPolicy
from flowstone.partitions import PartitionsDefinition

P = ParamSpec("P")
R = TypeVar("R")


def is_identifier(name: object) -> bool:
    return isinstance(name, str) and name.isidentifier() and not keyword.iskeyword(name)


class Output:
    """A value plus metadata to record on its materialization.

    Return it instead of a bare value when the asset knows facts worth keeping::

        return flowstone.Output(report, metadata={"rows": len(report)})
    """

    __slots__ = ("data_version", "metadata", "value")

    def __init__(
        self, value: Any, *, metadata: Mapping[str, Any] | None = None, data_version: str | None = None
    ) -> None:
        self.value = value
        self.metadata: dict[str, Any] = dict(metadata or {})
        # Identifies the data: equal versions mean downstream need not recompute. Defaults to the
        # stored value's checksum (or, without one, to the materialization itself).
        self.data_version = data_version

    def __repr__(self) -> str:
        return f"Output({self.value!r}, metadata={self.metadata!r})"


if TYPE_CHECKING:
    from flowstone.checkpoints._definition import CheckpointSpec


@dataclass(frozen=True, eq=False)
class AssetDefinition(Generic[P, R]):
    """One registered asset. Calling it calls the wrapped function (handy in unit tests)."""

    name: str
    fn: Callable[P, R]
    deps: tuple[str, ...]
    description: str | None = None
    io_manager: str | None = None
    io_config: Mapping[str, Any] = field(default_factory=dict)
    requires: tuple[str, ...] = ()
    tags: Mapping[str, str] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)
    code_version: str | None = None
    partitioned_by: PartitionsDefinition | None = None
    timeout: float | None = None
    ins: Mapping[str, In] = field(default_factory=dict)
    retry: RetryPolicy | None = None
    # Queue runs: the queue its steps' jobs go to, and the named pool whose limit they count in.
    queue: str | None = None
    pool: str | None = None
    # Set for approval gates (``@pipeline.checkpoint``): how the gate asks and decides.
    checkpoint: CheckpointSpec | None = None
    # Declarative automation (flowstone.automation: eager(), on_cron(...), freshness(...)),
    # evaluated by the daemon.
    automation: Any = None
    location: str = "<unknown>"
    # Parameter name -> dependency name, for the values passed to ``fn``; ``**kwargs`` gets the rest.
    params: tuple[str, ...] = ()
    takes_var_kwargs: bool = False

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<asset {self.name} at {self.location}>"


def location_of(fn: Callable[..., Any]) -> str:
    code = getattr(fn, "__code__", None)
    if code is None:
        return "<unknown>"
    return f"{code.co_filename}:{code.co_firstlineno}"


def _fail(message: str, *, asset: str | None, location: str) -> DefinitionError:
    who = f"asset '{asset}': " if asset else ""
    return DefinitionError(f"{location}: {who}{message}", context={"asset": asset, "location": location})


def _dep_name(dep: object, *, asset: str, location: str) -> str:
    name = dep if isinstance(dep, str) else getattr(dep, "name", None)
    if isinstance(dep, (AssetDefinition, str)):
        if not is_identifier(name):
            raise _fail(
                f"depends_on entry {name!r} is not a valid asset name (use a Python identifier)",
                asset=asset,
                location=location,
            )
        assert isinstance(name, str)
        return name
    raise _fail(
        f"depends_on entries must be asset names or assets, got {type(dep).__name__} {dep!r}",
        asset=asset,
        location=location,
    )


def _tags(value: object, *, asset: str, location: str) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, (list, tuple, set, frozenset)):
        items = [(t, "") for t in value]
    else:
        raise _fail(
            f"tags must be a list of strings or a dict of str to str, got {type(value).__name__}",
            asset=asset,
            location=location,
        )
    tags: dict[str, str] = {}
    for key, val in items:
        if not isinstance(key, str) or not key or not isinstance(val, str):
            raise _fail(f"tag {key!r}={val!r} must be strings", asset=asset, location=location)
        tags[key] = val
    return tags


def _string_list(value: object, option: str, *, asset: str, location: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise _fail(f"{option} must be a list of names, got {value!r}", asset=asset, location=location)
    for item in value:
        if not is_identifier(item):
            raise _fail(
                f"{option} entry {item!r} is not a valid name (use a Python identifier)",
                asset=asset,
                location=location,
            )
    return tuple(value)


def build_asset(
    fn: Callable[P, R],
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
) -> AssetDefinition[P, R]:
    """Check one decorator's options against its function and build the definition."""
    location = location_of(fn)
    if not callable(fn):
        raise _fail(f"@asset must decorate a function, got {fn!r}", asset=name, location=location)
    asset_name = name if name is not None else getattr(fn, "__name__", None)
    if not is_identifier(asset_name):
        raise _fail(
            f"asset name {asset_name!r} is not a valid identifier "
            "(letters, digits and _; not a Python keyword)",
            asset=None,
            location=location,
        )
    assert isinstance(asset_name, str)

    if description is not None and not isinstance(description, str):
        raise _fail("description must be a string", asset=asset_name, location=location)
    if description is None:
        doc = inspect.getdoc(fn)
        description = doc.strip() if doc else None
    if io_manager is not None and not is_identifier(io_manager):
        raise _fail(
            f"io_manager must be the name of an I/O manager, got {io_manager!r}",
            asset=asset_name,
            location=location,
        )
    if io_config is not None and dataclasses.is_dataclass(io_config) and not isinstance(io_config, type):
        # A typed config object (e.g. ParquetConfig(path=...)): the fields that were set.
        io_config = {k: v for k, v in dataclasses.asdict(io_config).items() if v is not None}
    if io_config is not None and not isinstance(io_config, Mapping):
        raise _fail(
            "io_config must be a dict or a config dataclass such as ParquetConfig(...)",
            asset=asset_name,
            location=location,
        )
    if metadata is not None and not isinstance(metadata, Mapping):
        raise _fail("metadata must be a dict", asset=asset_name, location=location)
    if code_version is not None and not isinstance(code_version, str):
        raise _fail(
            f"code_version must be a string, got {code_version!r}", asset=asset_name, location=location
        )
    if partitioned_by is not None and not isinstance(partitioned_by, PartitionsDefinition):
        raise _fail(
            "partitioned_by must be a partitions definition such as DailyPartitions(...)",
            asset=asset_name,
            location=location,
        )
    timeout_s: float | None = None
    if timeout is not None:
        try:
            timeout_s = parse_duration(timeout)
        except ValueError as exc:
            raise _fail(f"timeout: {exc}", asset=asset_name, location=location) from None

    if retry is not None and not isinstance(retry, RetryPolicy):
        raise _fail(
            f"retry must be fs.RetryPolicy(...), got {type(retry).__name__}",
            asset=asset_name,
            location=location,
        )

    for option, value in (("queue", queue), ("pool", pool)):
        if value is not None and not (isinstance(value, str) and value.replace("-", "_").isidentifier()):
            raise _fail(
                f"{option} must be a name (letters, digits, _ and -), got {value!r}",
                asset=asset_name,
                location=location,
            )

    if automation is not None:
        from flowstone.schedules._conditions import check_condition

        problem = check_condition(automation)
        if problem is not None:
            raise _fail(f"automation: {problem}", asset=asset_name, location=location)

    params, var_kwargs, required = _signature(fn, asset=asset_name, location=location)
    if depends_on is None:
        deps = tuple(required)
    else:
        if isinstance(depends_on, (str, bytes)) or not isinstance(depends_on, Sequence):
            raise _fail(
                f"depends_on must be a list of asset names, got {depends_on!r}",
                asset=asset_name,
                location=location,
            )
        deps = tuple(_dep_name(d, asset=asset_name, location=location) for d in depends_on)
        if len(set(deps)) != len(deps):
            raise _fail(f"depends_on lists a name twice: {list(deps)}", asset=asset_name, location=location)
        missing = [p for p in required if p not in deps]
        if missing:
            raise _fail(
                f"parameters {missing} are not in depends_on={list(deps)}; "
                "name them in depends_on or give them defaults",
                asset=asset_name,
                location=location,
            )
        extra = [d for d in deps if d not in params]
        if extra and not var_kwargs:
            raise _fail(
                f"depends_on names {extra} but the function has no such parameters "
                "(add them, or accept **upstream)",
                asset=asset_name,
                location=location,
            )
    if asset_name in deps:
        raise _fail("an asset cannot depend on itself", asset=asset_name, location=location)
    if ins is not None and not isinstance(ins, Mapping):
        raise _fail("ins must be a dict of input name to fs.In(...)", asset=asset_name, location=location)
    for input_name, spec in (ins or {}).items():
        if input_name not in deps:
            raise _fail(
                f"ins names '{input_name}', which is not one of its inputs {list(deps)}",
                asset=asset_name,
                location=location,
            )
        if not isinstance(spec, In):
            raise _fail(
                f"ins['{input_name}'] must be fs.In(...), got {type(spec).__name__}",
                asset=asset_name,
                location=location,
            )

    return AssetDefinition(
        name=asset_name,
        fn=fn,
        deps=deps,
        description=description,
        io_manager=io_manager,
        io_config=dict(io_config or {}),
        requires=_string_list(requires, "requires", asset=asset_name, location=location),
        tags=_tags(tags, asset=asset_name, location=location),
        metadata=dict(metadata or {}),
        code_version=code_version,
        partitioned_by=partitioned_by,
        timeout=timeout_s,
        ins=dict(ins or {}),
        retry=retry,
        queue=queue,
        pool=pool,
        automation=automation,
        location=location,
        params=tuple(p for p in params if p in deps),
        takes_var_kwargs=var_kwargs,
    )


def _signature(fn: Callable[..., Any], *, asset: str, location: str) -> tuple[list[str], bool, list[str]]:
    """(parameter names after the context, accepts **kwargs, names without defaults)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise _fail(f"cannot read the function signature: {exc}", asset=asset, location=location) from None
    parameters = list(sig.parameters.values())
    if not parameters or parameters[0].kind not in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    ):
        raise _fail(
            "the function must take the context as its first positional parameter: "
            f"def {asset}(context, **upstream) (got {sig})",
            asset=asset,
            location=location,
        )
    names: list[str] = []
    required: list[str] = []
    var_kwargs = False
    for param in parameters[1:]:
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            var_kwargs = True
        elif param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.POSITIONAL_ONLY):
            raise _fail(
                f"parameter {param} cannot receive an upstream value; upstream values are passed by name",
                asset=asset,
                location=location,
            )
        else:
            names.append(param.name)
            if param.default is inspect.Parameter.empty:
                required.append(param.name)
    return names, var_kwargs, required
