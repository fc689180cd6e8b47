"""AssetGraph: order, cycles with their path, traversal and the selection syntax."""

from __future__ import annotations

import graphlib
import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import flowstone as fs

#   raw -> clean -> report -> dashboard
#   raw -> profiles -> report
#   other (alone)
DEPS: dict[str, list[str]] = {
    "raw": [],
    "clean": ["raw"],
    "profiles": ["raw"],
    "report": ["clean", "profiles"],
    "dashboard": ["report"],
    "other": [],
}
TAGS = {
    "raw": {"layer": "bronze", "pii": ""},
    "clean": {"layer": "silver"},
    "profiles": {"layer": "silver", "pii": ""},
    "report": {"layer": "gold"},
}


@pytest.fixture
def graph() -> fs.AssetGraph:
    return fs.AssetGraph(DEPS, TAGS)


def test_basic_accessors(graph: fs.AssetGraph) -> None:
    assert len(graph) == 6
    assert "raw" in graph and "nope" not in graph
    assert graph.dependencies("report") == ("clean", "profiles")
    assert set(graph.dependents("raw")) == {"clean", "profiles"}
    assert graph.dependents("dashboard") == ()


def test_topological_order_puts_dependencies_first(graph: fs.AssetGraph) -> None:
    order = graph.topological_order()
    assert sorted(order) == sorted(DEPS)
    for name, deps in DEPS.items():
        for dep in deps:
            assert order.index(dep) < order.index(name)


def test_unknown_dependencies_are_ignored_by_order_and_cycles() -> None:
    graph = fs.AssetGraph({"a": ["ghost"], "b": ["a"]})
    assert graph.topological_order() == ["a", "b"]
    assert graph.cycles() == []


def test_topological_order_raises_on_cycle() -> None:
    with pytest.raises(graphlib.CycleError):
        fs.AssetGraph({"a": ["b"], "b": ["a"]}).topological_order()


def test_cycle_path_reads_in_data_flow_direction() -> None:
    # a depends on c, b on a, c on b: data flows a -> b -> c -> a
    graph = fs.AssetGraph({"a": ["c"], "b": ["a"], "c": ["b"], "d": ["c"]})
    assert graph.cycles() == [["a", "b", "c", "a"]]


def test_one_path_per_cycle_component() -> None:
    graph = fs.AssetGraph({"a": ["b"], "b": ["a"], "x": ["y"], "y": ["z"], "z": ["x"], "free": ["a"]})
    paths = sorted(graph.cycles())
    assert paths == [["a", "b", "a"], ["x", "z", "y", "x"]]


def test_self_loop_is_a_cycle() -> None:
    assert fs.AssetGraph({"a": ["a"], "b": ["a"]}).cycles() == [["a", "a"]]


def test_self_loop_added_to_a_pipeline_is_reported(pipeline: fs.Pipeline) -> None:
    def a(context: Any, **up: Any) -> int:
        return 1

    pipeline.add(fs.AssetDefinition(name="a", fn=a, deps=("a",), location="here.py:1"))
    [problem] = pipeline.problems()
    assert problem.code == "cycle"
    assert "a -> a" in problem.message


def test_upstream_and_downstream_with_depth(graph: fs.AssetGraph) -> None:
    assert graph.upstream(["dashboard"]) == {"report", "clean", "profiles", "raw"}
    assert graph.upstream(["dashboard"], depth=1) == {"report"}
    assert graph.upstream(["dashboard"], depth=2) == {"report", "clean", "profiles"}
    assert graph.downstream(["raw"]) == {"clean", "profiles", "report", "dashboard"}
    assert graph.downstream(["raw"], depth=1) == {"clean", "profiles"}
    assert graph.downstream(["other"]) == set()


