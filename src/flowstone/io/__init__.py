"""I/O managers: where asset values live. See :class:`IOManager`.

Built in, by the name an asset gives in ``io_manager=``: ``filesystem`` (the default; pickle or
JSON files with ``_asset.json`` sidecars), ``memory``, ``parquet``, ``object_store``, ``postgres``
and ``duckdb``. The last four need extras (``pip install 'flowstone[parquet]'`` ...) and import
their libraries only when used.
"""

from flowstone.io._base import IOContext, IOManager, StoredValue, UpstreamVersion
from flowstone.io._errors import io_error, is_transient, not_found
from flowstone.io._filesystem import FilesystemConfig, FilesystemIOManager
from flowstone.io._memory import MemoryIOManager

__all__ = [
    "FilesystemConfig",
    "FilesystemIOManager",
    "IOContext",
    "IOManager",
    "MemoryIOManager",
    "StoredValue",
    "UpstreamVersion",
    "io_error",
    "is_transient",
    "not_found",
]
