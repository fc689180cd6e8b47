"""What the ``postgres`` and ``duckdb`` managers share: one SQL table per asset, rows per partition.

Both keep the same layout, so a table written by one reads the same in the other's SQL::

    <schema>.<table>                 -- io_config ``table`` (default: the asset name)
        flowstone_tenant   text NOT NULL   -- tenants share a table, never each other's rows
        <partition_column> text            -- io_config ``partition_column`` (default
                                           -- "partition_key"); NULL when unpartitioned
        ...the value's own columns...

    <schema>.flowstone_io_partitions -- one row per stored (table, tenant, partition)
        table_name, tenant, partitioned, partition_key (the key; '' when unpartitioned),
        asset, stored_kind, row_count, size_bytes, checksum, schema_json, arrow_schema,
        updated_at, materialization_id, run_id

A store replaces one partition's rows and its bookkeeping row in one transaction, so ``exists``
and ``metadata`` read one small row, and ``load`` hands back the kind that was stored (unless the
parameter's annotation asks for another) with the exact Arrow types (``arrow_schema`` is the
value's Arrow schema in IPC form). A table's columns may grow (a new column is added, NULL for
partitions stored before); a column whose type changes is an error naming asset, table and column.
A stored partition belongs to its asset: another asset pointed at the same table cannot replace
it (an error) nor see or delete it.

This module holds the parts that do not depend on the database: identifier and ``io_config``
validation, the bookkeeping record, type compatibility, hashing what is written, and turning
fetched rows back into the kind a consumer asked for (one partition, ``{key: value}`` or one
combined table). :class:`TableIOManager` runs store/load/delete on top of a backend's hooks.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

from flowstone._errors import FlowStoneError, IOManagerError
from flowstone.io._base import IOContext, StoredValue
from flowstone.io._errors import io_error, is_transient, not_found
from flowstone.io._frames import (
    element_annotation,
    from_arrow,
    output_kind,
    require_pyarrow,
    schema_of,
    to_arrow,
    wants_combined,
)

if TYPE_CHECKING:
    import pyarrow as pa

# A plain SQL identifier: what table, schema and partition_column must be. Always quoted when
# used, so case is kept; 63 characters is PostgreSQL's limit (longer names are cut silently).
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
MAX_COLUMN_BYTES = 63
TENANT_COLUMN = "flowstone_tenant"
PARTITIONS_TABLE = "flowstone_io_partitions"
DEFAULT_PARTITION_COLUMN = "partition_key"
CONFIG_KEYS = ("table", "schema", "partition_column")

# The bookkeeping table's columns with a logical type each backend maps to its own.
BOOKKEEPING_KEY = ("table_name", "tenant", "partitioned", "partition_key")
BOOKKEEPING_COLUMNS: tuple[tuple[str, str], ...] = (
    ("table_name", "text"),
    ("tenant", "text"),
    ("partitioned", "bool"),
    ("partition_key", "text"),
    ("asset", "text"),
    ("stored_kind", "text"),
    ("row_count", "bigint"),
    ("size_bytes", "bigint"),
    ("checksum", "text"),
    ("schema_json", "text"),
    ("arrow_schema", "bytes"),
    ("updated_at", "timestamp"),
    ("materialization_id", "text"),
    ("run_id", "text"),
)
RECORD_COLUMNS = (
    "stored_kind",
    "row_count",
    "size_bytes",
    "checksum",
    "schema_json",
    "arrow_schema",
    "updated_at",
)


@dataclass(frozen=True)
class TableConfig:
    """Per-asset ``io_config`` of a table manager; ``None`` means the default.

    ``table`` defaults to the asset name, ``schema`` to the manager's (else the database's
    default), ``partition_column`` to ``"partition_key"``::

        @pipeline.asset(io_manager="postgres", io_config=PostgresConfig(table="daily_sales"))
    """

    table: str | None = None
    schema: str | None = None
    partition_column: str | None = None


def _identifier_problem(field: str, value: Any) -> str | None:
    if isinstance(value, str) and IDENTIFIER.fullmatch(value):
        return None
    return (
        f"{field} {value!r} is not a plain SQL identifier: use letters, digits and _, "
        "start with a letter or _, at most 63 characters"
    )


def config_problems(config: Mapping[str, Any]) -> list[str]:
    """Everything wrong with an asset's ``io_config``, each message naming its field."""
    problems = [
        f"unknown key {key!r} (known: {', '.join(CONFIG_KEYS)})" for key in config if key not in CONFIG_KEYS
    ]
    for key in CONFIG_KEYS:
        value = config.get(key)
        if value is not None and (problem := _identifier_problem(key, value)):
            problems.append(problem)
    if config.get("table") == PARTITIONS_TABLE:
        problems.append(f"table {PARTITIONS_TABLE!r} is FlowStone's bookkeeping table; pick another name")
    if config.get("partition_column") == TENANT_COLUMN:
        problems.append(f"partition_column {TENANT_COLUMN!r} is the tenant column; pick another name")
    return problems


