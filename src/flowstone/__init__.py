"""FlowStone: asset-first data orchestration.

import flowstone as fs

pipeline = fs.Pipeline("analytics")

@pipeline.asset()
def raw_events(context): ...

app = fs.FlowStone(pipeline)
app.materialize(["raw_events"])
"""

from flowstone._app import FlowStone
from flowstone._assets import AssetDefinition, Output
from flowstone._context import Context
from flowstone._errors import (
    AssetNotFound,
    CheckpointRejected,
    ConfigurationError,
    DefinitionError,
    DependencyFailed,
    DependencyNotReady,
    ExecutionError,
    FlowStoneError,
    IOManagerError,
    PipelineInvalid,
    Problem,
    ResourceUnavailable,
    StepTimeout,
    StoreError,
    ValidationError,
    ValueNotFound,
)
from flowstone._events import Event
from flowstone._graph import AssetGraph
from flowstone._mappings import (
    AllPartitionsMapping,
    DimensionMapping,
    IdentityMapping,
    In,
    PartitionMapping,
    Rollup,
    StaticMapping,
    TimeWindowMapping,
)
from flowstone._pipeline import Pipeline, load_pipeline
from flowstone._records import (
    BackfillRecord,
    BackfillStatus,
    LineageEntry,
    Materialization,
    PartitionStatus,
    RunRecord,
    RunStatus,
    StepRecord,
    StepStatus,
)
from flowstone._retry import Retry, RetryPolicy
from flowstone.engine._backfill import BackfillResult
from flowstone.engine._result import RunResult, StepResult
from flowstone.engine._status import AssetStatus
from flowstone.io import (
    DuckDBIOManager,
    FilesystemIOManager,
    IOContext,
    IOManager,
    MemoryIOManager,
    ObjectStoreIOManager,
    ParquetIOManager,
    PostgresIOManager,
    StoredValue,
    UpstreamVersion,
)
from flowstone.partitions import (
    DailyPartitions,
    DynamicPartitions,
    FunctionPartitions,
    HourlyPartitions,
    MinutelyPartitions,
    MonthlyPartitions,
    MultiPartitionKey,
    MultiPartitions,
    PartitionsDefinition,
    StaticPartitions,
    TimeWindow,
    TimeWindowPartitions,
    WeeklyPartitions,
)

__version__ = "0.1.0"

__all__ = [
    "AllPartitionsMapping",
    "AssetDefinition",
    "AssetGraph",
    "AssetNotFound",
    "AssetStatus",
    "BackfillRecord",
    "BackfillResult",
    "BackfillStatus",
    "CheckpointRejected",
    "ConfigurationError",
    "Context",
    "DailyPartitions",
    "DefinitionError",
    "DependencyFailed",
    "DependencyNotReady",
    "DimensionMapping",
    "DuckDBIOManager",
    "DynamicPartitions",
    "Event",
    "ExecutionError",
    "FilesystemIOManager",
    "FlowStone",
    "FlowStoneError",
    "FunctionPartitions",
    "HourlyPartitions",
    "IOContext",
    "IOManager",
    "IOManagerError",
    "IdentityMapping",
    "In",
    "LineageEntry",
    "Materialization",
    "MemoryIOManager",
    "MinutelyPartitions",
    "MonthlyPartitions",
    "MultiPartitionKey",
    "MultiPartitions",
    "ObjectStoreIOManager",
    "Output",
    "ParquetIOManager",
    "PartitionMapping",
    "PartitionStatus",
    "PartitionsDefinition",
    "Pipeline",
    "PipelineInvalid",
    "PostgresIOManager",
    "Problem",
    "ResourceUnavailable",
    "Retry",
    "RetryPolicy",
    "Rollup",
    "RunRecord",
    "RunResult",
    "RunStatus",
    "StaticMapping",
    "StaticPartitions",
    "StepRecord",
    "StepResult",
    "StepStatus",
    "StepTimeout",
    "StoreError",
    "StoredValue",
    "TimeWindow",
    "TimeWindowMapping",
    "TimeWindowPartitions",
    "UpstreamVersion",
    "ValidationError",
    "ValueNotFound",
    "WeeklyPartitions",
    "__version__",
    "load_pipeline",
]
