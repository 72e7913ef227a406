"""The retention worker: Celery app, tasks, logging and the command line."""

from worker.app import app

__all__ = ["app"]
