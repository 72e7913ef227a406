"""Commands on the store's state, for operators: `list`, `status`, `holds`, `hold`, `unhold`,
`pause`, `resume`, `pace`, `retry-upstream`, `resolve-upstream`, `report disconnects`,
`api-key`. None of them needs the Celery app."""

from __future__ import annotations

import csv
import sys
from datetime import datetime, timedelta
from typing import Any

import click
import redis

from shared.api_keys import create_api_key, list_api_keys, revoke_api_key
from shared.controls import clear_pace, pause_purge, resume_purge, set_pace
from shared.holds import hold_number, list_holds, unhold_number
from shared.ledger import disconnections, disconnects_report, parse_month
from shared.listing import released_numbers_body
from shared.purge.operator import permanent_failures, reset_upstream, resolve_by_operator
from shared.releasable.record import reconciliation_status
from shared.settings import MAX_COUNT, Settings
from shared.status import store_status
from worker.cli.context import CliContext
from worker.cli.errors import LAG_EXIT_CODE, PAUSED_LAG_EXIT_CODE
from worker.cli.options import Finite, by_option, now_option, parse_max_lag
from worker.cli.render import (
    format_duration,
    holds_table,
    print_json,
    printable,
    snake,
    status_table,
)
from worker.connections import make_redis


@click.command("list")
@click.option("--account", "account_id", required=True, help="The account's id.")
@now_option
@click.pass_obj
def list_released(cli: CliContext, account_id: str, now: datetime | None) -> None:
    """Print GET /numbers/released's 200 body for an account."""
    with cli.sessions(read_only=True)() as session:
        print_json(released_numbers_body(session, account_id=account_id, now=now))


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option(
    "--max-lag",
    callback=parse_max_lag,
    metavar="DURATION",
    help=(
        f"Exit {LAG_EXIT_CODE} when the oldest overdue number is further past its deadline than"
        " this: 90s, 30m, 2h, 1d, 1h30m (a plain number is seconds)."
    ),
)
@click.option(
    "--runs", default=5, show_default=True, type=click.IntRange(min=0), help="Purge runs to show."
)
@now_option
@click.pass_obj
def status(
    cli: CliContext, as_json: bool, max_lag: timedelta | None, runs: int, now: datetime | None
) -> None:
    """Backlog, oldest overdue number, holds and the last purge runs; alerts on lag."""
    with cli.sessions(read_only=True)() as session:
        report = store_status(
            session,
            now=now,
            runs=runs,
            deploy_paused=cli.settings.purge_paused,
            provider=cli.settings.provider,
        )
    report["publication"] = _publication(cli.settings, now)
    if max_lag is not None:
        limit = max_lag.total_seconds()
        report |= {"max_lag_seconds": limit, "lagging": report["oldest_overdue_seconds"] > limit}
    if as_json:
        print_json(report)
    else:
        click.echo(status_table(report))
    if report.get("lagging"):
        behind = (
            f"the oldest overdue number is "
            f"{format_duration(report['oldest_overdue_seconds'])} past its deadline, "
            f"over the {format_duration(report['max_lag_seconds'])} limit (--max-lag)"
        )
        if report["paused"]:
            pause = report["pause"]
            who = f"by {pause['by']}" if pause else "by PURGE_PAUSED"
            why = f": {pause['reason']}" if pause and pause["reason"] else ""
            click.echo(printable(f"purging is paused ({who}{why}): {behind}."), err=True)
            sys.exit(PAUSED_LAG_EXIT_CODE)
        click.echo(f"purging lags: {behind}.", err=True)
        sys.exit(LAG_EXIT_CODE)


def _publication(settings: Settings, now: datetime | None) -> dict[str, Any] | None:
    """The releasable set's publication as Redis records it; None when no Redis is configured."""
    url = settings.resolved_redis_url()
    if not url:
        return None
    client = make_redis(url, timeout=5)
    try:
        return {"reachable": True, **reconciliation_status(client, now=now)}
    except redis.RedisError:
        # `status` is about the store first: an unreachable Redis is shown, not fatal.
        return {"reachable": False}
    finally:
        client.close()


