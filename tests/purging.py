"""`purge_expired` as the tests call it: configured from the tests' settings.

The library reads no worker setting (shared/purge/service.py takes its `config`); production
passes the worker's (worker/tasks.py `run_purge`), and the tests pass theirs through here.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from shared import purge
from shared.carriers import make_carrier
from shared.purge import PurgeConfig, PurgeReport
from shared.settings import get_settings


def purge_config() -> PurgeConfig:
    """The purge's configuration under this test's settings (environment)."""
    return PurgeConfig.from_settings(get_settings())


def purge_expired(
    session_factory: sessionmaker[Session], *, config: PurgeConfig | None = None, **kwargs: Any
) -> PurgeReport:
    """`shared.purge.purge_expired` with `config` (default: this test's settings') and the
    adapters of carriers not given built from this test's settings, as the worker does."""
    settings = get_settings()
    kwargs.setdefault("carrier_factory", partial(make_carrier, settings=settings))
    return purge.purge_expired(
        session_factory, config=config or PurgeConfig.from_settings(settings), **kwargs
    )
