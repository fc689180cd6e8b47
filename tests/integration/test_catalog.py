"""``catalog rebuild``: a lost metadata store is rebuilt from the ``_asset.json`` sidecars.

Runs on SQLite and PostgreSQL (``store_url``). A daily chain ``raw -> clean`` plus an
unpartitioned ``totals`` is materialized into one store; a second, empty store pointed at the
same storage imports the sidecars and then knows exactly what the first one knew: which
partitions are materialized, their data versions, and their lineage.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

import flowstone as fs

DAYS = fs.DailyPartitions(start="2025-01-01", end="2025-01-10")


def chain() -> fs.Pipeline:
    pipeline = fs.Pipeline("catalog")

    @pipeline.asset(partitioned_by=DAYS)
    def raw(context: fs.Context) -> list[int]:
        return [len(context.partition_key or "")]

    @pipeline.asset(partitioned_by=DAYS, code_version="2")
    def clean(context: fs.Context, raw: list[int]) -> list[int]:
        return [v * 2 for v in raw]

    @pipeline.asset(io_config={"format": "json"})
    def totals(context: fs.Context) -> dict[str, int]:
        return {"n": 3}

    return pipeline


@pytest.fixture
def rebuilt_url(store_url: str, tmp_path: Path) -> Iterator[str]:
    """Another empty store on the same server: a new SQLite file or a new PostgreSQL schema."""
    if store_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path}/rebuilt.db"
        return
    schema = f"fs_rebuilt_{uuid.uuid4().hex}"
    url = sa.make_url(store_url)
    engine = sa.create_engine(url.set(query={}), poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield url.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
            hide_password=False
        )
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


@pytest.fixture
def original(store_url: str, tmp_path: Path) -> fs.FlowStone:
    app = fs.FlowStone(chain(), store=store_url, storage_dir=tmp_path / "storage")
    for day in ("2025-01-02", "2025-01-03"):
        assert app.materialize(["clean"], partition=day).success
    assert app.materialize(["totals"]).success
    return app


def test_rebuild_restores_materializations_states_and_lineage(
    original: fs.FlowStone, rebuilt_url: str, tmp_path: Path
) -> None:
    url = rebuilt_url
    with fs.FlowStone(chain(), store=url, storage_dir=tmp_path / "storage") as rebuilt:
        assert rebuilt.status("clean").fresh == 0
        assert rebuilt.plan(["clean"], partition="2025-01-02").steps  # it knows nothing yet

        preview = rebuilt.rebuild_catalog(dry_run=True)
        assert (preview.imported, preview.known, preview.skipped) == (5, 0, 0)
        assert rebuilt.status("clean").fresh == 0  # a dry run writes nothing

        report = rebuilt.rebuild_catalog(actor="user:ops")
        assert (report.imported, report.known, report.skipped) == (5, 0, 0)

        for asset, key in [("raw", "2025-01-02"), ("clean", "2025-01-03"), ("totals", None)]:
            before = original.store.partition_state(tenant="default", asset=asset, partition_key=key)
            after = rebuilt.store.partition_state(tenant="default", asset=asset, partition_key=key)
            assert before is not None and after is not None
            assert after.last_status == "success"
            assert after.success_materialization_id == before.success_materialization_id
            assert after.data_version == before.data_version
            assert after.code_version == before.code_version

        # nothing left to do, and the lineage is the one the original run recorded
        assert not rebuilt.plan(["clean"], partition="2025-01-02").steps
        assert not rebuilt.plan(["clean"], partition="2025-01-02", stale=True).steps
        ups = rebuilt.lineage.upstream("clean", partition="2025-01-03")
        want = original.lineage.upstream("clean", partition="2025-01-03")
        assert [(e.asset, e.partition_key, e.materialization_id) for e in ups] == [
            (e.asset, e.partition_key, e.materialization_id) for e in want
        ]
        assert rebuilt.load("totals") == {"n": 3}

        again = rebuilt.rebuild_catalog()
        assert (again.imported, again.known) == (0, 5)  # idempotent
        audit = [a for a in rebuilt.store.list_audit(tenant="default") if a["action"] == "catalog.rebuild"]
        assert [(a["actor"], a["details"]["imported"]) for a in audit] == [("user:ops", 5)]
    original.close()


def test_values_that_do_not_match_their_sidecar_are_skipped_not_recorded(
    original: fs.FlowStone, rebuilt_url: str, tmp_path: Path
) -> None:
    storage = tmp_path / "storage"
    (storage / "raw" / "p=2025-01-02.pickle").write_bytes(b"edited by hand")
    (storage / "raw" / "p=2025-01-03.pickle").unlink()
    (storage / "clean" / "p=2025-01-03._asset.json").write_text("{not json")
    bad_key = json.loads((storage / "clean" / "p=2025-01-02._asset.json").read_text())
    (storage / "clean" / "p=2025-02-31.pickle").write_bytes(
        (storage / "clean" / "p=2025-01-02.pickle").read_bytes()
    )
    (storage / "clean" / "p=2025-02-31._asset.json").write_text(
        json.dumps(
            {
                **bad_key,
                "partition_key": "2025-02-31",
                "materialization_id": "y" * 32,
                "value_file": "p=2025-02-31.pickle",
            }
        )
    )
    stray = storage / "raw" / "p=2025-01-09._asset.json"
    stray.write_text(json.dumps({"flowstone_sidecar": 1, "asset": "raw", "partition_key": "2025-01-09"}))
    other = storage / "nope" / "value._asset.json"
    other.parent.mkdir()
    sidecar = json.loads((storage / "totals" / "value._asset.json").read_text())
    (storage / "nope" / "value.json").write_bytes((storage / "totals" / "value.json").read_bytes())
    other.write_text(json.dumps({**sidecar, "asset": "nope", "materialization_id": "x" * 32}))
    with fs.FlowStone(chain(), store=rebuilt_url, storage_dir=storage) as rebuilt:
        report = rebuilt.rebuild_catalog()
        reasons = {Path(e.path).relative_to(storage).as_posix(): e.reason for e in report.entries if e.reason}
        bad_key_reason = reasons.pop("clean/p=2025-02-31._asset.json")
        assert bad_key_reason is not None
        assert "partition '2025-02-31' is not valid for asset 'clean'" in bad_key_reason
        assert reasons == {
            "raw/p=2025-01-02._asset.json": "p=2025-01-02.pickle changed since its sidecar was written "
            "(checksum mismatch)",
            "raw/p=2025-01-03._asset.json": "value file p=2025-01-03.pickle is missing",
            "clean/p=2025-01-03._asset.json": "not a readable FlowStone sidecar",
            "raw/p=2025-01-09._asset.json": "sidecar lacks materialization_id, checksum, value_file, "
            "created_at",
            "nope/value._asset.json": "asset 'nope' is not in pipeline 'catalog'",
        }
        assert report.imported == 2  # clean 2025-01-02 and totals
        states = {
            (s.asset, s.partition_key): s.last_status for s in rebuilt.store.asset_states(tenant="default")
        }
        assert states == {("clean", "2025-01-02"): "success", ("totals", None): "success"}
    original.close()


def test_other_tenants_sidecars_are_left_to_them(store_url: str, rebuilt_url: str, tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    with fs.FlowStone(chain(), store=store_url, storage_dir=storage, tenant="acme") as acme:
        assert acme.materialize(["totals"]).success
    assert (storage / "tenants" / "acme" / "totals" / "value._asset.json").is_file()
    url = rebuilt_url
    with fs.FlowStone(chain(), store=url, storage_dir=storage) as default:
        assert default.rebuild_catalog().entries == []
    with fs.FlowStone(chain(), store=url, storage_dir=storage, tenant="acme") as acme_again:
        assert acme_again.rebuild_catalog().imported == 1
        assert acme_again.load("totals") == {"n": 3}
