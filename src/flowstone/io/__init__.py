"""I/O managers: where asset values live. See :class:`IOManager`.

Built in, by the name an asset gives in ``io_manager=``: ``filesystem`` (the default; pickle or
JSON files with ``_asset.json`` sidecars), ``memory``, ``parquet``, ``object_store``, ``postgres``
and ``duckdb``. The last four need extras (``pip install 'flowstone[parquet]'`` ...) and import
their libraries only when used.
"""

from flowstone.io._base import IOContext, IOManager, StoredValue, UpstreamVersion
from flowstone.io._duckdb import DuckDBConfig, DuckDBIOManager
from flowstone.io._errors import io_error, is_transient, not_found
from flowstone.io._filesystem import FilesystemConfig, FilesystemIOManager
from flowstone.io._memory import MemoryIOManager
from flowstone.io._object_store import ObjectStoreConfig, ObjectStoreIOManager
from flowstone.io._parquet import ParquetConfig, ParquetIOManager
from flowstone.io._postgres import PostgresConfig, PostgresIOManager

__all__ = [
    "DuckDBConfig",
    "DuckDBIOManager",
    "FilesystemConfig",
    "FilesystemIOManager",
    "IOContext",
    "IOManager",
    "MemoryIOManager",
    "ObjectStoreConfig",
    "ObjectStoreIOManager",
    "ParquetConfig",
    "ParquetIOManager",
    "PostgresConfig",
    "PostgresIOManager",
    "StoredValue",
    "UpstreamVersion",
    "io_error",
    "is_transient",
    "not_found",
]
