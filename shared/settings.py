"""The one settings object: read from the environment once, used by the store, worker and CLI."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Configuration; every field maps to an upper-case environment variable."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    data_dir: Path = Field(default=Path("data"), alias="NUMBERS_RETENTION_DATA")
    # Empty means the embedded default under data_dir (SQLite file, filesystem broker).
    database_url: str = ""
    broker_url: str = ""
    redis_url: str = ""
    result_backend: str = ""

    retention_days: int = Field(default=14, ge=1)

    purge_paused: bool = False
    purge_batch_size: int = Field(default=5000, ge=1)
    purge_max_rows: int = Field(default=1_000_000, ge=1)
    purge_max_seconds: float = Field(default=600.0, gt=0)
    # Whole minutes that divide an hour run on a crontab; other values (tests, demos) on an
    # interval.
    purge_every_seconds: int = Field(default=15 * 60, ge=1)
    publish_every_seconds: int = Field(default=60, ge=1)

    provider: Literal["none", "telnyx"] = "none"
    telnyx_api_key: SecretStr = SecretStr("")
    telnyx_base_url: str = "https://api.telnyx.com"

    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: str = "INFO"

    def resolved_database_url(self) -> str:
        """The store's URL: DATABASE_URL, or the embedded SQLite file."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'numbers.db').resolve()}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()
