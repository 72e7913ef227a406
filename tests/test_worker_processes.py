"""Real `celery worker` and `celery beat` processes against PostgreSQL and Redis."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.models import PhoneNumber, PurgedNumber
from shared.releasable.read import read_releasable
from tests.factories import make_numbers
from tests.processes import start_worker_and_beat, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.processes]


def test_worker_and_beat_purge_overdue_and_publish_fresh(
    pg_factory: sessionmaker[Session],
    process_env: Callable[..., dict[str, str]],
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    now = datetime.now(UTC)
    overdue = [f"+1415321{i:04d}" for i in range(30)]
    fresh = [f"+1415322{i:04d}" for i in range(10)]
    with pg_factory.begin() as session:
        make_numbers(
            session, account_id="acc_old", ages=dict.fromkeys(overdue, timedelta(days=15)), now=now
        )
        make_numbers(
            session,
            account_id="acc_new",
            ages={**dict.fromkeys(fresh, timedelta(days=2)), "+14153230000": None},
            now=now,
        )

    env = process_env(PURGE_EVERY_SECONDS="2", PUBLISH_EVERY_SECONDS="2", PURGE_BATCH_SIZE="7")
    worker, beat = start_worker_and_beat(env, tmp_path)
    try:

        def purged() -> bool:
            with pg_factory() as session:
                left = set(session.scalars(select(PhoneNumber.phone_number)))
                stones = list(session.scalars(select(PurgedNumber.phone_number)))
            return left == {*fresh, "+14153230000"} and sorted(stones) == overdue

        wait_for(purged, timeout=60, what="the overdue numbers to be purged")
        published = wait_for(
            lambda: [n for n, _ in read_releasable(redis_client, account_id="acc_new")],
            timeout=30,
            what="the releasable set",
        )
        assert sorted(published) == fresh
        assert read_releasable(redis_client, account_id="acc_old") == []
        wait_for(
            lambda: any(e["event"] == "purge.finished" for e in worker.events()),
            timeout=10,
            what="purge.finished in the worker's log",
        )
        events = worker.events()
        batches = [e for e in events if e["event"] == "purge.batch"]
        assert sum(int(e["purged"]) for e in batches) == 30
        assert all(e["task_name"] == "numbers.purge_expired" and e["task_id"] for e in batches)
        assert any(e["event"] == "releasable.published" for e in events)
    finally:
        beat.stop()
        worker.stop()
    assert "Traceback" not in worker.output(), worker.output()[-3000:]
