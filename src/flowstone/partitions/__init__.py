"""Partition definitions: which keys an asset has and how a key maps to a typed value.

Every definition is an ordered set of canonical string keys with its own codec: ``to_value(key)``
gives the value ``context.partition`` sees, ``to_key(value)`` the key back; decoding never guesses
a type from the look of a string. Counting, membership, positions, ranges and pages never build
the list of keys, so a definition of a million keys answers them in microseconds.

    days = DailyPartitions(start="2025-01-01", timezone="Europe/Oslo")
    days.to_value("2025-01-15")                  # datetime.date(2025, 1, 15)
    regions = StaticPartitions(["eu", "us"])
    both = MultiPartitions({"region": regions, "date": days})
    both.to_value("eu|2025-01-15").date          # datetime.date(2025, 1, 15)
"""

from flowstone.partitions._base import PartitionsDefinition
from flowstone.partitions._dynamic import DynamicPartitions
from flowstone.partitions._function import FunctionPartitions
from flowstone.partitions._multi import MultiPartitionKey, MultiPartitions
from flowstone.partitions._static import StaticPartitions
from flowstone.partitions._time import (
    DailyPartitions,
    HourlyPartitions,
    MinutelyPartitions,
    MonthlyPartitions,
    TimeWindow,
    TimeWindowPartitions,
    WeeklyPartitions,
)

__all__ = [
    "DailyPartitions",
    "DynamicPartitions",
    "FunctionPartitions",
    "HourlyPartitions",
    "MinutelyPartitions",
    "MonthlyPartitions",
    "MultiPartitionKey",
    "MultiPartitions",
    "PartitionsDefinition",
    "StaticPartitions",
    "TimeWindow",
    "TimeWindowPartitions",
    "WeeklyPartitions",
]
