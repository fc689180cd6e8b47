"""The built-in sensor factories: what they register, what they reject, and how they evaluate.

Registration goes through ``pipeline.sensor`` (same validation, same namespace as schedules);
bad options are a ``DefinitionError`` naming the sensor and the line that declared it. The file
sensor and the database sensor are evaluated here directly - ``definition.fn(context, cursor)``
with a context that only has a (fake) ``now`` - on files in ``tmp_path`` and a SQLite file; the
daemon driving them against real backends is in tests/integration/test_sensors.py.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import flowstone as fs
from flowstone.schedules import RunRequest, SensorDefinition, SensorResult, sensors
from flowstone.schedules.sensors import BuiltinSensor, _fit_key

NOW = datetime(2025, 1, 15, 12, 0, tzinfo=UTC)
DAYS = fs.DailyPartitions(start="2025-01-01", end="2025-03-01")


@dataclass
class Ctx:
    """What the file and database sensors read from their context."""

    now: datetime = NOW
    sensor_name: str = "test"


def here() -> int:
    """The line after the caller's: where the next statement's call starts."""
    return sys._getframe(1).f_lineno + 1


@pytest.fixture
def pipeline() -> fs.Pipeline:
    pipeline = fs.Pipeline("unit")

    @pipeline.asset(partitioned_by=DAYS)
    def raw(context: Any) -> int:
        return 1

    @pipeline.asset(partitioned_by=DAYS)
    def cooked(context: Any, raw: int) -> int:
        return raw

    @pipeline.asset()
    def report(context: Any) -> int:
        return 1

    return pipeline


def evaluate(definition: SensorDefinition, cursor: str | None, now: datetime = NOW) -> SensorResult:
    result = definition.fn(Ctx(now=now), cursor)
    assert isinstance(result, SensorResult)
    return result


def parts(result: SensorResult) -> list[tuple[str, ...]]:
    return [r.partitions for r in result.requests()]


# ---------------------------------------------------------------------- registration
def test_each_factory_registers_a_sensor_through_the_pipeline(pipeline: fs.Pipeline, tmp_path: Path) -> None:
    line = here()
    files = sensors.file_arrival(pipeline, name="files", path=str(tmp_path / "*.csv"), target=["raw"])
    assert pipeline.sensors["files"] is files
    assert isinstance(files.fn, BuiltinSensor) and files.fn.kind == "file_arrival"
    assert (files.interval, files.timeout, files.target) == (60.0, 60.0, ("raw",))
    assert files.location == f"{__file__}:{line}"  # the caller, not the sensors module
    assert files.description == f"files arriving at {tmp_path}/*.csv"

    upstream = sensors.asset_materialized(
        pipeline, name="up", upstream="raw", target="cooked", interval="2m", timeout="5s"
    )
    assert (upstream.interval, upstream.timeout, upstream.target) == (120.0, 5.0, ("cooked",))
    assert upstream.description == "new materializations of raw (any)"

    db = sensors.database_change(
        pipeline, name="db", url="postgresql://u:secret@db/x", query="SELECT 1", target=["report"]
    )
    assert (
        db.description is not None
        and "secret" not in db.description
        and "postgresql+psycopg" in db.description
    )

    poll = sensors.http_poll(pipeline, name="poll", url="https://example.com/ready", target=["report"])
    assert poll.description == "GET https://example.com/ready"

    runs = sensors.run_status(pipeline, name="runs", status="failed", of="report", target=["report"])
    assert runs.description == "runs failed of report"
    assert sorted(pipeline.sensors) == ["db", "files", "poll", "runs", "up"]
    pipeline.validate()


def test_a_notify_only_run_status_sensor_targets_what_it_watches(pipeline: fs.Pipeline) -> None:
    watching = sensors.run_status(pipeline, name="pager", of=["raw", "cooked"], notify=lambda run, ctx: None)
    assert watching.target == ("raw", "cooked")
    everything = sensors.run_status(pipeline, name="all_runs", status="succeeded", notify=print)
    assert everything.target == ("*",)
    pipeline.validate()


def test_built_in_sensors_share_the_namespace_and_target_checks(pipeline: fs.Pipeline) -> None:
    pipeline.schedule("nightly", cron="0 3 * * *", target=["report"])
    sensors.http_poll(pipeline, name="nightly", url="http://x/", target=["report"])
    sensors.http_poll(pipeline, name="typo", url="http://x/", target=["reprot"])
    with pytest.raises(fs.PipelineInvalid) as caught:
        pipeline.validate()
    codes = sorted(p.code for p in caught.value.problems)
    assert codes == ["duplicate_name", "unknown_target"]


def test_a_bad_option_names_the_sensor_and_the_line(pipeline: fs.Pipeline) -> None:
    line = here()
    with pytest.raises(fs.DefinitionError) as caught:
        sensors.file_arrival(pipeline, name="bad", path="/x/*.csv", pattern="(", target=["raw"])
    message = str(caught.value)
    assert message.startswith(f"{__file__}:{line + 1}: sensor 'bad': pattern '(' is not a regular expression")
    assert "bad" not in pipeline.sensors


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("file_arrival", {"name": "bad name", "path": "/x"}, "name= must be an identifier"),
    ("file_arrival", {"path": ""}, "path must be an fsspec URL"),
    ("file_arrival", {"path": "/x", "pattern": r"(\d+)-(\d+)"}, "has 2 groups: name the one"),
    ("file_arrival", {"path": "/x", "pattern": 42}, "pattern must be a regular expression or a function"),
    ("file_arrival", {"path": "/x", "dynamic_partitions": "d"}, "dynamic_partitions needs a pattern="),
    ("file_arrival", {"path": "/x", "min_age": "soon"}, "min_age: not a duration"),
    ("file_arrival", {"path": "/x", "max_requests": 0}, "max_requests must be a positive integer"),
    ("file_arrival", {"path": "/x", "interval": "0s"}, "duration must be positive"),
    ("file_arrival", {"path": "/x", "target": []}, "needs a target"),
    ("asset_materialized", {"upstream": []}, "upstream must be one or more asset names"),
    ("asset_materialized", {"upstream": "raw", "require": "most"}, "require must be 'any' or 'all'"),
    ("asset_materialized", {"upstream": "raw", "partitions": "raw"}, "partitions must be a function"),
    ("asset_materialized", {"upstream": "raw", "lookback": "-"}, "lookback: not a duration"),
    ("database_change", {"url": "not a url", "query": "SELECT 1"}, "url is not a database URL"),
    ("database_change", {"url": 5, "query": "SELECT 1"}, "url must be a database URL or a SQLAlchemy"),
    ("database_change", {"url": "sqlite://", "query": " "}, "query must be SQL returning one value"),
    ("http_poll", {"url": "ftp://x"}, "url must be an http(s) URL"),
    ("http_poll", {"url": "http://x", "predicate": True}, "predicate must be a function"),
    ("http_poll", {"url": "http://x", "request_timeout": "a while"}, "request_timeout: not a duration"),
    ("run_status", {"status": "broken"}, "status must be one or more of ['succeeded', 'failed'"),
    ("run_status", {"status": []}, "status must be one or more of"),
    ("run_status", {"target": None}, "give target=[...] (assets to run), notify=callable, or both"),
    ("run_status", {"of": [""]}, "of must be asset names or selections"),
]


@pytest.mark.parametrize(("factory", "options", "message"), BAD, ids=[f"{f}-{m[:24]}" for f, _, m in BAD])
def test_bad_options_are_definition_errors(
    pipeline: fs.Pipeline, factory: str, options: dict[str, Any], message: str
) -> None:
    kwargs: dict[str, Any] = {"name": "s", "target": ["report"], **options}
    with pytest.raises(fs.DefinitionError, match=re.escape(message)):
        getattr(sensors, factory)(pipeline, **kwargs)
    assert pipeline.sensors == {}


def test_long_request_keys_are_shortened_to_fit_a_tick_key() -> None:
    short = "2025-01-15@abc"
    assert _fit_key(short) == short
    a, b = "x" * 300 + "a", "x" * 300 + "b"
    assert len(_fit_key(a)) <= 255 and len(_fit_key(b)) <= 255
    assert _fit_key(a) == _fit_key(a) != _fit_key(b)


# ---------------------------------------------------------------------- file arrival, evaluated
def write(path: Path, text: str, *, at: datetime | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if at is not None:
        os.utime(path, (at.timestamp(), at.timestamp()))
    return path


def test_file_arrival_groups_new_files_by_partition(pipeline: fs.Pipeline, tmp_path: Path) -> None:
    land = tmp_path / "land"
    write(land / "a" / "2025-01-14" / "part-1.csv", "1")
    write(land / "a" / "2025-01-14" / "part-2.csv", "2")
    write(land / "b" / "2025-01-15" / "part-1.csv", "3")
    write(land / "b" / "undated" / "part-1.csv", "4")
    sensor = sensors.file_arrival(
        pipeline,
        name="parts",
        path=str(land / "**" / "*.csv"),
        pattern=re.compile(r"/(?P<region>[ab])/(?P<partition>\d{4}-\d{2}-\d{2})/"),
        target=["raw"],
        dynamic_partitions=None,
    )
    result = evaluate(sensor, None)
    assert parts(result) == [("2025-01-14",), ("2025-01-15",)]
    assert all(r.force and r.key for r in result.requests())
    assert result.dynamic_partitions == {}
    state = json.loads(result.cursor or "")
    assert state["v"] == 1 and len(state["seen"]) == 3  # the undated file is not recorded

    # The same files evaluated again from the same cursor: the same request keys.
    assert [r.key for r in evaluate(sensor, None).requests()] == [r.key for r in result.requests()]
    again = evaluate(sensor, result.cursor)
    assert again.requests() == [] and again.skip_reason is not None
    assert again.skip_reason.endswith("none new; 1 not matching the pattern")

    # One more file of 2025-01-14: a new key for the partition (the set of files changed).
    write(land / "a" / "2025-01-14" / "part-3.csv", "5")
    more = evaluate(sensor, again.cursor)
    assert parts(more) == [("2025-01-14",)]
    assert more.requests()[0].key not in {r.key for r in result.requests()}


def test_file_arrival_with_a_function_and_without_a_pattern(pipeline: fs.Pipeline, tmp_path: Path) -> None:
    write(tmp_path / "in" / "x.json", "{}")
    write(tmp_path / "in" / "y.json", "{}")
    both = sensors.file_arrival(
        pipeline,
        name="two_keys",
        path=str(tmp_path / "in"),
        pattern=lambda url: ["2025-01-01", "2025-01-02"] if url.endswith("x.json") else None,
        target=["raw"],
    )
    assert parts(evaluate(both, None)) == [("2025-01-01",), ("2025-01-02",)]
    whole = sensors.file_arrival(pipeline, name="whole", path=str(tmp_path / "in"), target=["report"])
    result = evaluate(whole, None)
    assert parts(result) == [()]  # one run, no partitions, for both files
    key = result.requests()[0].key
    assert key is not None and key.startswith("@")


def test_file_arrival_ignore_existing_and_deleted_files(pipeline: fs.Pipeline, tmp_path: Path) -> None:
    old = write(tmp_path / "d" / "2025-01-10.csv", "old")
    sensor = sensors.file_arrival(
        pipeline, name="fresh_only", path=str(tmp_path / "d" / "*.csv"), pattern=r"\d{4}-\d{2}-\d{2}",
        target=["raw"], ignore_existing=True,
    )  # fmt: skip
    first = evaluate(sensor, None)
    assert first.requests() == []
    write(tmp_path / "d" / "2025-01-11.csv", "new")
    second = evaluate(sensor, first.cursor)
    assert parts(second) == [("2025-01-11",)]
    old.unlink()
    third = evaluate(sensor, second.cursor)
    assert third.requests() == [] and len(json.loads(third.cursor or "")["seen"]) == 1  # pruned


def test_file_arrival_min_age_and_max_requests(pipeline: fs.Pipeline, tmp_path: Path) -> None:
    for day, age in ((12, 600), (13, 500), (14, 400), (15, 5)):
        write(tmp_path / "e" / f"2025-01-{day}.csv", "x", at=NOW - timedelta(seconds=age))
    sensor = sensors.file_arrival(
        pipeline, name="batched", path=str(tmp_path / "e"), pattern=r"\d{4}-\d{2}-\d{2}", target=["raw"],
        min_age="1m", max_requests=2, dynamic_partitions="days",
    )  # fmt: skip
    first = evaluate(sensor, None)
    assert parts(first) == [("2025-01-12",), ("2025-01-13",)]  # the oldest first
    assert first.dynamic_partitions == {"days": ["2025-01-12", "2025-01-13"]}
    second = evaluate(sensor, first.cursor)
    assert parts(second) == [("2025-01-14",)]  # the 5 s old file is not settled yet
    third = evaluate(sensor, second.cursor)
    assert third.requests() == [] and third.skip_reason == (
        f"4 file(s) at {tmp_path / 'e'}, none new; 1 younger than min_age"
    )
    later = evaluate(sensor, third.cursor, now=NOW + timedelta(seconds=55))
    assert parts(later) == [("2025-01-15",)]


def test_a_foreign_cursor_is_an_error_not_a_fresh_start(pipeline: fs.Pipeline, tmp_path: Path) -> None:
    sensor = sensors.file_arrival(pipeline, name="files", path=str(tmp_path), target=["report"])
    with pytest.raises(ValueError, match="is not a file_arrival cursor; reset it"):
        evaluate(sensor, "12345")
    with pytest.raises(ValueError, match="is not a file_arrival cursor"):
        evaluate(sensor, json.dumps({"v": 99}))


# ---------------------------------------------------------------------- database change, evaluated
def test_database_change_fires_on_each_new_watermark(pipeline: fs.Pipeline, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'source.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE t (day TEXT, n INTEGER)"))
    sensor = sensors.database_change(
        pipeline,
        name="changes",
        url=engine,
        query="SELECT max(day) FROM t WHERE n >= :least",
        params={"least": 1},
        partitions=lambda value: value,
        target=["raw"],
    )
    first = evaluate(sensor, None)
    assert first.requests() == [] and first.skip_reason == "first evaluation: watermark is null"
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO t VALUES ('2025-01-14', 1), ('2025-01-20', 0)"))
    second = evaluate(sensor, first.cursor)
    [request] = second.requests()
    assert request == RunRequest(partitions=("2025-01-14",), key=request.key, force=True)
    assert request.key is not None and request.key.startswith('"2025-01-14"@')
    assert evaluate(sensor, first.cursor).requests() == [request]  # re-evaluated: the same key
    assert evaluate(sensor, second.cursor).skip_reason == 'watermark unchanged ("2025-01-14")'
    engine.dispose()