# ---------------------------------------------------------------------- selection syntax
@pytest.mark.parametrize(
    ("expressions", "expected"),
    [
        (["report"], {"report"}),
        (["+report"], {"report", "clean", "profiles", "raw"}),
        (["report+"], {"report", "dashboard"}),
        (["+report+"], {"report", "clean", "profiles", "raw", "dashboard"}),
        (["1+report"], {"report", "clean", "profiles"}),
        (["2+dashboard"], {"dashboard", "report", "clean", "profiles"}),
        (["raw+1"], {"raw", "clean", "profiles"}),
        (["raw+2"], {"raw", "clean", "profiles", "report"}),
        (["1+clean+1"], {"raw", "clean", "report"}),
        (["tag:pii"], {"raw", "profiles"}),
        (["tag:layer=silver"], {"clean", "profiles"}),
        (["tag:layer"], {"raw", "clean", "profiles", "report"}),
        (["*"], set(DEPS)),
        (["raw,other"], {"raw", "other"}),
        (["raw other"], {"raw", "other"}),
        (["raw, other", "dashboard"], {"raw", "other", "dashboard"}),
        (["tag:layer=gold report+"], {"report", "dashboard"}),
    ],
)
def test_selection_syntax(graph: fs.AssetGraph, expressions: list[str], expected: set[str]) -> None:
    assert graph.select(expressions) == expected


def test_non_ascii_identifiers_can_be_selected(pipeline: fs.Pipeline) -> None:
    @pipeline.asset()
    def données(context: Any) -> int:
        return 1

    @pipeline.asset()
    def rapport(context: Any, données: int) -> int:
        return données

    graph = pipeline.graph
    assert graph.select(["données"]) == {"données"}
    assert graph.select(["données+"]) == {"données", "rapport"}
    assert graph.select(["1+rapport"]) == {"données", "rapport"}


def test_unknown_name_in_selection_suggests(graph: fs.AssetGraph) -> None:
    for expr in ["reprot", "+reprot", "reprot+", "2+reprot"]:
        with pytest.raises(fs.AssetNotFound, match="unknown asset 'reprot'; did you mean 'report'") as info:
            graph.select([expr])
        assert info.value.context["suggestions"] == ["report"]


@pytest.mark.parametrize("expr", ["++raw", "raw++", "-raw", "a.b", "+", "tag"])
def test_unreadable_selection(graph: fs.AssetGraph, expr: str) -> None:
    with pytest.raises(fs.AssetNotFound):
        graph.select([expr])


def test_unknown_tag(graph: fs.AssetGraph) -> None:
    with pytest.raises(fs.AssetNotFound, match="no asset has tag 'layer=platinum'"):
        graph.select(["tag:layer=platinum"])
    with pytest.raises(fs.AssetNotFound, match="no asset has tag 'nothing'"):
        graph.select(["tag:nothing"])


def test_app_select_accepts_asset_objects(pipeline: fs.Pipeline, make_app: Any) -> None:
    @pipeline.asset()
    def a(context: Any) -> int:
        return 1

    @pipeline.asset()
    def b(context: Any, a: int) -> int:
        return a

    app = make_app(pipeline)
    assert app.select(b) == {"b"}
    assert app.select("+b") == {"a", "b"}
    assert app.select([a, "b"]) == {"a", "b"}
    with pytest.raises(ValueError, match="at least one"):
        app.select([])


# ---------------------------------------------------------------------- properties
def _name(i: int) -> str:
    return f"n{i}"


@st.composite
def acyclic_graphs(draw: st.DrawFn) -> dict[str, list[str]]:
    """Node i depends only on nodes before it; nodes are listed in a random order."""
    size = draw(st.integers(min_value=1, max_value=25))
    deps = {
        _name(i): [_name(j) for j in sorted(draw(st.sets(st.integers(0, i - 1), max_size=i)) if i else [])]
        for i in range(size)
    }
    order = draw(st.permutations(list(deps)))
    return {name: deps[name] for name in order}


