"""The command line's errors and exit codes: every failure is the API's error envelope on
stderr; 0 is success, 1 a failure of the store, Redis or the command itself (5xx), 2 a refused
input (4xx, a usage error), and the codes below say what an operator or a cron job must know."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click
import redis
from click.exceptions import NoArgsIsHelpError
from sqlalchemy.exc import NoSuchTableError, ProgrammingError, SQLAlchemyError

from shared.db import redact_url
from shared.errors import ApiError, InternalError, ValidationError
from shared.settings import Settings, get_settings
from worker.cli.context import CliContext
from worker.entry import PROG

# `status --max-lag` exits with this when purging has fallen behind (1 and 2 are errors).
LAG_EXIT_CODE = 3
# `purge` and `prune` exit with this when another run held the lock and this one did nothing.
LOCKED_EXIT_CODE = 4
# `purge` exits with this when the provider stopped the run (misconfigured or unavailable):
# the rows are kept, and a cron job or CI step must not read the run as a success.
PROVIDER_EXIT_CODE = 5
# `status --max-lag` exits with this when purging has fallen behind because it is paused (on
# purpose).
PAUSED_LAG_EXIT_CODE = 6
# `purge` exits with this when it was refused because this host's clock and the database
# server's disagree beyond CLOCK_SKEW_MAX_SECONDS (`clock_skew`): nothing was done.
CLOCK_SKEW_EXIT_CODE = 7
# `healthcheck` exits with this when the worker or beat is not healthy.
UNHEALTHY_EXIT_CODE = 1


class InvalidUsage(click.ClickException):
    """A usage error (an unknown option or command, a missing argument, a bad value) shown as
    the envelope, `invalid_usage`, exit 2, like every other error of the command line."""

    exit_code = 2

    def __init__(self, error: click.UsageError) -> None:
        super().__init__(error.format_message())
        command = error.ctx.command_path if error.ctx else PROG
        self.error = ValidationError(
            f"{command}: {error.format_message()}",
            code="invalid_usage",
            fix=f"See `{command} --help`.",
        )

    def show(self, file: Any = None) -> None:
        click.echo(json.dumps(self.error.body()), err=True)


@contextmanager
def usage_as_envelope() -> Iterator[None]:
    """Click's usage errors become `InvalidUsage`; a bare `numbers-retention` still shows help."""
    try:
        yield
    except NoArgsIsHelpError:
        raise
    except click.UsageError as error:
        raise InvalidUsage(error) from None


class Commands(click.Group):
    """Commands whose ApiErrors print the API's envelope on stderr and exit 2 (1 for 5xx).

    A store or Redis that fails prints the 500 envelope and exits 1; usage errors are the
    envelope too (`invalid_usage`, exit 2).
    """

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        # The group's own options (`numbers-retention --bogus`) are parsed here.
        with usage_as_envelope():
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            # A command's name, options and arguments are parsed here, and its body runs.
            with usage_as_envelope():
                return super().invoke(ctx)
        except ApiError as error:
            click.echo(json.dumps(error.body()), err=True)
            ctx.exit(1 if error.status >= 500 else 2)
        except SQLAlchemyError as error:
            # The driver's text can name hosts and users: say what failed, in our words.
            click.echo(json.dumps(store_error(error, _settings(ctx)).body()), err=True)
            ctx.exit(1)
        except redis.RedisError as error:
            click.echo(json.dumps(redis_error(error, _settings(ctx)).body()), err=True)
            ctx.exit(1)


def _settings(ctx: click.Context) -> Settings:
    """The settings the command ran with (the group's, in `ctx.obj`)."""
    given = ctx.find_object(CliContext)
    return given.settings if given is not None else get_settings()


def store_error(error: SQLAlchemyError, settings: Settings) -> InternalError:
    """An unreachable or unmigrated store, as the API's 500 envelope."""
    where = redact_url(settings.resolved_database_url())
    if isinstance(error, ProgrammingError | NoSuchTableError) or "no such table" in str(error):
        return InternalError(
            f"The store at {where} has no numbers-retention tables.",
            code="store_not_migrated",
            fix="Run `numbers-retention migrate` against it first.",
        )
    return InternalError(
        f"The store at {where} could not be used ({type(error).__name__}).",
        code="store_unavailable",
        fix="Check that the database is up and DATABASE_URL points at it.",
    )


def redis_error(error: redis.RedisError, settings: Settings) -> InternalError:
    """An unreachable or failing Redis, as the API's 500 envelope (its URL without a password)."""
    # The query string is left out too: a Redis URL may carry `?password=`.
    where = redact_url(settings.resolved_redis_url()).partition("?")[0]
    return InternalError(
        f"The Redis at {where} could not be used ({type(error).__name__}).",
        code="redis_unavailable",
        fix="Check that Redis is up and REDIS_URL (or BROKER_URL) points at it.",
    )
