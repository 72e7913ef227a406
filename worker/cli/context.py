"""What every command is given (click's `ctx.obj`): the settings, read once by the group, and
the store they name."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from shared.db import engine_for, make_session_factory
from shared.settings import Settings
from worker.connections import session_factory, settings_engine


@dataclass(frozen=True)
class CliContext:
    """The command line's settings (built once, in the group), passed down as `ctx.obj`."""

    settings: Settings

    @contextmanager
    def engine(self) -> Iterator[Engine]:
        """An engine of its own, for `migrate`, `run` (which forks) and `seed-demo`: the
        commands that may create the store. Its connections are closed on the way out (before
        `run` forks its workers; and a command run in a longer process, as click's runner
        does, leaves none open for the garbage collector)."""
        engine = engine_for(self.settings)
        try:
            yield engine
        finally:
            engine.dispose()

    def sessions(self, *, read_only: bool = False) -> sessionmaker[Session]:
        """Sessions on the configured store, through this process's engine for its URL.

        `read_only`: for a command that only reads. On SQLite those sessions begin DEFERRED
        (shared/db.py): under WAL such a reader never waits behind a purge batch's write lock,
        where BEGIN IMMEDIATE would wait up to busy_timeout (30 s).
        """
        if not read_only:
            return session_factory(self.settings)
        engine = settings_engine(self.settings)
        return make_session_factory(engine.execution_options(sqlite_begin="DEFERRED"))