@st.composite
def cyclic_graphs(draw: st.DrawFn, *, allow_self_loops: bool = True) -> dict[str, list[str]]:
    """An acyclic graph plus at least one back edge (a later node feeding an earlier one)."""
    graph = draw(acyclic_graphs())
    size = len(graph)
    min_length = 1 if allow_self_loops else 2
    if size < min_length:
        graph[_name(size)] = [_name(size - 1)] if size else []
        size += 1
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        low = draw(st.integers(0, size - min_length))
        high = draw(st.integers(low + min_length - 1, size - 1))
        # Make sure low reaches high through a chain, then let low depend on high: a cycle.
        for k in range(low + 1, high + 1):
            if _name(k - 1) not in graph[_name(k)]:
                graph[_name(k)].append(_name(k - 1))
        if _name(high) not in graph[_name(low)]:
            graph[_name(low)].append(_name(high))
    return graph


def _reaches(graph: dict[str, list[str]], start: str) -> set[str]:
    """Nodes reachable from ``start`` in data-flow direction (upstream -> downstream)."""
    children: dict[str, list[str]] = {n: [] for n in graph}
    for node, ups in graph.items():
        for up in ups:
            children[up].append(node)
    seen: set[str] = set()
    frontier = [start]
    while frontier:
        node = frontier.pop()
        for child in children[node]:
            if child not in seen:
                seen.add(child)
                frontier.append(child)
    return seen


@settings(max_examples=150, deadline=None, database=None)
@given(acyclic_graphs())
def test_property_acyclic_graphs_order_dependencies_first(deps: dict[str, list[str]]) -> None:
    graph = fs.AssetGraph(deps)
    order = graph.topological_order()
    assert sorted(order) == sorted(deps)  # every node, exactly once
    position = {name: i for i, name in enumerate(order)}
    for name, ups in deps.items():
        for up in ups:
            assert position[up] < position[name]
    assert graph.cycles() == []


@settings(max_examples=150, deadline=None, database=None)
@given(cyclic_graphs())
def test_property_cyclic_graphs_report_real_cycle_paths(deps: dict[str, list[str]]) -> None:
    graph = fs.AssetGraph(deps)
    paths = graph.cycles()
    assert paths
    reach = {n: _reaches(deps, n) for n in deps}
    on_cycle = {n for n in deps if n in reach[n]}
    for path in paths:
        assert len(path) >= 2
        assert path[0] == path[-1]
        assert len(set(path[:-1])) == len(path) - 1  # a simple cycle
        for x, y in itertools.pairwise(path):
            assert x in deps[y], f"{x} -> {y} is not an edge"
    # One path per strongly connected component, and every node on a cycle is covered by one.
    starts = [p[0] for p in paths]
    for i, s in enumerate(starts):
        for t in starts[i + 1 :]:
            assert not (t in reach[s] and s in reach[t]), "two paths for one component"
    for node in on_cycle:
        assert any(node in reach[s] and s in reach[node] for s in starts)
    with pytest.raises(graphlib.CycleError):
        graph.topological_order()


@settings(max_examples=60, deadline=None, database=None)
@given(cyclic_graphs(allow_self_loops=False))
def test_property_cyclic_pipelines_are_rejected_with_the_path(deps: dict[str, list[str]]) -> None:
    pipeline = fs.Pipeline("generated")
    for name, ups in deps.items():

        def fn(context: Any, **upstream: Any) -> None:
            return None

        pipeline.add(fs.AssetDefinition(name=name, fn=fn, deps=tuple(ups), takes_var_kwargs=True))
    with pytest.raises(fs.PipelineInvalid) as info:
        pipeline.validate()
    cycles = pipeline.graph.cycles()
    assert cycles
    problems = [p for p in info.value.problems if p.code == "cycle"]
    assert len(problems) == len(cycles)
    for path in cycles:
        assert " -> ".join(path) in str(info.value)
    assert {p.asset for p in problems} == {path[0] for path in cycles}
