"""Every public error presents itself: a user message that says what to do, a developer message
with type, context and traceback, and a place in the exception tree the docstrings draw."""

from __future__ import annotations

import pickle
import re
from typing import Any

import pytest

import flowstone as fs
import flowstone._errors as errors_module
from flowstone.resources import RunResources

from .conftest import AppFactory

ERRORS: list[type[fs.FlowStoneError]] = [
    obj
    for name in fs.__all__
    if isinstance(obj := getattr(fs, name), type) and issubclass(obj, fs.FlowStoneError)
]

# The action each class's hint must name: what a user does about it.
ADVICE: dict[type[fs.FlowStoneError], str] = {
    fs.FlowStoneError: "with -v",
    fs.DefinitionError: "`flowstone check`",
    fs.PipelineInvalid: "Fix each problem",
    fs.ConfigurationError: "flowstone.toml",
    fs.AssetNotFound: "`flowstone assets`",
    fs.DependencyFailed: "Fix the upstream asset",
    fs.DependencyNotReady: "Materialize the upstream partitions",
    fs.IOManagerError: "Check the I/O manager's configuration",
    fs.ValueNotFound: "Materialize that asset and partition first",
    fs.ExecutionError: "Fix the asset function",
    fs.StepTimeout: "Increase the asset's timeout",
    fs.ValidationError: "Correct the value",
    fs.ResourceUnavailable: "`flowstone doctor`",
    fs.CheckpointRejected: "Address the reviewer's reason",
    fs.Retry: "max_attempts",
    fs.StoreError: "metadata database is reachable",
}


def _advice_params() -> list[Any]:
    return [pytest.param(cls, ADVICE[cls], id=cls.__name__) for cls in ERRORS]


def _raised(cls: type[fs.FlowStoneError]) -> fs.FlowStoneError:
    """An instance of ``cls`` as the engine would make it, translating a raised exception."""
    try:
        raise KeyError("inner cause")
    except KeyError as cause:
        if cls is fs.PipelineInvalid:
            problem = fs.Problem("unknown_dependency", "depends on 'nope'", asset="a", location="p.py:3")
            return fs.PipelineInvalid([problem])
        if cls is fs.Retry:
            return fs.Retry("the export is not ready", after=30)
        return cls("it went wrong", context={"asset": "orders", "partition": "2025-01-01"}, original=cause)


def test_every_exported_error_has_an_advice_entry() -> None:
    assert len(ERRORS) >= 16
    assert set(ADVICE) == set(ERRORS)


@pytest.mark.parametrize(("cls", "advice"), _advice_params())
def test_each_error_class_has_its_own_hint_saying_what_to_do(
    cls: type[fs.FlowStoneError], advice: str
) -> None:
    assert "hint" in vars(cls), f"{cls.__name__} inherits its hint"
    hint = cls.hint
    assert hint and hint[0].isupper() and hint.endswith(".")
    assert advice in hint


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: c.__name__)
def test_user_message_is_the_message_then_the_hint(cls: type[fs.FlowStoneError]) -> None:
    error = _raised(cls)
    assert error.user_message.startswith(error.message.rstrip())
    assert error.user_message.endswith(error.hint)
    assert ".." not in error.user_message


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: c.__name__)
def test_developer_message_has_type_class_context_and_traceback(cls: type[fs.FlowStoneError]) -> None:
    error = _raised(cls)
    text = error.developer_message
    assert f"[{cls.type}]" in text and cls.__name__ in text
    assert error.context  # every instance here carries some
    for key, value in error.context.items():
        assert f"{key}: {value}" in text
    if error.original is not None:
        assert "Traceback (most recent call last)" in text
        assert "in _raised" in text and "KeyError: 'inner cause'" in text
    else:
        assert "Traceback" not in text


def test_a_hint_can_be_given_per_instance_and_survives_pickling() -> None:
    error = fs.ValidationError("partition '2025-13-01' is not a day", hint="Use YYYY-MM-DD.")
    assert error.user_message == "partition '2025-13-01' is not a day. Use YYYY-MM-DD."
    assert fs.ValidationError("x").hint == fs.ValidationError.hint != "Use YYYY-MM-DD."
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is fs.ValidationError and copy.user_message == error.user_message


def test_user_message_punctuation() -> None:
    assert fs.ExecutionError("boom").user_message == f"boom. {fs.ExecutionError.hint}"
    assert fs.ExecutionError("Boom.").user_message == f"Boom. {fs.ExecutionError.hint}"
    listed = _raised(fs.PipelineInvalid).user_message.splitlines()
    assert listed[0] == "pipeline has 1 problem(s):"
    assert listed[-1] == fs.PipelineInvalid.hint  # below the list, not glued to its last line