@dataclass(frozen=True)
class TableRef:
    """Where one asset's rows live."""

    schema: str | None
    table: str
    partition_column: str

    @property
    def display(self) -> str:
        return f"{self.schema}.{self.table}" if self.schema else self.table


def refuse(ctx: IOContext, manager: str, message: str, **context: Any) -> IOManagerError:
    return IOManagerError(
        f"asset '{ctx.asset}' cannot use the '{manager}' I/O manager: {message}",
        context={"asset": ctx.asset, "partition": ctx.partition_key, "io_manager": manager, **context},
        retryable=False,
    )


def table_ref(ctx: IOContext, *, default_schema: str | None, manager: str) -> TableRef:
    """The table for ``ctx`` from its ``io_config``; a bad name is a permanent error."""
    problems = config_problems(ctx.config)
    table = ctx.config.get("table") or ctx.asset
    if "table" not in ctx.config and (problem := _identifier_problem("asset name", table)):
        problems.append(f"{problem}; set io_config table=...")
    if problems:
        raise refuse(ctx, manager, "io_config " + "; ".join(problems))
    return TableRef(
        schema=ctx.config.get("schema") or default_schema,
        table=table,
        partition_column=ctx.config.get("partition_column") or DEFAULT_PARTITION_COLUMN,
    )


def check_columns(
    ctx: IOContext,
    ref: TableRef,
    table: pa.Table,
    *,
    manager: str,
    reserved: Sequence[str],
    fold_case: bool = False,
) -> None:
    """Refuse column names the table layout cannot hold (before anything is written).

    ``fold_case`` compares names as a database that ignores case in identifiers would (DuckDB).
    """

    def same(name: str) -> str:
        return name.lower() if fold_case else name

    taken = {same(name) for name in (TENANT_COLUMN, *reserved)}
    problems: list[str] = []
    seen: set[str] = set()
    for name in table.column_names:
        key = same(name)
        if key == same(ref.partition_column):
            problems.append(
                f"column {name!r} is the table's partition column: rename it, or set io_config "
                "partition_column to another name"
            )
        elif key in taken:
            problems.append(f"column {name!r} is reserved by the table layout; rename it")
        elif key in seen:
            problems.append(f"column {name!r} appears twice" + (" (ignoring case)" if fold_case else ""))
        elif not name or "\x00" in name or len(name.encode()) > MAX_COLUMN_BYTES:
            problems.append(f"column {name!r} must be 1 to {MAX_COLUMN_BYTES} bytes without NUL")
        seen.add(key)
    if problems:
        raise refuse(ctx, manager, "; ".join(problems), table=ref.display)


def slot(key: str | None) -> tuple[bool, str]:
    """The bookkeeping key of a partition: ``(partitioned, key)``, ``(False, "")`` for none."""
    return (key is not None, key or "")


