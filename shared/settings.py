"""The settings: read from the environment once, used by the store, worker and CLI.

The library (`shared`) reads only `StoreSettings` (where the store is, the retention window),
so a worker setting that is wrong in an API service's environment never breaks its import;
the worker and the CLI read and validate the whole `Settings`.

Every number is finite and bounded (no `inf`, no `nan`, nothing that overflows a timedelta,
a time limit or a SQL parameter): a run must be bounded, and a typo must be refused here, with
the variable named, not found later as a crash.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

# Upper bounds, in seconds, of the duration settings: far above any sensible value, far below
# what overflows (a timedelta, Celery's time limits, PostgreSQL's statement_timeout in ms).
MINUTE, HOUR, DAY, WEEK = 60, 3600, 86_400, 7 * 86_400
# Upper bounds of the row and event counts (they go into SQL as parameters) and of the rows
# of one batch (one transaction, held in memory).
MAX_COUNT = 1_000_000_000
MAX_BATCH = 1_000_000
# DB_PING_AFTER_IDLE_SECONDS's default (shared/db.py).
DB_PING_AFTER_IDLE_SECONDS = 1.0

# The stores the worker is built and tested for: PostgreSQL through psycopg 3, and SQLite.
DATABASE_DRIVERS = frozenset(
    {"postgresql", "postgresql+psycopg", "postgres", "sqlite", "sqlite+pysqlite"}
)
REDIS_SCHEMES = ("redis", "rediss", "unix")
BROKER_SCHEMES = ("redis", "rediss", "sentinel")
# The carriers a number can be held at (one module each in shared/carriers/; `none`: nowhere).
CarrierName = Literal["none", "telnyx", "twilio", "bandwidth"]
TWILIO_ACCOUNT_SID = re.compile(r"AC[0-9a-fA-F]{32}")


def _invalid(reason: str) -> PydanticCustomError:
    """A refused setting; `reason` says why and never repeats the value (it may be a secret)."""
    return PydanticCustomError("invalid_setting", reason)


def _check_url(url: str, *, schemes: tuple[str, ...], example: str) -> str:
    """`url` when it is empty or a well-formed URL with one of `schemes`."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parses the port: a bad one raises ValueError
    except ValueError:
        raise _invalid(f"is not a URL; use e.g. {example}") from None
    if parts.scheme not in schemes:
        starts = " or ".join(f"{scheme}://" for scheme in schemes)
        raise _invalid(f"must be a URL starting with {starts}, e.g. {example}")
    return url


# The form of a carrier's account id, when set: the check, and the refusal of another.
ACCOUNT_FORMS: dict[str, tuple[Callable[[str], object], str]] = {
    "twilio_account_sid": (
        TWILIO_ACCOUNT_SID.fullmatch,
        "must be the account's SID: AC and 32 hex digits",
    ),
    "bandwidth_account_id": (
        str.isdigit,
        "must be the numeric account id of Bandwidth's Dashboard",
    ),
}
# The settings a carrier cannot work without when PROVIDER names it: the carrier, and what
# the setting is (in the refusal's words).
REQUIRED_BY_PROVIDER = {
    "telnyx_api_key": ("telnyx", "the API key of the account"),
    "twilio_account_sid": ("twilio", "the account's SID, AC..."),
    "twilio_auth_token": ("twilio", "the account's auth token"),
    "bandwidth_account_id": ("bandwidth", "the account id"),
}


def _required_by_provider(value: str, info: ValidationInfo) -> None:
    """Refuses an empty `value` of a setting its configured PROVIDER needs."""
    assert info.field_name is not None
    provider, what = REQUIRED_BY_PROVIDER[info.field_name]
    if info.data.get("provider") == provider and not value:
        raise _invalid(f"must be set when PROVIDER is {provider} ({what})")


