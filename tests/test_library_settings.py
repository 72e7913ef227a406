"""The library reads no worker setting: nothing under shared/ reads the worker's settings
(`get_settings`) or imports anything of `worker`. Code that needs worker settings (a purge's
`PurgeConfig.from_settings`, a carrier's adapter) is given them by the worker or a test
(settings.py's promise); the library reads only its store settings."""

from __future__ import annotations

import ast
from pathlib import Path

import shared

LIBRARY = Path(shared.__file__).parent
WORKER_SETTINGS = {"get_settings"}


def _offences(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = {alias.name for alias in node.names}
            if node.module == "shared.settings" and names & WORKER_SETTINGS:
                found.append(f"{node.lineno}: imports {sorted(names & WORKER_SETTINGS)}")
            if node.module == "worker" or node.module.startswith("worker."):
                found.append(f"{node.lineno}: imports {node.module}")
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "worker" or alias.name.startswith("worker."):
                    found.append(f"{node.lineno}: imports {alias.name}")
        if isinstance(node, ast.Attribute) and node.attr == "get_settings":
            found.append(f"{node.lineno}: uses .get_settings")
    return found


def test_the_library_imports_no_worker_setting() -> None:
    offences = {
        str(path.relative_to(LIBRARY.parent)): found
        for path in sorted(LIBRARY.rglob("*.py"))
        if path.name != "settings.py" and (found := _offences(path))
    }
    assert offences == {}


def test_the_check_sees_an_import_of_the_worker_settings(tmp_path: Path) -> None:
    """The check itself: each way of reaching the worker's settings is found."""
    module = tmp_path / "module.py"
    module.write_text(
        "from shared.settings import Settings, get_settings, get_store_settings\n"
        "from shared import settings\n"
        "import worker.app\n"
        "settings.get_settings()\n"
    )
    assert _offences(module) == [
        "1: imports ['get_settings']",
        "3: imports worker.app",
        "4: uses .get_settings",
    ]