# ---------------------------------------------------------------------------- type compatibility
_ALIASES = {
    "int": "integer",
    "int4": "integer",
    "signed": "integer",
    "int8": "bigint",
    "long": "bigint",
    "int2": "smallint",
    "short": "smallint",
    "int1": "tinyint",
    "float8": "double",
    "double precision": "double",
    "float4": "real",
    "float": "real",
    "varchar": "text",
    "string": "text",
    "character varying": "text",
    "bool": "boolean",
    "logical": "boolean",
    "timestamptz": "timestamp with time zone",
    "timestamp without time zone": "timestamp",
    "datetime": "timestamp",
    "time without time zone": "time",
    "blob": "bytea",
    "bytea": "bytea",
    '"null"': "null",
    "decimal": "numeric",
}
_SIGNED = ("tinyint", "smallint", "integer", "bigint", "hugeint")
_UNSIGNED = ("utinyint", "usmallint", "uinteger", "ubigint", "uhugeint")
_DECIMAL = re.compile(r"(?:numeric|decimal)\((\d+),(\d+)\)")


def normalize_type(name: str) -> str:
    """A SQL type name in one spelling for both backends (``INT8`` and ``bigint`` alike)."""
    text = re.sub(r"\s+", " ", name.strip().lower())
    text = re.sub(r"\s*,\s*", ",", text).replace("( ", "(").replace(" )", ")")
    return _ALIASES.get(text, text)


def compatible(existing: str, new: str) -> bool:
    """Whether a column of SQL type ``existing`` takes values of type ``new`` without loss.

    ``"null"`` (a column with no values yet) fits anywhere; integers fit wider integers and
    ``double``; ``real`` fits ``double``; a decimal fits one with the same scale and at least as
    many integer digits. Anything else must match exactly.
    """
    e, n = normalize_type(existing), normalize_type(new)
    if e == n or n == "null":
        return True
    if n in _SIGNED and e in _SIGNED:
        return _SIGNED.index(n) <= _SIGNED.index(e)
    if n in _UNSIGNED and e in _UNSIGNED:
        return _UNSIGNED.index(n) <= _UNSIGNED.index(e)
    if n in _UNSIGNED and e in _SIGNED:
        return _UNSIGNED.index(n) < _SIGNED.index(e)
    if e == "double":
        return n in _SIGNED or n in _UNSIGNED or n == "real"
    found_e, found_n = _DECIMAL.fullmatch(e), _DECIMAL.fullmatch(n)
    if found_e and found_n:
        (pe, se), (pn, sn) = map(int, found_e.groups()), map(int, found_n.groups())
        return se == sn and pn - sn <= pe - se
    return False


def incompatible(
    ctx: IOContext, ref: TableRef, manager: str, mismatches: Sequence[tuple[str, str, str]]
) -> IOManagerError:
    """The error for columns whose type differs from the existing table's."""
    detail = "; ".join(
        f"column {name!r} is {had} in the table but {got} in the value" for name, had, got in mismatches
    )
    return IOManagerError(
        f"asset '{ctx.asset}' cannot be stored in table {ref.display} ({manager}): {detail}. "
        "Cast the value to the table's types, or point io_config table= at a new table",
        context={
            "asset": ctx.asset,
            "partition": ctx.partition_key,
            "io_manager": manager,
            "table": ref.display,
            "columns": [name for name, _, _ in mismatches],
        },
        retryable=False,
    )


def claim(ctx: IOContext, ref: TableRef, manager: str, owner: str | None) -> None:
    """Refuse to replace rows another asset stored in the same table (two assets given one
    ``io_config`` table would otherwise overwrite each other's partitions)."""
    if owner is None or owner == ctx.asset:
        return
    raise IOManagerError(
        f"asset '{ctx.asset}' cannot be stored in table {ref.display} ({manager}): asset '{owner}' "
        f"stored partition {ctx.partition_key!r} of tenant '{ctx.tenant}' there. Give each asset "
        "its own io_config table",
        context={
            "asset": ctx.asset,
            "partition": ctx.partition_key,
            "io_manager": manager,
            "table": ref.display,
            "owner": owner,
        },
        retryable=False,
    )


