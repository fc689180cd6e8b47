"""One ``@pipeline.asset`` decorator, checked on its own at decoration time."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

import flowstone as fs

from ._support import line_of_next_def


def where(line: int) -> str:
    """The ``file:line`` a decoration-time error must name for a function defined at ``line``."""
    return f"{__file__}:{line}"


# ---------------------------------------------------------------------- defaults and inference
def test_name_and_description_default_to_function_name_and_docstring(pipeline: fs.Pipeline) -> None:
    @pipeline.asset()
    def raw_events(context: Any) -> int:
        """Events as they arrive.

        Second paragraph.
        """
        return 1

    assert raw_events.name == "raw_events"
    assert raw_events.description == "Events as they arrive.\n\nSecond paragraph."
    assert raw_events.deps == ()
    assert pipeline.assets["raw_events"] is raw_events


def test_bare_decorator_registers(pipeline: fs.Pipeline) -> None:
    @pipeline.asset
    def plain(context: Any) -> int:
        return 1

    assert isinstance(plain, fs.AssetDefinition)
    assert plain.description is None
    assert pipeline.get("plain") is plain


def test_explicit_name_and_description_win(pipeline: fs.Pipeline) -> None:
    @pipeline.asset(name="events", description="explicit")
    def whatever(context: Any) -> int:
        """Docstring that is not used."""
        return 1

    assert whatever.name == "events"
    assert whatever.description == "explicit"
    assert "events" in pipeline.assets and "whatever" not in pipeline.assets


def test_depends_on_inferred_from_parameters_after_context(pipeline: fs.Pipeline) -> None:
    @pipeline.asset()
    def report(context: Any, cleaned: int, profiles: int, scale: int = 2, **rest: Any) -> int:
        return 0

    # parameters with defaults and **rest are not dependencies when depends_on is omitted
    assert report.deps == ("cleaned", "profiles")
    assert report.params == ("cleaned", "profiles")
    assert report.takes_var_kwargs is True


def test_keyword_only_parameters_are_dependencies(pipeline: fs.Pipeline) -> None:
    @pipeline.asset()
    def b(context: Any, *, a: int) -> int:
        return a

    assert b.deps == ("a",)


def test_depends_on_by_name_and_by_asset_object(pipeline: fs.Pipeline) -> None:
    @pipeline.asset()
    def a(context: Any) -> int:
        return 1

    @pipeline.asset()
    def b(context: Any) -> int:
        return 2

    @pipeline.asset(depends_on=[a, "b"])
    def c(context: Any, a: int, b: int) -> int:
        return a + b

    @pipeline.asset(depends_on=[a, b])
    def d(context: Any, **upstream: Any) -> int:
        return sum(upstream.values())

    assert c.deps == ("a", "b")
    assert d.deps == ("a", "b")
    assert d.params == ()
    pipeline.validate()


def test_calling_an_asset_calls_the_function(pipeline: fs.Pipeline) -> None:
    @pipeline.asset()
    def double(context: Any, x: int) -> int:
        return x * 2

    assert double(None, x=21) == 42


def test_options_are_normalised(pipeline: fs.Pipeline) -> None:
    days = fs.DailyPartitions(start="2025-01-01")

    @pipeline.asset(
        tags=["pii", "daily"],
        requires=["db", "http"],
        io_manager="memory",
        io_config={"compression": "zstd"},
        metadata={"owner": "data-team"},
        code_version="v2",
        partitioned_by=days,
        timeout="10m",
    )
    def a(context: Any) -> int:
        return 1

    @pipeline.asset(tags={"team": "growth"}, timeout=timedelta(seconds=90))
    def b(context: Any) -> int:
        return 1

    assert a.tags == {"pii": "", "daily": ""}
    assert a.requires == ("db", "http")
    assert a.io_manager == "memory"
    assert a.io_config == {"compression": "zstd"}
    assert a.metadata == {"owner": "data-team"}
    assert a.code_version == "v2"
    assert a.partitioned_by == days
    assert a.timeout == 600.0
    assert b.tags == {"team": "growth"}
    assert b.timeout == 90.0


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10m", 600.0), ("90s", 90.0), ("1h30m", 5400.0), ("2d", 172800.0), ("250ms", 0.25), (5, 5.0)],
)
def test_timeout_durations_parse(pipeline: fs.Pipeline, text: Any, seconds: float) -> None:
    @pipeline.asset(timeout=text)
    def a(context: Any) -> int:
        return 1

    assert a.timeout == pytest.approx(seconds)


def test_output_carries_value_and_metadata() -> None:
    out = fs.Output([1, 2, 3], metadata={"rows": 3})
    assert out.value == [1, 2, 3]
    assert out.metadata == {"rows": 3}
    assert fs.Output(None).metadata == {}
    assert "rows" in repr(out)


# ---------------------------------------------------------------------- decoration-time errors
def _decorate(pipeline: fs.Pipeline, fn: Any, **options: Any) -> fs.DefinitionError:
    with pytest.raises(fs.DefinitionError) as info:
        pipeline.asset(**options)(fn)
    assert not isinstance(info.value, fs.PipelineInvalid)
    assert fn.__name__ not in pipeline.assets or options.get("name")  # nothing half-registered
    return info.value


def test_disagreeing_depends_on_and_parameters_is_an_error_with_location(pipeline: fs.Pipeline) -> None:
    line = line_of_next_def()

    def c(context: Any, a: int, b: int) -> int:
        return a + b

    err = _decorate(pipeline, c, depends_on=["a"])
    assert "['b']" in str(err) and "depends_on" in str(err)
    assert where(line) in str(err)
    assert err.context["asset"] == "c"
    assert "c" not in pipeline.assets


def test_depends_on_naming_a_missing_parameter_is_an_error(pipeline: fs.Pipeline) -> None:
    line = line_of_next_def()

    def c(context: Any, a: int) -> int:
        return a

    err = _decorate(pipeline, c, depends_on=["a", "b"])
    assert "['b']" in str(err)
    assert where(line) in str(err)


def test_depends_on_extra_names_allowed_with_var_kwargs(pipeline: fs.Pipeline) -> None:
    @pipeline.asset(depends_on=["a", "b"])
    def c(context: Any, a: int, **rest: Any) -> int:
        return a

    assert c.deps == ("a", "b")
    assert c.params == ("a",)


def test_bad_name_is_reported_with_location(pipeline: fs.Pipeline) -> None:
    line = line_of_next_def()

    def good_function(context: Any) -> int:
        return 1

    for bad in ["my-asset", "class", "1st", "", "has space"]:
        err = _decorate(pipeline, good_function, name=bad)
        assert repr(bad) in str(err)
        assert where(line) in str(err)
    assert pipeline.assets == {}


def test_lambda_has_no_valid_name(pipeline: fs.Pipeline) -> None:
    with pytest.raises(fs.DefinitionError, match="not a valid identifier"):
        pipeline.asset(lambda context: 1)
    with pytest.raises(fs.DefinitionError, match=__file__):
        pipeline.asset(lambda context: 1)


def test_function_named_like_a_keyword_is_rejected(pipeline: fs.Pipeline) -> None:
    def fn(context: Any) -> int:
        return 1

    fn.__name__ = "lambda"
    with pytest.raises(fs.DefinitionError, match="'lambda' is not a valid identifier"):
        pipeline.asset(fn)


def test_function_without_context_parameter(pipeline: fs.Pipeline) -> None:
    line = line_of_next_def()

    def no_args() -> int:
        return 1

    err = _decorate(pipeline, no_args)
    assert "context" in str(err)
    assert where(line) in str(err)

    line = line_of_next_def()

    def kw_only(*, context: Any) -> int:
        return 1

    err = _decorate(pipeline, kw_only)
    assert "first positional parameter" in str(err)
    assert where(line) in str(err)


def test_var_positional_parameter_is_rejected(pipeline: fs.Pipeline) -> None:
    line = line_of_next_def()

    def star_args(context: Any, *args: Any) -> int:
        return 1

    err = _decorate(pipeline, star_args)
    assert "*args" in str(err) and "by name" in str(err)
    assert where(line) in str(err)


def test_positional_only_dependency_is_rejected(pipeline: fs.Pipeline) -> None:
    line = line_of_next_def()

    def pos_only(context: Any, a: int, /) -> int:
        return a

    err = _decorate(pipeline, pos_only)
    assert "cannot receive an upstream value" in str(err)
    assert where(line) in str(err)


def test_self_dependency_is_rejected(pipeline: fs.Pipeline) -> None:
    line = line_of_next_def()

    def loop(context: Any, **up: Any) -> int:
        return 1

    err = _decorate(pipeline, loop, depends_on=["loop"])
    assert "cannot depend on itself" in str(err)
    assert where(line) in str(err)


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"tags": 5}, "tags must be"),
        ({"tags": "pii"}, "tags must be"),
        ({"tags": {"team": 1}}, "must be strings"),
        ({"tags": [1]}, "must be strings"),
        ({"requires": "db"}, "requires must be a list"),
        ({"requires": ["not-a-name"]}, "requires entry 'not-a-name'"),
        ({"io_config": ["x"]}, "io_config must be a dict"),
        ({"metadata": "owner"}, "metadata must be a dict"),
        ({"code_version": 3}, "code_version must be a string"),
        ({"description": 3}, "description must be a string"),
        ({"io_manager": "not valid"}, "io_manager must be the name"),
        ({"partitioned_by": "daily"}, "partitioned_by must be"),
        ({"timeout": "ten minutes"}, "not a duration"),
        ({"timeout": "10 parsecs"}, "not a duration"),
        ({"timeout": 0}, "must be positive"),
        ({"timeout": -5}, "must be positive"),
        ({"timeout": True}, "not a duration"),
        ({"timeout": [10]}, "not a duration"),
        ({"depends_on": "a"}, "depends_on must be a list"),
        ({"depends_on": [1]}, "depends_on entries must be"),
        ({"depends_on": ["not-valid"]}, "not a valid asset name"),
        ({"depends_on": ["a", "a"]}, "lists a name twice"),
    ],
)
def test_bad_option_types_fail_at_decoration_with_location(
    pipeline: fs.Pipeline, options: dict[str, Any], fragment: str
) -> None:
    line = line_of_next_def()

    def target(context: Any, **upstream: Any) -> int:
        return 1

    err = _decorate(pipeline, target, **options)
    assert fragment in str(err)
    assert where(line) in str(err)
    assert err.context["location"] == where(line)
    assert pipeline.assets == {}


def test_decoration_errors_are_definition_errors_with_exit_code_2(pipeline: fs.Pipeline) -> None:
    def target(context: Any, a: int) -> int:
        return a

    err = _decorate(pipeline, target, depends_on=[])
    assert err.type == "definition_error"
    assert err.retryable is False
    assert err.exit_code == 2
    assert err.to_dict()["type"] == "definition_error"
