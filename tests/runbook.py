"""Reading docs/runbook.md's reference tables, for the tests that hold them to the code."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
RUNBOOK = ROOT / "docs" / "runbook.md"


def section(heading: str) -> str:
    """The runbook's text under `heading`, up to the next heading of its level or above."""
    text = RUNBOOK.read_text()
    start = text.index(f"\n{heading}\n") + 1
    level = len(heading.split(" ", 1)[0])
    end = re.search(rf"\n#{{1,{level}}} ", text[start:])
    return text[start : start + end.start()] if end else text[start:]


def table_after(lead: str) -> str:
    """The first table after the line that starts with `lead`."""
    text = RUNBOOK.read_text()
    start = text.index(f"\n{lead}") + 1
    first_row = text.index("\n|", start) + 1
    end = text.find("\n\n", first_row)
    return text[first_row : end if end > 0 else len(text)]


def first_column(text: str) -> set[str]:
    """The `names` in the first column of the tables in `text` (a cell may name several)."""
    rows = re.findall(r"^\| ([^|]+) \|", text, re.MULTILINE)
    return {name for row in rows for name in re.findall(r"`([^`]+)`", row)}


def deploy_check() -> ModuleType:
    """.ci/deploy_check.py, the deployment check CI runs (a script, not a package): its
    commands are the runbook's plain processes."""
    spec = importlib.util.spec_from_file_location("deploy_check", ROOT / ".ci" / "deploy_check.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