def plan_columns(
    ctx: IOContext,
    ref: TableRef,
    manager: str,
    existing: Mapping[str, str],
    wanted: Mapping[str, str],
    *,
    required: Sequence[str],
) -> list[str]:
    """The value's columns the existing table lacks (to add); raise when types do not fit.

    ``existing`` and ``wanted`` map column names to SQL types; ``required`` lists the layout's
    own columns, without which the table is not one FlowStone made.
    """
    if not existing:
        return list(wanted)
    lacking = [name for name in required if name not in existing]
    if lacking:
        raise incompatible(
            ctx, ref, manager, [(name, "missing", "required by FlowStone") for name in lacking]
        )
    mismatches = [
        (name, existing[name], sql)
        for name, sql in wanted.items()
        if name in existing and not compatible(existing[name], sql)
    ]
    if mismatches:
        raise incompatible(ctx, ref, manager, mismatches)
    return [name for name in wanted if name not in existing]


# ---------------------------------------------------------------------------- bookkeeping
@dataclass(frozen=True)
class PartitionRecord:
    """One bookkeeping row: what is stored for a (table, tenant, partition)."""

    kind: str
    row_count: int
    size_bytes: int
    checksum: str
    schema_json: str
    arrow_schema: bytes
    updated_at: datetime

    @classmethod
    def of(cls, table: pa.Table, kind: str, size_bytes: int, checksum: str) -> PartitionRecord:
        now = datetime.now(UTC)  # microseconds, as both databases keep them
        return cls(
            kind=kind,
            row_count=table.num_rows,
            size_bytes=size_bytes,
            checksum=checksum,
            schema_json=json.dumps(schema_of(table)),
            arrow_schema=table.schema.serialize().to_pybytes(),
            updated_at=now,
        )

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> PartitionRecord:
        updated = row["updated_at"]
        if isinstance(updated, int):  # DuckDB hands back epoch microseconds (no pytz needed)
            updated = datetime.fromtimestamp(updated // 1_000_000, UTC).replace(
                microsecond=updated % 1_000_000
            )
        elif updated.tzinfo is None:
            updated = updated.replace(tzinfo=UTC)
        return cls(
            kind=str(row["stored_kind"]),
            row_count=int(row["row_count"]),
            size_bytes=int(row["size_bytes"]),
            checksum=str(row["checksum"]),
            schema_json=str(row["schema_json"]),
            arrow_schema=bytes(row["arrow_schema"]),
            updated_at=updated,
        )

    def row(self, ref: TableRef, ctx: IOContext) -> dict[str, Any]:
        """The bookkeeping row's values, by column name."""
        partitioned, key = slot(ctx.partition_key)
        return {
            "table_name": ref.table,
            "tenant": ctx.tenant,
            "partitioned": partitioned,
            "partition_key": key,
            "asset": ctx.asset,
            "stored_kind": self.kind,
            "row_count": self.row_count,
            "size_bytes": self.size_bytes,
            "checksum": self.checksum,
            "schema_json": self.schema_json,
            "arrow_schema": self.arrow_schema,
            "updated_at": self.updated_at,
            "materialization_id": ctx.materialization_id,
            "run_id": ctx.run_id,
        }

    def schema(self) -> pa.Schema:
        import pyarrow as pa

        return pa.ipc.read_schema(pa.py_buffer(self.arrow_schema))

    def stored_value(self, ref: TableRef) -> StoredValue:
        return StoredValue(
            size_bytes=self.size_bytes,
            checksum=self.checksum,
            updated_at=self.updated_at,
            row_count=self.row_count,
            schema=json.loads(self.schema_json),
            extra={"table": ref.display, "stored_kind": self.kind},
        )


class HashingSink(io.RawIOBase):
    """A write-only file that hashes and counts what passes through, then hands it on.

    The checksum is sha256 over exactly the bytes sent, computed as they are sent: no second
    pass over the data. ``forward`` (when given) receives each chunk.
    """

    def __init__(self, forward: Any = None) -> None:
        super().__init__()
        self._hash = hashlib.sha256()
        self.size = 0
        self._forward = forward

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self._hash.update(view)
        self.size += view.nbytes
        if self._forward is not None:
            self._forward(view)
        return view.nbytes

    @property
    def checksum(self) -> str:
        return "sha256:" + self._hash.hexdigest()


