"""The runbook's reference tables name exactly what the code has: settings and run statuses."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from sqlalchemy import CheckConstraint

from shared.models import PurgeRun
from shared.settings import Settings
from tests.runbook import deploy_check, first_column, section, table_after

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"


def test_settings_table_names_every_setting_and_nothing_else() -> None:
    documented = {name for name in first_column(section("## Settings")) if name.isupper()}
    variables = {(field.alias or name).upper() for name, field in Settings.model_fields.items()}
    assert variables - documented == set()
    # The rest are compose's own variables (ports, passwords of the bundled services).
    compose = set(re.findall(r"\$\{(\w+)", COMPOSE_FILE.read_text()))
    assert documented - variables - compose == set()


def test_run_statuses_table_names_every_status_the_store_allows() -> None:
    [check] = [c for c in PurgeRun.__table__.constraints if isinstance(c, CheckConstraint)]
    allowed = set(re.findall(r"'(\w+)'", str(check.sqltext)))
    # A run is `running` only while it runs: the table lists how runs end.
    assert first_column(table_after("A run's `status` is one of:")) == allowed - {"running"}


def test_the_runbooks_plain_processes_are_what_the_deploy_check_runs() -> None:
    block = re.search(r"```sh\n(.*?)```", section("## Run it without Docker"), re.DOTALL)
    assert block
    # Each line as a shell runs it: no comment, not in the background.
    lines = [
        re.sub(r"\s+#.*$", "", line).removesuffix("&").strip() for line in block[1].splitlines()
    ]
    check = deploy_check()
    for command in check.runbook_commands():
        assert command in lines, command
    # The install is the Dockerfile's, which the check reads from the Dockerfile itself.
    sources, install = check.dockerfile_install(ROOT / "Dockerfile")
    # The runtime with the api extra (`serve`, the compose `api` service).
    assert install == ["pip", "install", ".[api]"]
    assert sources == ["pyproject.toml", "README.md", "shared", "worker"]
    assert lines[0] == f"python3 -m venv .venv && .venv/bin/{shlex.join(install)}"


def _mapped(page: str, heading: str) -> set[str]:
    """The names the table under `heading` of docs/map.md gives a line to."""
    return first_column(page.partition(heading)[2].partition("\n## ")[0])


def _folder(path: Path) -> str:
    return path.name + ("/" if path.is_dir() else "")


def test_the_map_gives_every_folder_and_module_a_line() -> None:
    """A folder or module added without a line in the newcomer's map fails here."""
    page = (ROOT / "docs" / "map.md").read_text()
    ignored = set((ROOT / ".gitignore").read_text().split())
    folders = {
        _folder(path)
        for path in ROOT.iterdir()
        if path.is_dir()
        and _folder(path) not in ignored
        and (not path.name.startswith(".") or path.name == ".ci")
        and not path.name.endswith(".egg-info")
    } - {".git/"}
    assert _mapped(page, "## The folders") == folders
    for package in ("shared", "worker"):
        present = {
            _folder(path)
            for path in (ROOT / package).iterdir()
            if (path.suffix == ".py" and path.name != "__init__.py")
            or (path.is_dir() and _folder(path) not in ignored)
        }
        assert _mapped(page, f"## `{package}/`") == present, package


def test_the_readme_links_the_map_and_the_glossary() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "(docs/map.md)" in readme
    assert "(docs/glossary.md)" in readme
    assert (ROOT / "docs" / "glossary.md").read_text().startswith("# Glossary\n")
