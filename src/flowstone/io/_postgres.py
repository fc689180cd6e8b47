"""The ``postgres`` I/O manager: one PostgreSQL table per asset, rows streamed with COPY.

Table layout and bookkeeping are described in :mod:`flowstone.io._tables`; PostgreSQL adds a
``flowstone_row`` identity column so rows load in the order they were stored, and one index on
``(flowstone_tenant, <partition_column>, flowstone_row)``.

A store is one transaction: an advisory lock on (table, tenant, partition), the table created or
widened when needed (under a second lock on the table), ``DELETE`` of the partition's rows,
``COPY ... FROM STDIN (FORMAT csv)`` fed by ``pyarrow.csv`` through the raw psycopg connection of
that same transaction, and an upsert of the bookkeeping row. The checksum is sha256 over the CSV
bytes as they are sent. A load reads the bookkeeping row and the rows (``COPY (SELECT ...) TO
STDOUT``, parsed by ``pyarrow.csv``) in one REPEATABLE READ transaction.

Identifiers are quoted by SQLAlchemy; values are bound parameters or streamed CSV, never SQL
text. The COPY ... TO query cannot take parameters, so its tenant and partition are set with
``set_config(..., is_local => true)`` (parameters) and read back with ``current_setting``.

Usage::

    app = fs.FlowStone(pipeline, io_managers={"postgres": PostgresIOManager(url="postgresql://...")})

    @pipeline.asset(io_manager="postgres", io_config=PostgresConfig(table="orders", schema="mart"))
    def orders(context) -> pd.DataFrame: ...
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from hashlib import sha1
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

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
    plan_columns,
    read_schema,
    refuse,
    slot,
)

if TYPE_CHECKING:
    import pyarrow as pa

ROW_COLUMN = "flowstone_row"
_SETTING_TENANT = "flowstone.tenant"
_SETTING_PARTITION = "flowstone.partition"
_SETTING_PARTITIONS = "flowstone.partitions"
_BOOK_TYPES: dict[str, Any] = {
    "text": sa.Text(),
    "bool": sa.Boolean(),
    "bigint": sa.BigInteger(),
    "bytes": sa.LargeBinary(),  # bytea
    "timestamp": sa.DateTime(timezone=True),
}
# SQLSTATE classes worth a retry: connection exception, transaction rollback (serialization,
# deadlock), insufficient resources, operator intervention (shutdown, cancel).
_TRANSIENT_STATES = ("08", "40", "53", "57")


@functools.cache
def _plain() -> Any:
    """A PostgreSQL dialect that compiles the COPY statements psycopg runs as they are (no
    %-doubling of identifiers). The dialect module is imported on first use: ``import
    flowstone`` stays light."""
    from sqlalchemy.dialects.postgresql.base import PGDialect

    return PGDialect(paramstyle="named")  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class PostgresConfig(TableConfig):
    """Per-asset ``io_config`` for the ``postgres`` manager: ``table``, ``schema``,
    ``partition_column`` (see :class:`~flowstone.io._tables.TableConfig`)."""


def _is_json(t: pa.DataType) -> bool:
    import pyarrow.types as pt

    return bool(pt.is_list(t) or pt.is_large_list(t) or pt.is_fixed_size_list(t) or pt.is_struct(t))


def _is_bytes(t: pa.DataType) -> bool:
    import pyarrow.types as pt

    return bool(
        pt.is_binary(t) or pt.is_large_binary(t) or pt.is_fixed_size_binary(t) or pt.is_binary_view(t)
    )


def _json_leaves_ok(t: pa.DataType) -> bool:
    import pyarrow.types as pt

    if _is_json(t):
        children = [t.field(i).type for i in range(t.num_fields)] if pt.is_struct(t) else [t.value_type]
        return all(_json_leaves_ok(child) for child in children)
    return bool(
        pt.is_integer(t)
        or pt.is_floating(t)
        or pt.is_boolean(t)
        or pt.is_null(t)
        or pt.is_string(t)
        or pt.is_large_string(t)
    )


def _sql_type(t: pa.DataType) -> Any:
    """The PostgreSQL column type for an Arrow type, or None when there is none."""
    import pyarrow as pa
    import pyarrow.types as pt
    from sqlalchemy.dialects import postgresql

    if pt.is_dictionary(t):
        return _sql_type(t.value_type)
    if pt.is_null(t) or pt.is_string(t) or pt.is_large_string(t) or pt.is_string_view(t):
        return sa.Text()
    if pt.is_boolean(t):
        return sa.Boolean()
    if t in (pa.int8(), pa.int16(), pa.uint8()):
        return sa.SmallInteger()
    if t in (pa.int32(), pa.uint16()):
        return sa.Integer()
    if t in (pa.int64(), pa.uint32()):
        return sa.BigInteger()
    if t == pa.uint64():
        return sa.Numeric(20, 0)
    if pt.is_floating(t):
        return postgresql.DOUBLE_PRECISION() if t == pa.float64() else postgresql.REAL()
    if pt.is_decimal(t):
        return sa.Numeric(t.precision, t.scale)
    if _is_bytes(t):
        return postgresql.BYTEA()
    if pt.is_date(t):
        return sa.Date()
    if pt.is_timestamp(t):
        return sa.DateTime(timezone=t.tz is not None)
    if pt.is_time(t):
        return sa.Time()
    if _is_json(t) and _json_leaves_ok(t):
        return postgresql.JSONB()
    return None


def _csv_column(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """A column in the form ``pyarrow.csv`` writes and PostgreSQL's CSV COPY reads."""
    import pyarrow as pa
    import pyarrow.types as pt

    t = column.type
    if pt.is_dictionary(t):
        return _csv_column(column.cast(t.value_type))
    if pt.is_string_view(t):
        return column.cast(pa.string())
    if pt.is_timestamp(t) and t.tz is not None:
        return column.cast(pa.timestamp(t.unit, tz="UTC"))  # same instants, written with "Z"
    if _is_bytes(t):
        return pa.chunked_array(
            [pa.array([None if v is None else "\\x" + v.hex() for v in column.to_pylist()], pa.string())]
        )
    if _is_json(t):
        dumped = [None if v is None else json.dumps(v, allow_nan=False) for v in column.to_pylist()]
        return pa.chunked_array([pa.array(dumped, pa.string())])
    return column


