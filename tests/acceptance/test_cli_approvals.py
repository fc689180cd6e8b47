"""`flowstone approvals list|show|approve|modify|reject|history|timeouts` on a project whose
pipeline has a checkpoint: a run pauses at the gate, a person decides from the command line, the
run resumes (or its downstream is skipped), history shows who decided what; bad input exits 2
with a clear message and no traceback."""

from __future__ import annotations

import json
import re

import pytest

from ._cli import Project, Result, assert_no_traceback, row_for, table_rows

pytestmark = pytest.mark.acceptance

GATED = """
    import json
    import os
    from pathlib import Path
    from typing import Any

    import flowstone as fs

    pipeline = fs.Pipeline("gated")
    days = fs.DailyPartitions(start="2025-01-01", end="2025-02-01")
    HERE = Path(__file__).resolve().parent
    TIMEOUT = os.environ.get("GATE_TIMEOUT")


    @pipeline.asset()
    def orders(context: fs.Context) -> dict[str, Any]:
        return {"rows": 3, "change": 0.4}


    @pipeline.checkpoint(
        message=lambda ctx, orders: f"orders moved {orders['change']:.0%}",
        timeout=float(TIMEOUT) if TIMEOUT else None,
        on_timeout="auto_reject",
    )
    def orders_review(context: fs.Context, orders: dict[str, Any]) -> bool:
        return orders["change"] > 0.2


    @pipeline.asset()
    def invoices(context: fs.Context, orders_review: dict[str, Any]) -> dict[str, Any]:
        (HERE / "invoices_input.json").write_text(json.dumps(orders_review))
        return {"invoiced": orders_review["rows"] * 10}


    @pipeline.asset()
    def stock(context: fs.Context, orders: dict[str, Any]) -> int:
        return int(orders["rows"])


    @pipeline.asset(partitioned_by=days)
    def daily_orders(context: fs.Context) -> dict[str, Any]:
        return {"day": context.partition_key}


    @pipeline.checkpoint()
    def daily_review(context: fs.Context, daily_orders: dict[str, Any]) -> bool:
        return True
"""

WAITS = re.compile(r"⏸ orders_review waits for approval ([0-9a-f]{12}): orders moved 40%")


@pytest.fixture
def gated(project: Project) -> Project:
    project.write("gated.py", GATED)
    project.write(
        "flowstone.toml", 'pipeline = "gated:pipeline"\nstore = "sqlite:///.flowstone/flowstone.db"\n'
    )
    return project


def pause(project: Project, *selection: str, env: dict[str, str] | None = None) -> tuple[str, str]:
    """Materialize up to the gate: (the run id, the approval id prefix the command printed)."""
    result = project.run("materialize", *selection, env=env)
    found = WAITS.search(result.stdout)
    assert found, f"no approval printed\n{result}"
    assert f"run {result.run_id()} waiting_approval" in result.stdout
    assert "decide with `flowstone approvals list`" in result.stdout
    return result.run_id(), found.group(1)


def refused(result: Result, words: str) -> None:
    assert result.code == 2, str(result)
    assert words in result.stderr, str(result)
    assert_no_traceback(result)


