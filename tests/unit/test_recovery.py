"""A process killed mid-run leaves a consistent store that the next process recovers."""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

import flowstone as fs
from flowstone.store._store import Store

# Shared by the child process (which gets killed) and this test: ``second`` blocks while the
# file ``block`` exists; every call of ``first`` is counted in ``first_calls``.
PIPELINE_MODULE = textwrap.dedent(
    """
    import threading
    from pathlib import Path

    import flowstone as fs

    HERE = Path(__file__).parent
    pipeline = fs.Pipeline("crash")

    @pipeline.asset()
    def first(context):
        with open(HERE / "first_calls", "a") as f:
            f.write("x")
        return 41

    @pipeline.asset()
    def second(context, first):
        if (HERE / "block").exists():
            (HERE / "marker").write_text("second is running")
            threading.Event().wait()  # blocks until the process is killed
        return first + 1
    """
)

CHILD = textwrap.dedent(
    """
    import importlib.util, sys
    from pathlib import Path

    here = Path(sys.argv[1])
    spec = importlib.util.spec_from_file_location("crash_pipeline", here / "crash_pipeline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    import flowstone as fs
    app = fs.FlowStone(module.pipeline, store=f"sqlite:///{here}/fs.db", storage_dir=here / "storage")
    app.materialize(["second"])
    """
)


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"crash_pipeline_{id(path)}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # not put in sys.modules: no state outlives the test
    return module


def _wait_for(
    condition: Callable[[], bool], proc: subprocess.Popen[bytes], what: str, timeout: float = 60.0
) -> None:
    """Poll ``condition`` while the child lives, until a deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        try:
            proc.wait(timeout=0.05)  # doubles as the polling interval
        except subprocess.TimeoutExpired:
            pass
        else:
            _out, err = proc.communicate()
            pytest.fail(f"child exited with {proc.returncode} before {what}:\n{err.decode()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")


def _step_states(store: Store) -> dict[str, fs.StepStatus]:
    runs = store.list_runs(tenant="default")
    if not runs:
        return {}
    return {s.asset: s.status for s in store.run_steps(tenant="default", run_id=runs[0].id)}


@pytest.fixture
def killed_run(tmp_path: Path) -> Path:
    """Run the pipeline in a child process and SIGKILL it while ``second`` is running."""
    (tmp_path / "crash_pipeline.py").write_text(PIPELINE_MODULE)
    (tmp_path / "child.py").write_text(CHILD)
    (tmp_path / "block").touch()
    proc = subprocess.Popen(
        [sys.executable, str(tmp_path / "child.py"), str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    store = Store.open(f"sqlite:///{tmp_path}/fs.db", migrate=False)
    try:
        _wait_for((tmp_path / "marker").exists, proc, "the blocking step")
        # Step records are group-committed shortly after the fact: wait until the store shows
        # first done and second running, then kill.
        expected = {"first": fs.StepStatus.SUCCEEDED, "second": fs.StepStatus.RUNNING}
        _wait_for(lambda: _step_states(store) == expected, proc, "the step records to be committed")
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)  # reap it: a zombie still counts as alive
        assert proc.returncode == -signal.SIGKILL
    finally:
        store.close()
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    (tmp_path / "block").unlink()
    return tmp_path


@pytest.mark.parametrize("how", ["recover", "materialize"])
def test_killed_run_is_abandoned_and_resumed(killed_run: Path, how: str) -> None:
    here = killed_run
    module = _load(here / "crash_pipeline.py")
    url = f"sqlite:///{here}/fs.db"
    raw = Store.open(url, migrate=False)
    try:
        [before] = raw.list_runs(tenant="default")
        assert before.status is fs.RunStatus.RUNNING  # as the killed process left it
    finally:
        raw.close()
    with fs.FlowStone(module.pipeline, store=url, storage_dir=here / "storage") as app:
        # The killed step recorded nothing as success; the first step's success is kept.
        assert app.store.materializations(tenant="default", asset="second") == []
        [first_mat] = app.store.materializations(tenant="default", asset="first")
        assert first_mat.status == "success"

        if how == "recover":
            # FlowStone may already have recovered it when it opened the store.
            assert app.recover() in ([], [before.id])
            found = app.run(before.id)
            assert found is not None and found[0].status is fs.RunStatus.ABANDONED
            assert app.recover() == []  # idempotent
        run = app.materialize(["second"], values=True)

        found = app.run(before.id)
        assert found is not None
        old, steps = found
        assert old.status is fs.RunStatus.ABANDONED
        assert old.error is not None and "gone" in old.error
        by_asset = {s.asset: s for s in steps}
        assert by_asset["first"].status is fs.StepStatus.SUCCEEDED
        assert by_asset["first"].materialization_id == first_mat.id
        assert by_asset["second"].status is fs.StepStatus.ABANDONED
        assert by_asset["second"].materialization_id is None

        # The fresh run ran only the killed step, reading first's stored value.
        assert [s.asset for s in run.steps.values()] == ["second"]
        assert run.success
        assert run.steps["second"].value == 42
        assert (here / "first_calls").read_text() == "x"
        [second_mat] = app.store.materializations(tenant="default", asset="second")
        assert second_mat.run_id == run.run_id
        assert [e.materialization_id for e in app.lineage.upstream("second")] == [first_mat.id]
        assert {r.id: r.status for r in app.runs()} == {
            before.id: fs.RunStatus.ABANDONED,
            run.run_id: fs.RunStatus.SUCCEEDED,
        }


def test_recover_leaves_live_runs_alone(tmp_path: Path) -> None:
    pipeline = fs.Pipeline("p")

    @pipeline.asset()
    def a(context: object) -> int:
        return 1

    with fs.FlowStone(pipeline, store=f"sqlite:///{tmp_path}/fs.db", storage_dir=tmp_path / "s") as app:
        run = app.materialize("a")
        assert app.recover() == []
        record = app.run(run.run_id)
        assert record is not None and record[0].status is fs.RunStatus.SUCCEEDED
