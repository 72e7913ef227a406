"""`numbers-retention report disconnects --month YYYY-MM [--format csv|json]`: a month's
permanent disconnections in the shape a provider files with the FCC's Reassigned Numbers
Database (each telephone number with the date of its most recent permanent disconnection), on
both backends; the command runs in-process (click's runner) against the test store.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date, datetime, timedelta
from decimal import Decimal

import pytest
from click.testing import Result
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from shared.errors import ValidationError
from shared.ledger import parse_month
from shared.models import PurgedNumber
from tests.factories import NOW, make_number
from tests.stores import fail_upstream

Factory = sessionmaker[Session]
Invoke = Callable[..., Result]

# number, country, type, disconnect date, reason
LEDGER = [
    ("+14155550101", "US", "local", date(2025, 10, 31), "released"),  # the month before
    ("+14155550102", "US", "local", date(2025, 11, 1), "released"),
    ("+14155550103", "US", "local", date(2025, 11, 30), "released"),
    ("+14155550104", "US", "local", date(2025, 12, 1), "released"),  # the month after
    ("+14155550105", "US", "local", date(2025, 11, 3), "released"),  # bought again, and
    ("+14155550105", "US", "local", date(2025, 11, 20), "released"),  # disconnected again
    ("+14155550106", "US", "local", date(2025, 11, 10), "ported_out"),
    ("+442079460107", "GB", "local", date(2025, 11, 10), "released"),
    ("+18005550108", "US", "toll_free", date(2025, 11, 10), "released"),
    ("+17875550109", "PR", "local", date(2025, 11, 12), "released"),  # a US territory
    ("+14155550110", "US", "local", date(2025, 11, 5), "operator"),
    ("+14165550111", "CA", "local", date(2025, 11, 6), "released"),  # NANP, not the US
]
NOVEMBER_CSV = (
    "telephone_number,disconnect_date\n"
    "4155550102,2025-11-01\n"
    "4155550110,2025-11-05\n"
    "7875550109,2025-11-12\n"
    "4155550105,2025-11-20\n"
    "4155550103,2025-11-30\n"
)


@pytest.fixture
def ledger(session_factory: Factory) -> Factory:
    with session_factory.begin() as session:
        for number_id, (phone, country, kind, day, reason) in enumerate(LEDGER, 1):
            at = datetime.combine(day, datetime.min.time(), NOW.tzinfo) + timedelta(hours=12)
            session.add(
                PurgedNumber(
                    number_id=number_id,
                    account_id="acc_rp",
                    phone_number=phone,
                    created_at=at - timedelta(days=90),
                    country_code=country,
                    number_type=kind,
                    next_billing_date=day,
                    monthly_price=Decimal("1.00"),
                    released_at=at - timedelta(days=14),
                    purged_at=at,
                    run_id="run-report",
                    carrier="telnyx",
                    disconnect_date=day,
                    disconnect_reason=reason,
                )
            )
    return session_factory


@pytest.fixture
def cli(engine: Engine, cli_on: Callable[..., Invoke]) -> Invoke:
    """`numbers-retention ARGS...` in this process, on the test store."""
    return cli_on(engine)


def test_the_csv_lists_the_months_permanent_disconnections_as_the_rnd_takes_them(
    ledger: Factory, cli: Invoke
) -> None:
    done = cli("report", "disconnects", "--month", "2025-11")
    assert done.exit_code == 0, done.stderr
    assert done.stdout == NOVEMBER_CSV
    # csv is the default format
    assert cli("report", "disconnects", "--month", "2025-11", "--format", "csv").stdout == (
        NOVEMBER_CSV
    )


def test_the_json_has_the_same_rows_with_what_was_left_out(ledger: Factory, cli: Invoke) -> None:
    done = cli("report", "disconnects", "--month", "2025-11", "--format", "json")
    assert done.exit_code == 0, done.stderr
    body = json.loads(done.stdout)
    rows = NOVEMBER_CSV.splitlines()[1:]
    assert body == {
        "month": "2025-11",
        "count": len(rows),
        "disconnections": [
            {"telephone_number": number, "disconnect_date": day}
            for number, day in (row.split(",") for row in rows)
        ],
        "left_out": {"ported_out": 1, "not_us": 2, "toll_free": 1},
    }


def test_a_month_without_disconnections_is_an_empty_report(ledger: Factory, cli: Invoke) -> None:
    assert cli("report", "disconnects", "--month", "2024-02").stdout == (
        "telephone_number,disconnect_date\n"
    )
    body = json.loads(cli("report", "disconnects", "--month", "2024-02", "--format", "json").stdout)
    assert (body["count"], body["disconnections"]) == (0, [])


BAD_MONTHS = ["2025-13", "2025-00", "2025-1", "25-11", "2025/11", "", "0000-01", "2025-11-01",
              "2025-11x", "november", "\uff12\uff10\uff12\uff15-11"]  # fmt: skip


@pytest.mark.parametrize("month", BAD_MONTHS)
def test_a_bad_month_is_the_envelope_and_exit_2(cli: Invoke, month: str) -> None:
    done = cli("report", "disconnects", "--month", month)
    assert done.exit_code == 2
    assert done.stdout == ""
    envelope = json.loads(done.stderr.strip().splitlines()[-1])
    assert envelope["error"]["code"] == "invalid_month"
    assert "YYYY-MM" in envelope["error"]["message"]
    assert envelope["error"]["fix"]
    assert envelope["trackingId"]


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["report", "disconnects"], "Missing option '--month'"),
        (["report", "disconnects", "--month", "2025-11", "--format", "xml"], "'xml'"),
        (["report", "connects", "--month", "2025-11"], "No such command 'connects'"),
    ],
)
def test_bad_usage_is_the_envelope_and_exit_2(cli: Invoke, args: list[str], said: str) -> None:
    done = cli(*args)
    assert done.exit_code == 2
    error = json.loads(done.stderr.strip().splitlines()[-1])["error"]
    assert error["code"] == "invalid_usage"
    assert said in error["message"]


def test_months_run_from_the_first_to_the_last_day_and_december_ends_the_year() -> None:
    november = parse_month("2025-11")
    assert (november.first, november.after) == (date(2025, 11, 1), date(2025, 12, 1))
    december = parse_month("2025-12")
    assert (december.first, december.after) == (date(2025, 12, 1), date(2026, 1, 1))
    last = parse_month("9999-12")
    assert (last.first, last.after) == (date(9999, 12, 1), None)
    with pytest.raises(ValidationError):
        parse_month(None)


def test_a_number_settled_as_ported_out_is_left_out_of_the_report(
    session_factory: Factory, cli: Invoke
) -> None:
    """End to end: `resolve-upstream --ported-out` writes the ledger; the report leaves it out,
    while one settled by hand without it is reported."""
    numbers = {"+14155550201": True, "+14155550202": False}
    for number in numbers:
        with session_factory.begin() as session:
            make_number(
                session,
                account_id="acc_rp",
                phone_number=number,
                provider_number_id=number[-3:],
                released_at=NOW - timedelta(days=15),
            )
            fail_upstream(session, number, permanent=True, provider_code="10007")
    for number, ported in numbers.items():
        flags = ["--ported-out"] if ported else []
        done = cli("resolve-upstream", number, "--reason", "settled", "--carrier", "telnyx", *flags)
        assert done.exit_code == 0, done.stderr
        assert json.loads(done.stdout)["disconnect_reason"] == (
            "ported_out" if ported else "operator"
        )
    # resolve-upstream decides on the host's clock: the month its ledger entries fell in.
    with session_factory() as session:
        day = session.scalars(select(PurgedNumber.disconnect_date)).first()
    assert day is not None
    month = day.strftime("%Y-%m")
    body = json.loads(cli("report", "disconnects", "--month", month, "--format", "json").stdout)
    assert [row["telephone_number"] for row in body["disconnections"]] == ["4155550202"]
    assert body["left_out"]["ported_out"] == 1
