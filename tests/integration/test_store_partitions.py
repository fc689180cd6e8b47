"""The store side of partitions at scale, backfills and staleness, on SQLite and on PostgreSQL.

Every test runs twice (``store_url`` is parametrized): migration 0002, dynamic partition keys,
backfill records, partition status and missing keys computed in SQL, invalidation and its
clearing by the next success, and the data versions a run records on materializations, latest
states and lineage.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command

import flowstone as fs
from flowstone._events import Event
from flowstone._records import BackfillStatus, Materialization
from flowstone.store import Store, _migrate
from flowstone.store import _tables as t
from flowstone.store._store import CHUNK, NewStep, create_engine, utcnow
from flowstone.store._writer import StepOutcome

TENANT = "default"
OTHER = "other-tenant"


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    store = Store.open(store_url)
    yield store
    store.close()


# ---------------------------------------------------------------------- helpers
def new_id() -> str:
    return uuid.uuid4().hex


def materialization(
    run_id: str,
    asset: str,
    key: str | None,
    *,
    status: str = "success",
    value_hash: str | None = None,
    data_version: str | None = None,
    code_version: str | None = None,
) -> Materialization:
    now = utcnow()
    failed = status != "success"
    return Materialization(
        id=new_id(),
        run_id=run_id,
        asset=asset,
        partition_key=key,
        status=status,
        started_at=now,
        finished_at=now,
        duration_ms=1.0,
        value_hash=value_hash,
        code_version=code_version,
        data_version=data_version,
        error_type="execution_error" if failed else None,
        error_message="boom" if failed else None,
        retryable=False if failed else None,
    )


LineageLink = tuple[str, str, str | None] | tuple[str, str, str | None, str | None]


def record(
    store: Store,
    mats: Sequence[Materialization],
    *,
    tenant: str = TENANT,
    lineage: dict[str, Sequence[LineageLink]] | None = None,
) -> None:
    """Write these materializations through the run writer, as one run of their own (ids kept)."""
    run_ids = {m.run_id for m in mats}
    assert len(run_ids) == 1
    [run_id] = run_ids
    steps = [NewStep(new_id(), i, m.asset, m.partition_key, []) for i, m in enumerate(mats)]
    store.create_run(
        tenant=tenant,
        run_id=run_id,
        pipeline="p",
        selection=sorted({m.asset for m in mats}),
        partition_key=None,
        force=True,
        actor="system",
        executor="serial",
        steps=steps,
    )
    writer = store.run_writer(run_id)
    try:
        for step, mat in zip(steps, mats, strict=True):
            event = Event("step.finished", utcnow(), run_id, mat.asset, mat.partition_key, {})
            writer.start_step(tenant=tenant, step_id=step.id, attempt=1, event=event)
            links = (lineage or {}).get(mat.id, ())
            writer.finish_step(tenant=tenant, outcome=StepOutcome(step.id, mat, links, event))
    finally:
        writer.close()
    store.finish_run(tenant=tenant, run_id=run_id, status=fs.RunStatus.SUCCEEDED)


def record_statuses(
    store: Store, asset: str, statuses: dict[str, str], *, tenant: str = TENANT
) -> dict[str, Materialization]:
    run_id = new_id()
    mats = {
        key: materialization(run_id, asset, key, status=status, value_hash=f"sha256:{key}")
        for key, status in statuses.items()
    }
    record(store, list(mats.values()), tenant=tenant)
    return mats


def keys(n: int, prefix: str = "k") -> list[str]:
    return [f"{prefix}{i:05d}" for i in range(n)]


class QueryLog:
    """Counts the statements sent to the database that contain a marker."""

    def __init__(self, store: Store, marker: str) -> None:
        self.marker = marker
        self.statements: list[str] = []
        self.store = store

    def __call__(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if self.marker in statement:
            self.statements.append(statement)

    def __enter__(self) -> QueryLog:
        sa.event.listen(self.store.engine, "before_cursor_execute", self)
        return self

    def __exit__(self, *_exc: object) -> None:
        sa.event.remove(self.store.engine, "before_cursor_execute", self)


def audit_rows(store: Store, action: str, tenant: str = TENANT) -> list[dict[str, Any]]:
    return [r for r in store.list_audit(tenant=tenant) if r["action"] == action]


def table_rows(store: Store, table: sa.Table, **where: Any) -> list[Any]:
    query = sa.select(table).where(*(table.c[k] == v for k, v in where.items()))
    with store.engine.connect() as conn:
        return list(conn.execute(query))


# ---------------------------------------------------------------------- migration 0002
def test_0002_upgrades_a_0001_store_in_place_and_keeps_its_rows(store_url: str) -> None:
    engine = create_engine(store_url)
    try:
        _migrate.upgrade(engine, "0001")
        assert _migrate.current_revision(engine) == "0001"
        now = utcnow()
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO flowstone_asset_partitions (tenant_id, asset, partition_key, last_status,"
                    " last_run_id, last_materialization_id, success_materialization_id, success_at,"
                    " updated_at) VALUES ('default', 'a', 'k1', 'success', 'r', 'm', 'm', :now, :now)"
                ),
                {"now": now},
            )
            conn.execute(
                sa.text(
                    "INSERT INTO flowstone_materializations (id, tenant_id, run_id, asset, partition_key,"
                    " status, started_at, finished_at, duration_ms, value_hash)"
                    " VALUES ('m', 'default', 'r', 'a', 'k1', 'success', :now, :now, 1.0, 'sha256:x')"
                ),
                {"now": now},
            )

        store = Store.open(engine)  # migrates 0001 -> head
        assert _migrate.current_revision(engine) == _migrate.HEAD
        state = store.partition_state(tenant=TENANT, asset="a", partition_key="k1")
        assert state is not None and state.success_materialization_id == "m"
        assert (state.data_version, state.code_version, state.stale_since) == (None, None, None)
        mat = store.get_materialization(tenant=TENANT, materialization_id="m")
        assert mat is not None and mat.value_hash == "sha256:x"
        status = store.partition_status(tenant=TENANT, asset="a", total=3)
        assert (status.counts, status.missing) == ({"success": 1}, 2)

        with engine.begin() as conn:  # and back down to 0001, keeping the old columns' rows
            command.downgrade(_migrate.alembic_config(conn), "0001")
        assert _migrate.current_revision(engine) == "0001"
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            assert not inspector.has_table("flowstone_backfills")
            assert "data_version" not in {
                c["name"] for c in inspector.get_columns("flowstone_materializations")
            }
            assert conn.execute(sa.text("SELECT count(*) FROM flowstone_asset_partitions")).scalar() == 1
    finally:
        engine.dispose()


def test_the_stale_index_is_partial_and_the_status_index_covers_key_order(store: Store) -> None:
    with store.engine.connect() as conn:
        indexes = {ix["name"]: ix for ix in sa.inspect(conn).get_indexes("flowstone_asset_partitions")}
    status = indexes["ix_flowstone_asset_partitions_status"]
    assert status["column_names"] == ["tenant_id", "asset", "last_status", "partition_key"]
    stale = indexes["ix_flowstone_asset_partitions_stale"]
    where = stale.get("dialect_options", {}).get(f"{store.dialect}_where")
    assert where is not None and "stale_since is not null" in str(where).lower()


def test_partition_status_queries_are_answered_from_indexes_on_sqlite(sqlite_url: str) -> None:
    store = Store.open(sqlite_url)
    try:
        record_statuses(store, "a", {"k1": "success", "k2": "failed"})
        plans: list[str] = []

        def explain(_conn: Any, cursor: Any, statement: str, parameters: Any, *_rest: Any) -> None:
            if "flowstone_asset_partitions" in statement and statement.lstrip().startswith("SELECT"):
                rows = cursor.connection.execute("EXPLAIN QUERY PLAN " + statement, parameters).fetchall()
                plans.append(" ".join(str(r[-1]) for r in rows))

        sa.event.listen(store.engine, "before_cursor_execute", explain)
        try:
            store.partition_status(tenant=TENANT, asset="a")
        finally:
            sa.event.remove(store.engine, "before_cursor_execute", explain)
        counts, stale, failed_page = plans
        assert "COVERING INDEX ix_flowstone_asset_partitions_status" in counts
        assert "ix_flowstone_asset_partitions_stale" in stale
        assert "COVERING INDEX ix_flowstone_asset_partitions_status" in failed_page
        assert "TEMP B-TREE" not in failed_page  # key order comes from the index, no sort
    finally:
        store.close()


# ---------------------------------------------------------------------- dynamic partitions
def test_dynamic_partitions_add_list_and_remove(store: Store) -> None:
    added = store.add_dynamic_partitions(
        tenant=TENANT, name="customers", keys=["acme", "globex"], actor="ann"
    )
    assert added == ["acme", "globex"]
    # Idempotent: known keys are not added again and keep their place; duplicates collapse.
    added = store.add_dynamic_partitions(
        tenant=TENANT, name="customers", keys=["initech", "acme", "initech", "hooli"], actor="bob"
    )
    assert added == ["initech", "hooli"]
    assert store.add_dynamic_partitions(tenant=TENANT, name="customers", keys=["acme"], actor="bob") == []
    assert store.dynamic_partition_keys(tenant=TENANT, name="customers") == [
        "acme",
        "globex",
        "initech",
        "hooli",
    ]
    assert store.dynamic_partition_count(tenant=TENANT, name="customers") == 4
    assert store.dynamic_partition_keys(tenant=TENANT, name="customers", offset=1, limit=2) == [
        "globex",
        "initech",
    ]
    assert store.existing_dynamic_partitions(
        tenant=TENANT, name="customers", keys=["acme", "nobody", "hooli"]
    ) == {"acme", "hooli"}
    [acme] = table_rows(store, t.dynamic_partitions, partition_key="acme")
    assert acme.added_by == "ann" and acme.position == 0

    removed = store.remove_dynamic_partitions(
        tenant=TENANT, name="customers", keys=["globex", "nobody"], actor="cy", reason="churned"
    )
    assert removed == ["globex"]
    assert store.remove_dynamic_partitions(tenant=TENANT, name="customers", keys=["globex"], actor="cy") == []
    assert store.dynamic_partition_keys(tenant=TENANT, name="customers") == ["acme", "initech", "hooli"]
    # Added again after removal: it goes to the end.
    assert store.add_dynamic_partitions(tenant=TENANT, name="customers", keys=["globex"], actor="dee") == [
        "globex"
    ]
    assert store.dynamic_partition_keys(tenant=TENANT, name="customers")[-1] == "globex"

    adds = audit_rows(store, "add_partitions")
    assert [(a["actor"], a["resource_type"], a["resource_id"]) for a in adds] == [
        ("ann", "dynamic_partitions", "customers"),
        ("bob", "dynamic_partitions", "customers"),
        ("dee", "dynamic_partitions", "customers"),
    ]
    assert adds[1]["details"] == {"partitions": ["initech", "hooli"], "count": 2, "truncated": False}
    [remove] = audit_rows(store, "remove_partitions")
    assert (remove["actor"], remove["reason"]) == ("cy", "churned")
    assert remove["details"] == {"partitions": ["globex"], "count": 1, "truncated": False}


def test_dynamic_partitions_are_per_tenant_and_per_name(store: Store) -> None:
    store.add_dynamic_partitions(tenant=TENANT, name="customers", keys=["acme"], actor="ann")
    store.add_dynamic_partitions(tenant=TENANT, name="regions", keys=["eu"], actor="ann")
    assert store.add_dynamic_partitions(tenant=OTHER, name="customers", keys=["acme", "zed"], actor="x") == [
        "acme",
        "zed",
    ]
    assert store.dynamic_partition_keys(tenant=TENANT, name="customers") == ["acme"]
    assert store.dynamic_partition_keys(tenant=OTHER, name="customers") == ["acme", "zed"]
    assert store.dynamic_partition_keys(tenant=TENANT, name="regions") == ["eu"]
    assert store.remove_dynamic_partitions(tenant=OTHER, name="customers", keys=["acme"], actor="x") == [
        "acme"
    ]
    assert store.dynamic_partition_keys(tenant=TENANT, name="customers") == ["acme"]
    assert store.dynamic_partition_count(tenant=OTHER, name="regions") == 0
    assert len(audit_rows(store, "add_partitions", tenant=TENANT)) == 2
    assert len(audit_rows(store, "remove_partitions", tenant=TENANT)) == 0
    assert len(audit_rows(store, "remove_partitions", tenant=OTHER)) == 1


def test_many_dynamic_partitions_are_added_in_chunks_and_keep_their_order(store: Store) -> None:
    first = keys(2_500)
    with QueryLog(store, "flowstone_dynamic_partitions") as log:
        assert store.add_dynamic_partitions(tenant=TENANT, name="big", keys=reversed(first)) == first[::-1]
    lookups = [s for s in log.statements if s.lstrip().startswith("SELECT") and " IN " in s]
    assert len(lookups) == 3  # 1,000 + 1,000 + 500 keys: one IN query per chunk
    more = ["new-1", *first[:10], "new-2"]
    assert store.add_dynamic_partitions(tenant=TENANT, name="big", keys=more) == ["new-1", "new-2"]
    listed = store.dynamic_partition_keys(tenant=TENANT, name="big")
    assert listed == [*first[::-1], "new-1", "new-2"]
    [audit, _] = audit_rows(store, "add_partitions")
    assert audit["details"]["count"] == 2_500 and audit["details"]["truncated"] is True
    assert len(audit["details"]["partitions"]) == 100


def test_concurrent_adds_get_distinct_positions(store_url: str) -> None:
    stores = [Store.open(store_url) for _ in range(4)]
    barrier = threading.Barrier(len(stores), timeout=30)
    errors: list[BaseException] = []

    def add(i: int) -> None:
        try:
            barrier.wait()
            for batch in range(5):
                mine = [f"w{i}-{batch}-{j}" for j in range(10)]
                assert stores[i].add_dynamic_partitions(tenant=TENANT, name="n", keys=mine) == mine
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    try:
        assert not any(thread.is_alive() for thread in threads)
        assert errors == []
        rows = table_rows(stores[0], t.dynamic_partitions)
        assert sorted(r.position for r in rows) == list(range(200))
        listed = stores[0].dynamic_partition_keys(tenant=TENANT, name="n")
        for i in range(len(stores)):  # each writer's keys in the order it added them
            assert [k for k in listed if k.startswith(f"w{i}-")] == [
                f"w{i}-{b}-{j}" for b in range(5) for j in range(10)
            ]
    finally:
        for s in stores:
            s.close()


def test_dynamic_partition_keys_are_checked(store: Store) -> None:
    for bad in ([""], [None], ["x" * 1025], "abc"):
        with pytest.raises(fs.ValidationError):
            store.add_dynamic_partitions(tenant=TENANT, name="n", keys=bad)  # type: ignore[arg-type]
    assert store.add_dynamic_partitions(tenant=TENANT, name="n", keys=["x" * 1024, "a/b|c=d"]) == [
        "x" * 1024,
        "a/b|c=d",
    ]
    assert store.add_dynamic_partitions(tenant=TENANT, name="n", keys=[]) == []
    assert len(audit_rows(store, "add_partitions")) == 1


# ---------------------------------------------------------------------- backfills
def test_backfill_lifecycle(store: Store) -> None:
    created = store.create_backfill(
        tenant=TENANT,
        pipeline="shop",
        assets=["raw_events", "daily_report"],
        spec={"from": "2025-01-01", "to": "2025-01-03"},
        partition_keys=["2025-01-01", "2025-01-02", "2025-01-03"],
        force=False,
        parallel=4,
        actor="ann",
    )
    assert created.status is BackfillStatus.REQUESTED
    assert created.counts == {"queued": 6, "running": 0, "succeeded": 0, "failed": 0, "skipped": 0}
    assert (created.total, created.done) == (6, 0)
    assert (created.pipeline, created.assets, created.parallel, created.force) == (
        "shop",
        ["raw_events", "daily_report"],
        4,
        False,
    )
    assert created.spec == {"from": "2025-01-01", "to": "2025-01-03"}
    assert created.partition_keys == ["2025-01-01", "2025-01-02", "2025-01-03"]
    assert (created.started_at, created.finished_at, created.cancel_requested) == (None, None, False)
    assert created.created_at.tzinfo is not None and created.tenant == TENANT
    [audit] = audit_rows(store, "backfill")
    assert (audit["actor"], audit["resource_type"], audit["resource_id"]) == ("ann", "backfill", created.id)
    assert audit["details"]["partitions"] == 3 and audit["details"]["parallel"] == 4

    # A run of the backfill points back at it.
    run_id = new_id()
    store.create_run(
        tenant=TENANT,
        run_id=run_id,
        pipeline="shop",
        selection=["raw_events"],
        partition_key="2025-01-01",
        force=False,
        actor="ann",
        executor="threads",
        steps=[],
        backfill_id=created.id,
    )
    assert [r.id for r in store.list_runs(tenant=TENANT, backfill_id=created.id)] == [run_id]
    run = store.get_run(tenant=TENANT, run_id=run_id)
    assert run is not None and run.backfill_id == created.id

    assert store.update_backfill_counts(
        tenant=TENANT, backfill_id=created.id, counts={"queued": 4, "running": 2}, status="running"
    )
    running = store.get_backfill(tenant=TENANT, backfill_id=created.id[:8])  # a short prefix
    assert running is not None and running.status is BackfillStatus.RUNNING
    assert running.started_at is not None and running.finished_at is None
    assert running.counts == {"queued": 4, "running": 2, "succeeded": 0, "failed": 0, "skipped": 0}
    started = running.started_at
    assert store.update_backfill_counts(
        tenant=TENANT,
        backfill_id=created.id,
        counts={"queued": 2, "running": 1, "succeeded": 2, "failed": 1},
        status=BackfillStatus.RUNNING,
    )
    again = store.get_backfill(tenant=TENANT, backfill_id=created.id)
    assert again is not None and again.started_at == started  # the first start stays
    assert (again.done, again.total) == (3, 6)
    assert store.cancel_requested(tenant=TENANT, backfill_id=created.id) is False

    assert store.request_cancel(tenant=TENANT, backfill_id=created.id, actor="bob", reason="wrong range")
    assert store.cancel_requested(tenant=TENANT, backfill_id=created.id) is True
    [cancel] = audit_rows(store, "cancel")
    assert (cancel["actor"], cancel["resource_id"], cancel["reason"]) == ("bob", created.id, "wrong range")

    final = {"queued": 0, "running": 0, "succeeded": 3, "failed": 1, "skipped": 2}
    assert store.finish_backfill(tenant=TENANT, backfill_id=created.id, status="cancelled", counts=final)
    done = store.get_backfill(tenant=TENANT, backfill_id=created.id)
    assert done is not None and done.status is BackfillStatus.CANCELLED and done.status.finished
    assert done.finished_at is not None and done.counts == final
    # A finished backfill cannot be cancelled; nothing is audited for the attempt.
    assert not store.request_cancel(tenant=TENANT, backfill_id=created.id, actor="bob")
    assert len(audit_rows(store, "cancel")) == 1

    assert store.resume_backfill(tenant=TENANT, backfill_id=created.id, actor="cy")
    resumed = store.get_backfill(tenant=TENANT, backfill_id=created.id)
    assert resumed is not None and resumed.status is BackfillStatus.REQUESTED
    assert (resumed.cancel_requested, resumed.finished_at, resumed.error) == (False, None, None)
    assert not store.resume_backfill(tenant=TENANT, backfill_id=created.id, actor="cy")  # not finished
    [resume] = audit_rows(store, "resume")
    assert resume["actor"] == "cy"

    assert store.finish_backfill(tenant=TENANT, backfill_id=created.id, status="failed", error="boom")
    failed = store.get_backfill(tenant=TENANT, backfill_id=created.id)
    assert failed is not None and (failed.status, failed.error) == (BackfillStatus.FAILED, "boom")
    assert failed.counts == final  # counts not given: kept
    with pytest.raises(ValueError, match="finished status"):
        store.finish_backfill(tenant=TENANT, backfill_id=created.id, status="running")
    with pytest.raises(ValueError):
        store.update_backfill_counts(tenant=TENANT, backfill_id=created.id, counts={}, status="bogus")
    with pytest.raises(fs.ValidationError):
        store.update_backfill_counts(tenant=TENANT, backfill_id=created.id, counts={"queued": -1})


def test_backfills_are_listed_newest_first_and_per_tenant(store: Store) -> None:
    made = [
        store.create_backfill(
            tenant=TENANT,
            pipeline="p",
            assets=["a"],
            spec={"partitions": [f"k{i}"]},
            partition_keys=[f"k{i}"],
            backfill_id=f"abcd{i}" + "0" * 27,
        )
        for i in range(3)
    ]
    theirs = store.create_backfill(
        tenant=OTHER, pipeline="p", assets=["a"], spec={"all": True}, partition_keys=["x"], actor="x"
    )
    # Creation times a minute apart, the middle one newest (ids alone would sort otherwise).
    base = utcnow()
    with store.engine.begin() as conn:
        for backfill, minutes in zip(made, (0, 2, 1), strict=True):
            conn.execute(
                t.backfills.update()
                .where(t.backfills.c.id == backfill.id)
                .values(created_at=base + timedelta(minutes=minutes))
            )
    listed = [b.id for b in store.list_backfills(tenant=TENANT)]
    assert listed == [made[1].id, made[2].id, made[0].id]
    assert [b.id for b in store.list_backfills(tenant=TENANT, limit=2)] == listed[:2]
    store.finish_backfill(tenant=TENANT, backfill_id=made[0].id, status="succeeded")
    assert [b.id for b in store.list_backfills(tenant=TENANT, status="succeeded")] == [made[0].id]

    assert store.get_backfill(tenant=TENANT, backfill_id="abcd") is None  # ambiguous prefix
    found = store.get_backfill(tenant=TENANT, backfill_id="abcd1")
    assert found is not None and found.id == made[1].id
    assert store.get_backfill(tenant=TENANT, backfill_id=theirs.id) is None
    assert not store.request_cancel(tenant=TENANT, backfill_id=theirs.id, actor="ann")
    assert not store.update_backfill_counts(tenant=TENANT, backfill_id=theirs.id, counts={})
    assert not store.finish_backfill(tenant=TENANT, backfill_id=theirs.id, status="failed")
    other = store.get_backfill(tenant=OTHER, backfill_id=theirs.id)
    assert other is not None and other.status is BackfillStatus.REQUESTED and not other.cancel_requested
    with pytest.raises(fs.ValidationError):
        store.create_backfill(
            tenant=TENANT, pipeline="p", assets=["a"], spec={}, partition_keys=[], parallel=0
        )


# ---------------------------------------------------------------------- partition status
def test_partition_status_counts_pages_and_missing(store: Store) -> None:
    statuses = {key: ("failed" if i % 4 == 0 else "success") for i, key in enumerate(keys(250))}
    record_statuses(store, "a", statuses)
    record_statuses(store, "b", {"k00000": "failed"})  # another asset
    record_statuses(store, "a", {"k99999": "failed"}, tenant=OTHER)  # another tenant
    failed = sorted(k for k, s in statuses.items() if s == "failed")
    assert len(failed) == 63

    status = store.partition_status(tenant=TENANT, asset="a", total=1_000, page_size=25)
    assert status.counts == {"success": 187, "failed": 63}
    assert (status.recorded, status.succeeded, status.failed) == (250, 187, 63)
    assert (status.stale, status.fresh) == (0, 187)
    assert (status.total, status.missing) == (1_000, 750)
    assert status.failed_keys == failed[:25] and status.failed_pages == 3
    pages = [
        store.partition_status(tenant=TENANT, asset="a", page=p, page_size=25).failed_keys for p in range(4)
    ]
    assert [len(p) for p in pages] == [25, 25, 13, 0]
    assert [k for p in pages for k in p] == failed
    assert store.partition_status(tenant=TENANT, asset="a").missing is None

    # A later success of a failed partition moves it; the failed page shrinks accordingly.
    record_statuses(store, "a", {failed[0]: "success"})
    again = store.partition_status(tenant=TENANT, asset="a", total=250)
    assert again.counts == {"success": 188, "failed": 62} and again.missing == 0
    assert again.failed_keys == failed[1:63]

    empty = store.partition_status(tenant=TENANT, asset="never", total=10)
    assert (empty.counts, empty.missing, empty.failed_keys, empty.stale) == ({}, 10, [], 0)
    theirs = store.partition_status(tenant=OTHER, asset="a")
    assert theirs.counts == {"failed": 1} and theirs.failed_keys == ["k99999"]


def test_partition_status_checks_its_arguments(store: Store) -> None:
    for bad in ({"page": -1}, {"page_size": 0}, {"page_size": 10_001}, {"total": -5}, {"page": True}):
        with pytest.raises(fs.ValidationError):
            store.partition_status(tenant=TENANT, asset="a", **bad)


def test_missing_keys_streams_candidates_in_chunks(store: Store) -> None:
    candidates = keys(2_500)
    done = {k for i, k in enumerate(candidates) if i % 3 != 0}
    failed_only = candidates[0]  # failed and never succeeded: missing
    statuses = {k: "success" for k in done} | {failed_only: "failed"}
    record_statuses(store, "a", statuses)
    expected = [k for k in candidates if k not in done]
    assert len(expected) == 834

    with QueryLog(store, "flowstone_asset_partitions") as log:
        assert store.missing_keys(tenant=TENANT, asset="a", candidate_keys=iter(candidates)) == expected
    assert len(log.statements) == 3  # 1,000 + 1,000 + 500 candidates

    pulled: list[str] = []

    def definition() -> Iterator[str]:
        for key in [*candidates, *keys(10_000, prefix="z")]:
            pulled.append(key)
            yield key

    with QueryLog(store, "flowstone_asset_partitions") as log:
        first = store.missing_keys(tenant=TENANT, asset="a", candidate_keys=definition(), limit=10)
    assert first == expected[:10]
    assert len(log.statements) == 1 and len(pulled) == CHUNK  # stopped after the first chunk

    assert store.missing_keys(tenant=TENANT, asset="a", candidate_keys=[], limit=5) == []
    assert store.missing_keys(tenant=OTHER, asset="a", candidate_keys=candidates[:5]) == candidates[:5]
    tail = store.missing_keys(tenant=TENANT, asset="a", candidate_keys=keys(5, prefix="z"), chunk_size=2)
    assert tail == keys(5, prefix="z")
    with pytest.raises(ValueError, match="chunk_size"):
        store.missing_keys(tenant=TENANT, asset="a", candidate_keys=candidates, chunk_size=0)


def test_latest_states_in_chunks_with_versions(store: Store) -> None:
    run_id = new_id()
    wanted = keys(2_100)
    mats = [
        materialization(run_id, "a", k, value_hash=f"sha256:{k}", code_version="v3") for k in wanted[:2_050]
    ]
    record(store, mats)
    with QueryLog(store, "flowstone_asset_partitions") as log:
        states = store.latest_states(tenant=TENANT, asset="a", keys=(k for k in wanted))
    assert len(log.statements) == 3
    assert set(states) == set(wanted[:2_050])
    state = states["k00007"]
    assert (state.data_version, state.code_version, state.stale_since) == ("sha256:k00007", "v3", None)
    assert state.success_materialization_id == mats[7].id and not state.stale
    assert store.latest_states(tenant=OTHER, asset="a", keys=wanted[:3]) == {}
    assert store.latest_states(tenant=TENANT, asset="a", keys=[]) == {}


# ---------------------------------------------------------------------- staleness
def test_mark_stale_and_the_next_success_clears_it(store: Store) -> None:
    record_statuses(store, "a", {"k1": "success", "k2": "success", "k3": "failed"})
    record_statuses(store, "b", {"": "success"})  # unpartitioned
    record_statuses(store, "a", {"k1": "success"}, tenant=OTHER)

    assert (
        store.mark_stale(tenant=TENANT, actor="ann", asset="a", keys=["k1", "k3", "nope"], reason="bad") == 2
    )
    states = store.latest_states(tenant=TENANT, asset="a", keys=["k1", "k2", "k3"])
    assert states["k1"].stale and states["k3"].stale and not states["k2"].stale
    marked_at = states["k1"].stale_since
    assert marked_at is not None and marked_at.tzinfo is not None
    status = store.partition_status(tenant=TENANT, asset="a")
    assert (status.stale, status.fresh, status.succeeded) == (2, 1, 2)
    assert store.stale_keys(tenant=TENANT, asset="a") == ["k1", "k3"]
    assert store.stale_keys(tenant=TENANT, asset="a", after="k1") == ["k3"]
    [audit] = audit_rows(store, "invalidate")
    assert (audit["actor"], audit["resource_type"], audit["resource_id"], audit["reason"]) == (
        "ann",
        "asset",
        "a",
        "bad",
    )
    assert audit["details"] == {
        "partitions": ["k1", "k3", "nope"],
        "count": 3,
        "truncated": False,
        "marked": 2,
    }

    # Already stale: keeps the time it became stale.
    assert store.mark_stale(tenant=TENANT, actor="bob", pairs=[("a", "k1"), ("b", None)]) == 1
    again = store.partition_state(tenant=TENANT, asset="a", partition_key="k1")
    assert again is not None and again.stale_since == marked_at
    b_state = store.partition_state(tenant=TENANT, asset="b", partition_key=None)
    assert b_state is not None and b_state.stale
    assert [r["resource_id"] for r in audit_rows(store, "invalidate")] == ["a", "a", "b"]

    # Another tenant's partitions are untouched.
    theirs = store.partition_state(tenant=OTHER, asset="a", partition_key="k1")
    assert theirs is not None and not theirs.stale

    # A failure keeps the mark; a success clears it.
    record_statuses(store, "a", {"k1": "failed", "k3": "success"})
    states = store.latest_states(tenant=TENANT, asset="a", keys=["k1", "k3"])
    assert states["k1"].stale and states["k1"].last_status == "failed"
    assert not states["k3"].stale and states["k3"].last_status == "success"
    record_statuses(store, "a", {"k1": "success"})
    assert store.stale_keys(tenant=TENANT, asset="a") == []
    assert store.partition_status(tenant=TENANT, asset="a").stale == 0

    assert store.mark_stale(tenant=TENANT, actor="cy", asset="a", all_partitions=True) == 3
    assert store.partition_status(tenant=TENANT, asset="a").stale == 3
    assert audit_rows(store, "invalidate")[-1]["details"] == {"all_partitions": True, "marked": 3}
    assert store.partition_state(tenant=OTHER, asset="a", partition_key="k1").stale is False  # type: ignore[union-attr]

    with pytest.raises(ValueError):
        store.mark_stale(tenant=TENANT, actor="x", asset="a")
    with pytest.raises(ValueError):
        store.mark_stale(tenant=TENANT, actor="x", pairs=[("a", "k1")], asset="a")


def test_mark_stale_of_many_keys_is_chunked(store: Store) -> None:
    many = keys(2_300)
    record_statuses(store, "a", dict.fromkeys(many, "success"))
    with QueryLog(store, "UPDATE flowstone_asset_partitions") as log:
        assert store.mark_stale(tenant=TENANT, actor="ann", asset="a", keys=iter(many)) == 2_300
    assert len(log.statements) == 3
    assert store.partition_status(tenant=TENANT, asset="a").stale == 2_300
    [audit] = audit_rows(store, "invalidate")
    assert audit["details"]["count"] == 2_300 and len(audit["details"]["partitions"]) == 100


# ---------------------------------------------------------------------- data versions
def test_the_writer_records_data_versions_and_latest_success_versions(store: Store) -> None:
    run_id = new_id()
    up = materialization(run_id, "up", "k", value_hash="sha256:up1", code_version="c1")
    explicit = materialization(run_id, "side", "k", value_hash="sha256:side", data_version="v-from-asset")
    unhashed = materialization(run_id, "memory", "k")  # e.g. the memory I/O manager: no checksum
    down = materialization(run_id, "down", "k", value_hash="sha256:down1", code_version="c2")
    record(
        store,
        [up, explicit, unhashed, down],
        lineage={
            down.id: [
                (up.id, "up", "k"),  # the version is looked up from the upstream row
                (explicit.id, "side", "k", "given-by-runner"),  # the runner's version wins
                (unhashed.id, "memory", "k", None),
            ]
        },
    )
    assert up.data_version == "sha256:up1"  # defaults to the checksum
    read = store.get_materialization(tenant=TENANT, materialization_id=up.id)
    assert read == up and read.data_version == "sha256:up1"
    side = store.get_materialization(tenant=TENANT, materialization_id=explicit.id)
    assert side is not None and side.data_version == "v-from-asset"
    memory = store.get_materialization(tenant=TENANT, materialization_id=unhashed.id)
    assert memory is not None and memory.data_version is None

    consumed = store.consumed_versions(tenant=TENANT, materialization_ids=[down.id, up.id, "unknown"])
    assert consumed == {
        down.id: [
            ("memory", "k", unhashed.id, None),
            ("side", "k", explicit.id, "given-by-runner"),
            ("up", "k", up.id, "sha256:up1"),
        ],
        up.id: [],
        "unknown": [],
    }
    assert store.consumed_versions(tenant=OTHER, materialization_ids=[down.id]) == {down.id: []}

    state = store.partition_state(tenant=TENANT, asset="up", partition_key="k")
    assert state is not None and (state.data_version, state.code_version) == ("sha256:up1", "c1")

    # A failure keeps the versions of the latest success; the next success replaces them.
    run2 = new_id()
    record(store, [materialization(run2, "up", "k", status="failed", code_version="c9")])
    state = store.partition_state(tenant=TENANT, asset="up", partition_key="k")
    assert state is not None and state.last_status == "failed"
    assert (state.data_version, state.code_version) == ("sha256:up1", "c1")
    run3 = new_id()
    record(store, [materialization(run3, "up", "k", value_hash=None, code_version=None)])
    state = store.partition_state(tenant=TENANT, asset="up", partition_key="k")
    assert state is not None and (state.data_version, state.code_version) == (None, None)


def test_consumed_versions_of_many_materializations_is_chunked(store: Store) -> None:
    run_id = new_id()
    up = materialization(run_id, "up", None, value_hash="sha256:u")
    downs = [materialization(run_id, "down", k) for k in keys(1_200)]
    record(store, [up, *downs], lineage={d.id: [(up.id, "up", None)] for d in downs})
    with QueryLog(store, "flowstone_lineage") as log:
        consumed = store.consumed_versions(tenant=TENANT, materialization_ids=(d.id for d in downs))
    assert len(log.statements) == 2
    assert len(consumed) == 1_200
    assert all(v == [("up", None, up.id, "sha256:u")] for v in consumed.values())


MakeApp = Callable[..., fs.FlowStone]


@pytest.fixture
def make_app(store_url: str, tmp_path: Path) -> Iterator[MakeApp]:
    apps: list[fs.FlowStone] = []

    def make(pipeline: fs.Pipeline, **options: Any) -> fs.FlowStone:
        options.setdefault("storage_dir", tmp_path / "storage")
        app = fs.FlowStone(pipeline, store=store_url, **options)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


def versioned(state: dict[str, int]) -> fs.Pipeline:
    """source -> report, on the filesystem I/O manager (which records a checksum)."""
    pipeline = fs.Pipeline("versions")

    @pipeline.asset(code_version="s1")
    def source(context: fs.Context) -> list[int]:
        return list(range(state["n"]))

    @pipeline.asset(code_version="r1")
    def report(context: fs.Context, source: list[int]) -> int:
        return sum(source)

    @pipeline.asset(io_manager="memory")
    def scratch(context: fs.Context, source: list[int]) -> int:
        return len(source)

    return pipeline


def test_a_real_run_records_data_versions_and_consumed_versions(make_app: MakeApp) -> None:
    state = {"n": 3}
    app = make_app(versioned(state))
    first = app.materialize(["report", "scratch"])
    assert first.success, first.failures
    store = app.store
    mats = {m.asset: m for m in store.materializations(tenant=TENANT, run_id=first.run_id)}
    source, report = mats["source"], mats["report"]
    assert source.value_hash is not None and source.value_hash.startswith("sha256:")
    assert source.data_version == source.value_hash
    assert report.data_version == report.value_hash is not None
    # the memory I/O manager stores no checksum: the materialization itself is the version
    assert mats["scratch"].data_version == mats["scratch"].id
    assert first.steps["source"].materialization == source  # as the run saw it

    [link] = table_rows(store, t.lineage, materialization_id=report.id)
    assert link.upstream_data_version == source.data_version
    consumed = store.consumed_versions(tenant=TENANT, materialization_ids=[report.id, mats["scratch"].id])
    assert consumed[report.id] == [("source", None, source.id, source.data_version)]
    assert consumed[mats["scratch"].id] == [("source", None, source.id, source.data_version)]

    latest = store.latest_states(tenant=TENANT, asset="source", keys=[None])
    assert (latest[None].data_version, latest[None].code_version) == (source.data_version, "s1")

    # Upstream data changes: its new version differs from the one the report consumed.
    state["n"] = 4
    second = app.materialize(["source"], force=True)
    assert second.success
    new_source = second.steps["source"].materialization
    assert new_source is not None and new_source.data_version not in (None, source.data_version)
    latest = store.latest_states(tenant=TENANT, asset="source", keys=[None])
    assert latest[None].data_version == new_source.data_version
    assert consumed[report.id][0][3] != latest[None].data_version  # the report is behind

    # Invalidated on purpose, then recomputed: the mark goes away with the new success.
    assert store.mark_stale(tenant=TENANT, actor="ann", asset="report", keys=[None], reason="check") == 1
    assert store.partition_status(tenant=TENANT, asset="report").stale == 1
    third = app.materialize(["report"], force=True)
    assert third.success
    assert store.partition_status(tenant=TENANT, asset="report").stale == 0
    new_report = third.steps["report"].materialization
    assert new_report is not None
    consumed = store.consumed_versions(tenant=TENANT, materialization_ids=[new_report.id])
    assert consumed[new_report.id] == [("source", None, new_source.id, new_source.data_version)]


def test_timestamps_of_backfills_are_utc(store: Store) -> None:
    before = utcnow() - timedelta(seconds=1)
    made = store.create_backfill(
        tenant=TENANT, pipeline="p", assets=["a"], spec={"all": True}, partition_keys=[]
    )
    assert made.counts["queued"] == 0
    assert made.created_at >= before and made.updated_at >= made.created_at
    assert made.created_at.utcoffset() == timedelta(0)