@click.command()
@click.argument("phone_number", metavar="PHONE")
@click.option("--reason", help="Why (a dispute, a legal hold); shown by `holds`.")
@by_option("Who holds it.")
@click.pass_obj
def hold(cli: CliContext, phone_number: str, reason: str | None, by: str) -> None:
    """Put a number on hold: the purge never removes it until `unhold`."""
    with cli.sessions().begin() as session:
        print_json(snake(hold_number(session, phone_number=phone_number, by=by, reason=reason)))


@click.command()
@click.argument("phone_number", metavar="PHONE")
@click.pass_obj
def unhold(cli: CliContext, phone_number: str) -> None:
    """Lift a number's hold: once past its deadline, the next purge removes it."""
    with cli.sessions().begin() as session:
        print_json(snake(unhold_number(session, phone_number=phone_number)))


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@now_option
@click.pass_obj
def holds(cli: CliContext, as_json: bool, now: datetime | None) -> None:
    """List the numbers on hold: who held them, when and why, oldest hold first."""
    with cli.sessions(read_only=True)() as session:
        held = list_holds(session, now=now)
    if as_json:
        print_json(held)
    else:
        click.echo(holds_table(held))


@click.command()
@click.option("--reason", help="Why; shown by `status` and in each paused run's record.")
@by_option("Who pauses.")
@click.pass_obj
def pause(cli: CliContext, reason: str | None, by: str) -> None:
    """Pause every purge at its next batch boundary, on every worker, until `resume`."""
    with cli.sessions().begin() as session:
        print_json(pause_purge(session, by=by, reason=reason))


@click.command()
@click.pass_obj
def resume(cli: CliContext) -> None:
    """Lift a pause: the next purge run (scheduled or by hand) purges again."""
    with cli.sessions().begin() as session:
        print_json(resume_purge(session))


@click.command()
@click.option(
    "--rows-per-second",
    type=Finite(min=0, min_open=True, max=MAX_COUNT),
    help="Most rows purged per second, by every run, from its next batch.",
)
@click.option("--off", is_flag=True, help="Lift the stored ceiling.")
@click.option("--reason", help="Why; shown by `status`.")
@by_option("Who sets it.")
@click.pass_obj
def pace(
    cli: CliContext, rows_per_second: float | None, off: bool, reason: str | None, by: str
) -> None:
    """Cap the purge's rows per second on every worker, live, until `pace --off`."""
    if off == (rows_per_second is not None):
        raise click.UsageError("Give either --rows-per-second N or --off.")
    with cli.sessions().begin() as session:
        if rows_per_second is None:
            print_json(clear_pace(session))
        else:
            print_json(set_pace(session, rows_per_second=rows_per_second, by=by, reason=reason))


@click.command("retry-upstream")
@click.argument("phone_numbers", metavar="[PHONE]...", nargs=-1)
@click.option("--all-permanent", is_flag=True, help="Every number the provider refused for good.")
@click.option(
    "--provider-code",
    metavar="CODE",
    help="With --all-permanent: only those with this provider code (e.g. 10035, locked by Telnyx).",
)
@click.pass_obj
def retry_upstream(
    cli: CliContext, phone_numbers: tuple[str, ...], all_permanent: bool, provider_code: str | None
) -> None:
    """Clear upstream failures: the next purge calls the provider for these numbers again."""
    if bool(phone_numbers) == all_permanent:
        raise click.UsageError("Give PHONE numbers or --all-permanent (one of the two).")
    if provider_code is not None and not all_permanent:
        raise click.UsageError("--provider-code filters --all-permanent.")
    with cli.sessions().begin() as session:
        if len(phone_numbers) == 1:
            print_json(snake(reset_upstream(session, phone_number=phone_numbers[0])))
            return
        if all_permanent:
            phone_numbers = tuple(permanent_failures(session, provider_code=provider_code))
        # One transaction: a number that cannot be retried leaves all of them as they were.
        for number in phone_numbers:
            reset_upstream(session, phone_number=number)
        print_json(
            {"retry": "next purge run", "count": len(phone_numbers), "numbers": phone_numbers}
        )


