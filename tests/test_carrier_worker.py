"""A mixed store purged end to end by a real `celery worker` (issue 21): numbers at Telnyx
(one DELETE each, or bulk deletion jobs), Twilio and Bandwidth and at no carrier, some refused
by their carrier, the carriers' fakes served over HTTP on free ports, beat scheduling one purge
task per carrier lane. Every number ends purged with its carrier's proof, or kept with its
carrier's code; the asynchronous releases are submitted by one run and settled by a later one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.models import PhoneNumber
from tests import fake_bandwidth as bw
from tests import fake_twilio as tw
from tests.fake_telnyx import API_KEY, FakeTelnyx
from tests.processes import start_beat, start_worker, wait_for
from tests.test_carrier_lanes import Fakes, kept, seed, stones

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.processes]

Factory = sessionmaker[Session]
PURGED = {
    "none": ["+14157030000", "+14157030001"],
    "telnyx": ["+14157000000", "+14157000001"],
    "twilio": ["+14157010000", "+14157010001"],
    "bandwidth": ["+14157020000", "+14157020001"],
}
ACTIVE = ["+14157040000", "+14157040001"]


@pytest.fixture
def servers() -> Iterator[Fakes]:
    fakes = Fakes(FakeTelnyx(), tw.FakeTwilio(), bw.FakeBandwidth())
    with fakes.telnyx.running(), fakes.twilio.running(), fakes.bandwidth.running():
        yield fakes


def carrier_env(fakes: Fakes, *, bulk: bool) -> dict[str, str]:
    """Every carrier's settings, pointed at its fake; Telnyx the default carrier."""
    return {
        "PROVIDER": "telnyx",
        "TELNYX_API_KEY": API_KEY,
        "TELNYX_BASE_URL": fakes.telnyx.url,
        "TELNYX_BULK_DELETE": "true" if bulk else "false",
        "TWILIO_ACCOUNT_SID": tw.ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": tw.AUTH_TOKEN,
        "TWILIO_BASE_URL": fakes.twilio.url,
        "BANDWIDTH_ACCOUNT_ID": bw.ACCOUNT_ID,
        "BANDWIDTH_USERNAME": bw.USERNAME,
        "BANDWIDTH_PASSWORD": bw.PASSWORD,
        "BANDWIDTH_BASE_URL": fakes.bandwidth.url,
        "PROVIDER_TIMEOUT_SECONDS": "10",
        "PURGE_EVERY_SECONDS": "2",
    }


def finished(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e.get("event") == "purge.finished"]


@pytest.mark.parametrize(
    "bulk",
    [
        # Single deletes run once, on the host's clock: the bulk job's orders, placed by one
        # run and settled by a later one, are what the clock-moved lanes run again.
        pytest.param(False, id="telnyx_single", marks=pytest.mark.processes(moved_clock=False)),
        pytest.param(True, id="telnyx_bulk"),
    ],
)
def test_a_real_worker_purges_a_mixed_store_lane_by_lane(
    pg_factory: Factory,
    process_env: Callable[..., dict[str, str]],
    redis_client: redis.Redis,
    servers: Fakes,
    tmp_path: Path,
    wall_now: datetime,
    bulk: bool,
) -> None:
    fakes = servers
    seed(pg_factory, fakes, when=wall_now)
    if bulk:  # the deletion job refuses 712 as the single DELETE does (LOCKED, 10035)
        fakes.telnyx.job_failures["712"] = ("10035", "Resource locked")
        fakes.telnyx.job_pending_reads = 1  # the job is still pending at its first read
    fakes.bandwidth.pending_reads = 1  # the order is still RECEIVED at its first read

    env = process_env(**carrier_env(fakes, bulk=bulk))
    # A process per lane (four) and one for the relay: the lanes run at once.
    worker = start_worker(env, tmp_path / "worker.log", concurrency=5)
    beat = start_beat(env, tmp_path / "beat.log", tmp_path / "beat-schedule")
    try:

        def settled() -> bool:
            gone = stones(pg_factory)
            return all(n in gone for numbers in PURGED.values() for n in numbers) and all(
                left.provider_code is not None
                for phone, left in kept(pg_factory).items()
                if phone.endswith("0002")
            )

        wait_for(settled, timeout=120, what="every overdue number purged or kept")

        def logged() -> list[dict[str, Any]] | None:
            # The runs of the tombstones have logged their end (it follows their commit).
            runs = finished(worker.events())
            ended = {run["run_id"] for run in runs}
            return runs if {s.run_id for s in stones(pg_factory).values()} <= ended else None

        runs = wait_for(logged, timeout=30, what="the purging runs' purge.finished")
    finally:
        beat.stop()
        worker.stop()
    assert "Traceback" not in worker.output(), worker.output()[-3000:]
    beat_log = beat.output()
    for lane in ("", "-none", "-twilio", "-bandwidth"):  # one task per lane, by beat
        assert f"Sending due task purge-expired{lane} " in beat_log

    assert_purged_with_proof(pg_factory, fakes, bulk=bulk)
    assert_kept_with_codes(pg_factory)
    assert_settled_by_a_later_run(pg_factory, runs, bulk=bulk)


