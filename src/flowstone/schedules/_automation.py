"""Declarative automation: per-asset conditions the daemon evaluates incrementally.

    @pipeline.asset(automation=fs.eager())
    def cleaned(context, raw): ...

    @pipeline.asset(automation=[fs.on_cron("0 6 * * *", timezone="Europe/Oslo"), fs.freshness(max_lag="6h")])
    def report(context, cleaned): ...

Conditions (an asset takes one, or a list of at most one trigger plus one ``freshness``):

- ``eager()``: materialize a partition when an upstream partition it reads has a newer successful
  materialization than the one its latest success consumed, once none of the partitions it reads
  is failing (latest attempt failed) or missing. A partition whose upstream is requested in the
  same pass waits for that run (a diamond's bottom runs once, after both sides). The partitions
  that read a changed upstream partition are requested together (one run per asset); all of them
  when the upstream is unpartitioned. Only changes trigger: nothing runs for what was already
  out of date when the daemon first looked.
- ``on_cron(cron, timezone="UTC")``: after each cron tick, once every upstream asset has a new
  success (of a partition the asset reads) since that tick, request the asset once for that tick:
  a time-partitioned asset its partition that closed at the tick, an unpartitioned one itself,
  any other partitioned one all its partitions. Without upstream assets: at the tick.
- ``freshness(max_lag="6h")``: the asset is *overdue* when its latest success (of any partition)
  is older than ``max_lag``: an ``asset.overdue`` event is stored and emitted, the notifier's
  ``notify_overdue(asset, details)`` is called when it has one (else a warning is logged), once
  per overdue period; ``asset.fresh`` follows when a success arrives. It launches nothing.

How the daemon evaluates them (``AutomationEvaluator.evaluate(now)``, once per pass): cost follows
what changed, never the number of partitions.

- A cursor over ``flowstone_events.id``: each pass reads the events written since the previous
  one (one primary-key range query) and keeps the ``step.succeeded`` ones of assets that matter.
  The first evaluation starts at the newest event (no backlog storm). Ids skipped by the
  previous read (a PostgreSQL transaction that had taken its id but not committed yet) are kept
  as *gaps* and looked up again for ``GAP_TTL``, so a late commit is not missed.
- eager: each changed upstream partition is mapped through the partition mappings to the
  partitions of its eager children that read it (the mapping's inverse: identity and time
  windows by arithmetic, static tables reversed, anything else by a cached reverse index). Only
  those candidates are checked, with one query for the latest state of them and the partitions
  they read (``flowstone_asset_partitions``) and one for the lineage of their latest successes.
- on_cron: per asset the next tick and the tick waiting for its upstreams, marked off by the
  success events as they come. freshness: per asset the time of its latest success, from the
  events (one GROUP BY query the first time only), compared with ``now`` each pass.
- Requests carry deterministic keys (eager: a digest of the partitions and the upstream
  materializations they will read; on_cron: the tick), so evaluating the same change twice
  (another daemon, a restart) launches nothing twice. The evaluator's position is persisted in
  ``flowstone_automation_state`` (kind ``automation``, names ``evaluator``,
  ``evaluator:on_cron``, ``evaluator:freshness``) at the end of each pass, together with the
  requests not yet claimed as ticks, which are handed out again until the daemon claims them.

Times are the daemon's (its clock, e.g. a ``FakeClock`` in tests): an event counts as happening
at its own ``at`` when that lies between the previous pass and ``now``, else at ``now`` (seen in
this pass).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa

from flowstone._events import Event
from flowstone._mappings import (
    AllPartitionsMapping,
    IdentityMapping,
    In,
    PartitionMapping,
    StaticMapping,
    TimeWindowMapping,
    _has_dynamic,
)
from flowstone.partitions import PartitionsDefinition, TimeWindowPartitions
from flowstone.schedules._conditions import (
    AutomationCondition,
    Eager,
    Freshness,
    OnCron,
    check_condition,
    conditions_of,
    eager,
    freshness,
    on_cron,
)
from flowstone.store import _tables as t

if TYPE_CHECKING:
    from collections.abc import Callable

    from sqlalchemy.engine import Connection

    from flowstone._app import FlowStone
    from flowstone.schedules._state import AutomationStore

T = TypeVar("T")

_log = logging.getLogger("flowstone.automation")

ASSET_OVERDUE = "asset.overdue"
ASSET_FRESH = "asset.fresh"
_SUCCEEDED = "step.succeeded"

# Events read per pass at most; the rest are read by the next passes.
MAX_EVENTS_PER_PASS = 50_000
# Partitions per request (one run each); a larger change is split into several requests.
MAX_PARTITIONS_PER_REQUEST = 1_000
# How long an id skipped by a read is looked for again, and how many are kept.
GAP_TTL = timedelta(minutes=10)
MAX_GAPS = 1_000
# Keys per IN (...) list.
_CHUNK = 500

STATE_KIND = "automation"
STATE_EVENTS = "evaluator"
STATE_CRON = "evaluator:on_cron"
STATE_FRESHNESS = "evaluator:freshness"
# Ticks the evaluator claims itself (freshness transitions, once across daemons).
FRESHNESS_TICK_KIND = "freshness"
_CLAIMER = "automation"


# ---------------------------------------------------------------------- requests and reports
@dataclass(frozen=True)
class AutomationRequest:
    """One run the conditions ask for: ``name`` and ``key`` identify it (exactly once).

    ``force``: the selected partitions run even when already materialized (an eager or cron
    request is a request to refresh them).
    """

    name: str
    key: str
    selection: Sequence[str]
    partitions: Sequence[str]
    force: bool = True
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "key": self.key,
            "selection": list(self.selection),
            "partitions": list(self.partitions),
            "force": self.force,
            "reason": self.reason,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> AutomationRequest:
        return cls(
            str(doc["name"]),
            str(doc["key"]),
            tuple(doc["selection"]),
            tuple(doc["partitions"]),
            bool(doc.get("force", True)),
            str(doc.get("reason", "")),
        )


@dataclass
class PassStats:
    """What one evaluation looked at (for logs, tests and benchmarks)."""

    events: int = 0
    successes: int = 0
    candidates: int = 0
    requests: int = 0
    resent: int = 0
    # (asset, partition or None, why it was not requested)
    blocked: list[tuple[str, str | None, str]] = field(default_factory=list)


# ---------------------------------------------------------------------- evaluator state
@dataclass(frozen=True)
class _Success:
    asset: str
    key: str  # the store's form: "" for unpartitioned
    at: datetime  # as the daemon saw it


@dataclass(frozen=True)
class _State:
    status: str
    success: str | None


@dataclass(frozen=True)
class _Input:
    asset: str
    keys: tuple[str, ...]  # store form
    absent: tuple[str, ...]
    policy: str


@dataclass
class _CronState:
    ident: str  # "cron|timezone": a changed expression starts over
    next: datetime
    pending: datetime | None = None
    updated: set[str] = field(default_factory=set)


@dataclass
class _FreshState:
    last: datetime | None  # the latest success as the daemon saw it
    since: datetime  # when watching started (the reference while there is no success)
    overdue: datetime | None = None  # the deadline that passed; None while fresh


def _aware(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _parse(text: Any) -> datetime | None:
    return _aware(datetime.fromisoformat(text)) if isinstance(text, str) else None


def _chunks(items: Sequence[T], size: int = _CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(text.encode()).hexdigest()


def _dump(doc: Any) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


# ---------------------------------------------------------------------- the evaluator
class AutomationEvaluator:
    """Evaluates the pipeline's automation conditions; ``evaluate(now)`` once per daemon pass."""

    def __init__(self, app: FlowStone) -> None:
        from flowstone.schedules._state import AutomationStore

        self.app = app
        self.tenant = app.tenant
        self.engine = app.store.engine
        self.state_store: AutomationStore = AutomationStore(app.store, app.tenant)
        pipeline = app.pipeline
        graph = pipeline.graph
        self._graph = graph
        self._rank = {name: i for i, name in enumerate(graph.topological_order())}
        self.eager_assets: set[str] = set()
        self.cron_conditions: dict[str, OnCron] = {}
        self.fresh_conditions: dict[str, Freshness] = {}
        for name, definition in pipeline.assets.items():
            for condition in conditions_of(definition.automation):
                if isinstance(condition, Eager):
                    self.eager_assets.add(name)
                elif isinstance(condition, OnCron):
                    self.cron_conditions[name] = condition
                elif isinstance(condition, Freshness):
                    self.fresh_conditions[name] = condition
        self._schedules = {name: c.schedule for name, c in self.cron_conditions.items()}
        self._eager_children = self._children_of(self.eager_assets)
        self._cron_children = self._children_of(set(self.cron_conditions))
        # Assets whose successes matter: parents of eager / cron assets and watched assets.
        self._watched = set(self._eager_children) | set(self._cron_children) | set(self.fresh_conditions)

        self._loaded = False
        self._cursor = 0
        self._gaps: dict[int, datetime] = {}  # id -> when first missed
        self._prev_now: datetime | None = None
        self._outstanding: list[AutomationRequest] = []
        self._cron: dict[str, _CronState] = {}
        self._fresh: dict[str, _FreshState] = {}
        self._dirty: set[str] = set()
        self._saved: dict[str, str] = {}
        self._reverse_cache: dict[tuple[str, str], tuple[Any, dict[str, list[str]]]] = {}
        self._cron_inputs: dict[str, tuple[datetime, dict[str, set[str]]]] = {}
        self._cron_recheck: set[str] = set()
        self._pass_mappings: dict[tuple[str, str], tuple[PartitionMapping, In]] = {}
        # One connection per pass (every read sees one snapshot; one pool checkout, which on
        # PostgreSQL is also a pre-ping round trip).
        self._conn: Connection | None = None
        self.last_pass = PassStats()

    def _children_of(self, automated: set[str]) -> dict[str, tuple[str, ...]]:
        children: dict[str, list[str]] = {}
        for child in sorted(automated, key=lambda n: self._rank.get(n, 0)):
            for dep in self._graph.dependencies(child):
                children.setdefault(dep, []).append(child)
        return {k: tuple(v) for k, v in children.items()}

    # ------------------------------------------------------------------ public views
    @property
    def overdue(self) -> dict[str, datetime]:
        """Assets with ``freshness`` that are overdue now -> the deadline they missed."""
        return {a: s.overdue for a, s in self._fresh.items() if s.overdue is not None}

    # ------------------------------------------------------------------ one pass
    def evaluate(self, now: datetime) -> list[AutomationRequest]:
        """The runs the conditions ask for as of ``now`` (and requests of earlier passes that were
        never claimed). Side effects: freshness events, the evaluator's persisted position."""
        now = _aware(now)
        stats = PassStats()
        self.last_pass = stats
        self._pass_mappings = {}
        position = (self._cursor, dict(self._gaps))
        with self.engine.connect() as conn:
            self._conn = conn
            try:
                if not self._loaded:
                    self._load(now)
                resent = self._unclaimed()
                stats.resent = len(resent)
                successes = self._read_events(now, stats)
                resolve = self.app.resolver()
                self._freshness_seen(successes)
                requests = self._cron_requests(now, successes, resolve, stats)
                requests += self._eager_requests(successes, resolve, stats)
                self._freshness_check(now)
                conn.commit()  # ends the read transaction
            except Exception:
                # The next pass reads these events again (a store error, say); what was decided
                # on them is idempotent (request keys, freshness and cron marks).
                self._cursor, self._gaps = position
                raise
            finally:
                self._conn = None
            self._prev_now = now
            out: list[AutomationRequest] = []
            seen: set[tuple[str, str]] = set()
            for request in [*resent, *requests]:
                if (request.name, request.key) not in seen:
                    seen.add((request.name, request.key))
                    out.append(request)
            stats.requests = len(out)
            if out or self._outstanding:
                self._dirty.add(STATE_EVENTS)
            self._outstanding = out
            self._save(conn)
        for asset, key, reason in stats.blocked:
            _log.debug("automation: %s%s not requested: %s", asset, f" [{key}]" if key else "", reason)
        return out

    # ------------------------------------------------------------------ persisted state
    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        if self._conn is not None:
            yield self._conn
        else:
            with self.engine.connect() as conn:
                yield conn

    def _load(self, now: datetime) -> None:
        c = t.automation_state.c
        with self._reading() as conn:
            saved: dict[str, str | None] = dict(
                conn.execute(
                    sa.select(c.name, c.cursor).where(
                        c.tenant_id == self.tenant,
                        c.kind == STATE_KIND,
                        c.name.in_([STATE_EVENTS, STATE_CRON, STATE_FRESHNESS]),
                    )
                ).all()
            )
        doc = _loads(saved.get(STATE_EVENTS))
        if doc is not None and isinstance(doc.get("cursor"), int):
            self._cursor = int(doc["cursor"])
            self._gaps = {
                int(k): v for k, when in (doc.get("gaps") or {}).items() if (v := _parse(when)) is not None
            }
            self._outstanding = [AutomationRequest.from_json(r) for r in doc.get("outstanding") or []]
        else:
            # First look: start at the newest event, earlier changes are not "new".
            with self._reading() as conn:
                self._cursor = int(conn.execute(sa.select(sa.func.max(t.events.c.id))).scalar() or 0)
            self._dirty.add(STATE_EVENTS)

        cron_doc = _loads(saved.get(STATE_CRON)) or {}
        for asset, condition in self.cron_conditions.items():
            entry = cron_doc.get(asset)
            ident = f"{condition.cron}|{condition.timezone}"
            nxt = _parse(entry.get("next")) if isinstance(entry, dict) else None
            if isinstance(entry, dict) and entry.get("ident") == ident and nxt is not None:
                self._cron[asset] = _CronState(
                    ident, nxt, _parse(entry.get("pending")), set(entry.get("updated") or [])
                )
                self._cron_recheck.add(asset)  # decided again (a pass may have died deciding)
            else:
                self._cron[asset] = _CronState(ident, self._schedules[asset].next_after(now))
                self._dirty.add(STATE_CRON)

        fresh_doc = _loads(saved.get(STATE_FRESHNESS)) or {}
        missing: list[str] = []
        for asset in self.fresh_conditions:
            entry = fresh_doc.get(asset)
            since = _parse(entry.get("since")) if isinstance(entry, dict) else None
            if isinstance(entry, dict) and since is not None:
                self._fresh[asset] = _FreshState(
                    _parse(entry.get("last")), since, _parse(entry.get("overdue"))
                )
            else:
                missing.append(asset)
        if missing:
            # Once per asset, the first time: its latest success so far (later ones come as events).
            c = t.asset_partitions.c
            found: dict[str, datetime] = {}
            with self._reading() as conn:
                for chunk in _chunks(missing):
                    query = (
                        sa.select(c.asset, sa.func.max(c.success_at))
                        .where(c.tenant_id == self.tenant, c.asset.in_(list(chunk)))
                        .group_by(c.asset)
                    )
                    for asset, at in conn.execute(query):
                        if at is not None:
                            found[asset] = min(_aware(at), now)
            for asset in missing:
                self._fresh[asset] = _FreshState(found.get(asset), now)
            self._dirty.add(STATE_FRESHNESS)
        self._loaded = True

    def _save(self, conn: Connection) -> None:
        docs: dict[str, Any] = {}
        if STATE_EVENTS in self._dirty:
            docs[STATE_EVENTS] = {
                "v": 1,
                "cursor": self._cursor,
                "gaps": {str(k): _iso(v) for k, v in self._gaps.items()},
                "outstanding": [r.to_json() for r in self._outstanding],
            }
        if STATE_CRON in self._dirty:
            docs[STATE_CRON] = {
                asset: {
                    "ident": s.ident,
                    "next": _iso(s.next),
                    "pending": _iso(s.pending),
                    "updated": sorted(s.updated),
                }
                for asset, s in self._cron.items()
            }
        if STATE_FRESHNESS in self._dirty:
            docs[STATE_FRESHNESS] = {
                asset: {"last": _iso(s.last), "since": _iso(s.since), "overdue": _iso(s.overdue)}
                for asset, s in self._fresh.items()
            }
        self._dirty.clear()
        changed = {name: text for name, doc in docs.items() if self._saved.get(name) != (text := _dump(doc))}
        if changed:
            for name, text in changed.items():
                self.state_store._upsert(conn, STATE_KIND, name, {"cursor": text})
            conn.commit()
            self._saved.update(changed)

    def _unclaimed(self) -> list[AutomationRequest]:
        """Requests of earlier passes without a tick row yet (the daemon stopped before claiming)."""
        if not self._outstanding:
            return []
        c = t.ticks.c
        claimed: set[tuple[str, str]] = set()
        with self._reading() as conn:
            for chunk in _chunks(self._outstanding):
                query = sa.select(c.name, c.tick_key).where(
                    c.tenant_id == self.tenant,
                    c.kind == "automation",
                    c.name.in_(sorted({r.name for r in chunk})),
                    c.tick_key.in_(sorted({r.key for r in chunk})),
                )
                claimed.update((name, key) for name, key in conn.execute(query))
        return [r for r in self._outstanding if (r.name, r.key) not in claimed]

    # ------------------------------------------------------------------ events
    def _read_events(self, now: datetime, stats: PassStats) -> list[_Success]:
        e = t.events.c
        newer = e.id > self._cursor
        where = sa.or_(newer, e.id.in_(sorted(self._gaps))) if self._gaps else newer
        query = (
            sa.select(e.id, e.tenant_id, e.type, e.at, e.asset, e.partition_key)
            .where(where)
            .order_by(e.id)
            .limit(MAX_EVENTS_PER_PASS)
        )
        with self._reading() as conn:
            rows = conn.execute(query).all()
        stats.events = len(rows)
        if not rows:
            self._expire_gaps(now)
            return []
        cursor = self._cursor
        new_ids = [r.id for r in rows if r.id > cursor]
        for r in rows:
            if r.id in self._gaps:
                del self._gaps[r.id]
                self._dirty.add(STATE_EVENTS)
        if new_ids:
            # Ids below the newest one read that were not there: committed later, or never.
            expected = cursor + 1
            for found in new_ids:
                if found > expected:
                    for missing in range(max(expected, found - MAX_GAPS), found):
                        self._gaps[missing] = now
                expected = found + 1
            self._cursor = new_ids[-1]
            self._dirty.add(STATE_EVENTS)
        self._expire_gaps(now)
        prev = self._prev_now
        successes: list[_Success] = []
        for r in rows:
            if r.tenant_id != self.tenant or r.type != _SUCCEEDED or r.asset not in self._watched:
                continue
            at = r.at if isinstance(r.at, datetime) else now
            at = _aware(at)
            seen = at if at <= now and (prev is None or at > prev) else now
            successes.append(_Success(r.asset, r.partition_key or "", seen))
        stats.successes = len(successes)
        return successes

    def _expire_gaps(self, now: datetime) -> None:
        if not self._gaps:
            return
        old = [i for i, when in self._gaps.items() if now - when > GAP_TTL]
        excess = len(self._gaps) - len(old) - MAX_GAPS
        if excess > 0:
            expired = set(old)
            old += sorted(i for i in self._gaps if i not in expired)[:excess]
        for i in old:
            self._gaps.pop(i, None)
        if old:
            self._dirty.add(STATE_EVENTS)

    # ------------------------------------------------------------------ partition mappings
    def _mapping(self, child: str, dep: str, resolve: Any) -> tuple[PartitionMapping, In]:
        found = self._pass_mappings.get((child, dep))
        if found is None:
            from flowstone.engine._planner import mapping_for

            found = mapping_for(self.app.pipeline, child, dep, resolve)
            self._pass_mappings[(child, dep)] = found
        return found

    def _downstream_keys(self, child: str, dep: str, up_key: str, resolve: Any) -> list[str]:
        """The partitions of ``child`` (store form) that read partition ``up_key`` of ``dep``."""
        down: PartitionsDefinition | None = resolve(child)
        up: PartitionsDefinition | None = resolve(dep)
        if down is None:
            return [""]
        if up is None:
            return list(down.keys())
        mapping, _ = self._mapping(child, dep, resolve)
        if isinstance(mapping, IdentityMapping):
            return [up_key] if up_key in down else []
        if isinstance(mapping, AllPartitionsMapping):
            return list(down.keys())
        if (
            isinstance(mapping, TimeWindowMapping)
            and isinstance(down, TimeWindowPartitions)
            and isinstance(up, TimeWindowPartitions)
        ):
            keys = _time_window_inverse(mapping, down, up, up_key)
            if keys is not None:
                return keys
        if isinstance(mapping, StaticMapping) and not _has_dynamic(down):
            return [d for d, ups in mapping.table.items() if up_key in ups and d in down]
        return self._reverse_index(child, dep, down, up, mapping).get(up_key, [])

    def _reverse_index(
        self, child: str, dep: str, down: PartitionsDefinition, up: PartitionsDefinition, mapping: Any
    ) -> dict[str, list[str]]:
        """upstream key -> downstream keys, by asking the mapping about every downstream key;
        kept while the two definitions stay the same (rebuilt each pass for dynamic ones)."""
        ident = (down, up, down.count(), up.count())
        cached = self._reverse_cache.get((child, dep))
        if cached is not None and cached[0] == ident:
            return cached[1]
        index: dict[str, list[str]] = {}
        for key in down.keys(start=None):
            for u in mapping.upstream_keys(down, key, up).keys:
                if u is not None:
                    index.setdefault(u, []).append(key)
        if not (_has_dynamic(down) or _has_dynamic(up)):
            self._reverse_cache[(child, dep)] = (ident, index)
        return index

    def _inputs(self, child: str, key: str, resolve: Any) -> list[_Input]:
        """What partition ``key`` of ``child`` reads, per upstream asset (as the planner maps it)."""
        down = resolve(child)
        groups = []
        for dep in self._graph.dependencies(child):
            mapping, spec = self._mapping(child, dep, resolve)
            up = resolve(dep)
            mapped = mapping.upstream_keys(down, key or None, up)
            present: list[str] = []
            absent = [str(m) for m in mapped.missing]
            for u in mapped.keys:
                if up is None:
                    present.append("")
                elif u is not None and u in up:
                    present.append(u)
                else:
                    absent.append(str(u))
            groups.append(_Input(dep, tuple(present), tuple(absent), spec.missing))
        return groups

    # ------------------------------------------------------------------ store lookups
    def _states(self, pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], _State]:
        """Latest status and success of these (asset, key) pairs that have a record."""
        by_asset: dict[str, set[str]] = {}
        for asset, key in pairs:
            by_asset.setdefault(asset, set()).add(key)
        c = t.asset_partitions.c
        columns = (c.asset, c.partition_key, c.last_status, c.success_materialization_id)
        found: dict[tuple[str, str], _State] = {}
        clauses: list[Any] = []
        size = 0

        def flush(conn: Any) -> None:
            nonlocal clauses, size
            if clauses:
                for asset, key, status, success in conn.execute(sa.select(*columns).where(sa.or_(*clauses))):
                    found[(asset, key)] = _State(status, success)
            clauses, size = [], 0

        with self._reading() as conn:
            for asset, keys in by_asset.items():
                for chunk in _chunks(sorted(keys)):
                    clauses.append(
                        sa.and_(
                            c.tenant_id == self.tenant, c.asset == asset, c.partition_key.in_(list(chunk))
                        )
                    )
                    size += len(chunk) + 2
                    if size >= 2 * _CHUNK:
                        flush(conn)
            flush(conn)
        return found

    def _consumed(self, materialization_ids: Iterable[str]) -> dict[str, set[str]]:
        """materialization id -> the upstream materialization ids it read (lineage)."""
        ids = sorted(set(materialization_ids))
        lin = t.lineage.c
        consumed: dict[str, set[str]] = {}
        with self._reading() as conn:
            for chunk in _chunks(ids):
                query = sa.select(lin.materialization_id, lin.upstream_materialization_id).where(
                    lin.materialization_id.in_(list(chunk)), lin.tenant_id == self.tenant
                )
                for mat, upstream in conn.execute(query):
                    consumed.setdefault(mat, set()).add(upstream)
        return consumed

    # ------------------------------------------------------------------ eager
    def _eager_requests(
        self, successes: Sequence[_Success], resolve: Any, stats: PassStats
    ) -> list[AutomationRequest]:
        candidates: dict[str, set[str]] = {}
        changed: dict[str, set[str]] = {}
        for s in successes:
            if s.asset in self._eager_children:
                changed.setdefault(s.asset, set()).add(s.key)
        for up, keys in changed.items():
            for child in self._eager_children[up]:
                target = candidates.setdefault(child, set())
                for key in keys:
                    try:
                        target.update(self._downstream_keys(child, up, key, resolve))
                    except Exception as exc:  # one broken mapping never stops the others
                        _log.exception("automation: mapping %s [%s] to '%s' failed", up, key, child)
                        stats.blocked.append((child, None, f"error: {type(exc).__name__}: {exc}"))
        if not candidates:
            return []
        order = sorted(candidates, key=lambda n: self._rank.get(n, 0))
        inputs: dict[tuple[str, str], list[_Input]] = {}
        pairs: set[tuple[str, str]] = set()
        for child in order:
            for key in list(candidates[child]):
                try:
                    groups = self._inputs(child, key, resolve)
                except Exception as exc:
                    _log.exception("automation: the inputs of %s [%s] failed", child, key)
                    stats.blocked.append((child, key or None, f"error: {type(exc).__name__}: {exc}"))
                    candidates[child].discard(key)
                    continue
                inputs[(child, key)] = groups
                pairs.add((child, key))
                pairs.update((g.asset, u) for g in groups for u in g.keys)
        stats.candidates = len(inputs)
        states = self._states(pairs)
        own_success = [st.success for k in inputs if (st := states.get(k)) is not None and st.success]
        consumed = self._consumed(own_success)

        requested: set[tuple[str, str]] = set()
        chosen: dict[str, list[tuple[str, list[str]]]] = {}
        for child in order:
            for key in sorted(candidates[child]):
                reason, mats = _eager_verdict(inputs[(child, key)], states, requested)
                if reason is not None:
                    stats.blocked.append((child, key or None, reason))
                    continue
                own = states.get((child, key))
                if (
                    own is None
                    or own.success is None
                    or any(m not in consumed.get(own.success, ()) for m in mats)
                ):
                    requested.add((child, key))
                    chosen.setdefault(child, []).append((key, sorted(mats)))
        requests = []
        for child, items in chosen.items():
            items.sort(key=_key_order(resolve(child)))
            for chunk in _chunks(items, MAX_PARTITIONS_PER_REQUEST):
                partitions = [k for k, _ in chunk if k]
                requests.append(
                    AutomationRequest(
                        name=child,
                        key=f"eager:{_digest([child, [list(i) for i in chunk]])}",
                        selection=(child,),
                        partitions=partitions,
                        force=True,
                        reason="eager: an upstream partition it reads has a newer materialization",
                    )
                )
        return requests

    # ------------------------------------------------------------------ on_cron
    def _cron_requests(
        self, now: datetime, successes: Sequence[_Success], resolve: Any, stats: PassStats
    ) -> list[AutomationRequest]:
        if not self.cron_conditions:
            return []
        touched: set[str] = set()
        for asset, state in self._cron.items():
            if now >= state.next:
                schedule = self._schedules[asset]
                ticks = schedule.ticks_between(state.next - timedelta(microseconds=1), now, limit=1)
                latest = ticks[-1] if ticks else state.next
                if state.pending is not None:
                    _log.info(
                        "on_cron %s: tick %s passed without its upstreams updated", asset, state.pending
                    )
                state.pending, state.updated = latest, set()
                state.next = schedule.next_after(latest)
                touched.add(asset)
                self._dirty.add(STATE_CRON)
        for s in successes:
            for child in self._cron_children.get(s.asset, ()):
                state = self._cron[child]
                if state.pending is None or s.at < state.pending:
                    continue
                if s.key in self._cron_inputs_of(child, state.pending, resolve).get(s.asset, ()):
                    state.updated.add(s.asset)
                    touched.add(child)
                    self._dirty.add(STATE_CRON)
        # Checked until decided (also when an earlier pass failed before deciding).
        self._cron_recheck.update(touched)
        requests = []
        for asset in sorted(self._cron_recheck, key=lambda n: self._rank.get(n, 0)):
            state = self._cron[asset]
            tick = state.pending
            if tick is None or not all(d in state.updated for d in self._graph.dependencies(asset)):
                self._cron_recheck.discard(asset)
                continue
            targets = _cron_targets(resolve(asset), tick)
            if targets is None:
                state.pending = None  # no partition has closed at this tick
                self._cron_recheck.discard(asset)
                continue
            groups = [g for key in targets for g in self._inputs(asset, key, resolve)]
            states = self._states((g.asset, u) for g in groups for u in g.keys)
            reason, _ = _eager_verdict(groups, states, set())
            self._cron_recheck.discard(asset)
            if reason is not None:  # checked again on the next success of an input
                shown = (targets[0] or None) if len(targets) == 1 else None
                stats.blocked.append((asset, shown, reason))
                continue
            requests.append(
                AutomationRequest(
                    name=asset,
                    key=f"cron:{tick.isoformat()}",
                    selection=(asset,),
                    partitions=[k for k in targets if k],
                    force=True,
                    reason=f"on_cron: tick {tick.isoformat()} passed and its upstreams were updated",
                )
            )
            state.pending, state.updated = None, set()
            self._dirty.add(STATE_CRON)
        return requests

    def _cron_inputs_of(self, asset: str, tick: datetime, resolve: Any) -> dict[str, set[str]]:
        cached = self._cron_inputs.get(asset)
        if cached is not None and cached[0] == tick:
            return cached[1]
        keys: dict[str, set[str]] = {}
        for target in _cron_targets(resolve(asset), tick) or []:
            for group in self._inputs(asset, target, resolve):
                keys.setdefault(group.asset, set()).update(group.keys)
        self._cron_inputs[asset] = (tick, keys)
        return keys

    # ------------------------------------------------------------------ freshness
    def _freshness_seen(self, successes: Sequence[_Success]) -> None:
        for s in successes:
            state = self._fresh.get(s.asset)
            if state is not None and (state.last is None or s.at > state.last):
                state.last = s.at
                self._dirty.add(STATE_FRESHNESS)

    def _freshness_check(self, now: datetime) -> None:
        for asset, condition in self.fresh_conditions.items():
            state = self._fresh[asset]
            deadline = (state.last or state.since) + condition.max_lag
            if now > deadline:
                if state.overdue != deadline:
                    state.overdue = deadline
                    self._dirty.add(STATE_FRESHNESS)
                    self._announce(ASSET_OVERDUE, asset, condition, state, deadline, now)
            elif state.overdue is not None:
                missed, state.overdue = state.overdue, None
                self._dirty.add(STATE_FRESHNESS)
                self._announce(ASSET_FRESH, asset, condition, state, missed, now)

    def _announce(
        self,
        kind: str,
        asset: str,
        condition: Freshness,
        state: _FreshState,
        deadline: datetime,
        now: datetime,
    ) -> None:
        """Store and emit one freshness transition, once across daemons (a tick row is its key)."""
        overdue = kind == ASSET_OVERDUE
        label = "overdue" if overdue else "fresh"
        lag = None if state.last is None else (now - state.last).total_seconds()
        data: dict[str, Any] = {
            "max_lag_s": condition.max_lag.total_seconds(),
            "last_success_at": _iso(state.last),
            "deadline": deadline.isoformat(),
            "lag_s": lag,
        }
        text = (
            f"asset '{asset}' is overdue: "
            + (
                f"latest success {state.last.isoformat()} is older than {condition.max_lag}"
                if state.last is not None
                else f"no success within {condition.max_lag} of {state.since.isoformat()}"
            )
            if overdue
            else f"asset '{asset}' is fresh again (it was overdue since {deadline.isoformat()})"
        )
        tick = self.state_store.claim_tick(
            FRESHNESS_TICK_KIND,
            asset,
            f"{label}:{deadline.isoformat()}",
            now,
            daemon_id=_CLAIMER,
            status=label,
            reason=text,
        )
        if tick is None:
            return  # another daemon announced it
        with self.engine.begin() as conn:
            conn.execute(
                t.events.insert().values(
                    tenant_id=self.tenant, at=now, type=kind, asset=asset, partition_key=None, data=data
                )
            )
        self.app.events.emit(Event(kind, now, asset=asset, data=data))
        if overdue:
            _log.warning("%s", text)
        else:
            _log.info("%s", text)
        hook = getattr(self.app.notifier, "notify_overdue" if overdue else "notify_fresh", None)
        if callable(hook):
            try:
                hook(asset, dict(data))
            except Exception:  # a failing notifier never stops the daemon
                _log.exception("notifier failed on %s of asset '%s'", kind, asset)


