"""The event log's retention: old run events are pruned, everything else stays (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

import flowstone as fs
from flowstone.store import _tables as t
from flowstone.testing import FakeClock


def test_prune_removes_only_events_older_than_the_retention(store_url: str, tmp_path: Path) -> None:
    pipeline = fs.Pipeline("prune")

    @pipeline.asset()
    def a(context: fs.Context) -> int:
        return 1

    with fs.FlowStone(pipeline, store=store_url, storage_dir=tmp_path / "s") as app:
        old_run = app.materialize(["a"])
        new_run = app.materialize(["a"], force=True)
        events = app.store.list_events(tenant="default", limit=1000)
        assert {e["run_id"] for e in events} == {old_run.run_id, new_run.run_id}
    old_count = len(app.store.list_events(tenant="default", run_id=old_run.run_id))
    assert old_count == 4

    # make the first run's events 40 days old, as if time had passed since
    app2 = fs.FlowStone(
        pipeline, store=store_url, storage_dir=tmp_path / "s", clock=FakeClock(datetime.now(UTC))
    )
    with app2.store.engine.begin() as conn:
        conn.execute(
            t.events.update()
            .where(t.events.c.run_id == old_run.run_id)
            .values(at=datetime.now(UTC) - timedelta(days=40))
        )
    assert app2.prune_events(dry_run=True) == old_count
    assert app2.prune_events() == old_count
    assert app2.store.list_events(tenant="default", run_id=old_run.run_id) == []
    assert len(app2.store.list_events(tenant="default", run_id=new_run.run_id)) == 4
    # runs, materializations and the audit log are kept
    assert app2.run(old_run.run_id) is not None
    assert len(app2.store.materializations(tenant="default", asset="a")) == 2
    assert len(app2.store.list_audit(tenant="default")) == 2
    # another tenant's old events are not this tenant's to prune
    with app2.store.engine.begin() as conn:
        conn.execute(t.events.update().values(tenant_id="other", at=datetime.now(UTC) - timedelta(days=90)))
    assert app2.prune_events(older_than="1d") == 0
    with app2.store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(t.events)).scalar_one() == 4
    app2.close()


def test_prune_works_in_batches(store_url: str, tmp_path: Path) -> None:
    pipeline = fs.Pipeline("batches")

    @pipeline.asset()
    def a(context: fs.Context) -> int:
        return 1

    with fs.FlowStone(pipeline, store=store_url, storage_dir=tmp_path / "s") as app:
        for _ in range(3):
            app.materialize(["a"], force=True)
        later = datetime.now(UTC) + timedelta(days=1)
        assert app.store.prune_events(tenant="default", before=later, batch=5) == 12
        assert app.store.list_events(tenant="default") == []
