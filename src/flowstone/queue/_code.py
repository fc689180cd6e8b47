"""The code version a job was enqueued with, so a worker running other code refuses it.

An asset's version is its ``code_version`` when it declares one, else a hash of the function's
source (its bytecode when the source is not available). Enqueuer and worker compute it the same
way from the pipeline each loaded.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Mapping
from typing import Any

from flowstone._pipeline import Pipeline


def code_version(asset: Any) -> str:
    if asset.code_version:
        return f"v:{asset.code_version}"
    fn = asset.fn
    try:
        text = inspect.getsource(fn).encode()
    except (OSError, TypeError):
        code = getattr(fn, "__code__", None)
        text = code.co_code if code is not None else repr(fn).encode()
    return "src:" + hashlib.sha256(text).hexdigest()[:16]


def code_versions(pipeline: Pipeline) -> Mapping[str, str]:
    return {name: code_version(asset) for name, asset in pipeline.assets.items()}