def check_database_url(url: str) -> str:
    """`url` when it is empty (the embedded default) or names a supported store."""
    if not url:
        return url
    try:
        drivername = make_url(url).drivername
    except (ArgumentError, ValueError):
        raise _invalid(
            "is not a database URL; use postgresql://user:password@host:5432/db or sqlite:///file"
        ) from None
    if drivername not in DATABASE_DRIVERS:
        raise _invalid(
            "names a database the worker does not support; use PostgreSQL (postgresql://, "
            "driver psycopg 3) or SQLite (sqlite:///file)"
        )
    return url


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

    model_config = SettingsConfigDict(
        env_prefix="", case_sensitive=False, extra="ignore", allow_inf_nan=False
    )

    # Absolute once read (a relative value is taken from the folder the process starts in),
    # so the store, the broker's folders and the results all name one place.
    data_dir: Path = Field(default_factory=default_data_dir, alias="NUMBERS_RETENTION_DATA")
    # Empty means the embedded default under data_dir (SQLite file).
    database_url: str = ""
    # At most ten years: a deadline or cutoff that far off stays a valid datetime.
    retention_days: int = Field(default=14, ge=1, le=3650)
    # A pooled PostgreSQL connection idle longer than this is pinged before use (not every
    # checkout: that cost the list a round trip per call; see shared/db.py).
    db_ping_after_idle_seconds: float = Field(default=DB_PING_AFTER_IDLE_SECONDS, ge=0, le=DAY)
    # The most this host's clock and the database server's may differ before a purge, a
    # publication or a relay run is refused (`clock_skew`), and the most a `now` given to a
    # write path may lie ahead of this host's clock (shared/clock_skew.py). Up to ten years:
    # the test lanes that move every Python clock a year cannot move the database's.
    clock_skew_max_seconds: float = Field(default=5.0, gt=0, le=3650 * DAY)
    # The carrier of numbers registered without one (`register_number(..., carrier=None)`).
    provider: CarrierName = "none"

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
    task_retry_backoff: int = Field(default=2, ge=1, le=HOUR)
    task_retry_backoff_max: int = Field(default=120, ge=1, le=DAY)

    purge_paused: bool = False
    # The most rows one purge batch (one transaction) may take: the adaptive size never
    # exceeds it (bench/RESULTS.md).
    purge_batch_size: int = Field(default=5000, ge=1, le=MAX_BATCH)
    # The adaptive size never goes below this (unless the cap above is lower).
    purge_batch_floor: int = Field(default=100, ge=1, le=MAX_BATCH)
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
    purge_max_replica_lag_seconds: float = Field(default=10.0, ge=0, le=DAY)
    # A ceiling on purged rows per second (0: none); `numbers-retention pace` sets one live.
    purge_max_rows_per_second: float = Field(default=0.0, ge=0, le=MAX_COUNT)
    purge_max_rows: int = Field(default=1_000_000, ge=1, le=MAX_COUNT)
    purge_max_seconds: float = Field(default=600.0, gt=0, le=DAY)
    # Whole minutes that divide an hour run on a crontab; other values (tests, demos) on an
    # interval.
    purge_every_seconds: int = Field(default=15 * MINUTE, ge=1, le=WEEK)
    # The full publication is a reconciliation now: the relay keeps the set current.
    publish_every_seconds: int = Field(default=HOUR, ge=1, le=WEEK)
    # The relay: how often beat sends it, events per batch, how long one run may go on, and
    # how many entries the numbers:events stream keeps at most (its ceiling: shared/stream.py).
    relay_every_seconds: int = Field(default=2, ge=1, le=DAY)
    relay_batch_size: int = Field(default=1000, ge=1, le=MAX_BATCH)
    relay_max_seconds: float = Field(default=5.0, gt=0, le=HOUR)
    # On PostgreSQL each scheduled relay stays LISTENing for most of its interval and applies a
    # commit's events at once (shared/wakeups.py); off where LISTEN cannot work (PgBouncer in
    # transaction mode): the relay keeps to its schedule.
    relay_wakeups: bool = True
    events_stream_maxlen: int = Field(default=100_000, ge=1000, le=MAX_COUNT)
    audit_retention_days: int = Field(default=400, ge=1, le=36500)
    # A tombstone's personal field (the number's label) is erased this many days after its
    # purge, long before the tombstone itself goes (AUDIT_RETENTION_DAYS; shared/audit.py).
    tombstone_redact_days: int = Field(default=90, ge=1, le=36500)
    # Beat wakes at least this often; a standby beat polls RedBeat's lock at this pace too.
    beat_max_loop_seconds: int = Field(default=60, ge=1, le=HOUR)
    # RedBeat's lock expires this long after the last tick of the beat holding it: a killed
    # beat is replaced by a standby after at most this plus beat_max_loop_seconds.
    beat_lock_timeout_seconds: int = Field(default=300, ge=2, le=DAY)

    # The default carrier: of numbers registered without one, and of numbers stored before
    # each number recorded its own (migration 0014_carriers).
    provider: CarrierName = "none"
    # Checked even when left out: a provider without its key is refused (see below).
    telnyx_api_key: SecretStr = Field(default=SecretStr(""), validate_default=True)
    telnyx_base_url: str = "https://api.telnyx.com"
    provider_timeout_seconds: float = Field(default=10.0, gt=0, le=10 * MINUTE)
    # At most this many upstream calls at once, so a large batch cannot flood the provider.
    provider_concurrency: int = Field(default=8, ge=1, le=256)
    # Rows claimed per two-phase batch: small, since each one waits on the provider's calls.
    provider_batch_size: int = Field(default=200, ge=1, le=100_000)
    # A failed upstream release is retried after min(max, base * 2**(attempts-1)) seconds.
    provider_backoff_seconds: float = Field(default=60.0, gt=0, le=30 * DAY)
    provider_backoff_max_seconds: float = Field(default=6 * HOUR, gt=0, le=30 * DAY)
    # This many failures in a row end the run early (status provider_unavailable).
    provider_failure_streak: int = Field(default=20, ge=1, le=1_000_000)
    # Telnyx numbers released by bulk deletion jobs (up to 1,000 a job) instead of one DELETE
    # each: they wait `submitted` until a later run reads the job.
    telnyx_bulk_delete: bool = False
    # Twilio (shared/carriers/twilio.py): the account's SID and auth token (HTTP basic).
    twilio_account_sid: str = Field(default="", validate_default=True)
    twilio_auth_token: SecretStr = Field(default=SecretStr(""), validate_default=True)
    twilio_base_url: str = "https://api.twilio.com"
    # Bandwidth (its Dashboard API): the account id and an API user's name and password.
    bandwidth_account_id: str = Field(default="", validate_default=True)
    bandwidth_username: str = ""
    bandwidth_password: SecretStr = Field(default=SecretStr(""), validate_default=True)
    bandwidth_base_url: str = "https://dashboard.bandwidth.com/api"

    # `numbers-retention metrics`: one reading of the store serves the scrapes of this many
    # seconds; each of its queries is cancelled after the timeout (the scrape then says up 0).
    metrics_cache_seconds: float = Field(default=5.0, ge=0, le=HOUR)
    metrics_statement_timeout_seconds: float = Field(default=5.0, gt=0, le=10 * MINUTE)
    # A scrape answers within this many seconds with what it could read (below Prometheus's
    # default 10 s scrape timeout); a source that did not answer is scrape_source_up 0.
    metrics_scrape_budget_seconds: float = Field(default=4.0, gt=0, le=10 * MINUTE)

    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: str = "INFO"

    def resolved_redis_url(self) -> str:
        """Redis for the releasable set and RedBeat: REDIS_URL, or a Redis broker's URL."""
        if self.redis_url:
            return self.redis_url
        return self.broker_url if self.broker_url.startswith(("redis", "unix")) else ""

    @field_validator("database_url")
    @classmethod
    def _supported_store(cls, url: str) -> str:
        return check_database_url(url)

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, url: str) -> str:
        return _check_url(url, schemes=REDIS_SCHEMES, example="redis://host:6379/0")

    @field_validator("broker_url")
    @classmethod
    def _broker_url(cls, url: str) -> str:
        # The broker the worker is built and tested for (visibility timeout, RedBeat): Redis.
        return _check_url(url, schemes=BROKER_SCHEMES, example="redis://host:6379/0")

    @field_validator("telnyx_base_url", "twilio_base_url", "bandwidth_base_url")
    @classmethod
    def _carrier_base_url(cls, url: str, info: ValidationInfo) -> str:
        telnyx = info.field_name == "telnyx_base_url"
        example = "https://api.telnyx.com" if telnyx else "https://api.twilio.com"
        _check_url(url, schemes=("https", "http"), example=example)
        if not urlsplit(url).hostname:
            raise _invalid(f"must be an https:// URL with a host, e.g. {example}")
        return url

    @field_validator("telnyx_api_key", "twilio_auth_token")
    @classmethod
    def _carrier_secret(cls, secret: SecretStr, info: ValidationInfo) -> SecretStr:
        # Without it every call is refused: each run would stop provider_misconfigured.
        _required_by_provider(secret.get_secret_value().strip(), info)
        return secret

    @field_validator("twilio_account_sid", "bandwidth_account_id")
    @classmethod
    def _carrier_account(cls, account: str, info: ValidationInfo) -> str:
        assert info.field_name is not None
        valid, refusal = ACCOUNT_FORMS[info.field_name]
        if account and not valid(account):
            raise _invalid(refusal)
        _required_by_provider(account, info)
        return account

    @field_validator("bandwidth_password")
    @classmethod
    def _bandwidth_needs_its_password(cls, password: SecretStr, info: ValidationInfo) -> SecretStr:
        if info.data.get("provider") == "bandwidth" and not (
            password.get_secret_value().strip() and info.data.get("bandwidth_username")
        ):
            raise _invalid(
                "BANDWIDTH_USERNAME and BANDWIDTH_PASSWORD must be set when PROVIDER is bandwidth"
            )
        return password

    @field_validator("log_level")
    @classmethod
    def _known_log_level(cls, level: str) -> str:
        if level.upper() not in logging.getLevelNamesMapping():
            raise _invalid("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level.upper()

    @model_validator(mode="after")
    def _lock_outlives_a_loop(self) -> Settings:
        # The holder extends the lock once per loop; a lock shorter than two loops can lapse
        # between ticks and let a standby beat send the same run again.
        if self.beat_lock_timeout_seconds < 2 * self.beat_max_loop_seconds:
            raise _invalid("BEAT_LOCK_TIMEOUT_SECONDS must be at least twice BEAT_MAX_LOOP_SECONDS")
        return self

    @model_validator(mode="after")
    def _redact_before_pruning(self) -> Settings:
        # Erasing the label after its tombstone is gone would erase nothing: a redaction
        # period longer than the retention is a typo, refused here.
        if self.tombstone_redact_days > self.audit_retention_days:
            raise _invalid(
                "TOMBSTONE_REDACT_DAYS must be at most AUDIT_RETENTION_DAYS (labels are "
                "erased before their tombstones are pruned)"
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
