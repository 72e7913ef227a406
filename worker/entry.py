"""The `numbers-retention` console script: settings are checked before the app is built."""

from __future__ import annotations

import json
import sys

from pydantic import ValidationError as SettingsError

from shared.errors import ValidationError
from shared.settings import get_settings


def settings_error(error: SettingsError) -> ValidationError:
    """A bad setting as the API's 400 envelope: which variables and why, never their values
    (a value may be a secret)."""
    problems = "; ".join(
        f"{'.'.join(str(part) for part in problem['loc']).upper() or 'settings'}: {problem['msg']}"
        for problem in error.errors(include_input=False, include_url=False)
    )
    return ValidationError(
        f"Invalid settings: {problems}.",
        code="invalid_settings",
        fix="Correct these environment variables (docs/runbook.md#settings lists them all).",
    )


def main() -> None:
    """Check the settings, then run the command line (worker.cli builds the Celery app)."""
    try:
        get_settings()
    except SettingsError as error:
        print(json.dumps(settings_error(error).body()), file=sys.stderr)
        sys.exit(2)
    from worker.cli import main as cli

    cli()