def assert_purged_with_proof(factory: Factory, fakes: Fakes, *, bulk: bool) -> None:
    """Each overdue number its carrier released: tombstoned, with that carrier's proof."""
    gone = stones(factory)
    assert set(gone) == {n for numbers in PURGED.values() for n in numbers}
    for carrier, numbers in PURGED.items():
        for phone in numbers:
            assert gone[phone].carrier == carrier, phone
            assert (gone[phone].upstream_released_at is None) == (carrier == "none"), phone
    for phone in PURGED["none"]:  # held nowhere: one phase, nothing to prove
        assert (gone[phone].provider, gone[phone].resolution) == (None, None)
    for phone in PURGED["twilio"]:  # the 204, then a read answering Twilio's own 404
        proof = gone[phone].release_proof
        assert (proof["answer"], proof["read"][:4], proof["error"]) == (204, "GET ", 20404)
    for phone in PURGED["bandwidth"]:  # the number disconnected by the settled order
        proof = gone[phone].release_proof
        assert (proof["order"] in fakes.bandwidth.orders, proof["status"]) == (True, "PARTIAL")
    for phone in PURGED["telnyx"]:
        proof, number_id = gone[phone].release_proof, gone[phone].provider_number_id
        if bulk:  # in the job's successful operations
            assert proof["job"] in fakes.telnyx.jobs
        else:  # the record of that very id, in status deleted
            assert proof["call"] == f"DELETE /v2/phone_numbers/{number_id}"
            assert proof["record"]["id"] == number_id
    assert len(fakes.bandwidth.orders) == 1  # never ordered twice
    jobs = [j for j in fakes.telnyx.jobs.values() if j["type"] == "delete_phone_numbers"]
    assert len(jobs) == (1 if bulk else 0)


def assert_kept_with_codes(factory: Factory) -> None:
    """Each number its carrier refused: kept with that carrier's code, for a person; the
    active numbers untouched."""
    left = kept(factory)
    codes = {phone: (n.provider_code, n.provider_failed_permanently) for phone, n in left.items()}
    assert codes == {
        "+14157000002": ("10035", True),
        "+14157010002": (str(tw.EMERGENCY_ADDRESS_CODE), True),
        "+14157020002": ("5006", True),
    }
    assert all(n.provider_order_id is None for n in left.values())
    with factory() as session:
        active = set(
            session.scalars(
                select(PhoneNumber.phone_number).where(PhoneNumber.released_at.is_(None))
            )
        )
    assert active == set(ACTIVE)


def assert_settled_by_a_later_run(
    factory: Factory, runs: list[dict[str, Any]], *, bulk: bool
) -> None:
    """Submitted by one run, settled by a later one: the run that placed the order (or job)
    purged none of its numbers; the tombstones name another run, which read it settled."""
    gone = stones(factory)
    by_id = {run["run_id"]: run for run in runs}
    asynchronous = ["bandwidth", "telnyx"] if bulk else ["bandwidth"]
    for carrier in asynchronous:
        run_ids = {gone[phone].run_id for phone in PURGED[carrier]}
        [settling] = run_ids
        assert by_id[settling]["provider_orders_settled"] >= 1
        assert by_id[settling]["provider_submitted"] == 0
    submitting = [run for run in runs if run["provider_submitted"] == 3]
    assert len(submitting) == len(asynchronous)
    assert all(run["purged"] == 0 and run["status"] == "completed" for run in submitting)
