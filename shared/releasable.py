"""The releasable set: repurchasable numbers in Redis sorted sets, scored by their deadline."""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import datetime
from typing import Any, cast

import redis
import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.listing import iso_timestamp, offered
from shared.models import PhoneNumber
from shared.retention import not_ahead, repurchase_deadline, resolve_now

log = structlog.get_logger("shared.releasable")

PREFIX = "releasable"
CHUNK = 5000


def all_key(prefix: str = PREFIX) -> str:
    """Sorted set of every repurchasable number."""
    return f"{prefix}:all"


def account_key(account_id: str, prefix: str = PREFIX) -> str:
    """Sorted set of one account's repurchasable numbers."""
    return f"{prefix}:account:{account_id}"


def meta_key(prefix: str = PREFIX) -> str:
    """Hash: generated_at, count, accounts of the last publication."""
    return f"{prefix}:meta"


def accounts_key(prefix: str = PREFIX) -> str:
    """Set of the account ids that have a published sorted set."""
    return f"{prefix}:accounts"


def publish_releasable(
    session: Session, client: redis.Redis, *, now: datetime | None = None, prefix: str = PREFIX
) -> dict[str, Any]:
    """Replace the published sets with the store's repurchasable numbers, atomically."""
    now = not_ahead(now)
    staging = f"{prefix}:staging:{uuid.uuid4().hex}"
    rows = session.execute(
        select(PhoneNumber.phone_number, PhoneNumber.account_id, PhoneNumber.released_at)
        .where(offered(now))
        .execution_options(yield_per=CHUNK)
    )
    per_account: defaultdict[str, int] = defaultdict(int)
    count = 0
    # Build under staging keys first; readers keep seeing the previous sets meanwhile.
    for chunk in rows.partitions():
        pipe = client.pipeline(transaction=False)
        scores: dict[str, float] = {}
        by_account: defaultdict[str, dict[str, float]] = defaultdict(dict)
        for phone_number, account_id, released_at in chunk:
            score = repurchase_deadline(cast(datetime, released_at)).timestamp()
            scores[phone_number] = score
            by_account[account_id][phone_number] = score
        pipe.zadd(all_key(staging), scores)
        for account_id, members in by_account.items():
            pipe.zadd(account_key(account_id, staging), members)
            per_account[account_id] += len(members)
        pipe.execute()
        count += len(scores)
    previous = {a.decode() for a in cast(set[bytes], client.smembers(accounts_key(prefix)))}
    generated_at = iso_timestamp(resolve_now(None))
    # One MULTI/EXEC: every reader sees the old sets or the new ones, never a mix.
    pipe = client.pipeline(transaction=True)
    if count:
        pipe.rename(all_key(staging), all_key(prefix))
    else:
        pipe.delete(all_key(prefix))
    for account_id in per_account:
        pipe.rename(account_key(account_id, staging), account_key(account_id, prefix))
    for account_id in previous - per_account.keys():
        pipe.delete(account_key(account_id, prefix))
    pipe.delete(accounts_key(prefix))
    if per_account:
        pipe.sadd(accounts_key(prefix), *per_account)
    pipe.hset(
        meta_key(prefix),
        mapping={
            "generated_at": generated_at,
            "now": iso_timestamp(now),
            "count": count,
            "accounts": len(per_account),
        },
    )
    pipe.execute()
    summary = {
        "published": count,
        "accounts": len(per_account),
        "removed_accounts": len(previous - per_account.keys()),
        "now": iso_timestamp(now),
        "generated_at": generated_at,
    }
    log.info("releasable.published", **summary)
    return summary


def read_releasable(
    client: redis.Redis,
    *,
    account_id: str | None = None,
    now: datetime | None = None,
    prefix: str = PREFIX,
) -> list[tuple[str, datetime]]:
    """Published numbers still repurchasable at `now`, soonest deadline first.

    A score at or before `now` is treated as gone, so a stale set never offers an expired number.
    """
    now = resolve_now(now)
    key = all_key(prefix) if account_id is None else account_key(account_id, prefix)
    members = cast(
        list[tuple[bytes, float]],
        client.zrangebyscore(key, f"({now.timestamp()}", "+inf", withscores=True),
    )
    return [
        (member.decode(), datetime.fromtimestamp(score, tz=now.tzinfo)) for member, score in members
    ]


def publication(client: redis.Redis, *, prefix: str = PREFIX) -> dict[str, str]:
    """Metadata of the last publication (empty when nothing was published yet)."""
    raw = cast(dict[bytes, bytes], client.hgetall(meta_key(prefix)))
    return {k.decode(): v.decode() for k, v in raw.items()}