def test_resource_unavailable_reads_right_for_setup_and_for_calls() -> None:
    # Its class hint speaks of neither: the message says which it was.
    assert "set up" not in fs.ResourceUnavailable.hint
    outage = fs.ResourceUnavailable("GET https://api.example.com/x failed after 4 attempt(s)")
    assert outage.retryable and "Try again later" in outage.user_message
    # A failure that waiting will not fix (bad settings) does not say "try again later".
    broken = fs.HttpClient(base_url="http://127.0.0.1", retries=-1)
    with pytest.raises(fs.ResourceUnavailable) as info:
        RunResources({"api": broken})["api"]
    error = info.value
    assert "resource 'api' could not be set up" in error.message
    assert error.retryable is False
    assert "Try again later" not in error.user_message and "`flowstone doctor`" in error.user_message


# ---------------------------------------------------------------------- the drawn tree
_BRANCH = re.compile(
    r"(?P<rails>(?:│   |    )*)[├└]── (?P<name>\w+)\W+(?P<type>\w+)(?:\s+(?P<retry>yes|no|varies)\b)?"
)


def drawn_tree(doc: str) -> dict[str, tuple[str, str, str | None]]:
    """The tree a docstring draws: class name -> (drawn parent, drawn type, drawn retryable)."""
    lines = doc.splitlines()
    start = next(
        i
        for i, line in enumerate(lines[:-1])
        if line.strip().startswith("FlowStoneError") and lines[i + 1].strip().startswith("├──")
    )
    indent = len(lines[start]) - len(lines[start].lstrip())
    parents = ["FlowStoneError"]
    tree: dict[str, tuple[str, str, str | None]] = {"FlowStoneError": ("", "flowstone_error", None)}
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        match = _BRANCH.match(line[indent:])
        assert match is not None, f"cannot read this line of the drawing: {line!r}"
        depth = len(match["rails"]) // 4 + 1
        del parents[depth:]
        name = match["name"]
        tree[name] = (parents[depth - 1], match["type"], match["retry"])
        parents.append(name)
    return tree


@pytest.mark.parametrize(
    "doc", [fs.__doc__, errors_module.__doc__], ids=["flowstone.__doc__", "flowstone._errors.__doc__"]
)
def test_the_drawn_tree_matches_the_classes(doc: str | None) -> None:
    assert doc is not None
    tree = drawn_tree(doc)
    assert set(tree) == {cls.__name__ for cls in ERRORS}
    for cls in ERRORS:
        parent, drawn_type, _ = tree[cls.__name__]
        if cls is not fs.FlowStoneError:
            assert parent == cls.__bases__[0].__name__, cls
        assert drawn_type == cls.type, cls


def test_the_errors_module_drawing_states_retryable_as_the_classes_do() -> None:
    assert errors_module.__doc__ is not None
    tree = drawn_tree(errors_module.__doc__)
    for cls in ERRORS:
        if cls is fs.FlowStoneError:
            continue
        drawn = tree[cls.__name__][2]
        assert drawn in ("yes", "no", "varies"), cls
        assert (drawn == "yes") is cls.default_retryable, cls


def test_the_tree_reader_notices_drift() -> None:
    # Control: a drawing with a wrong parent, a wrong type and a missing class is caught.
    assert fs.__doc__ is not None
    drifted = fs.__doc__.replace("│   └── PipelineInvalid (definition_error)\n", "").replace(
        "├── StepTimeout (timeout, retryable)", "├── StepTimeout (step_timeout, retryable)"
    )
    tree = drawn_tree(drifted)
    assert "PipelineInvalid" not in tree
    assert tree["StepTimeout"][1] == "step_timeout"
    moved = drawn_tree(fs.__doc__.replace("│   └── ValueNotFound", "├── ValueNotFound"))
    assert moved["ValueNotFound"][0] == "FlowStoneError"


# ---------------------------------------------------------------------- executor=
def test_an_unknown_executor_is_a_validation_error_naming_the_choices(
    pipeline: fs.Pipeline, make_app: AppFactory
) -> None:
    @pipeline.asset()
    def a(context: fs.Context) -> int:
        return 1

    app = make_app(pipeline)
    with pytest.raises(fs.ValidationError) as info:
        app.materialize(["a"], executor="gpu")
    error = info.value
    assert error.context == {
        "field": "executor",
        "value": "gpu",
        "allowed": ["serial", "threads", "processes", "queue"],
    }
    assert error.message == "executor must be one of 'serial', 'threads', 'processes', 'queue', got 'gpu'"
    assert error.exit_code == 2 and not error.retryable
    assert app.runs() == []  # refused before a run was recorded


def test_a_backfill_with_an_unknown_executor_fails_before_running_anything(
    pipeline: fs.Pipeline, make_app: AppFactory
) -> None:
    @pipeline.asset(partitioned_by=fs.DailyPartitions(start="2025-01-01"))
    def daily(context: fs.Context) -> str:
        return str(context.partition_key)

    app = make_app(pipeline)
    with pytest.raises(fs.ValidationError, match="executor must be one of") as info:
        app.backfill(["daily"], start="2025-01-01", end="2025-01-02", executor="gpu")
    assert info.value.context["value"] == "gpu"
    assert app.store.list_backfills(tenant=app.tenant) == []  # refused before it is recorded
    assert app.runs() == []