def _read_type(t: pa.DataType) -> pa.DataType:
    """What ``pyarrow.csv`` parses a column into before the cast back to ``t``."""
    import pyarrow as pa
    import pyarrow.types as pt

    if pt.is_dictionary(t):
        return _read_type(t.value_type)
    if pt.is_null(t) or _is_bytes(t) or _is_json(t) or pt.is_string_view(t) or pt.is_decimal256(t):
        return pa.string()
    if pt.is_float16(t):
        return pa.float32()
    if pt.is_date64(t):
        return pa.date32()
    if pt.is_time(t):
        return pa.time64("us")
    if pt.is_timestamp(t):
        return pa.timestamp(t.unit)  # selected AT TIME ZONE 'UTC'
    return t


def _from_read(column: pa.ChunkedArray, t: pa.DataType) -> pa.ChunkedArray:
    """Undo the text forms of bytea (hex) and jsonb; :func:`conform` does the rest."""
    import pyarrow as pa
    import pyarrow.types as pt

    if pt.is_dictionary(t):
        return _from_read(column, t.value_type)
    if _is_bytes(t):
        return pa.chunked_array(
            [pa.array([None if v is None else bytes.fromhex(v) for v in column.to_pylist()], pa.binary())]
        )
    if _is_json(t):
        return pa.chunked_array(
            [pa.array([None if v is None else json.loads(v) for v in column.to_pylist()], t)]
        )
    return column