def test_list_show_approve_then_reject_a_second_run_and_history(gated: Project) -> None:
    run_id, approval = pause(gated, "invoices", "stock")

    listed = gated.run("approvals", "list")
    row = row_for(listed.stdout, approval)
    assert row[1:4] == ["orders_review", "-", "pending"]
    assert row[6] == run_id[:12] and row[7] == "orders moved 40%"

    shown = gated.run("approvals", "show", approval).stdout
    assert re.search(rf"approval {approval}[0-9a-f]{{20}}  pending  checkpoint orders_review", shown)
    assert "message: orders moved 40%" in shown
    assert json.loads(shown.split("value: ", 1)[1].splitlines()[0])["type"] == "dict"

    approved = gated.run("approvals", "approve", approval, "--reason", "numbers checked", "--by", "ana")
    assert "approved  checkpoint orders_review" in approved.stdout
    assert "decided by ana" in approved.stdout and "numbers checked" in approved.stdout
    assert f"run {run_id} succeeded" in approved.stdout
    assert json.loads((gated.root / "invoices_input.json").read_text()) == {"rows": 3, "change": 0.4}
    refused(
        gated.run("approvals", "approve", approval, "--by", "bob", expect=None), "already approved by ana"
    )

    # A second run: a rejection needs a reason, then fails the gate (its downstream is skipped).
    run_id, second = pause(gated, "orders_review", "invoices", "--force")
    missing = gated.run("approvals", "reject", second, expect=2)
    assert "Missing option '--reason'" in missing.stderr
    rejected = gated.run("approvals", "reject", second, "--reason", "wrong source file", "--by", "bob")
    assert "rejected  checkpoint orders_review" in rejected.stdout
    assert f"run {run_id} failed" in rejected.stdout

    everything = table_rows(gated.run("approvals", "list", "--status", "all").stdout)
    assert sorted((r[0], r[3]) for r in everything) == sorted([(approval, "approved"), (second, "rejected")])

    history = table_rows(gated.run("approvals", "history", "orders_review").stdout)
    assert [(r[2], r[3], r[4], r[5]) for r in history] == [
        ("requested", "system", "", approval),
        ("approve", "ana", "numbers checked", approval),
        ("requested", "system", "", second),
        ("reject", "bob", "wrong source file", second),
    ]

    refused(gated.run("approvals", "show", "nope", expect=None), "no approval 'nope'")
    refused(gated.run("approvals", "approve", expect=None), "give an approval id, or --checkpoint")
    refused(gated.run("approvals", "history", "invoices", expect=None), "not a checkpoint")


def test_modify_passes_the_reviewers_value_on(gated: Project) -> None:
    run_id, approval = pause(gated, "invoices")
    refused(gated.run("approvals", "modify", approval, "--value", "{rows: 7}", expect=None), "not valid JSON")
    refused(
        gated.run("approvals", "modify", approval, "--value", "[7]", expect=None),
        "passes on a dict; the modified value is a list",
    )
    modified = gated.run(
        "approvals",
        "modify",
        approval,
        "--value",
        '{"rows": 7, "change": 0}',
        "--reason",
        "capped",
        "--by",
        "cy",
    )
    assert "modified  checkpoint orders_review" in modified.stdout
    assert 'modifications: {"rows": 7, "change": 0}' in modified.stdout
    assert f"run {run_id} succeeded" in modified.stdout
    assert json.loads((gated.root / "invoices_input.json").read_text()) == {"rows": 7, "change": 0}
    history = table_rows(gated.run("approvals", "history", "orders_review").stdout)
    assert [(r[2], r[3], r[4]) for r in history] == [("requested", "system", ""), ("modify", "cy", "capped")]


def test_bulk_decisions_over_partitions(gated: Project) -> None:
    keys = ["2025-01-01", "2025-01-02", "2025-01-03"]
    result = gated.run("materialize", "daily_review", "--partitions", ",".join(keys))
    assert f"run {result.run_id()} waiting_approval" in result.stdout
    assert sorted(r[2] for r in table_rows(gated.run("approvals", "list").stdout)) == keys

    approved = gated.run(
        "approvals",
        "approve",
        "--checkpoint",
        "daily_review",
        "--partitions",
        ",".join(keys[:2]),
        "--by",
        "ana",
    )
    assert "2 request(s) of 'daily_review' approved" in approved.stdout
    assert [r[2] for r in table_rows(gated.run("approvals", "list").stdout)] == keys[2:]

    rejected = gated.run(
        "approvals", "reject", "--checkpoint", "daily_review", "--run", result.run_id(), "--reason", "late"
    )
    assert "1 request(s) of 'daily_review' rejected" in rejected.stdout
    history = table_rows(gated.run("approvals", "history", "daily_review", "--partition", keys[2]).stdout)
    assert [(r[1], r[2], r[4]) for r in history] == [(keys[2], "requested", ""), (keys[2], "reject", "late")]
    assert history[1][3].startswith("user:")  # no --by: the login name


def test_timeouts_apply_on_timeout(gated: Project) -> None:
    # A gate whose timeout (a millisecond) is past by the time the next command starts.
    _run_id, approval = pause(gated, "invoices", env={"GATE_TIMEOUT": "0.001"})
    done = gated.run("approvals", "timeouts")
    assert f"approval {approval}: auto_rejected" in done.stdout
    shown = gated.run("approvals", "show", approval).stdout
    assert "rejected" in shown and "decided by system:timeout" in shown
    assert "no request is overdue" in gated.run("approvals", "timeouts").stdout
