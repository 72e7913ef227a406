"""Every carrier in one store (issue 21): each number is released at its own carrier, through
that carrier's lane; an asynchronous release (a Bandwidth disconnect order) leaves its numbers
submitted until a later run reads the order; one carrier stopped holds up no other; the lanes
of different carriers run at once, the same lane never twice. Against the fakes over HTTP on
loopback (one set of servers for the module)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from shared import migrate
from shared.carriers.bandwidth import BandwidthProvider
from shared.carriers.base import Provider
from shared.carriers.telnyx import TelnyxProvider
from shared.carriers.telnyx_jobs import TelnyxJobsProvider
from shared.carriers.twilio import TwilioProvider
from shared.db import make_engine
from shared.errors import ValidationError
from shared.models import PhoneNumber, PurgedNumber
from shared.purge import lanes, lock
from shared.status import store_status
from tests import fake_bandwidth as bw
from tests import fake_twilio as tw
from tests.factories import NOW, make_number
from tests.fake_telnyx import API_KEY, LOCKED, FakeTelnyx
from tests.purging import purge_expired
from worker import cli
from worker.tasks import parse_carrier

Factory = sessionmaker[Session]
WHEN = NOW - timedelta(days=2)
OVERDUE = timedelta(days=15)
REFUSAL = ("5007", "The telephone number has an active emergency (E911) record")


@dataclass
class Fakes:
    telnyx: FakeTelnyx
    twilio: tw.FakeTwilio
    bandwidth: bw.FakeBandwidth

    def adapters(self, *, twilio_token: str = tw.AUTH_TOKEN) -> dict[str, Provider]:
        return {
            "telnyx": TelnyxProvider(base_url=self.telnyx.url, api_key=API_KEY, timeout=0.5),
            "twilio": TwilioProvider(
                base_url=self.twilio.url,
                account_sid=tw.ACCOUNT_SID,
                auth_token=twilio_token,
                timeout=0.5,
            ),
            "bandwidth": BandwidthProvider(  # type: ignore[dict-item]
                base_url=self.bandwidth.url,
                account_id=bw.ACCOUNT_ID,
                username=bw.USERNAME,
                password=bw.PASSWORD,
                timeout=0.5,
            ),
        }


@pytest.fixture(scope="module")
def servers() -> Iterator[Fakes]:
    fakes = Fakes(FakeTelnyx(), tw.FakeTwilio(), bw.FakeBandwidth())
    with fakes.telnyx.running(), fakes.twilio.running(), fakes.bandwidth.running():
        yield fakes


@pytest.fixture
def fakes(servers: Fakes) -> Fakes:
    servers.telnyx.script.clear()
    servers.telnyx.released.clear()
    servers.telnyx.held = None
    servers.telnyx.jobs.clear()
    servers.telnyx.job_failures.clear()
    servers.telnyx.job_pending_reads = 0
    servers.telnyx.paths.clear()
    servers.twilio.reset()
    servers.bandwidth.reset()
    return servers


def _number(session: Session, phone: str, carrier: str, pid: str | None, *, due: bool) -> None:
    make_number(
        session,
        account_id="acc_carriers",
        phone_number=phone,
        released_at=WHEN - OVERDUE if due else None,
        now=WHEN,
        provider_number_id=pid,
        carrier=carrier,
    )


def seed(factory: Factory, fakes: Fakes) -> None:
    """Three overdue numbers at each carrier (one of each refused there), two held nowhere,
    and one active number at each of Twilio and Bandwidth (what proves their accounts)."""
    with factory.begin() as session:
        for i in range(3):
            _number(session, f"+1415700{i:04d}", "telnyx", f"71{i}", due=True)
            _number(session, f"+1415701{i:04d}", "twilio", tw.sid(i), due=True)
            _number(session, f"+1415702{i:04d}", "bandwidth", bw.tn(i), due=True)
            fakes.twilio.held.add(tw.sid(i))
            fakes.bandwidth.held.add(bw.tn(i))
        for i in range(2):
            _number(session, f"+1415703{i:04d}", "none", None, due=True)
        _number(session, "+14157040000", "twilio", tw.sid(99), due=False)
        _number(session, "+14157040001", "bandwidth", bw.tn(99), due=False)
    fakes.twilio.held.add(tw.sid(99))
    fakes.bandwidth.held.add(bw.tn(99))
    fakes.telnyx.script["712"] = [LOCKED]
    fakes.twilio.emergency.add(tw.sid(2))
    fakes.bandwidth.refuse[bw.tn(2)] = REFUSAL


def stones(factory: Factory) -> dict[str, PurgedNumber]:
    with factory() as session:
        return {s.phone_number: s for s in session.scalars(select(PurgedNumber))}


def kept(factory: Factory) -> dict[str, PhoneNumber]:
    with factory() as session:
        return {
            n.phone_number: n
            for n in session.scalars(
                select(PhoneNumber).where(PhoneNumber.released_at.is_not(None))
            )
        }


def test_a_mixed_store_releases_each_number_at_its_own_carrier(
    session_factory: Factory, fakes: Fakes
) -> None:
    seed(session_factory, fakes)
    fakes.bandwidth.pending_reads = 1  # Bandwidth's order is still RECEIVED at its first read
    adapters = fakes.adapters()
    first = purge_expired(session_factory, now=WHEN, carriers=adapters)
    assert first.status == "completed", first.reason
    # Held nowhere: purged at once; Telnyx and Twilio: released and proven, but for the one
    # each refused; Bandwidth: all three submitted in one order, none purged yet.
    assert first.purged == 2 + 2 + 2
    assert first.provider_submitted == 3
    gone = stones(session_factory)
    assert {s.carrier for s in gone.values()} == {"none", "telnyx", "twilio"}
    assert gone["+14157010000"].release_proof["read"].startswith("GET ")
    left = kept(session_factory)
    assert left["+14157000002"].provider_code == "10035"
    assert left["+14157010002"].provider_code == str(tw.EMERGENCY_ADDRESS_CODE)
    assert {left[f"+1415702{i:04d}"].provider_order_id for i in range(3)} != {None}
    with session_factory() as session:
        status = store_status(session, now=WHEN + timedelta(hours=7))
    assert status["submitted"] == {
        "numbers": 3,
        "orders": 1,
        "oldest_age_seconds": 7 * 3600.0,
    }

    second = purge_expired(session_factory, now=WHEN, carriers=adapters)
    # The order settled PARTIAL: each number by its own outcome, the order id in the ledger.
    assert second.provider_orders_settled == 1
    assert second.purged == 2
    gone = stones(session_factory)
    order_id = gone["+14157020000"].release_proof["order"]
    assert gone["+14157020001"].release_proof == {
        "resolution": "provider",
        "call": "POST /accounts/{accountId}/disconnects",
        "order": order_id,
        "status": "PARTIAL",
    }
    refused = kept(session_factory)["+14157020002"]
    assert (refused.provider_code, refused.provider_order_id) == ("5007", None)
    assert refused.provider_failed_permanently  # waits on a person
    assert len(fakes.bandwidth.orders) == 1  # never ordered twice
    with session_factory() as session:
        assert store_status(session, now=WHEN)["submitted"]["numbers"] == 0
    for adapter in adapters.values():
        adapter.close()


def test_one_carrier_misconfigured_holds_up_no_other(
    session_factory: Factory, fakes: Fakes
) -> None:
    seed(session_factory, fakes)
    adapters = fakes.adapters(twilio_token="revoked")
    report = purge_expired(session_factory, now=WHEN, carriers=adapters)
    assert report.status == "provider_misconfigured"
    assert report.reason is not None
    assert "twilio: provider_misconfigured" in report.reason
    assert "TWILIO_AUTH_TOKEN" in report.reason
    carriers = {s.carrier for s in stones(session_factory).values()}
    assert carriers == {"none", "telnyx", "bandwidth"}
    assert all(f"+1415701{i:04d}" in kept(session_factory) for i in range(3))
    for adapter in adapters.values():
        adapter.close()


def test_lanes_of_different_carriers_run_at_once_the_same_lane_never_twice(
    pg_factory: Factory, fakes: Fakes
) -> None:
    seed(pg_factory, fakes)
    adapters = fakes.adapters()
    engine = pg_factory.kw["bind"]
    with lock.run_lock(engine, lanes.lane_lock_key("twilio"), "purge.twilio") as got:
        assert got  # a Twilio lane's run under way on another worker
        busy = purge_expired(pg_factory, now=WHEN, carrier="twilio", carriers=adapters)
        assert (busy.status, busy.reason) == ("skipped", "locked")
        telnyx = purge_expired(pg_factory, now=WHEN, carrier="telnyx", carriers=adapters)
        assert (telnyx.status, telnyx.purged) == ("completed", 2)
        # A run of every lane passes the busy one by and says so.
        every = purge_expired(pg_factory, now=WHEN, carriers=adapters)
        assert every.reason is not None
        assert "twilio: completed (lane locked" in every.reason
    assert {s.carrier for s in stones(pg_factory).values()} == {"none", "telnyx", "bandwidth"}
    twilio = purge_expired(pg_factory, now=WHEN, carrier="twilio", carriers=adapters)
    assert (twilio.status, twilio.purged) == ("completed", 2)
    for adapter in adapters.values():
        adapter.close()


def test_a_number_records_its_carrier_and_an_id_of_that_carrier(session: Session) -> None:
    _number(session, "+14157050000", "twilio", tw.sid(5), due=False)
    stored = session.scalars(select(PhoneNumber)).one()
    assert (stored.carrier, stored.provider_number_id) == ("twilio", tw.sid(5))
    with pytest.raises(ValidationError) as unknown:
        _number(session, "+14157050001", "vonage", None, due=False)
    assert unknown.value.code == "invalid_carrier"
    with pytest.raises(ValidationError) as wrong_id:
        _number(session, "+14157050002", "telnyx", tw.sid(6), due=False)
    assert wrong_id.value.code == "invalid_provider_number_id"
    with pytest.raises(ValidationError):
        _number(session, "+14157050003", "bandwidth", "+19195550000", due=False)


def test_numbers_stored_before_get_the_configured_provider(
    tmp_path: Path, settings_env: Callable[..., None]
) -> None:
    """Migration 0014_carriers: the numbers of a store migrated with PROVIDER=twilio record
    Twilio; with PROVIDER none (no carrier configured) they stay NULL, the run's default."""
    for provider, expected in (("twilio", "twilio"), ("none", None)):
        settings_env(PROVIDER=provider)
        engine = make_engine(f"sqlite:///{tmp_path}/{provider}.db")
        try:
            migrate.upgrade(engine, "0008_disconnect_ledger")
            with engine.begin() as connection:
                connection.execute(
                    text(
                        "INSERT INTO accounts (id, plan, created_at) "
                        "VALUES ('acc_m', 'paid', CURRENT_TIMESTAMP)"
                    )
                )
                connection.execute(
                    text(
                        "INSERT INTO phone_numbers (account_id, phone_number, created_at, "
                        "country_code, number_type, billing_status, next_billing_date, "
                        "monthly_price, purge_hold, provider_number_id) VALUES ('acc_m', "
                        "'+14155550100', CURRENT_TIMESTAMP, 'US', 'local', 'active', "
                        "CURRENT_DATE, 1, false, :pid)"
                    ),
                    {"pid": tw.sid(1)},
                )
            migrate.upgrade(engine)
            with engine.connect() as connection:
                assert connection.scalar(text("SELECT carrier FROM phone_numbers")) == expected
        finally:
            engine.dispose()


