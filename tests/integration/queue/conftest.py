"""Fixtures for the run queue: a project on a fresh PostgreSQL schema, real worker processes.

``queue_project(source)`` writes ``source`` as ``pipe.py`` (it must define ``pipeline``) and a
flowstone.toml pointing at the test's own PostgreSQL schema, and returns a :class:`QueueProject`:
``project.app()`` binds the same pipeline in this process (to submit and inspect), and
``project.start_worker()`` starts ``flowstone worker`` in a subprocess (stopped at teardown).

Assets run in the worker processes: they talk to the test through files in the project directory.
Prepend :data:`PIPE_HELPERS` to a source to get ``record(file, **fields)`` (one JSON line with
``time.time()`` and the pid) and ``hold(context, marker)`` (block until the test creates
``marker``, or until the step is asked to stop). Tests wait with :func:`wait_for`, never a sleep.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa

import flowstone as fs
from flowstone.queue import QueueConfig

FLOWSTONE = str(Path(sys.executable).parent / "flowstone")

T = TypeVar("T")

PIPE_HELPERS = """
import json as _json
import os as _os
import pathlib as _pathlib
import time as _time

ROOT = _pathlib.Path(__file__).parent


def record(name, **fields):
    line = _json.dumps({"t": _time.time(), "pid": _os.getpid(), **fields}) + "\\n"
    with open(ROOT / name, "a") as out:
        out.write(line)


def hold(context, marker, timeout=30.0):
    \"\"\"Block until ROOT/marker exists (True), or the step is asked to stop (False).\"\"\"
    deadline = _time.monotonic() + timeout
    while not (ROOT / marker).exists():
        if context.should_stop or (ROOT / "STOP").exists():
            return False
        if _time.monotonic() > deadline:
            raise TimeoutError(f"{marker} never appeared")
        _time.sleep(0.01)
    return True
"""


def wait_for(predicate: Callable[[], T], timeout: float = 15.0, *, what: str = "the condition") -> T:
    """Poll ``predicate`` until it returns something truthy (returned) or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.02)


def max_overlap(intervals: Sequence[tuple[float, float]]) -> int:
    """The most intervals open at one instant (one ending when another starts: not overlapping)."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    most = current = 0
    for _, step in edges:
        current += step
        most = max(most, current)
    return most


class QueueProject:
    def __init__(self, root: Path, store_url: str, queue_toml: str) -> None:
        self.root = root
        self.store_url = store_url
        self.queue_toml = queue_toml
        self.workers: list[subprocess.Popen[bytes]] = []
        self._apps: list[fs.FlowStone] = []
        self._module: Any = None
        self._engine: sa.Engine | None = None

    @property
    def module(self) -> Any:
        """The project's pipe.py, imported in this process under a unique name."""
        if self._module is None:
            name = f"pipe_{uuid.uuid4().hex}"
            spec = importlib.util.spec_from_file_location(name, self.root / "pipe.py")
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
            self._module = module
        return self._module

    def app(self, **kwargs: Any) -> fs.FlowStone:
        """The pipeline bound to the project's store and storage, in this process."""
        from flowstone._config import load_settings

        settings = load_settings(start=self.root)
        kwargs.setdefault("queue", QueueConfig.from_table(settings.queue))
        app = fs.FlowStone(
            self.module.pipeline,
            store=self.store_url,
            storage_dir=self.root / ".flowstone" / "storage",
            **kwargs,
        )
        self._apps.append(app)
        return app

    def start_worker(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """``flowstone worker ARGS`` in the project directory; its output goes to worker-N.log."""
        log = (self.root / f"worker-{len(self.workers)}.log").open("wb")
        proc = subprocess.Popen(
            [FLOWSTONE, "worker", *args],
            cwd=self.root,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        self.workers.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.root.glob("worker-*.log")))

    def sql(self, query: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """Rows of ``query`` on the project's store (its own schema)."""
        if self._engine is None:
            self._engine = sa.create_engine(self.store_url, poolclass=sa.pool.NullPool)
        with self._engine.begin() as conn:
            result = conn.execute(sa.text(query), params or {})
            return [tuple(r) for r in result] if result.returns_rows else []

    def wait_workers(self, count: int, timeout: float = 20.0) -> None:
        """Wait until ``count`` workers are up (registered in procrastinate's worker table)."""

        def up() -> bool:
            if self.sql("SELECT to_regclass('procrastinate_workers')") == [(None,)]:
                return False
            return self.sql("SELECT count(*) FROM procrastinate_workers")[0][0] >= count

        wait_for(up, timeout, what=f"{count} worker(s) to start")

    def records(self, name: str) -> list[dict[str, Any]]:
        """The JSON lines ``record(name, ...)`` wrote so far."""
        path = self.root / name
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]

    def touch(self, name: str) -> None:
        (self.root / name).touch()

    def stop(self) -> None:
        (self.root / "STOP").touch()  # steps still held by hold() end now
        for proc in self.workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.workers:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for app in self._apps:
            app.close()
        if self._engine is not None:
            self._engine.dispose()


