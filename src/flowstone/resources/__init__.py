"""Resources: connections and clients that assets ask for by name (``requires=[...]``).

A resource is declared once, ``FlowStone(pipeline, resources={"warehouse": ...})``, and handed to
each asset that lists it as ``context.resources.warehouse``. An object with a ``setup(config)``
method is a :class:`Resource`: it is set up lazily, once per run, on first use, and torn down at
the run's end. Any other object is handed over as it is.
"""

from flowstone.resources._base import Resource

__all__ = ["Resource"]
