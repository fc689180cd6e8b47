"""Sensors end to end: the daemon evaluating custom and built-in sensors on real components.

Every pass is ``Daemon(app).tick(now=...)`` on an app with a ``FakeClock``: intervals, ``min_age``
and the first evaluation are all driven by the fake clock, nothing waits for time to pass. A
custom sensor's cursor survives a restart (a new ``FlowStone`` and ``Daemon`` on the same store,
SQLite and PostgreSQL); a sensor that raises or times out is recorded and the pass goes on; a
request key is launched once however often it is asked for.

The built-ins run against the real thing: local files in ``tmp_path``, S3 on a moto server on
127.0.0.1, a PostgreSQL table for ``database_change``, a local ``http.server`` for ``http_poll``,
and runs that really fail for ``run_status``. The one real wait is the 0.2 s sensor timeout.
"""

from __future__ import annotations

import http.server
import json
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import flowstone as fs
from flowstone.schedules import Daemon, PassReport, sensors
from flowstone.schedules._state import AutomationState, AutomationStore, Tick
from flowstone.testing import FakeClock

T0 = datetime(2025, 1, 15, 12, 0, tzinfo=UTC)
DAYS = fs.DailyPartitions(start="2025-01-01", end="2025-03-01")
DEADLINE = 10.0  # seconds a thread may take to finish once released
REGION = "us-east-1"

AppFactory = Callable[[fs.Pipeline, str], fs.FlowStone]


# ---------------------------------------------------------------------- helpers
@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def open_app(tmp_path: Path, clock: FakeClock) -> Iterator[AppFactory]:
    """FlowStone apps on a given store, all on the test's fake clock; closed at teardown."""
    apps: list[fs.FlowStone] = []

    def make(pipeline: fs.Pipeline, store: str) -> fs.FlowStone:
        app = fs.FlowStone(pipeline, store=store, storage_dir=tmp_path / "storage", clock=clock)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


def state_of(app: fs.FlowStone, name: str) -> AutomationState:
    return AutomationStore(app.store, app.tenant).state("sensor", name)


def ticks_of(app: fs.FlowStone, name: str) -> list[Tick]:
    return AutomationStore(app.store, app.tenant).ticks("sensor", name, limit=200)


def launched(report: PassReport, name: str) -> list[str]:
    return [run for kind, who, runs in report.launched if kind == "sensor" and who == name for run in runs]


def errors(report: PassReport, name: str) -> list[str]:
    return [text for kind, who, text in report.errors if kind == "sensor" and who == name]


def skipped(report: PassReport, name: str) -> list[str]:
    return [text for kind, who, text in report.skipped if kind == "sensor" and who == name]


def run_partitions(app: fs.FlowStone, run_ids: list[str], asset: str) -> list[str | None]:
    """The partitions of ``asset`` that the runs materialized successfully."""
    found = []
    for run_id in run_ids:
        for mat in app.store.materializations(tenant=app.tenant, run_id=run_id):
            if mat.asset == asset and mat.status == "success":
                found.append(mat.partition_key)
    return sorted(found, key=str)


def successes(app: fs.FlowStone, asset: str) -> int:
    return sum(m.status == "success" for m in app.store.materializations(tenant=app.tenant, asset=asset))


# ---------------------------------------------------------------------- custom sensors
def counting_pipeline(cursors: list[str | None]) -> fs.Pipeline:
    """A sensor that asks for partition n+1 of ``numbers`` where its cursor says n."""
    pipeline = fs.Pipeline("sensors")

    @pipeline.asset(partitioned_by=fs.StaticPartitions([str(n) for n in range(1, 10)]))
    def numbers(context: fs.Context) -> int:
        return int(context.partition_key or 0)

    @pipeline.sensor(interval="30s", target=["numbers"])
    def counter(context: Any, cursor: str | None) -> fs.SensorResult:
        cursors.append(cursor)
        n = int(cursor or 0) + 1
        return fs.SensorResult(run_requests=[str(n)], cursor=str(n))

    return pipeline


def test_cursor_survives_a_restart_of_the_app_and_the_daemon(store_url: str, open_app: AppFactory) -> None:
    cursors: list[str | None] = []
    first = open_app(counting_pipeline(cursors), store_url)
    report = Daemon(first).tick(now=T0)
    assert run_partitions(first, launched(report, "counter"), "numbers") == ["1"]
    assert state_of(first, "counter").cursor == "1"
    first.close()

    # A new process: new pipeline object, new app, new daemon, the same store.
    second = open_app(counting_pipeline(cursors), store_url)
    daemon = Daemon(second)
    report = daemon.tick(now=T0 + timedelta(seconds=30))
    assert cursors == [None, "1"]
    assert run_partitions(second, launched(report, "counter"), "numbers") == ["2"]
    report = daemon.tick(now=T0 + timedelta(seconds=60))
    assert cursors == [None, "1", "2"]
    assert state_of(second, "counter").cursor == "3"
    assert sorted(t.tick_key for t in ticks_of(second, "counter") if t.status == "launched") != []
    assert sorted(m.partition_key or "" for m in second.store.materializations(tenant="default")) == [
        "1",
        "2",
        "3",
    ]