class PostgresIOManager(TableIOManager):
    """Asset values as rows of a PostgreSQL table: one table per asset, tenants and partitions
    side by side, each partition replaced atomically.

    Give ``url`` (``postgresql://user@host/db``; the psycopg 3 driver is used) or an SQLAlchemy
    ``engine`` built on ``postgresql+psycopg``; ``schema`` is where tables go unless an asset's
    ``io_config`` says otherwise (default: the connection's ``search_path``). The engine is made on
    first use and disposed by :meth:`close`.
    """

    manager_name = "postgres"
    extra = "postgres"
    reserved_columns = (ROW_COLUMN,)

    @classmethod
    def from_settings(
        cls, options: Mapping[str, Any], *, storage_dir: Path, store_url: str | None, base_dir: Path
    ) -> PostgresIOManager:
        """From ``[io.postgres]`` (``url``, ``schema``); without ``url`` the metadata store's
        database, when that is PostgreSQL."""
        options = dict(options)
        url = options.pop("url", None)
        schema = options.pop("schema", None)
        if options:
            raise TypeError(
                f"the postgres I/O manager has no option(s) {sorted(options)} (known: url, schema)"
            )
        if url is None:
            if store_url is None or sa.make_url(store_url).get_backend_name() != "postgresql":
                raise TypeError(
                    "the postgres I/O manager needs a PostgreSQL database and the metadata store is not "
                    'one: set `[io.postgres] url = "postgresql://user@host/db"` in flowstone.toml'
                )
            url = store_url
        try:
            return cls(url=url, schema=schema)
        except ValueError as exc:
            raise TypeError(str(exc)) from exc

    def __init__(
        self, *, url: str | sa.URL | None = None, engine: Engine | None = None, schema: str | None = None
    ) -> None:
        from flowstone.store._store import normalize_url

        if (url is None) == (engine is None):
            raise TypeError("PostgresIOManager takes url= or engine= (exactly one)")
        if schema is not None and not (isinstance(schema, str) and IDENTIFIER.fullmatch(schema)):
            raise ValueError(f"postgres I/O manager: schema {schema!r} is not a plain SQL identifier")
        self.schema = schema
        self._lock = threading.Lock()
        self._engine = engine
        self._owns_engine = engine is None
        if engine is not None:
            self._url = engine.url
        else:
            try:
                text = url.render_as_string(hide_password=False) if isinstance(url, sa.URL) else str(url)
                self._url = sa.make_url(normalize_url(text))
            except sa.exc.ArgumentError as exc:
                raise ValueError(f"postgres I/O manager: {url!r} is not a database URL") from exc
        if self._url.get_backend_name() != "postgresql" or self._url.get_driver_name() != "psycopg":
            raise ValueError(
                f"postgres I/O manager: {self._url.render_as_string()!r} is not a postgresql+psycopg URL"
            )

    def __repr__(self) -> str:
        return f"PostgresIOManager(url={self._url.render_as_string()!r}, schema={self.schema!r})"

    def after_fork(self) -> None:
        """In a forked step process: never reuse the parent's pooled connections."""
        if self._engine is not None:
            self._engine.dispose(close=False)

    def close(self) -> None:
        """Dispose of the engine this manager made (one passed in is left to its owner)."""
        with self._lock:
            if self._engine is not None and self._owns_engine:
                self._engine.dispose()
                self._engine = None

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine, made on first use."""
        with self._lock:
            if self._engine is None:
                try:
                    import psycopg  # noqa: F401
                except ImportError:
                    raise missing_extra("postgres", "psycopg", manager="postgres") from None
                self._engine = sa.create_engine(self._url, pool_pre_ping=True)
            return self._engine

    def _transient(self, exc: BaseException) -> bool:
        try:
            import psycopg
        except ImportError:
            return False
        for current in _chain(exc):
            state = getattr(current, "sqlstate", None)
            if isinstance(current, psycopg.OperationalError):
                return True
            if isinstance(state, str) and state.startswith(_TRANSIENT_STATES):
                return True
        return False

    # ------------------------------------------------------------------ tables and names
    @staticmethod
    def _book(schema: str | None) -> sa.Table:
        columns = [
            sa.Column(name, _BOOK_TYPES[kind], nullable=name in ("materialization_id", "run_id"))
            for name, kind in BOOKKEEPING_COLUMNS
        ]
        return sa.Table(
            PARTITIONS_TABLE,
            sa.MetaData(),
            *columns,
            sa.PrimaryKeyConstraint(*BOOKKEEPING_KEY),
            schema=schema,
        )

    @staticmethod
    def _rows(ref: TableRef, names: Sequence[str] = ()) -> sa.TableClause:
        """The data table with the columns a statement names (no types needed)."""
        names = list(dict.fromkeys([TENANT_COLUMN, ref.partition_column, ROW_COLUMN, *names]))
        columns: list[sa.ColumnClause[Any]] = [sa.column(n) for n in names]
        return sa.table(ref.table, *columns, schema=ref.schema)

    @staticmethod
    def _regclass_name(schema: str | None, table: str) -> str:
        quote = _plain().identifier_preparer.quote_identifier
        return f"{quote(schema)}.{quote(table)}" if schema else quote(table)

    @staticmethod
    def _where(rows: sa.TableClause, ref: TableRef, tenant: Any, partition: Any) -> list[Any]:
        column = rows.c[ref.partition_column]
        return [
            rows.c[TENANT_COLUMN] == tenant,
            column.is_(None) if partition is None else column == partition,
        ]

    def _existing(self, conn: Connection, ref: TableRef) -> tuple[dict[str, str], bool]:
        """The data table's columns (name to SQL type; empty when missing) and whether the
        bookkeeping table exists."""
        found = conn.execute(
            sa.text(
                "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
                "WHERE a.attrelid = to_regclass(:name) AND a.attnum > 0 AND NOT a.attisdropped "
                "ORDER BY a.attnum"
            ),
            {"name": self._regclass_name(ref.schema, ref.table)},
        ).all()
        book = conn.execute(
            sa.select(sa.func.to_regclass(self._regclass_name(ref.schema, PARTITIONS_TABLE)))
        ).scalar()
        return {str(name): str(sql) for name, sql in found}, book is not None

    @staticmethod
    def _schema_exists(conn: Connection, schema: str) -> bool:
        found = conn.execute(sa.text("SELECT 1 FROM pg_namespace WHERE nspname = :name"), {"name": schema})
        return found.first() is not None

    @staticmethod
    def _lock_on(conn: Connection, *parts: Any) -> None:
        key = "\x1f".join(str(p) for p in parts)
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtextextended(key, 0))))

    # ------------------------------------------------------------------ store
    def _write(self, ctx: IOContext, ref: TableRef, table: pa.Table, kind: str) -> PartitionRecord:
        import pyarrow as pa
        from sqlalchemy.dialects.postgresql import insert

        types: dict[str, Any] = {}
        for field in table.schema:
            sql = _sql_type(field.type)
            if sql is None:
                raise refuse(
                    ctx,
                    self.manager_name,
                    f"column {field.name!r} has Arrow type {field.type}, which has no PostgreSQL column "
                    "type here (cast it, e.g. durations to int64; nested values may hold numbers, "
                    "strings, booleans, lists and structs)",
                    table=ref.display,
                )
            types[field.name] = sql
        wanted = {
            f.name: "null"
            if pa.types.is_null(f.type)
            else str(types[f.name].compile(dialect=_plain())).lower()
            for f in table.schema
        }
        with self.engine.begin() as conn:
            partitioned = ctx.partition_key is not None
            self._lock_on(conn, "partition", ref.display, ctx.tenant, partitioned, ctx.partition_key or "")
            self._ensure_table(conn, ctx, ref, types, wanted)
            claim(ctx, ref, self.manager_name, self._owner(conn, ctx, ref))
            rows = self._rows(ref)
            conn.execute(sa.delete(rows).where(*self._where(rows, ref, ctx.tenant, ctx.partition_key)))
            sink = self._copy_in(conn, ctx, ref, table)
            record = PartitionRecord.of(table, kind, sink.size, sink.checksum)
            book = self._book(ref.schema)
            upsert = insert(book).values(**record.row(ref, ctx))
            keep = [c for c, _ in BOOKKEEPING_COLUMNS if c not in BOOKKEEPING_KEY]
            conn.execute(
                upsert.on_conflict_do_update(
                    index_elements=list(BOOKKEEPING_KEY), set_={c: upsert.excluded[c] for c in keep}
                )
            )
        return record

    def _ensure_table(
        self,
        conn: Connection,
        ctx: IOContext,
        ref: TableRef,
        types: Mapping[str, Any],
        wanted: Mapping[str, str],
    ) -> None:
        """Create the tables or add the value's new columns; refuse columns whose type changed."""
        required = (TENANT_COLUMN, ref.partition_column, ROW_COLUMN)
        existing, has_book = self._existing(conn, ref)
        if (
            existing
            and has_book
            and not plan_columns(ctx, ref, self.manager_name, existing, wanted, required=required)
        ):
            return
        self._lock_on(conn, "ddl", ref.display)  # one creator at a time; others see its work after
        if ref.schema and not self._schema_exists(conn, ref.schema):  # CREATE needs a privilege
            conn.execute(sa.schema.CreateSchema(ref.schema, if_not_exists=True))
        self._book(ref.schema).create(conn, checkfirst=True)
        existing, _ = self._existing(conn, ref)
        added = plan_columns(ctx, ref, self.manager_name, existing, wanted, required=required)
        if not existing:
            digest = sha1(ref.display.encode()).hexdigest()[:8]
            sa.Table(
                ref.table,
                sa.MetaData(),
                sa.Column(TENANT_COLUMN, sa.Text(), nullable=False),
                sa.Column(ref.partition_column, sa.Text()),
                sa.Column(ROW_COLUMN, sa.BigInteger(), sa.Identity(always=True, cache=1000), nullable=False),
                *[sa.Column(name, types[name]) for name in added],
                sa.Index(
                    f"{ref.table[:32]}_{digest}_flowstone_idx",
                    TENANT_COLUMN,
                    ref.partition_column,
                    ROW_COLUMN,
                ),
                schema=ref.schema,
            ).create(conn)
            return
        preparer = conn.dialect.identifier_preparer
        target = preparer.format_table(self._rows(ref))
        for name in added:
            column = sa.schema.CreateColumn(sa.Column(name, types[name])).compile(dialect=conn.dialect)
            conn.exec_driver_sql(f"ALTER TABLE {target} ADD COLUMN {column}")

    def _copy_in(self, conn: Connection, ctx: IOContext, ref: TableRef, table: pa.Table) -> HashingSink:
        """Stream the value as CSV into the table through the transaction's own connection."""
        import pyarrow as pa
        import pyarrow.csv as pcsv

        n = table.num_rows
        partition = (
            pa.nulls(n, pa.string())
            if ctx.partition_key is None
            else pa.repeat(pa.scalar(ctx.partition_key, pa.string()), n)
        )
        data = pa.table(
            [
                pa.repeat(pa.scalar(ctx.tenant, pa.string()), n),
                partition,
                *(_csv_column(c) for c in table.columns),
            ],
            names=[TENANT_COLUMN, ref.partition_column, *table.column_names],
        )
        preparer = _plain().identifier_preparer
        statement = (
            f"COPY {preparer.format_table(self._rows(ref))} "
            f"({', '.join(preparer.quote_identifier(c) for c in data.column_names)}) FROM STDIN (FORMAT csv)"
        )
        raw = conn.connection.driver_connection
        assert raw is not None
        with raw.cursor() as cursor, cursor.copy(statement) as copy:
            sink = HashingSink(lambda chunk: self._send(copy, chunk))
            options = pcsv.WriteOptions(include_header=False, batch_size=16_384)
            with pcsv.CSVWriter(pa.PythonFile(sink, mode="w"), data.schema, write_options=options) as writer:
                writer.write_table(data)
        return sink

    def _send(self, copy: Any, chunk: memoryview) -> None:
        """Send one chunk of CSV to the server (tests make it fail part way)."""
        copy.write(bytes(chunk))

    # ------------------------------------------------------------------ load
    @contextmanager
    def _snapshot(self) -> Iterator[Connection]:
        """A read-only transaction that sees one consistent state of all tables."""
        with self.engine.connect() as conn:
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                conn.execute(sa.text("SET TRANSACTION READ ONLY"))
                yield conn

    def _records(
        self, conn: Connection, ctx: IOContext, ref: TableRef, keys: Sequence[str | None]
    ) -> dict[str | None, PartitionRecord]:
        from sqlalchemy.dialects.postgresql import ARRAY

        book = self._book(ref.schema)
        query = sa.select(
            book.c.partitioned, book.c.partition_key, *(book.c[c] for c in RECORD_COLUMNS)
        ).where(book.c.table_name == ref.table, book.c.tenant == ctx.tenant, book.c.asset == ctx.asset)
        if list(keys) == [None]:
            query = query.where(book.c.partitioned.is_(False))
        else:
            array = sa.bindparam("keys", [k for k in keys if k is not None], type_=ARRAY(sa.Text()))
            query = query.where(book.c.partitioned.is_(True), book.c.partition_key == sa.any_(array))
        found: dict[str | None, PartitionRecord] = {}
        for row in conn.execute(query):
            key = row.partition_key if row.partitioned else None
            found[key] = PartitionRecord.from_row(dict(row._mapping))
        return found

    def _fetch(self, ctx: IOContext, ref: TableRef, keys: Sequence[str | None], many: bool) -> Fetched:
        with self._snapshot() as conn:
            existing, has_book = self._existing(conn, ref)
            if not existing or not has_book:
                return Fetched({})
            records = self._records(conn, ctx, ref, keys)
            if len(records) < len(keys) or not keys:
                return Fetched(records)
            schema = read_schema(list(records.values()))
            table, size = self._copy_out(conn, ref, ctx.tenant, keys, schema, many)
            return Fetched(records, table, size)

    def _copy_out(
        self,
        conn: Connection,
        ref: TableRef,
        tenant: str,
        keys: Sequence[str | None],
        schema: pa.Schema,
        many: bool,
    ) -> tuple[pa.Table, int]:
        """The rows of ``keys`` as an Arrow table with ``schema``'s columns (the partition column
        first when ``many``), sorted by partition then stored order."""
        import pyarrow as pa
        import pyarrow.csv as pcsv
        import pyarrow.types as pt
        from sqlalchemy.dialects.postgresql import JSONB

        rows = self._rows(ref, schema.names)
        part = rows.c[ref.partition_column]
        selected: list[Any] = [part] if many else []
        fields: list[pa.Field] = [pa.field(ref.partition_column, pa.string())] if many else []
        for field in schema:
            column: Any = rows.c[field.name]
            t = field.type.value_type if pt.is_dictionary(field.type) else field.type
            if pt.is_timestamp(t) and t.tz is not None:
                column = sa.func.timezone("UTC", column)
            elif _is_bytes(t):
                column = sa.func.encode(column, "hex")
            elif _is_json(t):
                column = sa.cast(column, sa.Text())
            selected.append(column)
            fields.append(field)
        if not selected:
            return pa.table({}), 0
        setting = sa.func.current_setting
        settings: dict[str, str] = {_SETTING_TENANT: tenant}
        query = sa.select(*selected).where(rows.c[TENANT_COLUMN] == setting(_SETTING_TENANT))
        if many:
            settings[_SETTING_PARTITIONS] = json.dumps(list(keys))
            listed = sa.func.jsonb_array_elements_text(sa.cast(setting(_SETTING_PARTITIONS), JSONB()))
            query = query.where(part.in_(sa.select(listed))).order_by(part, rows.c[ROW_COLUMN])
        elif keys[0] is None:
            query = query.where(part.is_(None)).order_by(rows.c[ROW_COLUMN])
        else:
            settings[_SETTING_PARTITION] = str(keys[0])
            query = query.where(part == setting(_SETTING_PARTITION)).order_by(rows.c[ROW_COLUMN])
        local = {"TimeZone": "UTC", "DateStyle": "ISO, YMD", "extra_float_digits": "3", **settings}
        conn.execute(sa.select(*(sa.func.set_config(name, value, True) for name, value in local.items())))
        sql = str(query.compile(dialect=_plain(), compile_kwargs={"literal_binds": True}))
        raw = conn.connection.driver_connection
        assert raw is not None
        chunks: list[Any] = []
        with raw.cursor() as cursor, cursor.copy(f"COPY ({sql}) TO STDOUT (FORMAT csv)") as copy:
            chunks.extend(copy)
        data = b"".join(chunks)
        names = [f"c{i}" for i in range(len(fields))]
        read_types = [_read_type(f.type) for f in fields]
        if data:
            parsed = pcsv.read_csv(
                pa.py_buffer(data),
                read_options=pcsv.ReadOptions(column_names=names),
                parse_options=pcsv.ParseOptions(newlines_in_values=True),
                convert_options=pcsv.ConvertOptions(
                    column_types=dict(zip(names, read_types, strict=True)),
                    null_values=[""],
                    strings_can_be_null=True,
                    quoted_strings_can_be_null=False,
                    true_values=["t"],
                    false_values=["f"],
                ),
            )
            columns = parsed.columns
        else:
            columns = [pa.chunked_array([], t) for t in read_types]
        converted = [_from_read(c, f.type) for c, f in zip(columns, fields, strict=True)]
        table = pa.Table.from_arrays(converted, names=[f.name for f in fields])
        return table, len(data)

    # ------------------------------------------------------------------ delete, describe
    def _remove(self, ctx: IOContext, ref: TableRef) -> None:
        with self.engine.begin() as conn:
            partitioned = ctx.partition_key is not None
            self._lock_on(conn, "partition", ref.display, ctx.tenant, partitioned, ctx.partition_key or "")
            existing, has_book = self._existing(conn, ref)
            owner = self._owner(conn, ctx, ref) if has_book else None
            if owner not in (None, ctx.asset):
                return  # another asset's rows: this one has nothing stored there
            if existing:
                rows = self._rows(ref)
                conn.execute(sa.delete(rows).where(*self._where(rows, ref, ctx.tenant, ctx.partition_key)))
            if has_book:
                book = self._book(ref.schema)
                conn.execute(sa.delete(book).where(*self._book_key(book, ctx, ref)))

    def _book_key(self, book: sa.Table, ctx: IOContext, ref: TableRef) -> list[Any]:
        partitioned, key = slot(ctx.partition_key)
        return [
            book.c.table_name == ref.table,
            book.c.tenant == ctx.tenant,
            book.c.partitioned.is_(partitioned),
            book.c.partition_key == key,
        ]

    def _owner(self, conn: Connection, ctx: IOContext, ref: TableRef) -> str | None:
        """The asset whose rows the (table, tenant, partition) of ``ctx`` holds, if any."""
        book = self._book(ref.schema)
        found = conn.execute(sa.select(book.c.asset).where(*self._book_key(book, ctx, ref))).scalar()
        return None if found is None else str(found)

    def _record(self, ctx: IOContext, ref: TableRef) -> PartitionRecord | None:
        with self.engine.connect() as conn:
            has_book = conn.execute(
                sa.select(sa.func.to_regclass(self._regclass_name(ref.schema, PARTITIONS_TABLE)))
            ).scalar()
            if has_book is None:
                return None
            return self._records(conn, ctx, ref, [ctx.partition_key]).get(ctx.partition_key)
