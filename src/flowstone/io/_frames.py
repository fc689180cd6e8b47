"""Tables in three libraries: recognise them, convert through Arrow, honour annotations.

A *kind* names a table library: ``"arrow"`` (``pyarrow.Table``), ``"pandas"``
(``pandas.DataFrame``), ``"polars"`` (``polars.DataFrame``) or ``"rows"`` (a list of dicts).
Kinds are found from values and annotations by module name, so nothing here imports pandas or
polars unless a value of theirs is already in hand. Arrow is the common currency: every table
manager converts to Arrow to write and from Arrow after reading.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from flowstone.io._errors import missing_extra

if TYPE_CHECKING:
    import pyarrow as pa

KINDS = ("arrow", "pandas", "polars", "rows")
_SCHEMA_KIND = b"flowstone.kind"

# Fully-qualified class names (and their common spellings in string annotations) per kind.
_CLASS_KINDS = {
    "pyarrow.lib.Table": "arrow",
    "pyarrow.Table": "arrow",
    "pa.Table": "arrow",
    "pandas.core.frame.DataFrame": "pandas",
    "pandas.DataFrame": "pandas",
    "pd.DataFrame": "pandas",
    "polars.dataframe.frame.DataFrame": "polars",
    "polars.DataFrame": "polars",
    "pl.DataFrame": "polars",
    "polars.lazyframe.frame.LazyFrame": "polars",
}


def require_pyarrow(manager: str, extra: str = "parquet") -> Any:
    """Import pyarrow or raise the error naming the extra to install."""
    try:
        import pyarrow
    except ImportError:
        raise missing_extra(extra, "pyarrow", manager=manager) from None
    return pyarrow


def kind_of(value: Any) -> str | None:
    """The table kind of ``value``, or None when it is not a table."""
    cls = type(value)
    name = _CLASS_KINDS.get(f"{cls.__module__}.{cls.__qualname__}")
    if name is not None:
        return name
    if isinstance(value, list) and all(isinstance(row, Mapping) for row in value):
        return "rows"
    return None


def _annotation_name(annotation: Any) -> str | None:
    if isinstance(annotation, str):
        return annotation.strip().strip("'\"")
    if isinstance(annotation, type):
        return f"{annotation.__module__}.{annotation.__qualname__}"
    return None


def kind_for_annotation(annotation: Any) -> str | None:
    """The kind a parameter annotation asks for (``pd.DataFrame`` -> "pandas"), else None.

    ``X | None`` counts as ``X``; ``list[dict]`` asks for rows.
    """
    if annotation is None:
        return None
    origin = typing.get_origin(annotation)
    if origin is typing.Union or type(annotation).__name__ == "UnionType":
        kinds = {kind_for_annotation(arg) for arg in typing.get_args(annotation)} - {None}
        return kinds.pop() if len(kinds) == 1 else None
    if origin in (list, Sequence) or annotation is list:
        return "rows"
    name = _annotation_name(annotation)
    if name is None:
        return None
    if name in _CLASS_KINDS:
        return _CLASS_KINDS[name]
    if name.startswith(("list[", "List[")):
        return "rows"
    return None


def wants_combined(annotation: Any) -> bool:
    """True when a fan-in parameter asks for one table rather than a ``{key: value}`` dict."""
    if annotation is None:
        return False
    origin = typing.get_origin(annotation)
    if origin in (dict, Mapping) or annotation in (dict, Mapping):
        return False
    name = _annotation_name(annotation)
    if name is not None and name.startswith(("dict[", "Dict[", "Mapping[")):
        return False
    return kind_for_annotation(annotation) in ("arrow", "pandas", "polars")


def element_annotation(annotation: Any) -> Any:
    """For ``dict[str, X]`` the value annotation ``X``; otherwise ``annotation`` itself."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (dict, Mapping) and len(args) == 2:
        return args[1]
    name = _annotation_name(annotation)
    if name is not None and name.startswith(("dict[", "Dict[", "Mapping[")) and "," in name:
        return name[name.index(",") + 1 : -1].strip()
    return annotation


def to_arrow(value: Any, *, manager: str, asset: str) -> tuple[pa.Table, str]:
    """``value`` as an Arrow table, and the kind it came as (kept in the schema metadata)."""
    pa = require_pyarrow(manager)
    kind = kind_of(value)
    if kind == "arrow":
        table = value
    elif kind == "pandas":
        table = pa.Table.from_pandas(value, preserve_index=None)
    elif kind == "polars":
        if type(value).__name__ == "LazyFrame":
            value = value.collect()
        table = value.to_arrow()
    elif kind == "rows":
        table = pa.Table.from_pylist(list(value))
    else:
        from flowstone._errors import IOManagerError

        raise IOManagerError(
            f"asset '{asset}' returned {type(value).__name__}, which the '{manager}' I/O manager "
            "cannot store: return a pyarrow Table, a pandas or polars DataFrame, or a list of dicts",
            context={"asset": asset, "io_manager": manager, "type": type(value).__name__},
            retryable=False,
        )
    metadata = dict(table.schema.metadata or {})
    metadata[_SCHEMA_KIND] = kind.encode()
    return table.replace_schema_metadata(metadata), kind


def stored_kind(table: pa.Table) -> str:
    """The kind a table was stored as (from its schema metadata), Arrow when unknown."""
    raw = (table.schema.metadata or {}).get(_SCHEMA_KIND, b"arrow")
    kind = raw.decode() if isinstance(raw, bytes) else str(raw)
    return kind if kind in KINDS else "arrow"


def from_arrow(table: pa.Table, kind: str) -> Any:
    """Convert an Arrow table to ``kind``; flowstone's own schema metadata is dropped."""
    metadata = {k: v for k, v in (table.schema.metadata or {}).items() if k != _SCHEMA_KIND}
    table = table.replace_schema_metadata(metadata or None)
    if kind == "pandas":
        return table.to_pandas()
    if kind == "polars":
        import polars

        return polars.from_arrow(table)
    if kind == "rows":
        return table.to_pylist()
    return table


def output_kind(ctx_expected: Any, stored: str) -> str:
    """The kind to hand back: what the annotation asks for, else what was stored."""
    return kind_for_annotation(ctx_expected) or stored


def schema_of(table: pa.Table) -> dict[str, str]:
    """A JSON-safe schema: column name to Arrow type name."""
    return {field.name: str(field.type) for field in table.schema}
