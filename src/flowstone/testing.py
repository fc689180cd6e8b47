"""Helpers for testing pipelines: a clock that does not wait.

from flowstone.testing import FakeClock
"""

from flowstone._clock import FakeClock

__all__ = ["FakeClock"]
