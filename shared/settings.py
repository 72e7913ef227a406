"""The settings: read from the environment once, used by the store, worker and CLI.

The library (`shared`) reads only `StoreSettings` (where the store is, the retention window),
so a worker setting that is wrong in an API service's environment never breaks its import;
the worker and the CLI read and validate the whole `Settings`.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_data_dir() -> Path:
    """The embedded default's folder when NUMBERS_RETENTION_DATA is unset: the user's data
    folder (`$XDG_DATA_HOME/numbers-retention`, else `~/.local/share/numbers-retention`), the
    same whatever folder a command runs in."""
    xdg = os.environ.get("XDG_DATA_HOME", "")
    # The XDG spec ignores a relative value.
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".local" / "share"
    return base / "numbers-retention"


class StoreSettings(BaseSettings):
    """What the library needs: the store and the retention window (environment variables)."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    # Absolute once read (a relative value is taken from the folder the process starts in),
    # so the store, the broker's folders and the results all name one place.
    data_dir: Path = Field(default_factory=default_data_dir, alias="NUMBERS_RETENTION_DATA")
    # Empty means the embedded default under data_dir (SQLite file).
    database_url: str = ""
    retention_days: int = Field(default=14, ge=1)
    # A pooled PostgreSQL connection idle longer than this is pinged before use (not every
    # checkout: that cost the list a round trip per call; see shared/db.py).
    db_ping_after_idle_seconds: float = Field(default=1.0, ge=0)

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    def resolved_database_url(self) -> str:
        """The store's URL: DATABASE_URL, or the embedded SQLite file."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'numbers.db'}"


class Settings(StoreSettings):
    """The worker's and the CLI's configuration; every field maps to an environment variable."""

    # Empty means the embedded default under data_dir (filesystem broker).
    broker_url: str = ""
    redis_url: str = ""
    result_backend: str = ""

    # Transient database or Redis errors retry a task after min(max, base * 2**retries) seconds,
    # with full jitter.
    task_retry_backoff: int = Field(default=2, ge=1)
    task_retry_backoff_max: int = Field(default=120, ge=1)

    purge_paused: bool = False
    # The most rows one purge batch (one transaction) may take: the adaptive size never
    # exceeds it (bench/RESULTS.md).
    purge_batch_size: int = Field(default=5000, ge=1)
    # The adaptive size never goes below this (unless the cap above is lower).
    purge_batch_floor: int = Field(default=100, ge=1)
    # The batch transaction time the adaptive size aims at: it grows by at most a tenth while
    # batches are faster, and shrinks at once in proportion when one is slower.
    purge_batch_target_ms: float = Field(default=100.0, gt=0, le=10_000)
    # PostgreSQL: batches in flight at once, each its own transaction on its own connection;
    # all but one only while no other session is at work on the store (bench/RESULTS.md).
    purge_parallel_batches: int = Field(default=2, ge=1, le=8)
    # Pacing: after a batch slower than 1.5 times the target (the database got busier than the
    # batch size had adapted to), rest this many times the extra time (0: never rest for it).
    purge_pressure_rest: float = Field(default=2.0, ge=0, le=100)
    # Pacing: while other sessions (the API) work on the store, rest this many times each
    # batch's time, in proportion to how often they were found at work (0: never).
    purge_busy_rest: float = Field(default=3.0, ge=0, le=100)
    # Wait between batches while a streaming replica replays more than this far behind
    # (pg_stat_replication; 0: do not look).
    purge_max_replica_lag_seconds: float = Field(default=10.0, ge=0)
    # A ceiling on purged rows per second (0: none); `numbers-retention pace` sets one live.
    purge_max_rows_per_second: float = Field(default=0.0, ge=0)
    purge_max_rows: int = Field(default=1_000_000, ge=1)
    purge_max_seconds: float = Field(default=600.0, gt=0)
    # Whole minutes that divide an hour run on a crontab; other values (tests, demos) on an
    # interval.
    purge_every_seconds: int = Field(default=15 * 60, ge=1)
    # The full publication is a reconciliation now: the relay keeps the set current.
    publish_every_seconds: int = Field(default=3600, ge=1)
    # The relay: how often beat sends it, events per batch, how long one run may go on, and
    # how many entries the numbers:events stream keeps (approximately: MAXLEN ~).
    relay_every_seconds: int = Field(default=2, ge=1)
    relay_batch_size: int = Field(default=1000, ge=1)
    relay_max_seconds: float = Field(default=5.0, gt=0)
    events_stream_maxlen: int = Field(default=100_000, ge=1000)
    # Beat wakes at least this often; a standby beat polls RedBeat's lock at this pace too.
    beat_max_loop_seconds: int = Field(default=60, ge=1)
    # RedBeat's lock expires this long after the last tick of the beat holding it: a killed
    # beat is replaced by a standby after at most this plus beat_max_loop_seconds.
    beat_lock_timeout_seconds: int = Field(default=300, ge=2)

    provider: Literal["none", "telnyx"] = "none"
    telnyx_api_key: SecretStr = SecretStr("")
    telnyx_base_url: str = "https://api.telnyx.com"
    provider_timeout_seconds: float = Field(default=10.0, gt=0)
    # At most this many upstream calls at once, so a large batch cannot flood the provider.
    provider_concurrency: int = Field(default=8, ge=1)
    # Rows claimed per two-phase batch: small, since each one waits on the provider's calls.
    provider_batch_size: int = Field(default=200, ge=1)
    # A failed upstream release is retried after min(max, base * 2**(attempts-1)) seconds.
    provider_backoff_seconds: float = Field(default=60.0, gt=0)
    provider_backoff_max_seconds: float = Field(default=6 * 3600.0, gt=0)
    # This many failures in a row end the run early (status provider_unavailable).
    provider_failure_streak: int = Field(default=20, ge=1)

    # `numbers-retention metrics`: one reading of the store serves the scrapes of this many
    # seconds; each of its queries is cancelled after the timeout (the scrape then says up 0).
    metrics_cache_seconds: float = Field(default=5.0, ge=0)
    metrics_statement_timeout_seconds: float = Field(default=5.0, gt=0)

    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: str = "INFO"

    def resolved_redis_url(self) -> str:
        """Redis for the releasable set and RedBeat: REDIS_URL, or a Redis broker's URL."""
        if self.redis_url:
            return self.redis_url
        return self.broker_url if self.broker_url.startswith(("redis", "unix")) else ""

    @model_validator(mode="after")
    def _lock_outlives_a_loop(self) -> Settings:
        # The holder extends the lock once per loop; a lock shorter than two loops can lapse
        # between ticks and let a standby beat send the same run again.
        if self.beat_lock_timeout_seconds < 2 * self.beat_max_loop_seconds:
            raise ValueError(
                f"BEAT_LOCK_TIMEOUT_SECONDS ({self.beat_lock_timeout_seconds}) must be at least "
                f"twice BEAT_MAX_LOOP_SECONDS ({self.beat_max_loop_seconds})."
            )
        return self


@lru_cache(maxsize=1)
def get_store_settings() -> StoreSettings:
    """The library's settings, read from the environment on first use."""
    return StoreSettings()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()