def test_interval_is_kept_by_the_fake_clock(sqlite_url: str, open_app: AppFactory, clock: FakeClock) -> None:
    cursors: list[str | None] = []
    app = open_app(counting_pipeline(cursors), sqlite_url)
    daemon = Daemon(app)
    daemon.tick()  # now = the app's clock
    assert len(cursors) == 1
    clock.advance(29)
    report = daemon.tick()
    assert len(cursors) == 1 and launched(report, "counter") == []  # not due yet
    clock.advance(1)
    daemon.tick()
    assert cursors == [None, "1"]
    assert state_of(app, "counter").last_evaluated_at == T0 + timedelta(seconds=30)
    clock.advance(10)
    daemon.tick()
    clock.advance(19.5)
    daemon.tick()
    assert len(cursors) == 2  # 29.5 s after the last evaluation
    clock.advance(0.5)
    daemon.tick()
    assert len(cursors) == 3


def test_a_failing_sensor_is_recorded_and_the_others_still_run(sqlite_url: str, open_app: AppFactory) -> None:
    pipeline = fs.Pipeline("sensors")
    calls: dict[str, int] = {"broken": 0, "healthy": 0}

    @pipeline.asset(partitioned_by=fs.StaticPartitions(["a", "b", "c"]))
    def letters(context: fs.Context) -> str:
        return context.partition_key or ""

    @pipeline.sensor(interval="30s", target=["letters"])
    def broken(context: Any, cursor: str | None) -> fs.SensorResult:
        calls["broken"] += 1
        if calls["broken"] == 1:
            raise RuntimeError("the source is down")
        return fs.SensorResult(run_requests=["b"], cursor="recovered")

    @pipeline.sensor(interval="30s", target=["letters"])
    def healthy(context: Any, cursor: str | None) -> fs.SensorResult:
        calls["healthy"] += 1
        return fs.SensorResult(run_requests=[fs.RunRequest(partitions=("a",), key=f"a{calls['healthy']}")])

    app = open_app(pipeline, sqlite_url)
    daemon = Daemon(app)
    report = daemon.tick(now=T0)
    assert errors(report, "broken") == ["RuntimeError: the source is down"]
    assert calls == {"broken": 1, "healthy": 1}
    assert len(launched(report, "healthy")) == 1
    state = state_of(app, "broken")
    assert state.last_error == "RuntimeError: the source is down"
    assert state.cursor is None  # a failed evaluation does not move the cursor
    assert state.last_evaluated_at == T0
    [tick] = ticks_of(app, "broken")
    assert (tick.status, tick.reason, tick.tick_at) == ("failed", "RuntimeError: the source is down", T0)
    assert app.runs(limit=10)[0].actor == "sensor:healthy"

    # Not again before its interval; then it recovers, and the error is cleared.
    daemon.tick(now=T0 + timedelta(seconds=10))
    assert calls == {"broken": 1, "healthy": 1}
    report = daemon.tick(now=T0 + timedelta(seconds=30))
    assert calls == {"broken": 2, "healthy": 2}
    assert errors(report, "broken") == []
    assert run_partitions(app, launched(report, "broken"), "letters") == ["b"]
    state = state_of(app, "broken")
    assert (state.last_error, state.cursor) == (None, "recovered")


def test_a_sensor_past_its_timeout_is_recorded_and_the_pass_goes_on(
    sqlite_url: str, open_app: AppFactory
) -> None:
    pipeline = fs.Pipeline("sensors")
    release = threading.Event()
    started = threading.Event()
    after: list[str | None] = []

    @pipeline.asset()
    def thing(context: fs.Context) -> int:
        return 1

    @pipeline.sensor(interval="30s", timeout="0.2s", target=["thing"])
    def stuck(context: Any, cursor: str | None) -> fs.SensorResult:
        started.set()
        release.wait(DEADLINE)
        return fs.SensorResult(skip_reason="released", cursor="done")

    @pipeline.sensor(interval="30s", target=["thing"])
    def next_one(context: Any, cursor: str | None) -> fs.SensorResult:
        after.append(cursor)
        return fs.SensorResult(skip_reason="nothing")

    app = open_app(pipeline, sqlite_url)
    daemon = Daemon(app)
    try:
        report = daemon.tick(now=T0)
        assert started.is_set()
        [text] = errors(report, "stuck")
        assert text.startswith("TimeoutError:") and "0.2s" in text
        assert state_of(app, "stuck").last_error == text
        assert state_of(app, "stuck").cursor is None
        assert [(t.status, t.reason) for t in ticks_of(app, "stuck")] == [("failed", text)]
        assert after == [None]  # evaluated in the same pass
    finally:
        release.set()
    for thread in threading.enumerate():
        if thread.name == "flowstone-sensor-stuck":
            thread.join(DEADLINE)
            assert not thread.is_alive()
    # The late result of the timed-out evaluation is dropped; the next one counts.
    assert state_of(app, "stuck").cursor is None
    report = daemon.tick(now=T0 + timedelta(seconds=30))
    assert errors(report, "stuck") == []
    assert (state_of(app, "stuck").cursor, state_of(app, "stuck").last_error) == ("done", None)


