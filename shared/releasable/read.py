"""Reading the published sets: the repurchasable numbers, soonest deadline first."""

from __future__ import annotations

from datetime import datetime
from typing import cast

import redis

from shared.clock import resolve_now
from shared.errors import InternalError
from shared.releasable.keys import PREFIX, account_key, all_key, published_key


class NotPublished(InternalError):
    """503: the sets are not published (Redis lost them); a reconciliation is on its way."""

    status = 503
    default_code = "releasable_not_published"


def read_releasable(
    client: redis.Redis,
    *,
    account_id: str | None = None,
    now: datetime | None = None,
    prefix: str = PREFIX,
) -> list[tuple[str, datetime]]:
    """Published numbers still repurchasable at `now`, soonest deadline first.

    A score at or before `now` is treated as gone, so a stale set never offers an expired number.
    Raises `NotPublished` while no reconciliation has published the sets into this Redis (new,
    restarted empty, or found behind the store): an empty list always means none.
    """
    now = resolve_now(now)
    key = all_key(prefix) if account_id is None else account_key(account_id, prefix)
    # One MULTI: the marker and the set are read at the same instant of Redis.
    with client.pipeline(transaction=True) as pipe:
        pipe.exists(published_key(prefix))
        pipe.zrangebyscore(key, f"({now.timestamp()}", "+inf", withscores=True)
        published, members = cast(tuple[int, list[tuple[bytes, float]]], pipe.execute())
    if not published:
        raise NotPublished(
            "The releasable numbers are not published in Redis yet (a new or emptied Redis, or "
            "one found behind the store); a reconciliation is on its way.",
            fix="Retry in a few seconds, or read the store, the source of truth, instead "
            "(released_numbers_body: GET /numbers/released).",
        )
    return [
        (member.decode(), datetime.fromtimestamp(score, tz=now.tzinfo)) for member, score in members
    ]
