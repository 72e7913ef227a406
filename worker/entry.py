"""The `numbers-retention` console script: settings are checked before the app is built.

This is the one place that validates every setting, before anything imports the Celery app
or builds an engine: a wrong one is the `invalid_settings` envelope and exit 2, never a
traceback.
"""

from __future__ import annotations

import json
import sys
import uuid
from importlib.metadata import version
from typing import Any

from pydantic import ValidationError as InvalidSettings

PROG = "numbers-retention"
VERSION_MESSAGE = "%(prog)s %(version)s"


def version_line() -> str:
    """`numbers-retention 0.1.0`: the installed distribution's version."""
    return VERSION_MESSAGE % {"prog": PROG, "version": version(PROG)}


def settings_error(error: InvalidSettings) -> dict[str, Any]:
    """A bad setting as the API's 400 envelope: which variables and why, never their values
    (a value may be a secret).

    Built here rather than with `shared.errors`: a wrong store setting (RETENTION_DAYS, say)
    fails the import of `shared` itself, as the library promises its callers.
    """
    problems = "; ".join(
        (f"{'.'.join(str(part) for part in problem['loc']).upper()}: " if problem["loc"] else "")
        + problem["msg"]
        for problem in error.errors(include_input=False, include_url=False, include_context=False)
    )
    return {
        "trackingId": f"trk_{uuid.uuid4().hex}",
        "error": {
            "code": "invalid_settings",
            "message": f"Invalid settings: {problems}.",
            "fix": "Correct these environment variables (docs/runbook.md#settings lists them all).",
        },
    }


def check_settings() -> dict[str, Any] | None:
    """None when every setting is valid, else the `invalid_settings` envelope."""
    try:
        # Inside the try: importing `shared` reads the store's settings (shared/retention.py).
        from shared.settings import get_settings

        get_settings()
    except InvalidSettings as error:
        return settings_error(error)
    return None


def main() -> None:
    """Check the settings, then run the command line (worker.cli; only the commands that need
    the Celery app import it)."""
    if sys.argv[1:] == ["--version"]:
        # Needs no settings: the version is what an operator asks first of a broken deploy.
        print(version_line())
        return
    refusal = check_settings()
    if refusal is not None:
        print(json.dumps(refusal), file=sys.stderr)
        sys.exit(2)
    from worker.cli import main as cli

    cli()
