"""structlog setup: JSON lines off a terminal, console on one; secrets in URLs never logged."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from shared.settings import Settings

_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][\w+.-]*://[^:/@\s]*:)[^@\s]+@")


def redact(text: str) -> str:
    """Replace the password of every URL in `text` by ***."""
    return _URL_PASSWORD.sub(r"\g<head>***@", text)


def _redact_value(value: Any, secrets: tuple[str, ...]) -> Any:
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, "***")
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_value(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_redact_value(v, secrets) for v in value)
    return value


def secret_redactor(settings: Settings) -> structlog.types.Processor:
    """A processor that masks URL passwords and the configured API keys in every field."""
    secrets = tuple(s for s in (settings.telnyx_api_key.get_secret_value(),) if s)

    def processor(
        _logger: Any, _name: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        return {key: _redact_value(value, secrets) for key, value in event.items()}

    return processor


# Tasks whose every run Celery's own info lines ("received", "succeeded in") would log: the
# relay, every few seconds. Their warnings and errors still pass; their own log says what
# they did (`relay.applied`), and nothing when they had nothing to do.
QUIET_TASKS = frozenset({"numbers.relay_events"})
_TASK_LOGGERS = ("celery.worker.strategy", "celery.app.trace", "celery.beat")


class QuietTasksFilter(logging.Filter):
    """Drops Celery's info records about a run of one of the QUIET_TASKS: the worker's
    "received" and "succeeded in", beat's "Sending due task"."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO or not record.name.startswith(_TASK_LOGGERS):
            return True
        data = getattr(record, "data", None)
        if data is None and isinstance(record.args, dict):
            data = record.args
        if isinstance(data, dict):
            return data.get("name") not in QUIET_TASKS
        # Beat: "Scheduler: Sending due task %s (%s)", the entry's name and its task's.
        args = record.args if isinstance(record.args, tuple) else ()
        return not any(arg in QUIET_TASKS for arg in args if isinstance(arg, str))


def configure_logging(settings: Settings) -> None:
    """Configure structlog for this process from the settings."""
    as_json = settings.log_format == "json" or (
        settings.log_format == "auto" and not sys.stderr.isatty()
    )
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer()
    )
    level = logging.getLevelNamesMapping()[settings.log_level.upper()]
    shared_processors: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            *shared_processors,
            structlog.processors.format_exc_info,
            secret_redactor(settings),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Celery's and the libraries' stdlib records go through the same renderer and redactor.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared_processors,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                # Celery's error records carry exc_info: render the traceback as text, so
                # that it is kept in JSON lines and passes the redactor like any field.
                structlog.processors.format_exc_info,
                secret_redactor(settings),
                renderer,
            ],
        )
    )
    handler.addFilter(QuietTasksFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
