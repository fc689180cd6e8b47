"""Quickstart: a small web-shop analytics pipeline that makes up its own data.

    raw_events (daily) ──> cleaned_events (daily) ──┐
                                                    ├──> daily_report (daily)
    user_profiles ──────────────────────────────────┘

Run it from this directory:

    flowstone materialize daily_report --partition 2025-01-15
    flowstone lineage upstream daily_report --partition 2025-01-15
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import flowstone as fs

pipeline = fs.Pipeline("quickstart")
days = fs.DailyPartitions(start="2025-01-01", end="2026-01-01")  # end is exclusive

COUNTRIES = ["NO", "SE", "DK", "DE", "FR"]
KINDS = ["view", "view", "view", "add_to_cart", "purchase"]


@pipeline.asset(tags=["ingest"], code_version="1")
def user_profiles(context: fs.Context) -> dict[int, dict[str, Any]]:
    """The shop's customers, as exported from the CRM."""
    rng = random.Random(42)
    return {
        user_id: {"user_id": user_id, "country": rng.choice(COUNTRIES), "plan": rng.choice(["free", "pro"])}
        for user_id in range(1, 201)
    }


@pipeline.asset(partitioned_by=days, tags=["ingest"], code_version="1")
def raw_events(context: fs.Context) -> list[dict[str, Any]]:
    """Click-stream events as delivered by the tracker for one day, warts and all."""
    day: date = context.partition
    rng = random.Random(day.toordinal())
    start = datetime.combine(day, time(0), tzinfo=UTC)
    events = []
    for i in range(2_000):
        events.append(
            {
                "event_id": f"{day:%Y%m%d}-{i}",
                # about 2% arrive without a user, 1% are duplicates of the previous event
                "user_id": None if rng.random() < 0.02 else rng.randint(1, 200),
                "kind": rng.choice(KINDS),
                "amount": round(rng.uniform(5, 250), 2),
                "at": (start + timedelta(seconds=rng.randint(0, 86_399))).isoformat(),
            }
        )
        if rng.random() < 0.01:
            events.append(dict(events[-1]))
    return events


@pipeline.asset(partitioned_by=days, code_version="1")
def cleaned_events(context: fs.Context, raw_events: list[dict[str, Any]]) -> fs.Output:
    """Events with a known user, deduplicated, purchases keeping their amount."""
    seen: set[str] = set()
    cleaned = []
    for event in raw_events:
        if event["user_id"] is None or event["event_id"] in seen:
            continue
        seen.add(event["event_id"])
        cleaned.append({**event, "amount": event["amount"] if event["kind"] == "purchase" else 0.0})
    dropped = len(raw_events) - len(cleaned)
    context.log.info("dropped %d of %d events", dropped, len(raw_events))
    return fs.Output(cleaned, metadata={"rows": len(cleaned), "dropped": dropped})


@pipeline.asset(partitioned_by=days, code_version="1")
def daily_report(
    context: fs.Context,
    cleaned_events: list[dict[str, Any]],
    user_profiles: dict[int, dict[str, Any]],
) -> fs.Output:
    """Revenue, buyers and conversion per country for one day."""
    revenue: defaultdict[str, float] = defaultdict(float)
    buyers: defaultdict[str, set[int]] = defaultdict(set)
    visitors: defaultdict[str, set[int]] = defaultdict(set)
    for event in cleaned_events:
        country = user_profiles[event["user_id"]]["country"]
        visitors[country].add(event["user_id"])
        if event["kind"] == "purchase":
            revenue[country] += event["amount"]
            buyers[country].add(event["user_id"])
    report = {
        country: {
            "revenue": round(revenue[country], 2),
            "buyers": len(buyers[country]),
            "conversion": round(len(buyers[country]) / len(visitors[country]), 3)
            if visitors[country]
            else 0.0,
        }
        for country in sorted(visitors)
    }
    kinds = Counter(e["kind"] for e in cleaned_events)
    total = round(sum(r["revenue"] for r in report.values()), 2)
    return fs.Output(report, metadata={"revenue": total, "purchases": kinds["purchase"]})
