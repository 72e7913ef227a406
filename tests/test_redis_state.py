"""Redis's own state, checked: staging keys that cannot leak, a Redis that lost what the relay
acknowledged (emptied, or restored from an older snapshot), the published marker readers rely
on, the eviction policy and RedBeat's schedule entries."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
import redis
from sqlalchemy.orm import Session

from shared import reconcile
from shared.reconcile import STAGING_SECONDS, publish_releasable
from tests.factories import make_numbers

pytestmark = pytest.mark.redis


def staging_keys(client: redis.Redis) -> list[bytes]:
    return sorted(client.scan_iter(match="releasable:staging:*"))


def _seed(session: Session, now: datetime, accounts: int = 3) -> None:
    for n in range(accounts):
        make_numbers(
            session,
            account_id=f"acc_s{n}",
            ages={f"+1415555{n:02d}{i:02d}": timedelta(days=1) for i in range(2)},
            now=now,
        )


@pytest.mark.parametrize("engine", ["postgresql"], indirect=True)
def test_a_reconciliation_failing_mid_build_leaves_no_staging_key(
    session: Session, redis_client: redis.Redis, now: datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    _seed(session, now)
    monkeypatch.setattr(reconcile, "CHUNK", 2)
    seen: list[tuple[bytes, int]] = []

    def fail_after_first_chunk(_numbers: int) -> None:
        # Written, and each with its TTL: a SIGKILL here would leave nothing for good.
        seen.extend((key, int(redis_client.ttl(key))) for key in staging_keys(redis_client))
        raise RuntimeError("killed mid-build")

    with pytest.raises(RuntimeError, match="mid-build"):
        publish_releasable(session, redis_client, now=now, progress=fail_after_first_chunk)
    assert seen
    assert all(0 < ttl <= STAGING_SECONDS for _key, ttl in seen)
    assert staging_keys(redis_client) == []


@pytest.mark.parametrize("engine", ["postgresql"], indirect=True)
def test_published_sets_keep_no_ttl_and_stale_staging_keys_are_dropped(
    session: Session, redis_client: redis.Redis, now: datetime
) -> None:
    _seed(session, now, accounts=1)
    started = int(redis_client.time()[0])
    legacy = b"releasable:staging:0123456789abcdef:all"  # a version without the TTL
    dead = f"releasable:staging:{started - STAGING_SECONDS - 5}.dead:all".encode()
    live = f"releasable:staging:{started}.other:all".encode()  # another reconciliation's
    for key in (legacy, dead, live):
        redis_client.zadd(key, {"+14155559999": 1})
    publish_releasable(session, redis_client, now=now)
    assert staging_keys(redis_client) == [live]
    assert redis_client.ttl("releasable:all") == -1
    assert redis_client.ttl("releasable:account:acc_s0") == -1
