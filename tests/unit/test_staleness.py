"""Staleness: data versions, code versions and invalidation decide what ``stale=True`` recomputes.

The graph is a diamond ``a -> (b, c) -> d``, once unpartitioned and once partitioned by day, stored
with the filesystem I/O manager so a value's checksum is its data version. The value of ``a`` comes
from a dict the test changes; every asset call is recorded, so "recomputes exactly the stale ones"
is checked against what actually ran.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

import flowstone as fs

from .conftest import AppFactory

Step = tuple[str, str | None]
DAYS = fs.DailyPartitions(start="2025-01-01", end="2025-01-05")  # four days
ASSETS = ["a", "b", "c", "d"]


@dataclass
class Diamond:
    """``a -> (b, c) -> d``: what ``a`` returns, what failed, and which steps ran."""

    partitioned: bool
    values: dict[str | None, Any] = field(default_factory=dict)  # partition key -> a's value
    versions: dict[str | None, str] = field(default_factory=dict)  # key -> Output(data_version=...)
    failing: set[str] = field(default_factory=set)  # assets that raise
    calls: list[Step] = field(default_factory=list)

    @property
    def key(self) -> str | None:
        """The partition the tests work on."""
        return "2025-01-02" if self.partitioned else None

    def pipeline(self, *, code_versions: dict[str, str] | None = None) -> fs.Pipeline:
        """The diamond; call again with other ``code_versions`` for new code on the same store."""
        versions = code_versions or {}
        pipeline = fs.Pipeline("diamond")
        parts = DAYS if self.partitioned else None

        def record(context: fs.Context) -> None:
            if context.asset_name in self.failing:
                raise RuntimeError(f"{context.asset_name} broke")
            self.calls.append((context.asset_name, context.partition_key))

        @pipeline.asset(partitioned_by=parts, code_version=versions.get("a"))
        def a(context: fs.Context) -> Any:
            record(context)
            value = self.values.get(context.partition_key, 1)
            version = self.versions.get(context.partition_key)
            return value if version is None else fs.Output(value, data_version=version)

        @pipeline.asset(partitioned_by=parts, code_version=versions.get("b"))
        def b(context: fs.Context, a: int) -> int:
            record(context)
            return a + 1

        @pipeline.asset(partitioned_by=parts, code_version=versions.get("c"))
        def c(context: fs.Context, a: int) -> int:
            record(context)
            return a * 10

        @pipeline.asset(partitioned_by=parts, code_version=versions.get("d"))
        def d(context: fs.Context, b: int, c: int) -> int:
            record(context)
            return b + c

        return pipeline

    def steps(self, *assets: str) -> list[Step]:
        return [(asset, self.key) for asset in assets]


@pytest.fixture(params=[False, True], ids=["unpartitioned", "daily"])
def diamond(request: pytest.FixtureRequest) -> Diamond:
    return Diamond(partitioned=request.param)


def where(diamond: Diamond) -> dict[str, Any]:
    """The partition keyword for ``materialize`` / ``plan`` / ``invalidate``."""
    return {} if diamond.key is None else {"partition": diamond.key}


def stale_plan(app: fs.FlowStone, diamond: Diamond) -> list[Step]:
    return [s.key for s in app.plan("+d", stale=True, **where(diamond)).steps]


def counts(app: fs.FlowStone) -> dict[str, tuple[int, int, int, int]]:
    """Per asset: (fresh, stale, missing, failed); they always add up to the total."""
    found = {}
    for asset in ASSETS:
        s = app.status(asset)
        assert s.fresh + s.stale + s.missing + s.failed + s.running == s.total, s
        found[asset] = (s.fresh, s.stale, s.missing, s.failed)
    return found


def state(app: fs.FlowStone, asset: str, key: str | None) -> Any:
    found = app.store.partition_state(tenant=app.tenant, asset=asset, partition_key=key)
    assert found is not None
    return found


@pytest.fixture
def built(diamond: Diamond, make_app: AppFactory) -> Callable[[], fs.FlowStone]:
    """An app over the diamond with the working partition of all four assets materialized."""

    def build() -> fs.FlowStone:
        app = make_app(diamond.pipeline())
        assert app.materialize("+d", **where(diamond)).success
        diamond.calls.clear()
        return app

    return build


def missing_others(diamond: Diamond) -> int:
    """Partitions other than the working one, never materialized."""
    return DAYS.count() - 1 if diamond.partitioned else 0


# ---------------------------------------------------------------------- data versions
def test_nothing_is_stale_after_a_first_materialization(
    diamond: Diamond, built: Callable[[], fs.FlowStone]
) -> None:
    app = built()
    m = missing_others(diamond)
    assert counts(app) == {asset: (1, 0, m, 0) for asset in ASSETS}
    assert stale_plan(app, diamond) == []
    assert app.plan("+d", stale=True, **where(diamond)).stale == []


def test_the_same_value_again_makes_nothing_stale(
    diamond: Diamond, built: Callable[[], fs.FlowStone]
) -> None:
    app = built()
    before = state(app, "a", diamond.key)
    run = app.materialize("a", force=True, **where(diamond))
    assert run.success and diamond.calls == diamond.steps("a")
    after = state(app, "a", diamond.key)
    assert after.success_materialization_id != before.success_materialization_id  # a new materialization
    assert after.data_version == before.data_version  # of the same data
    assert after.data_version is not None and after.data_version.startswith("sha256:")
    assert counts(app)["d"][1] == 0 and all(counts(app)[x][:2] == (1, 0) for x in ASSETS)
    assert stale_plan(app, diamond) == []
    diamond.calls.clear()
    run = app.materialize("+d", stale=True, **where(diamond))
    assert run.success and diamond.calls == [] and len(run.steps) == 0
    assert sorted(run.up_to_date) == sorted(diamond.steps(*ASSETS))


def test_a_new_value_makes_everything_built_from_it_stale(
    diamond: Diamond, built: Callable[[], fs.FlowStone]
) -> None:
    app = built()
    before = state(app, "a", diamond.key).data_version
    diamond.values[diamond.key] = 2
    assert app.materialize("a", force=True, **where(diamond)).success
    assert state(app, "a", diamond.key).data_version != before
    m = missing_others(diamond)
    # b and c consumed the old a; d consumed b and c, which did not change: d is stale through them.
    assert counts(app) == {"a": (1, 0, m, 0), "b": (0, 1, m, 0), "c": (0, 1, m, 0), "d": (0, 1, m, 0)}

    plan = app.plan("+d", stale=True, **where(diamond))
    assert [s.key for s in plan.steps] == diamond.steps("b", "c", "d")
    assert plan.stale == diamond.steps("b", "c", "d")
    # Without stale=True nothing is missing, so nothing runs.
    assert [s.key for s in app.plan("+d", **where(diamond)).steps] == []

    diamond.calls.clear()
    run = app.materialize("+d", stale=True, values=True, **where(diamond))
    assert run.success
    assert sorted(diamond.calls) == sorted(diamond.steps("b", "c", "d"))  # exactly the stale ones
    assert run.steps[("d", diamond.key)].value == 3 + 20
    assert run.up_to_date == diamond.steps("a")
    assert counts(app) == {asset: (1, 0, m, 0) for asset in ASSETS}
    assert stale_plan(app, diamond) == []


def test_stale_plans_for_one_asset_include_its_stale_upstream(
    diamond: Diamond, built: Callable[[], fs.FlowStone]
) -> None:
    app = built()
    diamond.values[diamond.key] = 5
    app.materialize("a", force=True, **where(diamond))
    # Only b selected: c and d stay stale until asked for.
    assert [s.key for s in app.plan("b", stale=True, **where(diamond)).steps] == diamond.steps("b")
    diamond.calls.clear()
    app.materialize("b", stale=True, **where(diamond))
    assert diamond.calls == diamond.steps("b")
    assert [counts(app)[x][1] for x in ASSETS] == [0, 0, 1, 1]
    # d alone: its stale upstream c is recomputed with it; b is fresh now.
    assert [s.key for s in app.plan("d", stale=True, **where(diamond)).steps] == diamond.steps("c", "d")


def test_output_data_version_decides(diamond: Diamond, built: Callable[[], fs.FlowStone]) -> None:
    diamond.versions[diamond.key] = "v1"
    app = built()
    assert state(app, "a", diamond.key).data_version == "v1"
    [mat] = app.store.materializations(tenant=app.tenant, asset="a")
    assert mat.data_version == "v1" and mat.value_hash is not None and mat.value_hash != "v1"

    # Another value under the same version: the asset says the data is the same.
    diamond.values[diamond.key] = 99
    app.materialize("a", force=True, **where(diamond))
    assert stale_plan(app, diamond) == []
    assert all(counts(app)[x][1] == 0 for x in ASSETS)

    # The same value under a new version: downstream is stale.
    diamond.versions[diamond.key] = "v2"
    app.materialize("a", force=True, **where(diamond))
    assert state(app, "a", diamond.key).data_version == "v2"
    assert stale_plan(app, diamond) == diamond.steps("b", "c", "d")
    [link] = [e for e in app.lineage.upstream("b", **where(diamond)) if e.asset == "a"]
    assert link.materialization_id != state(app, "a", diamond.key).success_materialization_id


# ---------------------------------------------------------------------- code versions
def test_a_new_code_version_makes_the_asset_and_its_downstream_stale(
    diamond: Diamond, make_app: AppFactory
) -> None:
    first = make_app(diamond.pipeline(code_versions={"c": "1"}))
    first.materialize("+d", **where(diamond))
    assert state(first, "c", diamond.key).code_version == "1"
    first.close()

    # The same store and storage, c's code changed.
    app = make_app(diamond.pipeline(code_versions={"c": "2"}))
    m = missing_others(diamond)
    assert counts(app) == {"a": (1, 0, m, 0), "b": (1, 0, m, 0), "c": (0, 1, m, 0), "d": (0, 1, m, 0)}
    assert stale_plan(app, diamond) == diamond.steps("c", "d")
    diamond.calls.clear()
    assert app.materialize("+d", stale=True, **where(diamond)).success
    assert diamond.calls == diamond.steps("c", "d")
    assert state(app, "c", diamond.key).code_version == "2"
    assert stale_plan(app, diamond) == []

    # Giving an asset a code version it did not have is a change too.
    again = make_app(diamond.pipeline(code_versions={"c": "2", "a": "1"}))
    assert stale_plan(again, diamond) == diamond.steps(*ASSETS)


def test_the_same_code_version_on_a_new_pipeline_object_is_not_a_change(
    diamond: Diamond, make_app: AppFactory
) -> None:
    versions = {x: "7" for x in ASSETS}
    make_app(diamond.pipeline(code_versions=versions)).materialize("+d", **where(diamond))
    app = make_app(diamond.pipeline(code_versions=dict(versions)))
    assert stale_plan(app, diamond) == []
    assert all(counts(app)[x][1] == 0 for x in ASSETS)


# ---------------------------------------------------------------------- invalidation
def test_invalidate_with_downstream_marks_everything_built_from_it(
    diamond: Diamond, built: Callable[[], fs.FlowStone]
) -> None:
    app = built()
    assert app.invalidate("b", downstream=True, reason="bad join", **where(diamond)) == 2  # b and d
    m = missing_others(diamond)
    assert counts(app) == {"a": (1, 0, m, 0), "b": (0, 1, m, 0), "c": (1, 0, m, 0), "d": (0, 1, m, 0)}
    assert state(app, "b", diamond.key).stale and state(app, "d", diamond.key).stale
    assert not state(app, "c", diamond.key).stale
    assert stale_plan(app, diamond) == diamond.steps("b", "d")
    # Marking again marks nothing new.
    assert app.invalidate("b", downstream=True, **where(diamond)) == 0
    diamond.calls.clear()
    app.materialize("+d", stale=True, **where(diamond))
    assert diamond.calls == diamond.steps("b", "d")
    assert not state(app, "b", diamond.key).stale and not state(app, "d", diamond.key).stale
    assert all(counts(app)[x][1] == 0 for x in ASSETS)


def test_invalidate_without_downstream_still_makes_downstream_stale_through_it(
    diamond: Diamond, built: Callable[[], fs.FlowStone]
) -> None:
    app = built()
    assert app.invalidate("a", **where(diamond)) == 1
    assert state(app, "a", diamond.key).stale and not state(app, "d", diamond.key).stale
    # Only a is marked, but what was built from a stale partition is stale too.
    assert [counts(app)[x][1] for x in ASSETS] == [1, 1, 1, 1]
    assert stale_plan(app, diamond) == diamond.steps(*ASSETS)
    diamond.calls.clear()
    app.materialize("+d", stale=True, **where(diamond))
    # a is recomputed (with the same value); b, c and d were stale through it, so they run too.
    assert diamond.calls == diamond.steps(*ASSETS)
    assert all(counts(app)[x][1] == 0 for x in ASSETS)


def test_invalidate_of_an_unknown_asset_is_asset_not_found(built: Callable[[], fs.FlowStone]) -> None:
    with pytest.raises(fs.AssetNotFound, match="did you mean 'a'"):
        built().invalidate("aa")


def test_status_of_an_unknown_asset_is_asset_not_found(built: Callable[[], fs.FlowStone]) -> None:
    with pytest.raises(fs.AssetNotFound):
        built().status("nope")


def test_invalidate_checks_its_arguments(diamond: Diamond, built: Callable[[], fs.FlowStone]) -> None:
    app = built()
    if diamond.partitioned:
        with pytest.raises(fs.ValidationError, match="is partitioned"):
            app.invalidate("a")
        with pytest.raises(fs.ValidationError, match="is not valid for asset 'a'"):
            app.invalidate("a", partition="2025-13-01")
        # A partition that was never materialized cannot be stale: nothing is marked.
        assert app.invalidate("a", partition="2025-01-04", downstream=True) == 0
        assert app.invalidate("a", all_partitions=True) == 1


# ---------------------------------------------------------------------- partitions
def test_staleness_is_per_partition(make_app: AppFactory) -> None:
    diamond = Diamond(partitioned=True)
    app = make_app(diamond.pipeline())
    days = ["2025-01-01", "2025-01-02", "2025-01-03"]
    assert app.materialize("+d", partitions=days).success
    assert counts(app)["d"] == (3, 0, 1, 0)
    diamond.values["2025-01-03"] = 42
    app.materialize("a", partition="2025-01-03", force=True)
    assert {x: counts(app)[x] for x in ["a", "d"]} == {"a": (3, 0, 1, 0), "d": (2, 1, 1, 0)}
    plan = app.plan("+d", partitions=days, stale=True)
    assert [s.key for s in plan.steps] == [(x, "2025-01-03") for x in ["b", "c", "d"]]
    fresh_days = [(x, k) for x in ASSETS for k in days if k != "2025-01-03"]
    assert sorted(plan.up_to_date) == sorted([*fresh_days, ("a", "2025-01-03")])
    # One day of a invalidated with everything built from it.
    assert app.invalidate("a", partition="2025-01-01", downstream=True) == 4
    assert counts(app)["b"] == (1, 2, 1, 0)
    diamond.calls.clear()
    app.materialize("+d", partitions=[*days, "2025-01-04"], stale=True)
    # the stale day 1 (all four), the stale day 3 (b, c, d) and the missing day 4 (all four)
    assert sorted(diamond.calls) == sorted(
        [(x, "2025-01-01") for x in ASSETS]
        + [(x, "2025-01-03") for x in ["b", "c", "d"]]
        + [(x, "2025-01-04") for x in ASSETS]
    )
    assert counts(app) == {x: (4, 0, 0, 0) for x in ASSETS}


def test_staleness_follows_partition_mappings(make_app: AppFactory) -> None:
    calls: list[Step] = []
    values: dict[str, int] = {}
    pipeline = fs.Pipeline("windows")

    @pipeline.asset(partitioned_by=DAYS)
    def raw(context: fs.Context) -> int:
        calls.append(("raw", context.partition_key))
        return values.get(str(context.partition_key), 0)

    @pipeline.asset(
        partitioned_by=DAYS,
        ins={"raw": fs.In(mapping=fs.TimeWindowMapping(start_offset=-1), missing="skip")},
    )
    def pair(context: fs.Context, raw: dict[str, int]) -> int:
        calls.append(("pair", context.partition_key))
        return sum(raw.values())

    @pipeline.asset()
    def total(context: fs.Context, pair: dict[str, int]) -> int:
        calls.append(("total", None))
        return sum(pair.values())

    app = make_app(pipeline)
    assert app.materialize("total").success
    values["2025-01-02"] = 5
    app.materialize("raw", partition="2025-01-02", force=True)
    # Day 2 is read by the windows of day 2 and day 3, and both by the fan-in.
    assert app.status("pair").stale == 2 and app.status("total").stale == 1
    calls.clear()
    run = app.materialize("total", stale=True, values=True)
    assert sorted(calls, key=str) == sorted(
        [("pair", "2025-01-02"), ("pair", "2025-01-03"), ("total", None)], key=str
    )
    assert run.steps[("total", None)].value == 10
    assert app.status("pair").stale == 0 and app.status("total").fresh == 1


# ---------------------------------------------------------------------- failures
def test_a_failed_materialization_keeps_the_last_success(
    diamond: Diamond, built: Callable[[], fs.FlowStone]
) -> None:
    app = built()
    good = state(app, "a", diamond.key)
    diamond.values[diamond.key] = 2
    diamond.failing.add("a")
    run = app.materialize("a", force=True, **where(diamond))
    assert not run.success
    after = state(app, "a", diamond.key)
    assert after.last_status == "failed"
    assert after.success_materialization_id == good.success_materialization_id
    assert (after.data_version, after.code_version) == (good.data_version, good.code_version)
    assert app.load("a", **where(diamond)) == 1  # the stored value is the last success's
    m = missing_others(diamond)
    # a counts as failed; what was built from its last success is still fresh.
    assert counts(app) == {"a": (0, 0, m, 1), "b": (1, 0, m, 0), "c": (1, 0, m, 0), "d": (1, 0, m, 0)}
    # The failed partition is retried (its older success does not make it done), and what reads
    # it runs after it.
    assert stale_plan(app, diamond)[0] == ("a", diamond.key)

    diamond.failing.clear()
    assert app.materialize("a", force=True, **where(diamond)).success
    assert counts(app)["a"] == (1, 0, m, 0) and counts(app)["d"] == (0, 1, m, 0)


def test_a_failed_partition_is_never_also_counted_stale(
    diamond: Diamond, built: Callable[[], fs.FlowStone]
) -> None:
    app = built()
    diamond.failing.add("b")
    app.materialize("b", force=True, **where(diamond))
    app.invalidate("a", **where(diamond))
    m = missing_others(diamond)
    # b's last success consumed the now-stale a: d, built from that success, is stale through it;
    # b itself is counted once, as failed.
    assert counts(app) == {"a": (0, 1, m, 0), "b": (0, 0, m, 1), "c": (0, 1, m, 0), "d": (0, 1, m, 0)}


def test_a_failed_upstream_in_a_stale_run_leaves_downstream_stale(
    diamond: Diamond, built: Callable[[], fs.FlowStone]
) -> None:
    app = built()
    diamond.values[diamond.key] = 3
    app.materialize("a", force=True, **where(diamond))
    diamond.failing.add("c")
    run = app.materialize("+d", stale=True, **where(diamond))
    assert not run.success
    statuses = {s.asset: s.status for s in run.steps.values()}
    assert statuses == {"b": fs.StepStatus.SUCCEEDED, "c": fs.StepStatus.FAILED, "d": fs.StepStatus.SKIPPED}
    m = missing_others(diamond)
    # c failed after its success: counted failed; d was skipped and is still stale (through c's success).
    assert counts(app) == {"a": (1, 0, m, 0), "b": (1, 0, m, 0), "c": (0, 0, m, 1), "d": (0, 1, m, 0)}
    diamond.failing.clear()
    diamond.calls.clear()
    app.materialize("+d", stale=True, **where(diamond))
    assert diamond.calls == diamond.steps("c", "d")
    assert counts(app) == {x: (1, 0, m, 0) for x in ASSETS}


def test_a_partition_whose_last_attempt_failed_is_retried(pipeline: fs.Pipeline, make_app: Any) -> None:
    """An older success does not make a failed partition 'done': materialize retries it."""
    broken = {"on": False}

    @pipeline.asset()
    def source(context: fs.Context) -> int:
        if broken["on"]:
            raise RuntimeError("upstream API down")
        return 1

    app = make_app(pipeline)
    assert app.materialize("source").success
    broken["on"] = True
    assert not app.materialize("source", force=True).success
    broken["on"] = False
    retry = app.materialize("source")
    assert [s.asset for s in retry.steps.values()] == ["source"] and retry.success
