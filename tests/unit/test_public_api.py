"""The public surface: what ``import flowstone`` costs and what it exports."""

from __future__ import annotations

import json
import subprocess
import sys

import flowstone as fs

HEAVY = [
    "sqlalchemy.dialects.postgresql",
    "pyarrow",
    "pandas",
    "polars",
    "fsspec",
    "s3fs",
    "duckdb",
    "psycopg",
    "fastapi",
    "procrastinate",
]


def test_import_does_not_pull_heavy_dependencies() -> None:
    script = (
        "import json, sys\n"
        "import flowstone\n"
        f"heavy = {HEAVY!r}\n"
        "print(json.dumps({'loaded': [m for m in heavy if m in sys.modules], "
        "'flowstone': 'flowstone' in sys.modules}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["flowstone"] is True
    assert result["loaded"] == []


def test_the_check_itself_detects_a_heavy_import() -> None:
    # Control: the same probe does see a module that was imported.
    script = (
        "import sys, flowstone, sqlalchemy.dialects.postgresql\n"
        "print('sqlalchemy.dialects.postgresql' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert out.strip() == "True"


def test_all_is_sorted_and_every_name_exists() -> None:
    assert fs.__all__ == sorted(fs.__all__)
    assert len(set(fs.__all__)) == len(fs.__all__)
    missing = [name for name in fs.__all__ if not hasattr(fs, name)]
    assert missing == []


def test_core_names_are_exported() -> None:
    for name in [
        "FlowStone",
        "Pipeline",
        "Output",
        "Context",
        "DailyPartitions",
        "StaticPartitions",
        "FlowStoneError",
        "DefinitionError",
        "PipelineInvalid",
        "AssetNotFound",
        "ExecutionError",
        "StepTimeout",
        "IOManagerError",
        "ValueNotFound",
        "load_pipeline",
    ]:
        assert name in fs.__all__


def test_every_error_type_is_a_flowstone_error_with_a_distinct_type() -> None:
    errors = [
        getattr(fs, name)
        for name in fs.__all__
        if isinstance(getattr(fs, name), type) and issubclass(getattr(fs, name), fs.FlowStoneError)
    ]
    assert len(errors) >= 14
    top_level = [e for e in errors if e.__bases__ == (fs.FlowStoneError,)]
    types = [e.type for e in top_level]
    assert len(types) == len(set(types))
    assert fs.StepTimeout("x").retryable is True
    assert fs.ExecutionError("x").retryable is False
    assert fs.ExecutionError("x", retryable=True).retryable is True


def test_error_messages_and_serialisation() -> None:
    try:
        raise ValueError("inner")
    except ValueError as exc:
        err = fs.ExecutionError("outer", context={"asset": "a", "when": object()}, original=exc)
    data = err.to_dict()
    assert data["type"] == "execution_error"
    assert data["context"]["asset"] == "a"
    assert isinstance(data["context"]["when"], str)  # JSON-safe
    json.dumps(data)
    assert "ValueError: inner" in err.developer_message
    assert err.user_message.startswith("outer. ")
