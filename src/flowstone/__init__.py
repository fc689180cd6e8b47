"""FlowStone: asset-first data orchestration.

import flowstone as fs

pipeline = fs.Pipeline("analytics")

@pipeline.asset(retry=fs.RetryPolicy(max_attempts=3))
def raw_events(context): ...

app = fs.FlowStone(pipeline)
app.materialize(["raw_events"])

Everything that can go wrong is one typed error (``type``, ``message``, ``context``,
``retryable``, ``original``; a short ``user_message`` saying what to do and a full
``developer_message``)::

    FlowStoneError
    ├── DefinitionError (definition_error)
    │   └── PipelineInvalid (definition_error)
    ├── ConfigurationError (configuration_error)
    ├── AssetNotFound (asset_not_found)
    ├── DependencyFailed (dependency_failed)
    ├── DependencyNotReady (dependency_not_ready, retryable)
    ├── IOManagerError (io_error, retryable when transient)
    │   └── ValueNotFound (io_error)
    ├── ExecutionError (execution_error)
    ├── StepTimeout (timeout, retryable)
    ├── ValidationError (validation_error)
    ├── ResourceUnavailable (resource_unavailable, retryable)
    ├── CheckpointRejected (checkpoint_rejected)
    ├── Retry (retry_requested, retryable): raise it from an asset to be tried again
    └── StoreError (store_error)
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
from flowstone.resources import ConfigurableResource, EnvVar, Health, HttpClient, Resource, SQLDatabase
from flowstone.schedules._conditions import eager, freshness, on_cron
from flowstone.schedules._definitions import RunRequest, SensorResult
from flowstone.telemetry import JsonLogs, OpenTelemetrySpans, PrometheusMetrics, StoreMetrics

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
    "ConfigurableResource",
    "ConfigurationError",
    "Context",
    "DailyPartitions",
    "DefinitionError",
    "DependencyFailed",
    "DependencyNotReady",
    "DimensionMapping",
    "DuckDBIOManager",
    "DynamicPartitions",
    "EnvVar",
    "Event",
    "ExecutionError",
    "FilesystemIOManager",
    "FlowStone",
    "FlowStoneError",
    "FunctionPartitions",
    "Health",
    "HourlyPartitions",
    "HttpClient",
    "IOContext",
    "IOManager",
    "IOManagerError",
    "IdentityMapping",
    "In",
    "JsonLogs",
    "LineageEntry",
    "Materialization",
    "MemoryIOManager",
    "MinutelyPartitions",
    "MonthlyPartitions",
    "MultiPartitionKey",
    "MultiPartitions",
    "ObjectStoreIOManager",
    "OpenTelemetrySpans",
    "Output",
    "ParquetIOManager",
    "PartitionMapping",
    "PartitionStatus",
    "PartitionsDefinition",
    "Pipeline",
    "PipelineInvalid",
    "PostgresIOManager",
    "Problem",
    "PrometheusMetrics",
    "Resource",
    "ResourceUnavailable",
    "Retry",
    "RetryPolicy",
    "Rollup",
    "RunRecord",
    "RunRequest",
    "RunResult",
    "RunStatus",
    "SQLDatabase",
    "SensorResult",
    "StaticMapping",
    "StaticPartitions",
    "StepRecord",
    "StepResult",
    "StepStatus",
    "StepTimeout",
    "StoreError",
    "StoreMetrics",
    "StoredValue",
    "TimeWindow",
    "TimeWindowMapping",
    "TimeWindowPartitions",
    "UpstreamVersion",
    "ValidationError",
    "ValueNotFound",
    "WeeklyPartitions",
    "__version__",
    "eager",
    "freshness",
    "load_pipeline",
    "on_cron",
]
