"""I/O managers: where asset values live. See :class:`IOManager`."""

from flowstone.io._base import IOContext, IOManager, StoredValue
from flowstone.io._filesystem import FilesystemIOManager
from flowstone.io._memory import MemoryIOManager

__all__ = ["FilesystemIOManager", "IOContext", "IOManager", "MemoryIOManager", "StoredValue"]
