"""One contract every I/O manager passes, run against its real backend.

Round trip per supported value type, exists, delete, metadata, partitioned keys (including keys
that look like paths), overwrite, atomicity when a store fails part way, tenant separation and
the not-found error.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Any

import pytest

import flowstone as fs

from ._contract import Backend, BackendFactory, ctx


def _all_backends() -> list[Any]:
    found: list[Any] = []
    for info in sorted(pkgutil.iter_modules([str(Path(__file__).parent)]), key=lambda m: m.name):
        if info.name.startswith("backends_"):
            module = importlib.import_module(f"{__package__}.{info.name}")
            found.extend(module.BACKENDS)
    return found


@pytest.fixture(params=_all_backends())
def backend(request: pytest.FixtureRequest) -> Backend:
    factory: BackendFactory = request.param
    return factory(request)


def test_round_trip_of_every_supported_type(backend: Backend) -> None:
    for i, sample in enumerate(backend.samples):
        context = ctx(backend, f"asset_{i}", expected_type=sample.expected_type)
        backend.manager.store(context, sample.value)
        loaded = backend.manager.load(context)
        assert sample.equals(loaded, sample.value), f"{sample.name}: {loaded!r} != {sample.value!r}"


def test_missing_value_is_not_found_not_a_crash(backend: Backend) -> None:
    context = ctx(backend, "never_stored", "2025-01-01")
    assert not backend.manager.exists(context)
    assert backend.manager.metadata(context) is None
    with pytest.raises(fs.ValueNotFound) as info:
        backend.manager.load(context)
    assert info.value.type == "io_error"
    assert info.value.retryable is False
    assert "never_stored" in str(info.value)


def test_exists_delete_and_metadata(backend: Backend) -> None:
    sample = backend.samples[0]
    context = ctx(backend, "described", expected_type=sample.expected_type)
    stored = backend.manager.store(context, sample.value)
    assert backend.manager.exists(context)
    meta = backend.manager.metadata(context)
    assert meta is not None
    assert meta.updated_at is not None
    if backend.sizes:
        assert meta.size_bytes is not None and meta.size_bytes > 0
    if backend.checksums:
        assert meta.checksum
        assert stored is not None and stored.checksum == meta.checksum
    backend.manager.delete(context)
    assert not backend.manager.exists(context)
    assert backend.manager.metadata(context) is None
    with pytest.raises(fs.ValueNotFound):
        backend.manager.load(context)
    backend.manager.delete(context)  # deleting what is not there is fine


@pytest.mark.parametrize("keys", [["2025-01-01", "2025-01-02"], ["a/b", "../up", "x|y", "sp ace"]])
def test_partitions_are_stored_apart(backend: Backend, keys: list[str]) -> None:
    first, second = backend.samples[0], backend.samples[1]
    values = {key: (first if i % 2 == 0 else second) for i, key in enumerate(keys)}
    for key, sample in values.items():
        backend.manager.store(ctx(backend, "parted", key), sample.value)
    for key, sample in values.items():
        loaded = backend.manager.load(ctx(backend, "parted", key, expected_type=sample.expected_type))
        assert sample.equals(loaded, sample.value), key
    backend.manager.delete(ctx(backend, "parted", keys[0]))
    assert not backend.manager.exists(ctx(backend, "parted", keys[0]))
    assert backend.manager.exists(ctx(backend, "parted", keys[1]))
    assert not backend.manager.exists(ctx(backend, "parted", None))


def test_overwrite_replaces_the_value(backend: Backend) -> None:
    first, second = backend.samples[0], backend.samples[1]
    context = ctx(backend, "overwritten", "k", expected_type=second.expected_type)
    backend.manager.store(context, first.value)
    backend.manager.store(context, second.value)
    assert second.equals(backend.manager.load(context), second.value)


def test_a_store_that_fails_part_way_leaves_the_previous_value(backend: Backend) -> None:
    first, second = backend.samples[0], backend.samples[1]
    context = ctx(backend, "atomic", "k", expected_type=first.expected_type)
    backend.manager.store(context, first.value)
    before = backend.manager.metadata(context)
    with backend.crash(), pytest.raises(fs.IOManagerError) as info:
        backend.manager.store(context, second.value)
    assert info.value.type == "io_error"
    assert first.equals(backend.manager.load(context), first.value)
    assert backend.manager.metadata(context) == before
    # and a partition that never had a value does not get half of one
    fresh = ctx(backend, "atomic", "fresh")
    with backend.crash(), pytest.raises(fs.IOManagerError):
        backend.manager.store(fresh, second.value)
    assert not backend.manager.exists(fresh)


def test_tenants_are_kept_apart(backend: Backend) -> None:
    first, second = backend.samples[0], backend.samples[1]
    a = ctx(backend, "shared_name", "k", tenant="acme", expected_type=first.expected_type)
    b = ctx(backend, "shared_name", "k", tenant="globex", expected_type=second.expected_type)
    backend.manager.store(a, first.value)
    backend.manager.store(b, second.value)
    assert first.equals(backend.manager.load(a), first.value)
    assert second.equals(backend.manager.load(b), second.value)
    backend.manager.delete(a)
    assert not backend.manager.exists(a)
    assert backend.manager.exists(b)
    assert not backend.manager.exists(ctx(backend, "shared_name", "k"))
