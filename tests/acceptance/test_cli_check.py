"""`flowstone check` and `flowstone graph`: loading and validating a pipeline from the command line."""

from __future__ import annotations

import re

import pytest

from ._cli import Project, assert_no_traceback, line_of

pytestmark = pytest.mark.acceptance

BROKEN = """
    import flowstone as fs

    pipeline = fs.Pipeline("broken")


    @pipeline.asset()
    def raw_events(context):
        return [1, 2, 3]


    @pipeline.asset(depends_on=["raw_evnts"])
    def cleaned(context, **upstream):
        return upstream


    @pipeline.asset(depends_on=["nowhere_at_all"])
    def orphan(context, **upstream):
        return upstream


    @pipeline.asset(depends_on=["beta"])
    def alpha(context, **upstream):
        return 1


    @pipeline.asset(depends_on=["alpha"])
    def beta(context, **upstream):
        return 2


    @pipeline.asset(io_manager="s3")
    def stored(context):
        return 3
"""

BAD_NAME = """
    import flowstone as fs

    pipeline = fs.Pipeline("bad_name")


    @pipeline.asset()
    def fine(context):
        return 1


    @pipeline.asset(name="daily-report")
    def report(context, fine):
        return fine
"""


def _defined_at(project: Project, module: str, function: str) -> tuple[str, str]:
    """The two acceptable ``file:line`` spellings for a decorated function: decorator or def line."""
    path = project.root / module
    def_line = line_of(path, f"def {function}(")
    return f"{module}:{def_line - 1}", f"{module}:{def_line}"


def _line_naming(lines: list[str], *needles: str) -> str:
    found = [line for line in lines if all(n in line for n in needles)]
    assert len(found) == 1, f"expected one line with {needles}, got {found}"
    return found[0]


def test_check_accepts_the_quickstart(project: Project) -> None:
    result = project.run("check")
    assert "pipeline 'quickstart' is valid: 4 assets" in result.stdout
    assert result.stderr == ""


def test_check_reports_every_problem_at_once_with_asset_and_location(project: Project) -> None:
    project.write("broken.py", BROKEN)

    result = project.run("--pipeline", "broken:pipeline", "check", expect=2)

    assert_no_traceback(result)
    assert "4 problem(s)" in result.stderr
    problems = [line.strip() for line in result.stderr.splitlines() if line.strip().startswith("- ")]
    assert len(problems) == 4, result

    typo = _line_naming(problems, "'cleaned'", "raw_evnts")
    assert "did you mean 'raw_events'?" in typo
    assert any(where in typo for where in _defined_at(project, "broken.py", "cleaned")), typo

    unknown = _line_naming(problems, "'orphan'", "nowhere_at_all")
    assert "unknown asset" in unknown
    assert "did you mean" not in unknown  # nothing is close to it
    assert any(where in unknown for where in _defined_at(project, "broken.py", "orphan")), unknown

    io = _line_naming(problems, "'stored'", "'s3'")
    assert "I/O manager" in io
    assert any(where in io for where in _defined_at(project, "broken.py", "stored")), io

    cycle = _line_naming(problems, "cycle")
    assert re.search(r"alpha -> beta -> alpha|beta -> alpha -> beta", cycle), cycle
    starts = re.search(r"asset '(alpha|beta)'", cycle)
    assert starts, cycle
    assert any(where in cycle for where in _defined_at(project, "broken.py", starts.group(1))), cycle


def test_check_takes_the_pipeline_location_as_an_argument(project: Project) -> None:
    project.write("broken.py", BROKEN)
    # The argument wins over flowstone.toml's quickstart pipeline.
    result = project.run("check", "broken:pipeline", expect=2)
    assert "4 problem(s)" in result.stderr
    assert "pipeline 'quickstart' is valid" in project.run("check", "quickstart:pipeline").stdout


def test_an_invalid_pipeline_never_starts_a_run(project: Project) -> None:
    project.write("broken.py", BROKEN)

    result = project.run("-p", "broken:pipeline", "materialize", "raw_events", expect=2)

    assert "pipeline is invalid (4 problem(s))" in result.stderr
    assert "did you mean 'raw_events'?" in result.stderr
    assert "materializing" not in result.stdout
    assert not re.search(r"\brun [0-9a-f]{32}\b", result.stdout)
    assert_no_traceback(result)


def test_decoration_time_error_names_file_and_line_without_a_traceback(project: Project) -> None:
    project.write("bad_name.py", BAD_NAME)
    locations = _defined_at(project, "bad_name.py", "report")

    quiet = project.run("-p", "bad_name:pipeline", "check", expect=None)
    verbose = project.run("-v", "-p", "bad_name:pipeline", "check", expect=None)

    assert quiet.code != 0, quiet
    assert quiet.code == verbose.code, verbose
    assert quiet.stdout == "", quiet
    message = quiet.stderr.strip()
    assert "daily-report" in message
    assert "definition_error" in message
    assert any(where in message for where in locations), message
    assert len(message.splitlines()) == 1, quiet  # one clear line, no spam
    assert_no_traceback(quiet)

    assert "daily-report" in verbose.stderr
    assert len(verbose.stderr.splitlines()) > 1  # -v adds the developer details
    assert any(where in verbose.stderr for where in locations), verbose


def test_graph_ascii_tree_and_mermaid(project: Project) -> None:
    ascii_graph = project.run("graph").stdout
    mermaid = project.run("graph", "--format", "mermaid").stdout

    lines = ascii_graph.splitlines()
    for asset in ("raw_events", "cleaned_events", "user_profiles", "daily_report"):
        assert asset in ascii_graph
    # roots at the left margin, dependents indented below them with tree branches
    assert "raw_events" in lines and "user_profiles" in lines
    raw = lines.index("raw_events")
    assert re.match(r"^[└├]── cleaned_events$", lines[raw + 1]), ascii_graph
    assert re.match(r"^\s+[└├]── daily_report$", lines[raw + 2]), ascii_graph
    profiles = lines.index("user_profiles")
    assert re.match(r"^[└├]── daily_report", lines[profiles + 1]), ascii_graph

    assert mermaid.startswith("graph TD")
    for edge in (
        "raw_events --> cleaned_events",
        "cleaned_events --> daily_report",
        "user_profiles --> daily_report",
    ):
        assert edge in mermaid, mermaid
    assert mermaid.count("-->") == 3
