"""The reconciliation's record in Redis: its last success, and a marker when it fails.

Both live in the sets' metadata hash (`releasable:meta`): a successful reconciliation (it
publishes the sets) writes `generated_at` there; a failed one leaves `failed_at` and `failure`
(the error's type, never its text, which can carry a URL with a password).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from typing import Any, cast

import redis

from shared.clock import as_utc, iso_timestamp, resolve_now, utcnow
from shared.clock_skew import ClockSkewError
from shared.errors import ValidationError
from shared.releasable.keys import PREFIX, meta_key

LAST_SUCCESS = "generated_at"
FAILED_AT = "failed_at"
FAILURE = "failure"


@contextmanager
def recording_failures(client: redis.Redis, *, prefix: str = PREFIX) -> Iterator[None]:
    """Run a reconciliation; if it fails, leave a failure marker in Redis and re-raise.

    A refused request (bad input, a future `now`) is not a failing reconciliation: no marker.
    """
    try:
        yield
    except ValidationError:
        raise
    except Exception as error:
        # Refused for a clock that disagrees with the database server's: dated at the earlier
        # of the two, never by this host's clock (a marker dated ahead would outlive the next
        # successes and say "failing" for as long).
        skewed = error.reading if isinstance(error, ClockSkewError) else None
        at = skewed.trusted if skewed is not None else utcnow()
        # Redis is most likely what failed then; the stale last success tells the same story.
        with suppress(redis.RedisError):
            client.hset(
                meta_key(prefix),
                mapping={FAILED_AT: iso_timestamp(at), FAILURE: type(error).__name__},
            )
        raise


def last_reconciliation(client: redis.Redis, *, prefix: str = PREFIX) -> dict[str, str]:
    """The metadata hash as the last reconciliation left it (empty when none ran yet)."""
    raw = cast(dict[bytes, bytes], client.hgetall(meta_key(prefix)))
    return {k.decode(): v.decode() for k, v in raw.items()}


def _instant(value: str | None) -> datetime | None:
    return as_utc(datetime.fromisoformat(value)) if value else None


def reconciliation_status(
    client: redis.Redis, *, now: datetime | None = None, prefix: str = PREFIX
) -> dict[str, Any]:
    """The last successful reconciliation, its age at `now`, and whether the latest attempt
    failed (`status --json` prints it as `publication`)."""
    now = resolve_now(now)
    meta = last_reconciliation(client, prefix=prefix)
    success, failed = _instant(meta.get(LAST_SUCCESS)), _instant(meta.get(FAILED_AT))
    return {
        "last_success_at": iso_timestamp(success) if success else None,
        "age_seconds": round((now - success).total_seconds(), 3) if success else None,
        "published": int(meta["count"]) if success and "count" in meta else None,
        # Failing: the newest attempt on record failed (a later success clears it).
        "failing": failed is not None and (success is None or failed > success),
        "last_failure_at": iso_timestamp(failed) if failed else None,
        "last_failure": meta.get(FAILURE),
    }
