"""Detach before release: what a number carries at Telnyx (its 10DLC campaign assignment, its
emergency services and address, its CNAM listing) is removed, and proven gone, before the
number itself is released there. Against the Telnyx-like server on loopback, on both backends.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from shared.provider import TelnyxProvider
from tests.factories import make_overdue
from tests.fake_telnyx import CAMPAIGNS, EMERGENCY_JOB, NUMBERS, FakeTelnyx, Reply, telnyx_error
from tests.purging import purge_expired
from tests.stores import numbers_by_phone, tombstones_by_phone

Factory = sessionmaker[Session]
OVERDUE = timedelta(days=15)
BACKOFF = timedelta(seconds=60)  # PROVIDER_BACKOFF_SECONDS' default: the first retry's wait


def seed(
    factory: Factory, now: datetime, count: int, *, country: str = "US", start: int = 0
) -> list[str]:
    """`count` overdue numbers with provider ids '80<i>'; their E.164 numbers."""
    prefix = "+1415740" if country == "US" else "+44207946"
    return make_overdue(
        factory,
        "acc_dt",
        prefix,
        count,
        lambda i: f"80{i}",
        now=now,
        age=OVERDUE,
        start=start,
        country_code=country,
    )


def calls_about(fake: FakeTelnyx, number_id: str, phone_number: str) -> list[str]:
    """The calls the server saw about one number, in order, named by what they do."""
    names = {
        ("GET", f"{CAMPAIGNS}{phone_number}"): "campaign.get",
        ("DELETE", f"{CAMPAIGNS}{phone_number}"): "campaign.delete",
        ("GET", f"{NUMBERS}{number_id}/voice"): "voice.get",
        ("PATCH", f"{NUMBERS}{number_id}/voice"): "voice.patch",
        ("DELETE", f"{NUMBERS}{number_id}"): "number.delete",
    }
    seen = []
    for method, path, about in fake.log:
        name = names.get((method, path.replace("%2B", "+")))
        if name is not None:
            seen.append(name)
        elif (method, path, about) == ("POST", EMERGENCY_JOB, number_id):
            seen.append("emergency.job")
    return seen


def test_what_a_number_carries_is_removed_before_it_is_released(
    session_factory: Factory, now: datetime, fake_telnyx: FakeTelnyx, telnyx: TelnyxProvider
) -> None:
    everything, campaign_only, bare = seed(session_factory, now, 3)
    fake_telnyx.attach("800", everything, campaign="cmp_a", emergency=True, cnam="ACME INC")
    fake_telnyx.attach("801", campaign_only, campaign="cmp_b")
    report = purge_expired(session_factory, now=now, provider=telnyx)
    assert (report.status, report.purged) == ("completed", 3)
    # Telnyx held nothing of them any more when each number's DELETE came.
    assert fake_telnyx.carried_at_delete == {"800": set(), "801": set(), "802": set()}
    assert fake_telnyx.campaigns == {}
    assert calls_about(fake_telnyx, "800", everything) == [
        "campaign.get",
        "campaign.delete",
        "campaign.get",  # Telnyx no longer shows the assignment
        "voice.get",
        "emergency.job",
        "voice.get",  # the carrier's own record shows emergency services off
        "voice.patch",
        "number.delete",
    ]
    assert calls_about(fake_telnyx, "802", bare) == [
        "campaign.get",  # Telnyx's documented 404: no assignment
        "voice.get",
        "number.delete",
    ]
    assert sorted(tombstones_by_phone(session_factory)) == [everything, campaign_only, bare]


def test_a_number_outside_the_us_is_not_asked_about_10dlc(
    session_factory: Factory, now: datetime, fake_telnyx: FakeTelnyx, telnyx: TelnyxProvider
) -> None:
    [number] = seed(session_factory, now, 1, country="GB")
    fake_telnyx.attach("800", number, emergency=True)
    report = purge_expired(session_factory, now=now, provider=telnyx)
    assert report.purged == 1
    assert calls_about(fake_telnyx, "800", number) == [
        "voice.get",
        "emergency.job",
        "voice.get",
        "number.delete",
    ]
    assert not any(path.startswith(CAMPAIGNS) for _, path, _ in fake_telnyx.log)


NOT_PROOF = {
    "a 404 in HTML": Reply(404, "<h1>Not Found</h1>", {"Content-Type": "text/html"}),
    "a JSON 404 not in Telnyx's error shape": Reply(404, '{"message": "not found"}'),
    "the record of another number": Reply(
        200, '{"phoneNumber": "+19995550000", "campaignId": "cmp_x"}'
    ),
    "a 200 in HTML": Reply(200, "<html>ok</html>", {"Content-Type": "text/html"}),
}


@pytest.mark.parametrize("answer", NOT_PROOF.values(), ids=NOT_PROOF.keys())
@pytest.mark.parametrize("kind", ["campaign_get", "campaign_delete", "voice_get"])
def test_an_answer_that_does_not_prove_a_step_releases_nothing(
    session_factory: Factory,
    now: datetime,
    fake_telnyx: FakeTelnyx,
    telnyx: TelnyxProvider,
    kind: str,
    answer: Reply,
) -> None:
    """Only Telnyx's documented not-found error proves that a number has no assignment; any
    other answer says the base URL or the key is wrong, as it does for the release."""
    numbers = seed(session_factory, now, 2)
    for i, number in enumerate(numbers):
        fake_telnyx.attach(f"80{i}", number, campaign="cmp_a")
    fake_telnyx.detach_script[kind] = [answer]
    report = purge_expired(session_factory, now=now, provider=telnyx)
    assert (report.status, report.purged) == ("provider_misconfigured", 0)
    assert fake_telnyx.paths == []  # no number was released at Telnyx
    assert tombstones_by_phone(session_factory) == {}
    assert set(numbers) <= set(numbers_by_phone(session_factory))


@pytest.mark.parametrize(
    ("status", "code", "title"),
    [
        (422, "10015", "Bad Request"),
        # Telnyx's 403 10035 "Resource locked" is about this number, not the key.
        (403, "10035", "Resource locked"),
    ],
)
def test_a_refused_step_keeps_that_number_with_the_steps_error_and_the_run_goes_on(
    session_factory: Factory,
    now: datetime,
    fake_telnyx: FakeTelnyx,
    telnyx: TelnyxProvider,
    status: int,
    code: str,
    title: str,
) -> None:
    refused, fine = seed(session_factory, now, 2)
    fake_telnyx.attach("800", refused, campaign="cmp_a")
    fake_telnyx.attach("801", fine, campaign="cmp_b")
    fake_telnyx.detach_script[f"campaign_delete {refused}"] = [
        telnyx_error(status, code, title, "The campaign is being vetted")
    ]
    report = purge_expired(session_factory, now=now, provider=telnyx)
    assert (report.status, report.purged, report.provider_refused) == ("completed", 1, 1)
    assert list(tombstones_by_phone(session_factory)) == [fine]
    kept = numbers_by_phone(session_factory)[refused]
    assert kept.purge_state == "purging"
    assert kept.provider_error_code == "detach_campaign_failed"
    assert kept.provider_code == code
    assert "10DLC campaign assignment" in (kept.provider_error_message or "")
    assert "being vetted" in (kept.provider_error_message or "")
    assert kept.provider_failed_permanently
    assert "800" not in fake_telnyx.carried_at_delete  # never released at Telnyx


def test_a_step_the_carrier_fails_transiently_is_retried_after_the_backoff(
    session_factory: Factory, now: datetime, fake_telnyx: FakeTelnyx, telnyx: TelnyxProvider
) -> None:
    [number] = seed(session_factory, now, 1)
    fake_telnyx.attach("800", number, cnam="ACME INC")
    fake_telnyx.detach_script["voice_patch 800"] = [
        telnyx_error(503, "90001", "Service unavailable")
    ]
    first = purge_expired(session_factory, now=now, provider=telnyx)
    assert (first.purged, first.provider_failed) == (0, 1)
    kept = numbers_by_phone(session_factory)[number]
    assert kept.provider_error_code == "detach_cnam_failed"
    assert not kept.provider_failed_permanently
    assert kept.provider_next_attempt_at == now + BACKOFF
    assert fake_telnyx.paths == []
    fake_telnyx.detach_script.clear()
    again = purge_expired(session_factory, now=now + BACKOFF, provider=telnyx)
    assert again.purged == 1
    assert fake_telnyx.carried_at_delete == {"800": set()}


def test_emergency_being_switched_off_keeps_the_number_until_the_carrier_shows_it_off(
    session_factory: Factory, now: datetime, fake_telnyx: FakeTelnyx, telnyx: TelnyxProvider
) -> None:
    [number] = seed(session_factory, now, 1)
    fake_telnyx.attach("800", number, emergency=True)
    fake_telnyx.emergency_pending_reads = 1  # the job is still deprovisioning at the next read
    first = purge_expired(session_factory, now=now, provider=telnyx)
    assert (first.purged, first.provider_failed) == (0, 1)
    kept = numbers_by_phone(session_factory)[number]
    assert kept.provider_error_code == "detach_emergency_pending"
    assert not kept.provider_failed_permanently
    assert fake_telnyx.paths == []
    [job] = fake_telnyx.jobs
    assert job in (kept.provider_error_message or "")
    again = purge_expired(session_factory, now=now + BACKOFF, provider=telnyx)
    assert again.purged == 1
    assert len(fake_telnyx.jobs) == 1  # the job already asked for is not asked for again
    assert fake_telnyx.carried_at_delete == {"800": set()}


def test_a_campaign_assignment_still_being_removed_keeps_the_number_until_telnyx_drops_it(
    session_factory: Factory, now: datetime, fake_telnyx: FakeTelnyx, telnyx: TelnyxProvider
) -> None:
    [number] = seed(session_factory, now, 1)
    fake_telnyx.attach("800", number, campaign="cmp_a")
    fake_telnyx.campaign_pending_reads = 1  # still PENDING_UNASSIGNMENT at the next read
    first = purge_expired(session_factory, now=now, provider=telnyx)
    assert (first.purged, first.provider_failed) == (0, 1)
    kept = numbers_by_phone(session_factory)[number]
    assert kept.provider_error_code == "detach_campaign_pending"
    assert not kept.provider_failed_permanently
    assert "cmp_a" in (kept.provider_error_message or "")
    assert fake_telnyx.paths == []
    again = purge_expired(session_factory, now=now + BACKOFF, provider=telnyx)
    assert again.purged == 1
    deletes = [c for c in calls_about(fake_telnyx, "800", number) if c == "campaign.delete"]
    assert deletes == ["campaign.delete"]  # not asked for again while pending
    assert fake_telnyx.carried_at_delete == {"800": set()}


def test_an_assignment_telnyx_failed_to_remove_needs_a_person(
    session_factory: Factory, now: datetime, fake_telnyx: FakeTelnyx, telnyx: TelnyxProvider
) -> None:
    [number] = seed(session_factory, now, 1)
    fake_telnyx.attach("800", number, campaign="cmp_a")
    fake_telnyx.campaigns[number] |= {
        "assignmentStatus": "FAILED_UNASSIGNMENT",
        "failureReasons": "T-Mobile rejected the deprovisioning",
    }
    report = purge_expired(session_factory, now=now, provider=telnyx)
    assert (report.status, report.purged) == ("completed", 0)
    kept = numbers_by_phone(session_factory)[number]
    assert kept.provider_error_code == "detach_campaign_failed"
    assert kept.provider_failed_permanently
    assert "T-Mobile rejected" in (kept.provider_error_message or "")
    assert fake_telnyx.paths == []


def test_voice_settings_without_an_emergency_state_keep_the_number_for_a_person(
    session_factory: Factory, now: datetime, fake_telnyx: FakeTelnyx, telnyx: TelnyxProvider
) -> None:
    [number] = seed(session_factory, now, 1)
    settings = {"id": "800", "record_type": "voice_settings", "cnam_listing": {}}
    fake_telnyx.detach_script["voice_get 800"] = [Reply(200, json.dumps({"data": settings}))]
    report = purge_expired(session_factory, now=now, provider=telnyx)
    assert (report.status, report.purged) == ("completed", 0)
    kept = numbers_by_phone(session_factory)[number]
    assert (kept.provider_error_code, kept.provider_failed_permanently) == (
        "detach_emergency_failed",
        True,
    )
    assert fake_telnyx.jobs == {}
    assert fake_telnyx.paths == []


def test_every_step_is_idempotent(
    session_factory: Factory, now: datetime, fake_telnyx: FakeTelnyx, telnyx: TelnyxProvider
) -> None:
    """A number whose release fails after its detach: the next attempt finds nothing left to
    remove (the 404 of the campaign, emergency and CNAM off) and asks for no change again."""
    [number] = seed(session_factory, now, 1)
    fake_telnyx.attach("800", number, campaign="cmp_a", emergency=True, cnam="ACME INC")
    fake_telnyx.script["800"] = [telnyx_error(503, "90001", "Service unavailable"), Reply()]
    purge_expired(session_factory, now=now, provider=telnyx)
    assert numbers_by_phone(session_factory)[number].provider_error_code == (
        "provider_release_failed"
    )
    done = purge_expired(session_factory, now=now + BACKOFF, provider=telnyx)
    assert done.purged == 1
    assert calls_about(fake_telnyx, "800", number) == [
        *["campaign.get", "campaign.delete", "campaign.get"],
        *["voice.get", "emergency.job", "voice.get", "voice.patch"],
        "number.delete",
        *["campaign.get", "voice.get"],
        "number.delete",
    ]
