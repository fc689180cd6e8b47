"""Small helpers shared by the unit tests (no fixtures, no state)."""

from __future__ import annotations

import inspect
import linecache


def line_of_next_def() -> int:
    """The source line of the first ``def`` after the caller's line.

    Read from the file itself, so tests can check the ``file:line`` FlowStone reports against a
    number it did not compute.
    """
    frame = inspect.currentframe()
    assert frame is not None and frame.f_back is not None
    filename, line = frame.f_back.f_code.co_filename, frame.f_back.f_lineno
    for number in range(line + 1, line + 20):
        if linecache.getline(filename, number).lstrip().startswith("def "):
            return number
    raise AssertionError(f"no def after {filename}:{line}")
