"""Resources: connections and clients that assets ask for by name (``requires=[...]``).

A resource is declared once, ``FlowStone(pipeline, resources={"warehouse": ...})``, and handed to
each asset that lists it as ``context.resources.warehouse``. An object with a ``setup(config)``
method is a :class:`Resource`: it is set up lazily, once per run, on first use, and torn down at
the run's end. Any other object (a fake in a test, say) is handed over as it is::

    app = fs.FlowStone(pipeline, resources={
        "warehouse": fs.SQLDatabase(url=fs.EnvVar("WAREHOUSE_URL")),
        "crm": fs.HttpClient(base_url="https://crm.example.com/api", retries=3),
    })

Write your own as a frozen dataclass subclassing :class:`ConfigurableResource`, or declare them in
flowstone.toml under ``[resources.NAME]``; ``flowstone doctor`` sets each one up and runs its
health check.
"""

from flowstone.resources._base import (
    ConfigurableResource,
    EnvVar,
    Health,
    Resource,
    healthy,
    unhealthy,
)
from flowstone.resources._config import build_resources
from flowstone.resources._http import HttpClient, HttpSession
from flowstone.resources._runtime import (
    RESOURCE_HEALTH,
    RESOURCE_SETUP,
    RESOURCE_TEARDOWN,
    RunResources,
    check_resources,
)
from flowstone.resources._sql import SQLDatabase

__all__ = [
    "RESOURCE_HEALTH",
    "RESOURCE_SETUP",
    "RESOURCE_TEARDOWN",
    "ConfigurableResource",
    "EnvVar",
    "Health",
    "HttpClient",
    "HttpSession",
    "Resource",
    "RunResources",
    "SQLDatabase",
    "build_resources",
    "check_resources",
    "healthy",
    "unhealthy",
]
