"""The CLI acceptance tests' tools: the real ``flowstone`` command in a subprocess, and readers
for its output.

Every test works on its own copy of ``examples/quickstart`` in ``tmp_path`` (never on the example
itself) and runs ``flowstone`` with that copy as the working directory, in an environment without
any ``FLOWSTONE_*`` variable of the caller's, so a developer's settings cannot leak in.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart"
QUICKSTART_FILES = ("flowstone.toml", "quickstart.py")
RUN_ID = re.compile(r"\brun ([0-9a-f]{32})\b")
CLI_TIMEOUT = 120  # seconds; a hung command fails the test instead of hanging the suite


def flowstone_command() -> list[str]:
    """The installed console script next to this interpreter, else ``python -m flowstone.cli``."""
    script = Path(sys.executable).with_name("flowstone")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "flowstone.cli"]


def cli_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSTONE_")}
    env.pop("FORCE_COLOR", None)
    env["NO_COLOR"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra or {})
    return env


@dataclass(frozen=True)
class Result:
    args: tuple[str, ...]
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def __str__(self) -> str:  # what a failed assertion shows
        return (
            f"$ flowstone {' '.join(self.args)}\n"
            f"exit code {self.code}\n--- stdout ---\n{self.stdout}--- stderr ---\n{self.stderr}"
        )

    def run_id(self) -> str:
        """The run id the command printed (``run <32 hex> <status>``)."""
        found = RUN_ID.findall(self.stdout)
        assert found, f"no run id printed\n{self}"
        return str(found[-1])


def run_flowstone(
    *args: str, cwd: Path, env: Mapping[str, str] | None = None, expect: int | None = 0
) -> Result:
    """Run ``flowstone ARGS`` in ``cwd``; ``expect`` is the exit code to insist on (None: any)."""
    proc = subprocess.run(
        [*flowstone_command(), *args],
        cwd=cwd,
        env=cli_env(env),
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=CLI_TIMEOUT,
        check=False,
    )
    result = Result(tuple(args), proc.returncode, proc.stdout, proc.stderr)
    if expect is not None:
        assert result.code == expect, f"expected exit code {expect}\n{result}"
    return result


class Project:
    """A copy of the quickstart project; ``run(...)`` runs ``flowstone`` inside it."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def run(
        self,
        *args: str,
        env: Mapping[str, str] | None = None,
        expect: int | None = 0,
        cwd: Path | None = None,
    ) -> Result:
        return run_flowstone(*args, cwd=cwd or self.root, env=env, expect=expect)

    def write(self, name: str, text: str) -> Path:
        """Write a (dedented) file into the project, e.g. another pipeline module."""
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return path


def copy_quickstart(dest: Path) -> Project:
    dest.mkdir(parents=True, exist_ok=True)
    for name in QUICKSTART_FILES:
        shutil.copy2(QUICKSTART / name, dest / name)
    return Project(dest)


# ---------------------------------------------------------------------- reading rich output
def table_rows(text: str) -> list[list[str]]:
    """The body rows of the rich tables in ``text``, as lists of stripped cell texts."""
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("│") and line.endswith("│"):
            rows.append([cell.strip() for cell in line[1:-1].split("│")])
    return rows


def rows_for(text: str, first_cell: str) -> list[list[str]]:
    return [row for row in table_rows(text) if row and row[0] == first_cell]


def row_for(text: str, first_cell: str) -> list[str]:
    found = rows_for(text, first_cell)
    assert len(found) == 1, f"expected one table row for {first_cell!r}, got {found}\n{text}"
    return found[0]


def step_lines(stdout: str) -> dict[str, str]:
    """``materialize`` progress lines by asset: ``{"raw_events": "✓ raw_events [2025-01-15] (...)"}``."""
    steps: dict[str, str] = {}
    for line in stdout.splitlines():
        match = re.match(r"^\s+([✓✗…-])\s+(\w+)\b", line)
        if match and match.group(1) != "…":
            steps[match.group(2)] = line.strip()
    return steps


def line_of(path: Path, needle: str) -> int:
    """1-based number of the first line of ``path`` containing ``needle``."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in {path}")


def assert_no_traceback(result: Result) -> None:
    assert "Traceback (most recent call last)" not in result.output, str(result)