def test_a_request_key_is_launched_once(store_url: str, open_app: AppFactory) -> None:
    pipeline = fs.Pipeline("sensors")
    evaluations: list[datetime] = []

    @pipeline.asset(partitioned_by=fs.StaticPartitions(["x", "y"]))
    def things(context: fs.Context) -> str:
        return context.partition_key or ""

    @pipeline.sensor(interval="30s", target=["things"])
    def same(context: Any, cursor: str | None) -> fs.SensorResult:
        evaluations.append(context.now)
        return fs.SensorResult(run_requests=[fs.RunRequest(partitions=("x",), key="x-once")])

    app = open_app(pipeline, store_url)
    first, second = Daemon(app), Daemon(app)
    runs = launched(first.tick(now=T0), "same") + launched(second.tick(now=T0), "same")
    for step in range(1, 4):
        runs += launched(first.tick(now=T0 + timedelta(seconds=30 * step)), "same")
    assert len(runs) == 1
    assert len(evaluations) == 4  # evaluated every interval; launched once
    assert [(t.tick_key, t.status, t.run_ids) for t in ticks_of(app, "same")] == [
        ("x-once", "launched", runs)
    ]
    assert successes(app, "things") == 1


# ---------------------------------------------------------------------- known daemon gaps


def test_a_long_request_key_launches_on_postgresql(pg_url: str, open_app: AppFactory) -> None:
    pipeline = fs.Pipeline("sensors")

    @pipeline.asset(partitioned_by=fs.StaticPartitions(["x"]))
    def things(context: fs.Context) -> str:
        return "x"

    @pipeline.sensor(target=["things"])
    def long_key(context: Any, cursor: str | None) -> fs.SensorResult:
        key = "s3://bucket/" + "deep/" * 60 + "file.csv@etag=0123"
        return fs.SensorResult(run_requests=[fs.RunRequest(partitions=("x",), key=key)], cursor="1")

    app = open_app(pipeline, pg_url)
    daemon = Daemon(app)
    report = daemon.tick(now=T0)
    assert errors(report, "long_key") == []
    assert len(launched(report, "long_key")) == 1
    assert launched(daemon.tick(now=T0 + timedelta(seconds=30)), "long_key") == []  # still once
    assert state_of(app, "long_key").cursor == "1"


def test_a_run_request_with_one_partition_as_a_string(sqlite_url: str, open_app: AppFactory) -> None:
    pipeline = fs.Pipeline("sensors")

    @pipeline.asset(partitioned_by=fs.StaticPartitions(["a", "b", "ab"]))
    def letters(context: fs.Context) -> str:
        return context.partition_key or ""

    @pipeline.sensor(target=["letters"])
    def one(context: Any, cursor: str | None) -> fs.SensorResult:
        return fs.SensorResult(run_requests=[fs.RunRequest(partitions="ab", key="ab")])  # type: ignore[arg-type]

    app = open_app(pipeline, sqlite_url)
    report = Daemon(app).tick(now=T0)
    assert run_partitions(app, launched(report, "one"), "letters") == ["ab"]


def test_unknown_dynamic_partitions_are_the_sensors_recorded_error(
    sqlite_url: str, open_app: AppFactory
) -> None:
    pipeline = fs.Pipeline("sensors")
    evaluated: list[str] = []

    @pipeline.asset()
    def thing(context: fs.Context) -> int:
        return 1

    @pipeline.sensor(target=["thing"])
    def typo(context: Any, cursor: str | None) -> fs.SensorResult:
        return fs.SensorResult(dynamic_partitions={"no_such_set": ["k"]}, cursor="1")

    @pipeline.sensor(target=["thing"])
    def after(context: Any, cursor: str | None) -> fs.SensorResult:
        evaluated.append("after")
        return fs.SensorResult(skip_reason="-")

    app = open_app(pipeline, sqlite_url)
    report = Daemon(app).tick(now=T0)
    assert evaluated == ["after"]  # the pass went on
    [text] = errors(report, "typo")
    assert "no dynamic partitions named 'no_such_set'" in text
    assert state_of(app, "typo").last_error == text  # shown by `flowstone sensors list`
    assert [t.status for t in ticks_of(app, "typo")] == ["failed"]
    assert state_of(app, "typo").cursor is None


def test_a_timed_out_sensor_is_not_evaluated_again_while_it_still_runs(
    sqlite_url: str, open_app: AppFactory
) -> None:
    pipeline = fs.Pipeline("sensors")
    release = threading.Event()
    calls: list[datetime] = []

    @pipeline.asset()
    def thing(context: fs.Context) -> int:
        return 1

    @pipeline.sensor(interval="30s", timeout="0.2s", target=["thing"])
    def hanging(context: Any, cursor: str | None) -> fs.SensorResult:
        calls.append(context.now)
        release.wait(DEADLINE)
        return fs.SensorResult(skip_reason="released")

    app = open_app(pipeline, sqlite_url)
    daemon = Daemon(app)
    try:
        daemon.tick(now=T0)
        report = daemon.tick(now=T0 + timedelta(seconds=30))  # the first call still hangs
        assert calls == [T0]
        assert errors(report, "hanging") == []
    finally:
        release.set()
        for thread in threading.enumerate():
            if thread.name == "flowstone-sensor-hanging":
                thread.join(DEADLINE)


