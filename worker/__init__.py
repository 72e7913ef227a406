"""The retention worker: Celery app, tasks, logging and the command line."""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    # `celery -A worker` finds the app here; built on first use, not when the package is
    # imported, so the console script can check the settings first (worker/entry.py).
    if name == "app":
        from worker.app import app

        return app
    raise AttributeError(name)
