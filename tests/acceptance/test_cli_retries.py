"""`flowstone run show` lists every attempt of a retried step, with its error and delay."""

from __future__ import annotations

from pathlib import Path

import pytest

from ._cli import copy_quickstart

pytestmark = pytest.mark.acceptance


def test_run_show_lists_retried_attempts(tmp_path: Path) -> None:
    project = copy_quickstart(tmp_path / "quickstart")
    project.write(
        "quickstart.py",
        """
        from pathlib import Path

        import flowstone as fs

        pipeline = fs.Pipeline("quickstart")
        COUNTER = Path(__file__).with_name("attempts.txt")


        @pipeline.asset(retry=fs.RetryPolicy(max_attempts=3, base_delay="10ms", jitter=0))
        def flaky(context):
            attempts = int(COUNTER.read_text()) + 1 if COUNTER.exists() else 1
            COUNTER.write_text(str(attempts))
            if attempts < 3:
                raise fs.Retry(f"feed not ready (attempt {attempts})")
            return attempts
        """,
    )
    run = project.run("materialize", "flaky")
    assert "succeeded" in run.stdout
    shown = project.run("run", "show", run.run_id()).stdout
    assert "retried attempts:" in shown
    assert "flaky attempt 1: [retry_requested] feed not ready (attempt 1) -> retried after 0.01 s" in shown
    assert "flaky attempt 2: [retry_requested] feed not ready (attempt 2) -> retried after 0.02 s" in shown