def _carrier() -> str | None:
    """The carrier a number settled by hand was held at: PROVIDER, unless that is `none`."""
    provider = click.get_current_context().find_object(CliContext)
    name = provider.settings.provider if provider is not None else "none"
    return None if name == "none" else name


@click.command("resolve-upstream")
@click.argument("phone_number", metavar="PHONE")
@click.option("--reason", required=True, help="What was done upstream; kept in the tombstone.")
@by_option("Who settled it.")
@click.option(
    "--carrier",
    default=_carrier,
    show_default="PROVIDER, else unknown",
    help="The carrier that held the number (its ledger entry).",
)
@click.option(
    "--ported-out",
    is_flag=True,
    help="The number left by a port-out: not a permanent disconnection, never reported.",
)
@click.pass_obj
def resolve_upstream(
    cli: CliContext,
    *,
    phone_number: str,
    reason: str,
    by: str,
    carrier: str | None,
    ported_out: bool,
) -> None:
    """Purge a number kept upstream that a person settled at the provider by hand."""
    with cli.sessions().begin() as session:
        print_json(
            snake(
                resolve_by_operator(
                    session,
                    phone_number=phone_number,
                    reason=reason,
                    by=by,
                    carrier=carrier,
                    ported_out=ported_out,
                )
            )
        )


@click.group()
def report() -> None:
    """Reports from the store's ledger of disconnections."""


@report.command()
@click.option("--month", required=True, metavar="YYYY-MM", help="The calendar month (UTC).")
@click.option(
    "--format",
    "output",
    type=click.Choice(["csv", "json"]),
    default="csv",
    show_default=True,
    help="csv: the RND's two columns; json: with the count and what was left out.",
)
@click.pass_obj
def disconnects(cli: CliContext, month: str, output: str) -> None:
    """A month's permanent disconnections, as filed with the FCC's Reassigned Numbers Database.

    Each US geographic telephone number (10 digits) with the date of its most recent permanent
    disconnection in the month; numbers ported out, toll-free numbers and numbers outside the
    US and its territories are left out (the json format counts them).
    """
    period = parse_month(month)  # a bad month is refused before the store is opened
    with cli.sessions(read_only=True)() as session:
        if output == "json":
            print_json(disconnects_report(session, period))
            return
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["telephone_number", "disconnect_date"])
        for number, when in disconnections(session, period):
            writer.writerow([number, when.isoformat()])


@click.group("api-key")
def api_key() -> None:
    """Keys of the HTTP API: stored hashed, each shown once when created."""


@api_key.command("create")
@click.option("--account", "account_id", required=True, help="The account the key acts for.")
@click.pass_obj
def api_key_create(cli: CliContext, account_id: str) -> None:
    """Create a key and print it once: {"account_id", "key"}."""
    with cli.sessions().begin() as session:
        print_json(create_api_key(session, account_id=account_id))


@api_key.command("revoke")
@click.argument("key")
@click.pass_obj
def api_key_revoke(cli: CliContext, key: str) -> None:
    """Revoke a key (the key, or its id as `api-key list` shows it)."""
    with cli.sessions().begin() as session:
        print_json(revoke_api_key(session, key=key))


@api_key.command("list")
@click.option("--account", "account_id", help="Only this account's keys.")
@click.pass_obj
def api_key_list(cli: CliContext, account_id: str | None) -> None:
    """The keys' ids, accounts and dates (never a key)."""
    with cli.sessions(read_only=True)() as session:
        print_json(list_api_keys(session, account_id=account_id))
