"""The ``duckdb`` I/O manager: one DuckDB table per asset in a local database file.

Table layout and bookkeeping are those of :mod:`flowstone.io._tables`. A store is one transaction
(``BEGIN``; create or widen the table; ``DELETE`` the partition's rows; ``INSERT ... SELECT`` from
the value registered as an Arrow table; upsert the bookkeeping row; ``COMMIT``). Column types come
from DuckDB's own reading of the Arrow schema, nested values included; loads cast back to the
stored Arrow schema, so a value comes back with the types it went in with. The checksum is sha256
over the value's Arrow IPC stream, hashed as it is produced.

One connection per manager, used under a lock shared by every manager on the same file in this
process. DuckDB lets one process write a file at a time: another process holding it makes
operations fail with a retryable error until it lets go.

Usage::

    app = fs.FlowStone(pipeline, io_managers={"duckdb": DuckDBIOManager(path="warehouse.duckdb")})

    @pipeline.asset(io_manager="duckdb", io_config=DuckDBConfig(table="orders"))
    def orders(context) -> pl.DataFrame: ...
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowstone.io._base import IOContext
from flowstone.io._errors import _chain, missing_extra
from flowstone.io._tables import (
    BOOKKEEPING_COLUMNS,
    BOOKKEEPING_KEY,
    IDENTIFIER,
    PARTITIONS_TABLE,
    RECORD_COLUMNS,
    TENANT_COLUMN,
    Fetched,
    HashingSink,
    PartitionRecord,
    TableConfig,
    TableIOManager,
    TableRef,
    claim,
    conform,
    plan_columns,
    read_schema,
    slot,
)

if TYPE_CHECKING:
    import pyarrow as pa

MEMORY = ":memory:"
_SOURCE = "__flowstone_source"
_PROBE = "__flowstone_probe"
_BOOK_TYPES = {
    "text": "VARCHAR",
    "bool": "BOOLEAN",
    "bigint": "BIGINT",
    "bytes": "BLOB",
    "timestamp": "TIMESTAMPTZ",
}
_LOCKS: dict[str, threading.RLock] = {}
_LOCKS_GUARD = threading.Lock()


@dataclass(frozen=True)
class DuckDBConfig(TableConfig):
    """Per-asset ``io_config`` for the ``duckdb`` manager: ``table``, ``schema``,
    ``partition_column`` (see :class:`~flowstone.io._tables.TableConfig`)."""


def quote(name: str) -> str:
    """A DuckDB identifier, always quoted."""
    return '"' + name.replace('"', '""') + '"'


def _target(schema: str | None, table: str) -> str:
    return f"{quote(schema)}.{quote(table)}" if schema else quote(table)


def _lock_for(key: str) -> threading.RLock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(key, threading.RLock())


def _arrow(conn: Any, query: str, params: list[Any]) -> pa.Table:
    """A query's rows as an Arrow table, read through a relation (no extra copy of the rows);
    ``to_arrow_table`` since DuckDB 1.4, ``arrow`` before."""
    relation = conn.sql(query, params=params)
    fetch = getattr(relation, "to_arrow_table", None) or relation.arrow
    table: pa.Table = fetch()
    return table


class DuckDBIOManager(TableIOManager):
    """Asset values as rows of DuckDB tables in one database file (``path``; ``":memory:"``
    for a database that lives as long as the manager). ``schema`` is where tables go unless an
    asset's ``io_config`` says otherwise (default: ``main``)."""

    manager_name = "duckdb"
    extra = "duckdb"
    reserved_columns = ("rowid",)  # DuckDB's row number, which keeps the stored order
    fold_case = True  # "ID" and "id" name one DuckDB column

    @classmethod
    def from_settings(
        cls, options: Mapping[str, Any], *, storage_dir: Path, store_url: str | None, base_dir: Path
    ) -> DuckDBIOManager:
        """From ``[io.duckdb]`` (``path`` relative to the config file's directory, ``schema``);
        by default ``<storage_dir>/flowstone.duckdb``."""
        options = dict(options)
        path = options.pop("path", None)
        schema = options.pop("schema", None)
        if options:
            raise TypeError(
                f"the duckdb I/O manager has no option(s) {sorted(options)} (known: path, schema)"
            )
        if path is None:
            path = Path(storage_dir) / "flowstone.duckdb"
        elif str(path) != MEMORY and not Path(path).is_absolute():
            path = Path(base_dir) / path
        try:
            return cls(path=path, schema=schema)
        except ValueError as exc:
            raise TypeError(str(exc)) from exc

    def __init__(self, *, path: str | os.PathLike[str], schema: str | None = None) -> None:
        if schema is not None and not (isinstance(schema, str) and IDENTIFIER.fullmatch(schema)):
            raise ValueError(f"duckdb I/O manager: schema {schema!r} is not a plain SQL identifier")
        self.schema = schema
        self.path: Path | None = None if str(path) == MEMORY else Path(path)
        key = f"memory:{id(self)}" if self.path is None else str(self.path.resolve())
        self._lock = _lock_for(key)
        self._conn: Any = None

    def __repr__(self) -> str:
        return f"DuckDBIOManager(path={str(self.path or MEMORY)!r}, schema={self.schema!r})"

    def after_fork(self) -> None:
        """In a forked step process: open a connection of its own (the parent's stays the parent's)."""
        self._conn = None

    def close(self) -> None:
        """Close the connection (and let other processes have the file); reopened when used."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _connection(self) -> Any:
        if self._conn is None:
            try:
                import duckdb
            except ImportError:
                raise missing_extra("duckdb", "duckdb", manager="duckdb") from None
            if self.path is None:
                self._conn = duckdb.connect(MEMORY)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._conn = duckdb.connect(str(self.path))
        return self._conn

    def _transient(self, exc: BaseException) -> bool:
        # A write-write conflict with another connection to the same database.
        return any(type(current).__name__ == "TransactionException" for current in _chain(exc))

    @contextmanager
    def _locked(self) -> Iterator[Any]:
        with self._lock:
            yield self._connection()

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        with self._locked() as conn:
            conn.execute("BEGIN TRANSACTION")
            try:
                yield conn
            except BaseException:
                with suppress(Exception):  # when the connection itself failed there is nothing to undo
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @staticmethod
    def _has_table(conn: Any, schema: str | None, table: str) -> bool:
        found = conn.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() "
            "AND schema_name = coalesce(?, current_schema()) AND table_name = ?",
            [schema, table],
        ).fetchall()  # to the end: DuckDB 2 refuses new work while a result is half read
        return bool(found[0][0])

    @staticmethod
    def _where(ref: TableRef, tenant: str, partition: str | None) -> tuple[str, list[Any]]:
        if partition is None:
            return f"{quote(TENANT_COLUMN)} = ? AND {quote(ref.partition_column)} IS NULL", [tenant]
        return f"{quote(TENANT_COLUMN)} = ? AND {quote(ref.partition_column)} = ?", [tenant, partition]

    # ------------------------------------------------------------------ store
    def _write(self, ctx: IOContext, ref: TableRef, table: pa.Table, kind: str) -> PartitionRecord:
        import pyarrow as pa

        sink = HashingSink()
        with pa.ipc.new_stream(pa.PythonFile(sink, mode="w"), table.schema) as stream:
            stream.write_table(table)
        record = PartitionRecord.of(table, kind, sink.size, sink.checksum)
        row = record.row(ref, ctx)
        with self._transaction() as conn:
            self._ensure_table(conn, ctx, ref, table)
            claim(ctx, ref, self.manager_name, self._owner(conn, ctx, ref))
            where, params = self._where(ref, ctx.tenant, ctx.partition_key)
            conn.execute(f"DELETE FROM {_target(ref.schema, ref.table)} WHERE {where}", params)
            self._insert(conn, ref, table, ctx.tenant, ctx.partition_key)
            conn.execute(
                f"INSERT OR REPLACE INTO {_target(ref.schema, PARTITIONS_TABLE)} "
                f"({', '.join(quote(c) for c in row)}) VALUES ({', '.join('?' for _ in row)})",
                list(row.values()),
            )
        return record

    def _ensure_table(self, conn: Any, ctx: IOContext, ref: TableRef, table: pa.Table) -> None:
        """Create the tables or add the value's new columns; refuse columns whose type changed."""
        if ref.schema:
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(ref.schema)}")
        book_columns = ", ".join(f"{quote(name)} {_BOOK_TYPES[kind]}" for name, kind in BOOKKEEPING_COLUMNS)
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {_target(ref.schema, PARTITIONS_TABLE)} "
            f"({book_columns}, PRIMARY KEY ({', '.join(quote(c) for c in BOOKKEEPING_KEY)}))"
        )
        wanted: dict[str, str] = {}
        if table.num_columns:
            conn.register(_PROBE, table.slice(0, 0))
            try:
                described = conn.execute(f"DESCRIBE SELECT * FROM {_PROBE}").fetchall()
            finally:
                conn.unregister(_PROBE)
            wanted = {str(r[0]): "null" if r[1] == '"NULL"' else str(r[1]) for r in described}
        target = _target(ref.schema, ref.table)
        existing: dict[str, str] = {}
        if self._has_table(conn, ref.schema, ref.table):
            existing = {str(r[0]): str(r[1]) for r in conn.execute(f"DESCRIBE {target}").fetchall()}
        required = (TENANT_COLUMN, ref.partition_column)
        added = plan_columns(ctx, ref, self.manager_name, existing, wanted, required=required)

        def ddl(name: str) -> str:
            return f"{quote(name)} {'VARCHAR' if wanted[name] == 'null' else wanted[name]}"

        if not existing:
            columns = [f"{quote(TENANT_COLUMN)} VARCHAR NOT NULL", f"{quote(ref.partition_column)} VARCHAR"]
            conn.execute(f"CREATE TABLE {target} ({', '.join([*columns, *map(ddl, added)])})")
            return
        for name in added:
            conn.execute(f"ALTER TABLE {target} ADD COLUMN {ddl(name)}")

    def _insert(self, conn: Any, ref: TableRef, data: pa.Table, tenant: str, partition: str | None) -> None:
        """The one INSERT of a store, from ``data`` registered as an Arrow scan (tests make it
        fail part way)."""
        if not data.num_columns:
            return
        names = ", ".join(quote(c) for c in data.column_names)
        conn.register(_SOURCE, data)
        try:
            conn.execute(
                f"INSERT INTO {_target(ref.schema, ref.table)} "
                f"({quote(TENANT_COLUMN)}, {quote(ref.partition_column)}, {names}) "
                f"SELECT ?, ?, {names} FROM {_SOURCE}",
                [tenant, partition],
            )
        finally:
            conn.unregister(_SOURCE)

    # ------------------------------------------------------------------ load
    def _records(
        self, conn: Any, ctx: IOContext, ref: TableRef, keys: Sequence[str | None]
    ) -> dict[str | None, PartitionRecord]:
        if not self._has_table(conn, ref.schema, PARTITIONS_TABLE):
            return {}
        selected = ", ".join(
            "epoch_us(updated_at) AS updated_at" if c == "updated_at" else quote(c) for c in RECORD_COLUMNS
        )
        query = (
            f"SELECT partitioned, partition_key, {selected} FROM {_target(ref.schema, PARTITIONS_TABLE)} "
            "WHERE table_name = ? AND tenant = ? AND asset = ? AND "
        )
        params: list[Any] = [ref.table, ctx.tenant, ctx.asset]
        if list(keys) == [None]:
            result = conn.execute(query + "NOT partitioned", params)
        else:
            listed = [k for k in keys if k is not None]
            result = conn.execute(
                query + "partitioned AND list_contains(?, partition_key)", [*params, listed]
            )
        names = [d[0] for d in result.description]
        found: dict[str | None, PartitionRecord] = {}
        for values in result.fetchall():
            row = dict(zip(names, values, strict=True))
            found[row["partition_key"] if row["partitioned"] else None] = PartitionRecord.from_row(row)
        return found

    @staticmethod
    def _book_key(ctx: IOContext, ref: TableRef) -> tuple[str, list[Any]]:
        partitioned, key = slot(ctx.partition_key)
        where = "table_name = ? AND tenant = ? AND partitioned = ? AND partition_key = ?"
        return where, [ref.table, ctx.tenant, partitioned, key]

    def _owner(self, conn: Any, ctx: IOContext, ref: TableRef) -> str | None:
        """The asset whose rows the (table, tenant, partition) of ``ctx`` holds, if any."""
        where, params = self._book_key(ctx, ref)
        found = conn.execute(
            f"SELECT asset FROM {_target(ref.schema, PARTITIONS_TABLE)} WHERE {where}", params
        ).fetchall()
        return str(found[0][0]) if found else None

    def _fetch(self, ctx: IOContext, ref: TableRef, keys: Sequence[str | None], many: bool) -> Fetched:
        import pyarrow as pa

        tenant = ctx.tenant
        with self._transaction() as conn:  # one snapshot for bookkeeping and rows
            records = self._records(conn, ctx, ref, keys)
            if not keys or len(records) < len(keys):
                return Fetched(records)
            if not self._has_table(conn, ref.schema, ref.table):  # dropped behind our back
                return Fetched({})
            schema = read_schema(list(records.values()))
            part = quote(ref.partition_column)
            selected = [part] if many else []
            selected += [quote(name) for name in schema.names]
            fields = [pa.field(ref.partition_column, pa.string())] if many else []
            fields += list(schema)
            if not selected:
                return Fetched(records, pa.table({}), 0)
            query = f"SELECT {', '.join(selected)} FROM {_target(ref.schema, ref.table)} WHERE "
            if many:
                listed = [k for k in keys if k is not None]
                query += f"{quote(TENANT_COLUMN)} = ? AND list_contains(?, {part}) ORDER BY {part}, rowid"
                raw = _arrow(conn, query, [tenant, listed])
            else:
                where, params = self._where(ref, tenant, keys[0])
                raw = _arrow(conn, f"{query}{where} ORDER BY rowid", params)
        table = conform(raw, pa.schema(fields))
        return Fetched(records, table, table.nbytes)

    # ------------------------------------------------------------------ delete, describe
    def _remove(self, ctx: IOContext, ref: TableRef) -> None:
        with self._transaction() as conn:
            has_book = self._has_table(conn, ref.schema, PARTITIONS_TABLE)
            if has_book and self._owner(conn, ctx, ref) not in (None, ctx.asset):
                return  # another asset's rows: this one has nothing stored there
            if self._has_table(conn, ref.schema, ref.table):
                where, params = self._where(ref, ctx.tenant, ctx.partition_key)
                conn.execute(f"DELETE FROM {_target(ref.schema, ref.table)} WHERE {where}", params)
            if has_book:
                where, params = self._book_key(ctx, ref)
                conn.execute(f"DELETE FROM {_target(ref.schema, PARTITIONS_TABLE)} WHERE {where}", params)

    def _record(self, ctx: IOContext, ref: TableRef) -> PartitionRecord | None:
        with self._locked() as conn:
            return self._records(conn, ctx, ref, [ctx.partition_key]).get(ctx.partition_key)
