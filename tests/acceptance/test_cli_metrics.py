"""`flowstone metrics --once` in a subprocess: the store-backed Prometheus exposition of a real
project, parsed with prometheus-client's own parser."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ._cli import copy_quickstart

pytestmark = pytest.mark.acceptance


def test_metrics_once_reports_what_the_store_holds(tmp_path: Path) -> None:
    project = copy_quickstart(tmp_path / "quickstart")
    project.run("materialize", "daily_report", "--partition", "2025-01-15")
    out = project.run("metrics", "--once").stdout
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(out)
        for s in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert value("flowstone_materializations_total", asset="daily_report", status="succeeded") == 1
    assert value("flowstone_runs_total", status="succeeded") == 1
    assert value("flowstone_pending_approvals") == 0
    succeeded = sum(
        v
        for (name, labels), v in samples.items()
        if name == "flowstone_materializations_total" and ("status", "succeeded") in labels
    )
    assert succeeded == 4  # raw_events, cleaned_events, user_profiles, daily_report