# ---------------------------------------------------------------------- helpers
def _eager_verdict(
    groups: Sequence[_Input], states: dict[tuple[str, str], _State], requested: set[tuple[str, str]]
) -> tuple[str | None, list[str]]:
    """(why not, None when it may run; the upstream success ids it would read)."""
    mats: list[str] = []
    for group in groups:
        if group.absent and group.policy != "skip":
            return f"upstream '{group.asset}' has no partition {group.absent[0]}", mats
        for key in group.keys:
            where = f"'{group.asset}'" + (f" [{key}]" if key else "")
            if (group.asset, key) in requested:
                return f"upstream {where} is requested in this pass", mats
            state = states.get((group.asset, key))
            if state is not None and state.status == "failed":
                return f"upstream {where} is failing", mats
            if state is None or state.success is None:
                if group.policy == "skip":
                    continue
                return f"upstream {where} is not materialized", mats
            mats.append(state.success)
    return None, mats


def _time_window_inverse(
    mapping: TimeWindowMapping, down: TimeWindowPartitions, up: TimeWindowPartitions, up_key: str
) -> list[str] | None:
    """Downstream windows that read upstream window ``up_key``: those overlapping the upstream
    windows shifted back by the offsets, each confirmed by the mapping itself. None: no answer by
    arithmetic (the caller falls back to the reverse index)."""
    try:
        if up_key not in up:
            return []
        n = up._first + up.index_of(up_key)
        start = up._window(n - mapping.end_offset).start
        end = up._window(n - mapping.start_offset).end
        return [
            key
            for key in down.keys_between(start, end)
            if up_key in mapping.upstream_keys(down, key, up).keys
        ]
    except (IndexError, ValueError, OverflowError):
        return None