@pytest.fixture
def queue_project(tmp_path: Path, pg_url: str) -> Iterator[Callable[..., QueueProject]]:
    made: list[QueueProject] = []

    def make(source: str, *, queue_toml: str = 'stalled_after = "3s"\nreap_every = "0.5s"\n') -> QueueProject:
        root = tmp_path / f"project{len(made)}"
        root.mkdir()
        (root / "pipe.py").write_text(textwrap.dedent(source))
        (root / "flowstone.toml").write_text(
            f'pipeline = "pipe:pipeline"\nstore = "{pg_url}"\nstorage = ".flowstone/storage"\n\n'
            f"[queue]\n{queue_toml}"
        )
        project = QueueProject(root, pg_url, queue_toml)
        made.append(project)
        return project

    yield make
    for project in made:
        project.stop()


# ---------------------------------------------------------------------- crash and chaos helpers


def wait_until(condition: Callable[[], Any], *, timeout: float, what: str, every: float = 0.05) -> Any:
    """Poll ``condition`` until it returns something truthy (returned), or fail after ``timeout``
    seconds saying ``what`` was waited for."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        found = condition()
        if found:
            return found
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}", pytrace=False)
        time.sleep(every)  # between polls of a condition, not a wait for an outcome


def pg_rows(app: fs.FlowStone, sql: str, **params: Any) -> list[Any]:
    """Rows of one query on the app's store (the test's own schema)."""
    import sqlalchemy as sa

    with app.store.engine.connect() as conn:
        return list(conn.execute(sa.text(sql), params).all())


def assert_successes_have_their_values(app: fs.FlowStone, run_id: str) -> int:
    """Every success materialization of the run has its value stored: it loads through the
    asset's I/O manager, and the stored bytes are the ones recorded (checksum = value_hash).
    Returns how many were checked."""
    from flowstone.engine._planner import typed_partition
    from flowstone.io._base import IOContext

    rows = pg_rows(
        app,
        "SELECT asset, partition_key, value_hash FROM flowstone_materializations"
        " WHERE run_id = :run AND status = 'success' ORDER BY asset, partition_key",
        run=run_id,
    )
    for asset, key, value_hash in rows:
        partition = key or None
        app.load(asset, partition=partition)  # raises ValueNotFound when nothing is stored
        definition = app.pipeline.get(asset)
        manager = app.io_managers[definition.io_manager or app.pipeline.default_io_manager]
        stored = manager.metadata(
            IOContext(
                asset=asset,
                partition_key=partition,
                partition=typed_partition(app.resolver()(asset), asset, partition),
                tenant=app.tenant,
                config=definition.io_config,
            )
        )
        assert stored is not None, f"{asset} [{partition}] recorded as success but nothing is stored"
        assert value_hash and stored.checksum == value_hash, (
            f"{asset} [{partition}]: stored checksum {stored.checksum} is not the recorded {value_hash}"
        )
    return len(rows)
