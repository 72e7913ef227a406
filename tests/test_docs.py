"""The runbook's reference tables name exactly what the code has: settings and run statuses."""

from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy import CheckConstraint

from shared.models import PurgeRun
from shared.settings import Settings
from tests.runbook import first_column, section, table_after

COMPOSE_FILE = Path(__file__).resolve().parent.parent / "docker-compose.yml"


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