# ---------------------------------------------------------------------------- reading back
def read_schema(records: Sequence[PartitionRecord]) -> pa.Schema:
    """The columns to fetch for ``records``: their one schema, or all of them unified."""
    import pyarrow as pa

    unique = {r.arrow_schema: r for r in records}
    if len(unique) == 1:
        return next(iter(unique.values())).schema()
    schemas = [r.schema().remove_metadata() for r in unique.values()]
    try:
        return pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise IOManagerError(
            f"the partitions asked for were stored with schemas that do not combine: {exc}",
            retryable=False,
            original=exc,
        ) from exc


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table``'s columns (in ``schema``'s order) cast to ``schema``'s types, with its metadata."""
    import pyarrow as pa

    columns = [
        pa.chunked_array([pa.nulls(table.num_rows)])
        if pa.types.is_null(field.type)
        else table.column(i).cast(field.type)
        for i, field in enumerate(schema)
    ]  # an all-null column is kept as text by the databases
    return pa.Table.from_arrays(columns, schema=schema)


def key_runs(column: pa.ChunkedArray) -> dict[str, tuple[int, int]]:
    """For a column sorted into runs of equal keys: ``{key: (offset, length)}``."""
    import pyarrow.compute as pc

    if len(column) == 0:
        return {}
    encoded = pc.run_end_encode(column.combine_chunks())
    runs: dict[str, tuple[int, int]] = {}
    start = 0
    for key, end in zip(encoded.values.to_pylist(), encoded.run_ends.to_pylist(), strict=True):
        runs[key] = (start, end - start)
        start = end
    return runs


@dataclass
class Fetched:
    """What a backend read in one consistent snapshot: the bookkeeping rows found and the rows.

    ``table`` is ``None`` when a partition asked for has no bookkeeping row. Otherwise it holds
    the columns of :func:`read_schema` (partition column first when many partitions were read),
    sorted into runs of one partition each, rows in the order they were stored.
    """

    records: dict[str | None, PartitionRecord]
    table: pa.Table | None = None
    size_bytes: int = 0