# ---------------------------------------------------------------------- file arrival: local
def landing_pipeline(landing: Path, reads: list[str]) -> fs.Pipeline:
    pipeline = fs.Pipeline("landing")

    @pipeline.asset(partitioned_by=DAYS)
    def raw_events(context: fs.Context) -> str:
        reads.append(context.partition_key or "")
        return (landing / f"events_{context.partition_key}.csv").read_text()

    sensors.file_arrival(
        pipeline,
        name="landing",
        path=str(landing / "*.csv"),
        pattern=r"events_(\d{4}-\d{2}-\d{2})\.csv$",
        target=["raw_events"],
        interval="60s",
    )
    return pipeline


def test_file_arrival_runs_each_new_or_changed_file_once(
    tmp_path: Path, sqlite_url: str, open_app: AppFactory
) -> None:
    landing = tmp_path / "landing"
    landing.mkdir()
    (landing / "events_2025-01-14.csv").write_text("id\n1\n")
    (landing / "events_2025-01-15.csv").write_text("id\n2\n")
    (landing / "README.csv").write_text("not a partition\n")  # matches the glob, not the pattern
    (landing / "events_2025-01-16.txt").write_text("other\n")  # not the glob
    reads: list[str] = []
    app = open_app(landing_pipeline(landing, reads), sqlite_url)
    daemon = Daemon(app)

    report = daemon.tick(now=T0)
    assert run_partitions(app, launched(report, "landing"), "raw_events") == ["2025-01-14", "2025-01-15"]
    assert app.load("raw_events", partition="2025-01-15") == "id\n2\n"
    assert json.loads(state_of(app, "landing").cursor or "")["v"] == 1

    report = daemon.tick(now=T0 + timedelta(seconds=60))
    assert launched(report, "landing") == []
    assert skipped(report, "landing") == [
        f"3 file(s) at {landing}/*.csv, none new; 1 not matching the pattern"
    ]

    (landing / "events_2025-01-16.csv").write_text("id\n3\n")
    (landing / "events_2025-01-15.csv").write_text("id\n2\n22\n")  # rewritten: new data for the day
    report = daemon.tick(now=T0 + timedelta(seconds=120))
    assert run_partitions(app, launched(report, "landing"), "raw_events") == ["2025-01-15", "2025-01-16"]
    assert app.load("raw_events", partition="2025-01-15") == "id\n2\n22\n"  # forced: run again
    assert sorted(reads) == ["2025-01-14", "2025-01-15", "2025-01-15", "2025-01-16"]

    # A daemon that died before saving its cursor: the same files are found again, and their
    # request keys (path + version) are claimed already, so nothing runs twice.
    AutomationStore(app.store, app.tenant).save("sensor", "landing", cursor=None)
    report = daemon.tick(now=T0 + timedelta(seconds=180))
    assert launched(report, "landing") == [] and errors(report, "landing") == []
    assert len(reads) == 4
    assert state_of(app, "landing").cursor is not None  # and the cursor is whole again
    report = daemon.tick(now=T0 + timedelta(seconds=240))
    assert skipped(report, "landing") == [
        f"4 file(s) at {landing}/*.csv, none new; 1 not matching the pattern"
    ]


def test_file_arrival_waits_for_min_age_on_the_fake_clock(
    tmp_path: Path, sqlite_url: str, open_app: AppFactory, clock: FakeClock
) -> None:
    landing = tmp_path / "landing"
    landing.mkdir()
    pipeline = fs.Pipeline("landing")

    @pipeline.asset(partitioned_by=DAYS)
    def raw(context: fs.Context) -> str:
        return (landing / f"{context.partition_key}.json").read_text()

    sensors.file_arrival(
        pipeline,
        name="settled",
        path=str(landing),  # a directory: everything under it
        pattern=r"(?P<partition>\d{4}-\d{2}-\d{2})\.json$",
        target=["raw"],
        min_age="2m",
        interval="30s",
    )
    written = landing / "2025-01-15.json"
    written.write_text("{}")
    stamp = (T0 - timedelta(seconds=30)).timestamp()
    os.utime(written, (stamp, stamp))  # modified 30 s before the fake now
    app = open_app(pipeline, sqlite_url)
    daemon = Daemon(app)
    report = daemon.tick()
    assert launched(report, "settled") == []
    assert skipped(report, "settled") == [f"1 file(s) at {landing}, none new; 1 younger than min_age"]
    clock.advance(60)
    assert launched(daemon.tick(), "settled") == []
    clock.advance(30)  # now 2 min after the write
    report = daemon.tick()
    assert run_partitions(app, launched(report, "settled"), "raw") == ["2025-01-15"]