def test_a_lane_is_named_by_a_known_carrier_only() -> None:
    with pytest.raises(ValidationError) as refused:
        parse_carrier("vonage")
    assert refused.value.code == "invalid_carrier"
    assert parse_carrier("bandwidth") == "bandwidth"
    assert parse_carrier(None) is None
    result = CliRunner().invoke(cli.main, ["purge", "--carrier", "vonage"])
    assert result.exit_code == 2
    assert "vonage" in result.output


def test_telnyx_numbers_released_by_a_bulk_deletion_job(
    session_factory: Factory, fakes: Fakes
) -> None:
    """TELNYX_BULK_DELETE: one deletion job for the batch; its numbers wait submitted with the
    job id until a later run reads the job and settles each by its own operation."""
    with session_factory.begin() as session:
        for i in range(3):
            _number(session, f"+1415706{i:04d}", "telnyx", f"76{i}", due=True)
    fakes.telnyx.job_pending_reads = 1
    fakes.telnyx.job_failures["762"] = ("10035", "Resource locked")
    jobs = TelnyxJobsProvider(base_url=fakes.telnyx.url, api_key=API_KEY, timeout=0.5)
    try:
        first = purge_expired(session_factory, now=WHEN, carrier="telnyx", provider=jobs)
        assert (first.provider_submitted, first.purged) == (3, 0)
        assert not any(path.startswith("/v2/phone_numbers/76") for path in fakes.telnyx.paths)
        second = purge_expired(session_factory, now=WHEN, carrier="telnyx", provider=jobs)
        assert (second.provider_orders_settled, second.purged) == (1, 2)
    finally:
        jobs.close()
    [job_id] = fakes.telnyx.jobs
    assert stones(session_factory)["+14157060000"].release_proof["job"] == job_id
    locked = kept(session_factory)["+14157060002"]
    assert (locked.provider_code, locked.provider_order_id) == ("10035", None)