class TableIOManager:
    """Store, load, delete over a backend's hooks; subclasses implement the ``_`` methods below."""

    manager_name: ClassVar[str] = "table"
    extra: ClassVar[str] = "table"
    reserved_columns: ClassVar[tuple[str, ...]] = ()
    fold_case: ClassVar[bool] = False  # the database ignores case in identifiers
    schema: str | None = None

    @classmethod
    def validate_config(cls, config: Mapping[str, Any]) -> list[str]:
        """Problems with an asset's ``io_config`` (keys table, schema, partition_column)."""
        return config_problems(config)

    # -- backend hooks
    def _write(self, ctx: IOContext, ref: TableRef, table: pa.Table, kind: str) -> PartitionRecord:
        raise NotImplementedError

    def _fetch(self, ctx: IOContext, ref: TableRef, keys: Sequence[str | None], many: bool) -> Fetched:
        raise NotImplementedError

    def _remove(self, ctx: IOContext, ref: TableRef) -> None:
        raise NotImplementedError

    def _record(self, ctx: IOContext, ref: TableRef) -> PartitionRecord | None:
        raise NotImplementedError

    def _transient(self, exc: BaseException) -> bool:
        return False

    # -- shared
    def table_ref(self, ctx: IOContext) -> TableRef:
        """Where ``ctx``'s rows live (``io_config`` checked)."""
        return table_ref(ctx, default_schema=self.schema, manager=self.manager_name)

    @contextmanager
    def _failures(self, ctx: IOContext, action: str, ref: TableRef) -> Iterator[None]:
        try:
            yield
        except FlowStoneError:
            raise
        except Exception as exc:
            raise io_error(
                f"{self.manager_name}: could not {action} asset '{ctx.asset}' in table {ref.display}",
                exc,
                asset=ctx.asset,
                partition_key=ctx.partition_key,
                retryable=is_transient(exc) or self._transient(exc),
                io_manager=self.manager_name,
                table=ref.display,
            ) from exc

    def store(self, ctx: IOContext, value: Any) -> StoredValue:
        """Replace the partition's rows with ``value`` (a table of any kind) atomically."""
        ref = self.table_ref(ctx)
        require_pyarrow(self.manager_name, self.extra)
        with self._failures(ctx, "store", ref):  # rows that do not make a table fail here too
            table, kind = to_arrow(value, manager=self.manager_name, asset=ctx.asset)
            check_columns(
                ctx,
                ref,
                table,
                manager=self.manager_name,
                reserved=self.reserved_columns,
                fold_case=self.fold_case,
            )
            record = self._write(ctx, ref, table, kind)
        return record.stored_value(ref)

    def load(self, ctx: IOContext) -> Any:
        """The partition's rows as the annotation's kind, else the kind that was stored."""
        ref = self.table_ref(ctx)
        require_pyarrow(self.manager_name, self.extra)
        with self._failures(ctx, "load", ref):
            fetched = self._fetch(ctx, ref, [ctx.partition_key], False)
        record = fetched.records.get(ctx.partition_key)
        if record is None or fetched.table is None:
            raise not_found(f"table {ref.display}", asset=ctx.asset, partition_key=ctx.partition_key)
        table = conform(fetched.table, record.schema())
        ctx.observe(row_count=table.num_rows, size_bytes=fetched.size_bytes)
        return from_arrow(table, output_kind(ctx.expected_type, record.kind))

    def load_many(self, ctx: IOContext, keys: Sequence[str]) -> Any:
        """Many partitions in one query: one combined table (partition column kept) when the
        annotation asks for a table, else ``{key: value}``."""
        ref = self.table_ref(ctx)
        pa = require_pyarrow(self.manager_name, self.extra)
        wanted = list(dict.fromkeys(keys))
        with self._failures(ctx, "load", ref):
            fetched = self._fetch(ctx, ref, wanted, True)
        for key in wanted:
            if key not in fetched.records:
                raise not_found(f"table {ref.display}", asset=ctx.asset, partition_key=key)
        table = fetched.table
        if table is None:  # no keys at all
            if wants_combined(ctx.expected_type):
                return from_arrow(pa.table({}), output_kind(ctx.expected_type, "arrow"))
            return {}
        runs = key_runs(table.column(0))
        ctx.observe(row_count=table.num_rows, size_bytes=fetched.size_bytes)
        if wants_combined(ctx.expected_type):
            parts = [table.slice(*runs[key]) for key in wanted if key in runs]
            combined = pa.concat_tables(parts) if parts else table.slice(0, 0)
            first = fetched.records[wanted[0]].kind if wanted else "arrow"
            return from_arrow(combined.replace_schema_metadata(None), output_kind(ctx.expected_type, first))
        element = element_annotation(ctx.expected_type)
        values: dict[str, Any] = {}
        for key in wanted:
            record = fetched.records[key]
            schema = record.schema()
            offset, length = runs.get(key, (0, 0))
            part = table.slice(offset, length).select(schema.names)
            values[key] = from_arrow(conform(part, schema), output_kind(element, record.kind))
        return values

    def delete(self, ctx: IOContext) -> None:
        """Remove the partition's rows and bookkeeping row; nothing stored is fine."""
        ref = self.table_ref(ctx)
        with self._failures(ctx, "delete", ref):
            self._remove(ctx, ref)

    def exists(self, ctx: IOContext) -> bool:
        return self.metadata(ctx) is not None

    def metadata(self, ctx: IOContext) -> StoredValue | None:
        """Size, checksum, rows and schema of what is stored, from the bookkeeping row."""
        ref = self.table_ref(ctx)
        with self._failures(ctx, "describe", ref):
            record = self._record(ctx, ref)
        return None if record is None else record.stored_value(ref)
