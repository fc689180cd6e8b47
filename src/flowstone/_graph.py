"""The asset graph: dependency order, ready sets, cycles with their path, and selections.

Selection syntax (several expressions separated by commas or spaces are a union)::

    name          the asset itself
    +name         the asset and everything upstream of it (``2+name``: two levels up)
    name+         the asset and everything downstream of it (``name+1``: one level down)
    +name+        both directions
    tag:key       assets with that tag; ``tag:key=value`` to match the value too
    *             every asset
"""

from __future__ import annotations

import difflib
import graphlib
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from flowstone._errors import AssetNotFound

# Asset names are Python identifiers, which may be non-ASCII (``données``).
_SELECT = re.compile(r"^(?:(\d*)(\+))?([^\W\d]\w*)(?:(\+)(\d*))?$")


class AssetGraph:
    """Immutable view of ``{asset: dependencies}``; built once per pipeline version."""

    def __init__(
        self, deps: Mapping[str, Iterable[str]], tags: Mapping[str, Mapping[str, str]] | None = None
    ) -> None:
        self._deps: dict[str, tuple[str, ...]] = {k: tuple(v) for k, v in deps.items()}
        self._tags = dict(tags or {})
        children: dict[str, list[str]] = {name: [] for name in self._deps}
        for name, ups in self._deps.items():
            for up in ups:
                if up in children:
                    children[up].append(name)
        self._children = {k: tuple(v) for k, v in children.items()}
        self._order: list[str] | None = None

    @property
    def names(self) -> list[str]:
        return list(self._deps)

    def __contains__(self, name: object) -> bool:
        return name in self._deps

    def __len__(self) -> int:
        return len(self._deps)

    def dependencies(self, name: str) -> tuple[str, ...]:
        return self._deps[name]

    def dependents(self, name: str) -> tuple[str, ...]:
        return self._children[name]

    # ------------------------------------------------------------------ order and cycles
    def cycles(self) -> list[list[str]]:
        """Every dependency cycle, one path per strongly connected component.

        A path reads in the direction data flows: ``[a, b, c, a]`` means a feeds b, b feeds c and
        c feeds a. Edges to unknown names are ignored (they are reported separately).
        """
        index: dict[str, int] = {}
        low: dict[str, int] = {}
        on_stack: set[str] = set()
        stack: list[str] = []
        components: list[list[str]] = []
        counter = 0
        for root in self._deps:
            if root in index:
                continue
            work: list[tuple[str, int]] = [(root, 0)]
            while work:
                node, child_i = work.pop()
                if child_i == 0:
                    index[node] = low[node] = counter
                    counter += 1
                    stack.append(node)
                    on_stack.add(node)
                children = self._children[node]
                if child_i < len(children):
                    work.append((node, child_i + 1))
                    child = children[child_i]
                    if child not in index:
                        work.append((child, 0))
                    elif child in on_stack:
                        low[node] = min(low[node], index[child])
                    continue
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1 or node in self._children[node]:  # or a self-loop
                        components.append(component)
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
        return [self._cycle_path(set(c)) for c in components]

    def _cycle_path(self, members: set[str]) -> list[str]:
        start = min(members)
        # Breadth-first search inside the component for the shortest way back to ``start``.
        previous: dict[str, str] = {}
        frontier = [start]
        while frontier:
            nxt: list[str] = []
            for node in frontier:
                for child in self._children[node]:
                    if child not in members:
                        continue
                    if child == start:
                        path = [node]
                        while path[-1] != start:
                            path.append(previous[path[-1]])
                        path.reverse()
                        path.append(start)
                        return path
                    if child not in previous:
                        previous[child] = node
                        nxt.append(child)
            frontier = nxt
        raise AssertionError("component without a cycle")  # pragma: no cover

    def topological_order(self) -> list[str]:
        """Dependencies always come before dependents; raises graphlib.CycleError on a cycle."""
        if self._order is None:
            sorter = graphlib.TopologicalSorter(
                {k: [d for d in v if d in self._deps] for k, v in self._deps.items()}
            )
            self._order = list(sorter.static_order())
        return list(self._order)

    # ------------------------------------------------------------------ traversal
    def upstream(self, names: Iterable[str], depth: int | None = None) -> set[str]:
        return self._walk(names, self.dependencies, depth)

    def downstream(self, names: Iterable[str], depth: int | None = None) -> set[str]:
        return self._walk(names, self.dependents, depth)

    def _walk(
        self, names: Iterable[str], step: Callable[[str], tuple[str, ...]], depth: int | None
    ) -> set[str]:
        seen: set[str] = set()
        frontier = [n for n in names]
        level = 0
        while frontier and (depth is None or level < depth):
            nxt = []
            for node in frontier:
                for other in step(node):
                    if other in self._deps and other not in seen:
                        seen.add(other)
                        nxt.append(other)
            frontier = nxt
            level += 1
        return seen

    # ------------------------------------------------------------------ selection
    def select(self, expressions: Iterable[str]) -> set[str]:
        """Resolve selection expressions to asset names; unknown names raise AssetNotFound."""
        selected: set[str] = set()
        for raw in expressions:
            for expr in raw.replace(",", " ").split():
                selected |= self._select_one(expr)
        return selected

    def _select_one(self, expr: str) -> set[str]:
        if expr == "*":
            return set(self._deps)
        if expr.startswith("tag:"):
            key, _, value = expr[4:].partition("=")
            matched = {
                name for name, tags in self._tags.items() if key in tags and (not value or tags[key] == value)
            }
            if not matched:
                raise AssetNotFound(f"no asset has tag {expr[4:]!r}", context={"selection": expr})
            return matched
        match = _SELECT.match(expr)
        if match is None:
            raise AssetNotFound(
                f"cannot read selection {expr!r}; use name, +name, name+, tag:key or *",
                context={"selection": expr},
            )
        up_depth, up, name, down, down_depth = match.groups()
        self.require(name)
        result = {name}
        if up:
            result |= self.upstream([name], int(up_depth) if up_depth else None)
        if down:
            result |= self.downstream([name], int(down_depth) if down_depth else None)
        return result

    def require(self, name: str) -> None:
        if name not in self._deps:
            raise unknown_asset(name, self._deps)


def unknown_asset(name: str, known: Iterable[str], **context: Any) -> AssetNotFound:
    """AssetNotFound with a "did you mean" drawn from the registry."""
    guesses = difflib.get_close_matches(name, list(known), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(g) for g in guesses)}?" if guesses else ""
    return AssetNotFound(
        f"unknown asset {name!r}{hint}",
        context={"asset": name, "suggestions": guesses, **context},
    )
