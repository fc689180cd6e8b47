"""Declarative automation evaluated by the daemon: eager(), on_cron(...), freshness(...).

Every time-based behaviour runs on a FakeClock; the daemon launches runs in its own process
(serial executor), so one ``Daemon.tick`` evaluates the conditions and runs what they ask for.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import flowstone as fs
from flowstone._events import Event
from flowstone.schedules import Daemon, PassReport
from flowstone.schedules._automation import (
    ASSET_FRESH,
    ASSET_OVERDUE,
    AutomationEvaluator,
    AutomationRequest,
    check_condition,
    eager,
    freshness,
    on_cron,
    overdue_assets,
)
from flowstone.schedules._state import AutomationStore
from flowstone.store import _tables as t
from flowstone.testing import FakeClock

START = datetime(2025, 3, 10, 10, 30, tzinfo=UTC)
DAYS = ["2025-01-01", "2025-01-02", "2025-01-03"]
Calls = list[tuple[str, str | None]]


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator[Callable[..., fs.FlowStone]]:
    apps: list[fs.FlowStone] = []

    def make(
        pipeline: fs.Pipeline, *, store: str | None = None, clock: FakeClock | None = None, **options: Any
    ) -> fs.FlowStone:
        app = fs.FlowStone(
            pipeline,
            store=store or f"sqlite:///{tmp_path}/db",
            storage_dir=tmp_path / "storage",
            clock=clock or FakeClock(START),
            **options,
        )
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


def launched(report: PassReport) -> list[str]:
    assert not report.errors, report.errors
    return sorted(name for kind, name, _ in report.launched if kind == "automation")


def until_quiet(daemon: Daemon, *, limit: int = 10) -> list[list[str]]:
    """Daemon passes until one launches nothing: the assets launched by each pass."""
    passes: list[list[str]] = []
    for _ in range(limit):
        names = launched(daemon.tick())
        if not names:
            return passes
        passes.append(names)
    raise AssertionError(f"the daemon never went quiet: {passes}")


def ticks(app: fs.FlowStone, asset: str) -> list[tuple[str, list[Any]]]:
    """(status, partitions) of the automation ticks of ``asset``, oldest first."""
    found = AutomationStore(app.store, app.tenant).ticks("automation", asset)
    return [(tick.status, tick.partitions) for tick in reversed(found)]


def evaluate(evaluator: AutomationEvaluator, now: datetime = START) -> list[AutomationRequest]:
    """One evaluation whose requests are then claimed, as the daemon claims them."""
    requests = evaluator.evaluate(now)
    for request in requests:
        evaluator.state_store.claim_tick("automation", request.name, request.key, now, daemon_id="test")
    return requests


def requested(evaluator: AutomationEvaluator, now: datetime = START) -> dict[str, list[str]]:
    return {r.name: list(r.partitions) for r in evaluate(evaluator, now)}


def diamond(
    calls: Calls,
    *,
    partitions: fs.PartitionsDefinition | None = None,
    failing: set[str] | None = None,
    automation: Any = None,
) -> fs.Pipeline:
    """a -> (b, c) -> d; b, c and d eager (or ``automation``)."""
    failing = failing if failing is not None else set()
    condition = automation if automation is not None else eager()
    pipeline = fs.Pipeline("diamond")

    def record(name: str, context: fs.Context) -> None:
        calls.append((name, context.partition_key))
        if name in failing:
            raise RuntimeError(f"{name} is broken")

    @pipeline.asset(partitioned_by=partitions)
    def a(context: fs.Context) -> int:
        record("a", context)
        return 1

    @pipeline.asset(partitioned_by=partitions, automation=condition)
    def b(context: fs.Context, a: int) -> int:
        record("b", context)
        return a + 1

    @pipeline.asset(partitioned_by=partitions, automation=condition)
    def c(context: fs.Context, a: int) -> int:
        record("c", context)
        return a * 2

    @pipeline.asset(partitioned_by=partitions, automation=condition)
    def d(context: fs.Context, b: int, c: int) -> int:
        record("d", context)
        return b + c

    return pipeline


def started(calls: Calls, clear: bool = True) -> list[tuple[str, str | None]]:
    found = sorted(calls)
    if clear:
        calls.clear()
    return found


# ---------------------------------------------------------------------- definitions
def test_conditions_are_checked_when_the_asset_is_defined() -> None:
    assert check_condition(eager()) is None
    assert check_condition([on_cron("0 6 * * *", timezone="Europe/Oslo"), freshness("6h")]) is None
    assert check_condition("eager") is not None
    assert check_condition([]) is not None
    assert "at most one" in (check_condition([eager(), on_cron("0 * * * *")]) or "")
    assert "at most one" in (check_condition([freshness("1h"), freshness("2h")]) or "")
    assert freshness("1h30m").max_lag == timedelta(minutes=90)
    with pytest.raises(ValueError, match="cron"):
        on_cron("every day")
    with pytest.raises(ValueError, match="timezone"):
        on_cron("0 6 * * *", timezone="Mars/Olympus")
    with pytest.raises(ValueError, match="duration"):
        freshness("soon")

    pipeline = fs.Pipeline("bad")
    with pytest.raises(fs.DefinitionError, match="automation: at most one of eager"):

        @pipeline.asset(automation=[eager(), on_cron("0 * * * *")])
        def x(context: fs.Context) -> int:
            return 1


# ---------------------------------------------------------------------- eager
def test_eager_diamond_runs_each_downstream_asset_once(
    make_app: Callable[..., fs.FlowStone], store_url: str
) -> None:
    calls: Calls = []
    app = make_app(diamond(calls), store=store_url)
    daemon = Daemon(app)
    assert until_quiet(daemon) == []  # the first pass only takes its position

    app.materialize(["a"])
    assert started(calls) == [("a", None)]
    # b and c after a; d once, after both (not once per side); then nothing more.
    assert until_quiet(daemon) == [["b", "c"], ["d"]]
    assert started(calls) == [("b", None), ("c", None), ("d", None)]
    assert launched(daemon.tick()) == []
    assert [status for status, _ in ticks(app, "d")] == ["launched"]
    assert app.store.partition_state(tenant=app.tenant, asset="d", partition_key=None) is not None


def test_eager_runs_again_when_the_upstream_changes_again(make_app: Callable[..., fs.FlowStone]) -> None:
    calls: Calls = []
    app = make_app(diamond(calls))
    daemon = Daemon(app)
    daemon.tick()
    app.materialize(["a"])
    assert until_quiet(daemon) == [["b", "c"], ["d"]]
    calls.clear()

    app.materialize(["a"], force=True)
    assert until_quiet(daemon) == [["b", "c"], ["d"]]
    assert started(calls) == [("a", None), ("b", None), ("c", None), ("d", None)]
    # Materializing d by hand changes nothing downstream of it: quiet.
    app.materialize(["d"], force=True)
    assert until_quiet(daemon) == []


def test_a_failing_upstream_blocks_its_eager_downstream(make_app: Callable[..., fs.FlowStone]) -> None:
    calls: Calls = []
    failing = {"b"}
    app = make_app(diamond(calls, failing=failing))
    daemon = Daemon(app)
    daemon.tick()
    app.materialize(["a"])
    report = daemon.tick()
    assert launched(report) == ["b", "c"]  # b's run fails, c's succeeds

    # c succeeded, but d reads b, whose latest attempt failed: d waits.
    assert until_quiet(daemon) == []
    assert ("d", None) not in calls
    evaluator = daemon._evaluator
    assert isinstance(evaluator, AutomationEvaluator)
    assert ticks(app, "d") == []

    # b fixed and materialized by hand: now d runs, once.
    failing.clear()
    app.materialize(["b"])
    calls.clear()
    assert until_quiet(daemon) == [["d"]]
    assert started(calls) == [("d", None)]


def test_the_blocking_reason_is_reported(make_app: Callable[..., fs.FlowStone]) -> None:
    calls: Calls = []
    app = make_app(diamond(calls, failing={"b"}))
    evaluator = AutomationEvaluator(app)
    evaluate(evaluator)
    app.materialize(["a"])
    assert sorted(r.name for r in evaluate(evaluator)) == ["b", "c"]
    app.materialize(["c"])
    assert not app.materialize(["b"]).success
    # c's success would ask for d, but b is failing (and a failure asks for nothing).
    assert evaluate(evaluator) == []
    assert evaluator.last_pass.blocked == [("d", None, "upstream 'b' is failing")]


def test_a_downstream_waits_for_an_upstream_requested_in_the_same_pass(
    make_app: Callable[..., fs.FlowStone],
) -> None:
    """a -> b -> d and a -> d: d runs once, after b, not once for a and once for b."""
    calls: Calls = []
    pipeline = fs.Pipeline("triangle")

    @pipeline.asset
    def a(context: fs.Context) -> int:
        return 1

    @pipeline.asset(automation=eager())
    def b(context: fs.Context, a: int) -> int:
        calls.append(("b", None))
        return a

    @pipeline.asset(automation=eager())
    def d(context: fs.Context, a: int, b: int) -> int:
        calls.append(("d", None))
        return a + b

    app = make_app(pipeline)
    daemon = Daemon(app)
    daemon.tick()
    app.materialize(["a"])
    assert until_quiet(daemon) == [["b"], ["d"]]
    assert calls == [("b", None), ("d", None)]
    evaluator = daemon._evaluator
    assert isinstance(evaluator, AutomationEvaluator)


def test_several_changed_partitions_go_into_one_run_per_asset(make_app: Callable[..., fs.FlowStone]) -> None:
    calls: Calls = []
    days = fs.DailyPartitions(start="2025-01-01", end="2025-01-04")
    app = make_app(diamond(calls, partitions=days))
    evaluator = AutomationEvaluator(app)
    evaluator.evaluate(START)
    app.materialize(["a"], partitions=DAYS)
    requests = evaluate(evaluator)
    assert [(r.name, list(r.partitions), r.force) for r in requests] == [
        ("b", DAYS, True),
        ("c", DAYS, True),
    ]
    # The daemon launches them: d's request comes after both, with the three days in one run.
    daemon = Daemon(app)
    daemon.tick()
    for request in requests:
        app.materialize(list(request.selection), partitions=list(request.partitions))
    assert until_quiet(daemon) == [["d"]]
    assert ticks(app, "d") == [("launched", DAYS)]
    assert sorted(str(k) for name, k in calls if name == "d") == DAYS


def test_only_the_changed_upstream_partition_is_requested_downstream(
    make_app: Callable[..., fs.FlowStone],
) -> None:
    calls: Calls = []
    days = fs.DailyPartitions(start="2025-01-01", end="2025-01-04")
    app = make_app(diamond(calls, partitions=days))
    daemon = Daemon(app)
    daemon.tick()

    app.materialize(["a"], partition="2025-01-01")
    assert until_quiet(daemon) == [["b", "c"], ["d"]]
    assert started(calls) == [("a", d) for d in DAYS[:1]] + [(x, "2025-01-01") for x in "bcd"]

    app.materialize(["a"], partition="2025-01-02")
    assert until_quiet(daemon) == [["b", "c"], ["d"]]
    assert started(calls) == [(x, "2025-01-02") for x in "abcd"]
    assert ticks(app, "d") == [("launched", ["2025-01-01"]), ("launched", ["2025-01-02"])]

    # Re-materializing one partition that was done already: only that partition again.
    app.materialize(["a"], partition="2025-01-01", force=True)
    assert until_quiet(daemon) == [["b", "c"], ["d"]]
    assert started(calls) == [(x, "2025-01-01") for x in "abcd"]
    assert ticks(app, "b")[-1] == ("launched", ["2025-01-01"])


def test_partition_mappings_are_followed_from_upstream_to_downstream(
    make_app: Callable[..., fs.FlowStone],
) -> None:
    days = fs.DailyPartitions(start="2025-01-01", end="2025-01-05")
    hours = fs.HourlyPartitions(start="2025-01-01-00:00", end="2025-01-03-00:00")
    pipeline = fs.Pipeline("mapped")

    @pipeline.asset(partitioned_by=days)
    def raw(context: fs.Context) -> int:
        return 1

    @pipeline.asset(
        partitioned_by=days,
        automation=eager(),
        ins={"raw": fs.In(mapping=fs.TimeWindowMapping(start_offset=-1, end_offset=-1))},
    )
    def day_before(context: fs.Context, raw: int) -> int:
        return raw

    @pipeline.asset(partitioned_by=hours)
    def clicks(context: fs.Context) -> int:
        return 1

    @pipeline.asset(partitioned_by=days, automation=eager())
    def daily_clicks(context: fs.Context, clicks: dict[str, int]) -> int:
        return sum(clicks.values())

    @pipeline.asset(automation=eager())
    def total(context: fs.Context, raw: dict[str, int]) -> int:
        return sum(raw.values())

    app = make_app(pipeline)
    evaluator = AutomationEvaluator(app)
    evaluate(evaluator)

    app.materialize(["raw"], partition="2025-01-02")
    requests = requested(evaluator)
    # raw 01-02 is read by day_before 01-03; total (unpartitioned) reads every day, some missing.
    assert requests == {"day_before": ["2025-01-03"]}
    assert ("total", None, "upstream 'raw' [2025-01-01] is not materialized") in evaluator.last_pass.blocked

    app.materialize(["raw"], partitions=["2025-01-01", "2025-01-03", "2025-01-04"])
    requests = requested(evaluator)
    assert requests == {"day_before": ["2025-01-02", "2025-01-04"], "total": []}

    # 24 hourly partitions roll up into the day they belong to, and only that day.
    app.materialize(["clicks"], partitions=[f"2025-01-02T{h:02d}:00" for h in range(24)])
    requests = requested(evaluator)
    assert requests == {"daily_clicks": ["2025-01-02"]}


def test_static_and_multi_dimensional_mappings_are_followed(make_app: Callable[..., fs.FlowStone]) -> None:
    regions = fs.StaticPartitions(["eu", "us", "apac"])
    days = fs.DailyPartitions(start="2025-01-01", end="2025-01-04")
    by_region_and_day = fs.MultiPartitions({"region": regions, "date": days})
    pipeline = fs.Pipeline("mapped")

    @pipeline.asset(partitioned_by=regions)
    def sales(context: fs.Context) -> int:
        return 1

    @pipeline.asset(
        partitioned_by=fs.StaticPartitions(["west", "east"]),
        automation=eager(),
        ins={"sales": fs.In(mapping=fs.StaticMapping({"west": ["eu", "us"], "east": ["apac"]}))},
    )
    def market(context: fs.Context, sales: dict[str, int]) -> int:
        return sum(sales.values())

    @pipeline.asset(partitioned_by=days)
    def rates(context: fs.Context) -> int:
        return 1

    @pipeline.asset(partitioned_by=by_region_and_day, automation=eager())
    def local(context: fs.Context, rates: int) -> int:
        return rates

    app = make_app(pipeline)
    evaluator = AutomationEvaluator(app)
    evaluate(evaluator)
    app.materialize(["sales"], partitions=["eu", "us"])
    app.materialize(["rates"], partition="2025-01-02")
    assert requested(evaluator) == {
        "market": ["west"],
        "local": [by_region_and_day.key_of(region=r, date="2025-01-02") for r in ("eu", "us", "apac")],
    }
    app.materialize(["sales"], partition="apac")
    assert requested(evaluator) == {"market": ["east"]}


def test_an_event_committed_after_a_later_one_was_read_is_not_missed(
    make_app: Callable[..., fs.FlowStone],
) -> None:
    """PostgreSQL numbers events when they are inserted: a transaction can commit a lower id
    after a higher one was read. The evaluator looks for the ids it skipped again."""
    calls: Calls = []
    app = make_app(diamond(calls))
    evaluator = AutomationEvaluator(app)
    evaluate(evaluator)
    app.materialize(["a"])
    events = t.events
    with app.store.engine.begin() as conn:
        late = conn.execute(
            sa.select(events).where(events.c.type == "step.succeeded", events.c.asset == "a")
        ).one()
        conn.execute(events.delete().where(events.c.id == late.id))
    assert evaluate(evaluator) == []  # read the run's later events, not a's success
    with app.store.engine.begin() as conn:
        conn.execute(events.insert().values(**late._asdict()))  # the late commit
    assert requested(evaluator) == {"b": [], "c": []}


def test_the_first_evaluation_does_not_replay_the_past(make_app: Callable[..., fs.FlowStone]) -> None:
    calls: Calls = []
    app = make_app(diamond(calls))
    app.materialize(["a"])
    daemon = Daemon(app)
    assert until_quiet(daemon) == []


def test_a_change_launches_once_with_two_daemons_and_after_a_restart(
    make_app: Callable[..., fs.FlowStone],
) -> None:
    calls: Calls = []
    app = make_app(diamond(calls))
    first, second = Daemon(app), Daemon(app)
    first.tick()
    second.tick()
    app.materialize(["a"])
    calls.clear()
    assert launched(first.tick()) == ["b", "c"]
    # The second daemon evaluates the same change (its requests for b and c carry the same
    # keys: not launched again) and the successes of b and c: d.
    assert launched(second.tick()) == ["d"]
    assert launched(first.tick()) == []
    # A restarted daemon continues from the persisted position.
    assert until_quiet(Daemon(app)) == []
    assert until_quiet(second) == []
    assert sorted(calls) == [("b", None), ("c", None), ("d", None)]


def test_requests_not_claimed_before_a_crash_are_handed_out_again(
    make_app: Callable[..., fs.FlowStone],
) -> None:
    calls: Calls = []
    app = make_app(diamond(calls))
    AutomationEvaluator(app).evaluate(START)
    app.materialize(["a"])
    lost = AutomationEvaluator(app).evaluate(START)  # the daemon died before claiming these
    assert sorted(r.name for r in lost) == ["b", "c"]

    daemon = Daemon(app)
    assert until_quiet(daemon) == [["b", "c"], ["d"]]
    assert sorted(calls) == [("a", None), ("b", None), ("c", None), ("d", None)]


# ---------------------------------------------------------------------- on_cron
def test_on_cron_runs_after_the_tick_once_the_upstreams_are_updated(
    make_app: Callable[..., fs.FlowStone],
) -> None:
    calls: Calls = []
    clock = FakeClock(START)  # 10:30
    app = make_app(diamond(calls, automation=on_cron("0 * * * *")), clock=clock)
    daemon = Daemon(app)
    daemon.tick()  # next tick: 11:00
    app.materialize(["a"])
    calls.clear()
    assert until_quiet(daemon) == []  # before the tick

    clock.advance(40 * 60)  # 11:10: the 11:00 tick passed, a was updated before it
    assert until_quiet(daemon) == []
    app.materialize(["a"], force=True)  # updated after the tick
    assert until_quiet(daemon) == [["b", "c"], ["d"]]
    assert started(calls) == [("a", None), ("b", None), ("c", None), ("d", None)]
    assert until_quiet(daemon) == []  # once per tick

    clock.advance(60 * 60)  # 12:10: d waits for b and c, which wait for a
    assert until_quiet(daemon) == []
    app.materialize(["a"], force=True)
    assert until_quiet(daemon) == [["b", "c"], ["d"]]
    assert [status for status, _ in ticks(app, "d")] == ["launched", "launched"]


def test_on_cron_requests_the_partition_closed_by_the_tick(make_app: Callable[..., fs.FlowStone]) -> None:
    days = fs.DailyPartitions(start="2025-01-01", end="2025-12-31")
    pipeline = fs.Pipeline("daily")

    @pipeline.asset(partitioned_by=days, automation=on_cron("0 2 * * *"))
    def daily(context: fs.Context) -> str:
        return context.partition_key or ""

    clock = FakeClock(datetime(2025, 3, 10, 12, 0, tzinfo=UTC))
    app = make_app(pipeline, clock=clock)
    evaluator = AutomationEvaluator(app)
    assert evaluator.evaluate(clock.now()) == []
    clock.advance(13 * 3600)  # 2025-03-11 01:00
    assert evaluator.evaluate(clock.now()) == []
    clock.advance(3600)  # 02:00: no upstream, requested at the tick, for the day that closed
    (request,) = evaluator.evaluate(clock.now())
    assert (request.name, list(request.partitions)) == ("daily", ["2025-03-10"])
    assert request.key == "cron:2025-03-11T02:00:00+00:00"
    assert evaluator.evaluate(clock.now()) == [request]  # not claimed yet: handed out again
    AutomationStore(app.store, app.tenant).claim_tick(
        "automation", request.name, request.key, clock.now(), daemon_id="test"
    )
    assert evaluator.evaluate(clock.now()) == []


# ---------------------------------------------------------------------- freshness
class RecordingNotifier:
    def __init__(self) -> None:
        self.overdue: list[tuple[str, dict[str, Any]]] = []
        self.fresh: list[str] = []

    def notify(self, event: str, approval: Any, *, targets: Sequence[str] = ()) -> None:
        raise AssertionError("no approvals here")

    def notify_overdue(self, asset: str, details: dict[str, Any]) -> None:
        self.overdue.append((asset, details))

    def notify_fresh(self, asset: str, details: dict[str, Any]) -> None:
        self.fresh.append(asset)


def test_freshness_marks_an_asset_overdue_once_per_period(make_app: Callable[..., fs.FlowStone]) -> None:
    pipeline = fs.Pipeline("fresh")

    @pipeline.asset(automation=freshness(max_lag="6h"))
    def prices(context: fs.Context) -> int:
        return 1

    clock = FakeClock(START)
    notifier = RecordingNotifier()
    app = make_app(pipeline, clock=clock, notifier=notifier)
    emitted: list[Event] = []
    app.events.subscribe(emitted.append)
    daemon = Daemon(app)
    app.materialize(["prices"])
    daemon.tick()  # latest success: 10:30 (as the daemon's clock reads it)

    clock.advance(5 * 3600)
    daemon.tick()
    assert overdue_assets(app) == {}
    clock.advance(2 * 3600)  # 17:30: older than 6 hours
    daemon.tick()
    deadline = START + timedelta(hours=6)
    assert overdue_assets(app) == {"prices": deadline}
    clock.advance(3600)
    daemon.tick()  # still overdue: no second notification

    overdue = [e for e in emitted if e.type == ASSET_OVERDUE]
    assert [(e.asset, e.data["deadline"]) for e in overdue] == [("prices", deadline.isoformat())]
    assert [asset for asset, _ in notifier.overdue] == ["prices"]
    assert notifier.overdue[0][1]["max_lag_s"] == 6 * 3600
    stored = [e for e in app.store.list_events(tenant=app.tenant) if e["type"] == ASSET_OVERDUE]
    assert [(e["asset"], e["data"]["last_success_at"]) for e in stored] == [("prices", START.isoformat())]

    # A new success ends the overdue period; the next one is announced again.
    app.materialize(["prices"], force=True)
    daemon.tick()
    assert overdue_assets(app) == {}
    assert notifier.fresh == ["prices"]
    assert [e.type for e in emitted if e.type in (ASSET_OVERDUE, ASSET_FRESH)] == [ASSET_OVERDUE, ASSET_FRESH]
    clock.advance(6 * 3600 + 1)
    daemon.tick()
    assert [asset for asset, _ in notifier.overdue] == ["prices", "prices"]
    # A restarted daemon knows it is overdue already: no repeat.
    Daemon(app).tick()
    assert len(notifier.overdue) == 2


def test_freshness_of_an_asset_never_materialized_counts_from_when_watching_began(
    make_app: Callable[..., fs.FlowStone],
) -> None:
    pipeline = fs.Pipeline("never")

    @pipeline.asset(automation=[eager(), freshness(max_lag="1h")])
    def derived(context: fs.Context, source: int) -> int:
        return source

    @pipeline.asset
    def source(context: fs.Context) -> int:
        return 1

    clock = FakeClock(START)
    app = make_app(pipeline, clock=clock)
    evaluator = AutomationEvaluator(app)
    evaluator.evaluate(clock.now())
    clock.advance(3600)
    evaluator.evaluate(clock.now())
    assert evaluator.overdue == {}
    clock.advance(1)
    evaluator.evaluate(clock.now())
    assert evaluator.overdue == {"derived": START + timedelta(hours=1)}