def _cron_targets(definition: PartitionsDefinition | None, tick: datetime) -> list[str] | None:
    """The partitions an on_cron asset is requested for at ``tick`` (store form); None when a
    time-partitioned asset has no partition closed by then."""
    from flowstone.schedules._definitions import closed_partition

    if definition is None:
        return [""]
    if isinstance(definition, TimeWindowPartitions):
        key = closed_partition(definition, tick)
        return None if key is None else [key]
    return list(definition.keys())


def _key_order(definition: PartitionsDefinition | None) -> Callable[[tuple[str, list[str]]], Any]:
    def order(item: tuple[str, list[str]]) -> Any:
        key = item[0]
        if definition is None or not key:
            return (0, key)
        try:
            return (definition.index_of(key), key)
        except ValueError:
            return (-1, key)

    return order


def _loads(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        _log.warning("automation state is not JSON; starting over")
        return None
    return doc if isinstance(doc, dict) else None


def overdue_assets(app: FlowStone) -> dict[str, datetime]:
    """Assets whose ``freshness`` condition the daemon found overdue -> the deadline they missed
    (as persisted by the last daemon pass)."""
    from flowstone.schedules._state import AutomationStore

    doc = _loads(AutomationStore(app.store, app.tenant).state(STATE_KIND, STATE_FRESHNESS).cursor) or {}
    found: dict[str, datetime] = {}
    for asset, entry in doc.items():
        when = _parse(entry.get("overdue")) if isinstance(entry, dict) else None
        if when is not None and asset in app.pipeline.assets:
            found[asset] = when
    return found


__all__ = [
    "ASSET_FRESH",
    "ASSET_OVERDUE",
    "AutomationCondition",
    "AutomationEvaluator",
    "AutomationRequest",
    "Eager",
    "Freshness",
    "OnCron",
    "PassStats",
    "check_condition",
    "conditions_of",
    "eager",
    "freshness",
    "on_cron",
    "overdue_assets",
]
