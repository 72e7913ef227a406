"""The purge's configuration: built once per run from the settings, then passed down."""

from __future__ import annotations

from dataclasses import dataclass, replace

from shared.settings import Settings


@dataclass(frozen=True, kw_only=True)
class PurgeConfig:
    """Everything a run decides with; nothing below `purge_expired` reads the settings."""

    # Adaptive batch size: aimed at `target_ms` per batch transaction, never above
    # `batch_cap` (PURGE_BATCH_SIZE, `--batch-size`), never below `batch_floor`.
    batch_cap: int
    batch_floor: int
    target_ms: float
    parallel_batches: int
    max_rows: int
    max_seconds: float
    # The deploy-time pause (PURGE_PAUSED); the operator's pause is read from the store.
    paused: bool
    # Pacing (shared/purge/pacing.py): rest while other sessions work on the store, and after
    # a batch far slower than the target; wait while a replica lags more than this (0: never
    # look); stay under a rows/s ceiling (0: none).
    pressure_rest: float
    busy_rest: float
    max_replica_lag_seconds: float
    max_rows_per_second: float
    provider: str
    provider_batch_size: int
    provider_concurrency: int
    provider_failure_streak: int
    provider_backoff_seconds: float
    provider_backoff_max_seconds: float
    # A run is refused (`clock_skew`) while this host's clock and the database server's
    # differ by more (shared/clock_skew.py).
    clock_skew_max_seconds: float

    @classmethod
    def from_settings(cls, settings: Settings) -> PurgeConfig:
        """The configuration the settings describe."""
        return cls(
            batch_cap=settings.purge_batch_size,
            batch_floor=min(settings.purge_batch_floor, settings.purge_batch_size),
            target_ms=settings.purge_batch_target_ms,
            parallel_batches=settings.purge_parallel_batches,
            max_rows=settings.purge_max_rows,
            max_seconds=settings.purge_max_seconds,
            paused=settings.purge_paused,
            pressure_rest=settings.purge_pressure_rest,
            busy_rest=settings.purge_busy_rest,
            max_replica_lag_seconds=settings.purge_max_replica_lag_seconds,
            max_rows_per_second=settings.purge_max_rows_per_second,
            provider=settings.provider,
            provider_batch_size=settings.provider_batch_size,
            provider_concurrency=settings.provider_concurrency,
            provider_failure_streak=settings.provider_failure_streak,
            provider_backoff_seconds=settings.provider_backoff_seconds,
            provider_backoff_max_seconds=settings.provider_backoff_max_seconds,
            clock_skew_max_seconds=settings.clock_skew_max_seconds,
        )

    def overridden(
        self,
        *,
        batch_size: int | None = None,
        max_rows: int | None = None,
        max_seconds: float | None = None,
        paused: bool | None = None,
    ) -> PurgeConfig:
        """This configuration with a caller's bounds (a CLI flag, a test) in place."""
        config = self
        if batch_size is not None:
            config = replace(
                config, batch_cap=batch_size, batch_floor=min(config.batch_floor, batch_size)
            )
        if max_rows is not None:
            config = replace(config, max_rows=max_rows)
        if max_seconds is not None:
            config = replace(config, max_seconds=max_seconds)
        if paused is not None:
            config = replace(config, paused=paused)
        return config

    @property
    def first_batch(self) -> int:
        """A run's first batch: the floor (never above the cap), grown from there while fast.
        Started at 500 rows, the first batches of a run took 280 ms on a loaded machine."""
        return min(self.batch_cap, self.batch_floor)