# ---------------------------------------------------------------------- file arrival: S3
@dataclass
class S3:
    endpoint_url: str
    client: Any

    def storage_options(self) -> dict[str, Any]:
        return {
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"endpoint_url": self.endpoint_url, "region_name": REGION},
            "config_kwargs": {"retries": {"max_attempts": 1, "mode": "standard"}},
            "skip_instance_cache": True,
        }

    def bucket(self) -> str:
        name = f"fs-sensor-{uuid.uuid4().hex[:12]}"
        self.client.create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    """A moto S3 server on 127.0.0.1 (as in tests/integration/io/conftest.py)."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name=REGION,
        )
        yield S3(endpoint, client)
    finally:
        server.stop()


def test_file_arrival_on_s3_adds_dynamic_partitions_and_runs_them(
    s3: S3, sqlite_url: str, open_app: AppFactory
) -> None:
    bucket = s3.bucket()
    options = s3.storage_options()
    exports = fs.DynamicPartitions("exports")
    pipeline = fs.Pipeline("exports")

    @pipeline.asset(partitioned_by=exports)
    def raw_exports(context: fs.Context) -> int:
        found = s3.client.get_object(Bucket=bucket, Key=f"exports/export-{context.partition_key}.csv")
        return len(found["Body"].read().splitlines()) - 1

    sensors.file_arrival(
        pipeline,
        name="new_exports",
        path=f"s3://{bucket}/exports/*.csv",
        pattern=r"export-(\d{4}-\d{2}-\d{2})\.csv$",
        target=["raw_exports"],
        storage_options=options,
        dynamic_partitions="exports",
    )
    s3.client.put_object(Bucket=bucket, Key="exports/export-2025-01-14.csv", Body=b"id\n1\n")
    s3.client.put_object(Bucket=bucket, Key="exports/export-2025-01-15.csv", Body=b"id\n1\n2\n")
    s3.client.put_object(Bucket=bucket, Key="elsewhere/export-2025-01-20.csv", Body=b"id\n")
    app = open_app(pipeline, sqlite_url)
    daemon = Daemon(app)

    report = daemon.tick(now=T0)
    assert errors(report, "new_exports") == []
    assert app.store.dynamic_partition_keys(tenant="default", name="exports") == ["2025-01-14", "2025-01-15"]
    assert run_partitions(app, launched(report, "new_exports"), "raw_exports") == ["2025-01-14", "2025-01-15"]
    assert app.load("raw_exports", partition="2025-01-15") == 2
    keys = sorted(t.tick_key for t in ticks_of(app, "new_exports"))
    assert [k.split("@")[0] for k in keys] == ["2025-01-14", "2025-01-15"]

    report = daemon.tick(now=T0 + timedelta(seconds=60))
    assert launched(report, "new_exports") == []

    # A new object is a new partition; an overwritten one (new etag) runs its partition again.
    s3.client.put_object(Bucket=bucket, Key="exports/export-2025-01-16.csv", Body=b"id\n1\n2\n3\n")
    s3.client.put_object(Bucket=bucket, Key="exports/export-2025-01-14.csv", Body=b"id\n1\n2\n3\n4\n")
    report = daemon.tick(now=T0 + timedelta(seconds=120))
    assert run_partitions(app, launched(report, "new_exports"), "raw_exports") == ["2025-01-14", "2025-01-16"]
    assert app.store.dynamic_partition_keys(tenant="default", name="exports") == [
        "2025-01-14",
        "2025-01-15",
        "2025-01-16",
    ]
    assert app.load("raw_exports", partition="2025-01-14") == 4
    assert app.load("raw_exports", partition="2025-01-16") == 3


def test_file_arrival_on_a_missing_bucket_is_a_recorded_error(
    s3: S3, sqlite_url: str, open_app: AppFactory
) -> None:
    pipeline = fs.Pipeline("exports")
    bucket = f"no-such-bucket-{uuid.uuid4().hex[:8]}"

    @pipeline.asset()
    def loaded(context: fs.Context) -> int:
        return 1

    for name, path in (("by_glob", f"s3://{bucket}/x/*.csv"), ("by_prefix", f"s3://{bucket}/x/")):
        sensors.file_arrival(
            pipeline, name=name, path=path, target=["loaded"], storage_options=s3.storage_options()
        )
    app = open_app(pipeline, sqlite_url)
    report = Daemon(app).tick(now=T0)
    for name, path in (("by_glob", f"s3://{bucket}/x/*.csv"), ("by_prefix", f"s3://{bucket}/x/")):
        text = f"FileNotFoundError: bucket '{bucket}' of {path} does not exist"
        assert errors(report, name) == [text]
        assert state_of(app, name).last_error == text
    assert report.launched == []


# ---------------------------------------------------------------------- asset materialized
def chain_pipeline(c_runs: list[str], *, require: str) -> fs.Pipeline:
    pipeline = fs.Pipeline("chain")
    regions = fs.StaticPartitions(["eu", "us", "apac"])

    @pipeline.asset(partitioned_by=regions)
    def a(context: fs.Context) -> str:
        return f"a-{context.partition_key}"

    @pipeline.asset(partitioned_by=regions)
    def b(context: fs.Context) -> str:
        return f"b-{context.partition_key}"

    @pipeline.asset(partitioned_by=regions)
    def c(context: fs.Context, a: str, b: str) -> str:
        c_runs.append(context.partition_key or "")
        return a + b

    sensors.asset_materialized(pipeline, name="refresh_c", upstream=["a", "b"], target=["c"], require=require)
    return pipeline


def test_asset_materialized_requests_the_partitions_that_changed(
    sqlite_url: str, open_app: AppFactory
) -> None:
    c_runs: list[str] = []
    app = open_app(chain_pipeline(c_runs, require="any"), sqlite_url)
    app.materialize(["a", "b"], partitions=["eu", "us"]).raise_on_failure()
    daemon = Daemon(app)

    report = daemon.tick(now=T0)  # first evaluation: what exists already is not new
    assert launched(report, "refresh_c") == [] and c_runs == []
    assert skipped(report, "refresh_c")[0].startswith("first evaluation")

    app.materialize(["a"], partition="eu", force=True).raise_on_failure()
    app.materialize(["b"], partition="us", force=True).raise_on_failure()
    report = daemon.tick(now=T0 + timedelta(seconds=30))
    assert run_partitions(app, launched(report, "refresh_c"), "c") == ["eu", "us"]
    assert sorted(c_runs) == ["eu", "us"]

    report = daemon.tick(now=T0 + timedelta(seconds=60))
    assert launched(report, "refresh_c") == []
    assert skipped(report, "refresh_c") == ["no new materializations of ['a', 'b']"]

    # c's own run materializes the missing upstream b/apac: that is not news to this sensor.
    store = AutomationStore(app.store, app.tenant)
    before = state_of(app, "refresh_c").cursor
    app.materialize(["a"], partition="apac").raise_on_failure()
    report = daemon.tick(now=T0 + timedelta(seconds=90))
    assert run_partitions(app, launched(report, "refresh_c"), "c") == ["apac"]
    assert successes(app, "b") == 4  # eu, us, us again, and apac by the sensor's run
    report = daemon.tick(now=T0 + timedelta(seconds=120))
    assert launched(report, "refresh_c") == []
    assert sorted(c_runs) == ["apac", "eu", "us"]

    # A daemon that died before saving the cursor: evaluated again from the cursor it had, the
    # same materializations give the same request key, which was launched already.
    store.save("sensor", "refresh_c", cursor=before)
    report = daemon.tick(now=T0 + timedelta(seconds=150))
    assert launched(report, "refresh_c") == [] and errors(report, "refresh_c") == []
    assert sorted(c_runs) == ["apac", "eu", "us"]
    assert state_of(app, "refresh_c").cursor != before


def test_asset_materialized_all_waits_for_every_upstream(sqlite_url: str, open_app: AppFactory) -> None:
    c_runs: list[str] = []
    app = open_app(chain_pipeline(c_runs, require="all"), sqlite_url)
    daemon = Daemon(app)
    daemon.tick(now=T0)  # nothing materialized yet: the baseline is empty

    app.materialize(["a"], partitions=["eu", "us"]).raise_on_failure()
    report = daemon.tick(now=T0 + timedelta(seconds=30))
    assert launched(report, "refresh_c") == []
    assert skipped(report, "refresh_c") == [
        "2 new materialization(s); 2 partition(s) waiting for all of ['a', 'b']"
    ]

    app.materialize(["b"], partition="us").raise_on_failure()
    report = daemon.tick(now=T0 + timedelta(seconds=60))
    assert run_partitions(app, launched(report, "refresh_c"), "c") == ["us"]
    assert json.loads(state_of(app, "refresh_c").cursor or "")["pending"].keys() == {"eu"}

    # The pending partition survives a restart: it is in the cursor.
    app.close()
    app = open_app(chain_pipeline(c_runs, require="all"), sqlite_url)
    app.materialize(["b"], partition="eu").raise_on_failure()
    report = Daemon(app).tick(now=T0 + timedelta(seconds=90))
    assert run_partitions(app, launched(report, "refresh_c"), "c") == ["eu"]
    assert sorted(c_runs) == ["eu", "us"]


def test_asset_materialized_into_an_unpartitioned_target_or_a_chosen_partition(
    sqlite_url: str, open_app: AppFactory
) -> None:
    pipeline = fs.Pipeline("rollup")
    summaries: list[int] = []
    weekly: list[str] = []

    @pipeline.asset(partitioned_by=DAYS)
    def daily(context: fs.Context) -> int:
        return 1

    @pipeline.asset()
    def summary(context: fs.Context) -> int:
        summaries.append(1)
        return len(summaries)

    @pipeline.asset(partitioned_by=fs.StaticPartitions(["2025-W03", "2025-W04"]))
    def week(context: fs.Context) -> str:
        weekly.append(context.partition_key or "")
        return context.partition_key or ""

    def week_of(mat: fs.Materialization) -> str | None:
        day = datetime.fromisoformat(mat.partition_key or "")
        return f"{day.isocalendar().year}-W{day.isocalendar().week:02d}" if mat.asset == "daily" else None

    sensors.asset_materialized(pipeline, name="resummarize", upstream="daily", target=["summary"])
    sensors.asset_materialized(pipeline, name="weekly", upstream="daily", target=["week"], partitions=week_of)
    app = open_app(pipeline, sqlite_url)
    daemon = Daemon(app)
    daemon.tick(now=T0)
    app.materialize(["daily"], partitions=["2025-01-14", "2025-01-15", "2025-01-20"]).raise_on_failure()
    report = daemon.tick(now=T0 + timedelta(seconds=30))
    assert len(launched(report, "resummarize")) == 1  # one run for the three new partitions
    assert summaries == [1]
    assert run_partitions(app, launched(report, "weekly"), "week") == ["2025-W03", "2025-W04"]
    assert sorted(weekly) == ["2025-W03", "2025-W04"]


# ---------------------------------------------------------------------- database change
def test_database_change_runs_when_the_watermark_moves(pg_url: str, open_app: AppFactory) -> None:
    source = sa.create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
    with source.begin() as conn:
        conn.execute(
            sa.text("CREATE TABLE source_orders (id serial PRIMARY KEY, updated_at timestamptz NOT NULL)")
        )
    pipeline = fs.Pipeline("orders")
    days: list[str] = []

    @pipeline.asset(partitioned_by=DAYS)
    def orders_daily(context: fs.Context) -> int:
        days.append(context.partition_key or "")
        with source.connect() as conn:
            return int(
                conn.execute(
                    sa.text("SELECT count(*) FROM source_orders WHERE updated_at::date = CAST(:day AS date)"),
                    {"day": context.partition_key},
                ).scalar_one()
            )

    sensors.database_change(
        pipeline,
        name="orders_changed",
        url=pg_url,
        query="SELECT max(updated_at) FROM source_orders",
        target=["orders_daily"],
        partitions=lambda value: value.astimezone(UTC).date().isoformat(),
    )

    def insert(at: datetime) -> None:
        with source.begin() as conn:
            conn.execute(sa.text("INSERT INTO source_orders (updated_at) VALUES (:at)"), {"at": at})

    app = open_app(pipeline, pg_url)
    daemon = Daemon(app)
    try:
        report = daemon.tick(now=T0)  # an empty table: NULL is the first watermark
        assert skipped(report, "orders_changed") == ["first evaluation: watermark is null"]

        insert(datetime(2025, 1, 14, 9, 0, tzinfo=UTC))
        report = daemon.tick(now=T0 + timedelta(seconds=60))
        assert run_partitions(app, launched(report, "orders_changed"), "orders_daily") == ["2025-01-14"]
        assert (
            json.loads(state_of(app, "orders_changed").cursor or "")["value"] == "2025-01-14T09:00:00+00:00"
        )

        report = daemon.tick(now=T0 + timedelta(seconds=120))
        assert launched(report, "orders_changed") == []
        assert skipped(report, "orders_changed") == ['watermark unchanged ("2025-01-14T09:00:00+00:00")']

        insert(datetime(2025, 1, 14, 18, 0, tzinfo=UTC))  # the same day moves on
        report = daemon.tick(now=T0 + timedelta(seconds=180))
        assert run_partitions(app, launched(report, "orders_changed"), "orders_daily") == ["2025-01-14"]
        assert app.load("orders_daily", partition="2025-01-14") == 2  # forced: ran again
        insert(datetime(2025, 1, 15, 1, 0, tzinfo=UTC))
        report = daemon.tick(now=T0 + timedelta(seconds=240))
        assert run_partitions(app, launched(report, "orders_changed"), "orders_daily") == ["2025-01-15"]
        assert days == ["2025-01-14", "2025-01-14", "2025-01-15"]
    finally:
        source.dispose()


def test_database_change_with_a_bad_query_is_a_recorded_error(sqlite_url: str, open_app: AppFactory) -> None:
    pipeline = fs.Pipeline("orders")

    @pipeline.asset()
    def orders(context: fs.Context) -> int:
        return 1

    sensors.database_change(
        pipeline,
        name="broken_query",
        url=sqlite_url,
        query="SELECT max(x) FROM no_such_table",
        target=["orders"],
    )
    app = open_app(pipeline, sqlite_url)
    report = Daemon(app).tick(now=T0)
    [text] = errors(report, "broken_query")
    assert text.startswith("OperationalError") and "no_such_table" in text
    assert state_of(app, "broken_query").cursor is None


# ---------------------------------------------------------------------- HTTP poll
@dataclass
class StatusPage:
    """What the local server answers: ``status`` and ``body`` (JSON), changed by the test."""

    url: str = ""
    status: int = 200
    body: dict[str, Any] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)


@pytest.fixture
def status_page() -> Iterator[StatusPage]:
    page = StatusPage()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            page.requests.append(self.path)
            data = json.dumps(page.body).encode()
            self.send_response(page.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    page.url = f"http://127.0.0.1:{server.server_address[1]}/status"
    try:
        yield page
    finally:
        server.shutdown()
        server.server_close()
        thread.join(DEADLINE)


def test_http_poll_runs_once_per_new_ready_answer(
    status_page: StatusPage, sqlite_url: str, open_app: AppFactory
) -> None:
    pipeline = fs.Pipeline("exports")

    @pipeline.asset(partitioned_by=DAYS)
    def export(context: fs.Context) -> str:
        return context.partition_key or ""

    sensors.http_poll(
        pipeline,
        name="export_ready",
        url=status_page.url,
        params={"job": "export"},
        predicate=lambda response: response.status_code == 200 and response.json()["ready"],
        partitions=lambda response: response.json()["date"],
        target=["export"],
        interval="60s",
    )
    app = open_app(pipeline, sqlite_url)
    daemon = Daemon(app)
    now = T0

    def tick() -> PassReport:
        nonlocal now
        report = daemon.tick(now=now)
        now += timedelta(seconds=60)
        return report

    status_page.body = {"ready": False, "date": "2025-01-14"}
    report = tick()
    assert skipped(report, "export_ready") == ["HTTP 200: the predicate does not hold"]
    status_page.body = {"ready": True, "date": "2025-01-14"}
    report = tick()
    assert run_partitions(app, launched(report, "export_ready"), "export") == ["2025-01-14"]
    report = tick()
    assert launched(report, "export_ready") == []
    assert skipped(report, "export_ready") == ["HTTP 200: nothing new since the last run"]
    status_page.status = 503  # an outage is a false predicate here, not an error
    report = tick()
    assert skipped(report, "export_ready") == ["HTTP 503: the predicate does not hold"]
    status_page.status = 200
    assert launched(tick(), "export_ready") == []  # the same answer as before the outage
    status_page.body = {"ready": True, "date": "2025-01-15"}
    report = tick()
    assert run_partitions(app, launched(report, "export_ready"), "export") == ["2025-01-15"]
    assert status_page.requests == ["/status?job=export"] * 6


def test_http_poll_network_error_is_recorded(sqlite_url: str, open_app: AppFactory) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    pipeline = fs.Pipeline("exports")

    @pipeline.asset()
    def export(context: fs.Context) -> int:
        return 1

    sensors.http_poll(pipeline, name="down", url=f"http://127.0.0.1:{port}/", target=["export"])
    app = open_app(pipeline, sqlite_url)
    report = Daemon(app).tick(now=T0)
    [text] = errors(report, "down")
    assert text.startswith("ConnectError")
    assert state_of(app, "down").last_error == text


# ---------------------------------------------------------------------- run status
def test_run_status_reacts_to_failed_runs(sqlite_url: str, open_app: AppFactory) -> None:
    pipeline = fs.Pipeline("reports")
    regions = fs.StaticPartitions(["eu", "us"])
    broken = {"us"}
    alerts: list[str] = []
    notified: list[tuple[str, str]] = []
    pager_down = [True]

    @pipeline.asset(partitioned_by=regions)
    def daily_report(context: fs.Context) -> str:
        if context.partition_key in broken:
            raise RuntimeError(f"no data for {context.partition_key}")
        return "ok"

    @pipeline.asset(partitioned_by=regions)
    def failure_log(context: fs.Context) -> str:
        alerts.append(context.partition_key or "")
        return "logged"

    @pipeline.asset()
    def other(context: fs.Context) -> int:
        raise RuntimeError("unrelated")

    def page(run: fs.RunRecord, context: Any) -> None:
        if pager_down[0]:
            pager_down[0] = False
            raise ConnectionError("pager unreachable")
        notified.append((run.id, str(run.status)))

    sensors.run_status(
        pipeline, name="log_failures", status="failed", of=["daily_report"], target=["failure_log"]
    )
    sensors.run_status(pipeline, name="page_on_failure", status="failed", of="daily_report", notify=page)
    app = open_app(pipeline, sqlite_url)
    app.materialize(["daily_report"], partitions=["us"])  # before the sensors' first look: old news
    daemon = Daemon(app)
    report = daemon.tick(now=T0)
    assert launched(report, "log_failures") == [] and notified == []

    failed = app.materialize(["daily_report"], partitions=["eu", "us"], force=True)
    assert failed.status is fs.RunStatus.FAILED
    app.materialize(["other"])  # failed, but not a run of daily_report
    broken.clear()
    app.materialize(["daily_report"], partition="us").raise_on_failure()  # succeeded: not watched
    report = daemon.tick(now=T0 + timedelta(seconds=30))
    assert run_partitions(app, launched(report, "log_failures"), "failure_log") == ["eu", "us"]
    [request_tick] = ticks_of(app, "log_failures")
    assert request_tick.tick_key == f"run:{failed.run_id}@{failed.finished_at.isoformat()}"
    # The pager was down: recorded as the sensor's error, and tried again next time.
    [text] = errors(report, "page_on_failure")
    assert "pager unreachable" in text
    assert notified == []
    assert [t.status for t in ticks_of(app, "page_on_failure") if t.tick_key.startswith("notify:")] == [
        "failed"
    ]

    report = daemon.tick(now=T0 + timedelta(seconds=60))
    assert errors(report, "page_on_failure") == []
    assert notified == [(failed.run_id, "failed")]
    assert launched(report, "log_failures") == []
    report = daemon.tick(now=T0 + timedelta(seconds=90))
    assert notified == [(failed.run_id, "failed")]
    assert sorted(alerts) == ["eu", "us"]
    notify_ticks = [t for t in ticks_of(app, "page_on_failure") if t.tick_key.startswith("notify:")]
    assert [(t.status, t.run_ids, t.reason) for t in notify_ticks] == [
        ("launched", [failed.run_id], "notified")
    ]


def test_run_status_ignores_the_runs_it_launched(sqlite_url: str, open_app: AppFactory) -> None:
    pipeline = fs.Pipeline("reports")
    attempts: list[str] = []

    @pipeline.asset()
    def flaky(context: fs.Context) -> int:
        attempts.append(context.run_id)
        raise RuntimeError("still broken")

    # Retry any failed run by running flaky again: its own failed retries must not retrigger it.
    sensors.run_status(pipeline, name="retry_failed", status=["failed", "abandoned"], target=["flaky"])
    app = open_app(pipeline, sqlite_url)
    daemon = Daemon(app)
    daemon.tick(now=T0)
    first = app.materialize(["flaky"])
    report = daemon.tick(now=T0 + timedelta(seconds=30))
    [retry] = launched(report, "retry_failed")
    assert app.run(retry) is not None and app.run(retry)[0].status is fs.RunStatus.FAILED  # type: ignore[index]
    for step in (2, 3):
        assert launched(daemon.tick(now=T0 + timedelta(seconds=30 * step)), "retry_failed") == []
    assert attempts == [first.run_id, retry]
