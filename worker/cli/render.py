"""What the command line prints: JSON, the status and holds tables, durations for people,
event lines, progress bars. Stored text is escaped before it reaches a terminal."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import click


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=False))


_CAMEL_HUMP = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def snake(body: dict[str, Any]) -> dict[str, Any]:
    """A library body's camelCase keys in the CLI's own style, snake_case (`phoneNumber` ->
    `phone_number`). Only API bodies (`list`) keep the API's camelCase."""
    return {_CAMEL_HUMP.sub("_", key).lower(): value for key, value in body.items()}


@contextmanager
def progress(total: int | Callable[[], int], label: str) -> Iterator[Any]:
    """A progress bar on stderr while it is a terminal; in a pipe or a log, none at all.

    `total` may be a function, called only when there is a bar. Yields the callable to
    advance it by a count (one that does nothing without a bar).
    """
    if not sys.stderr.isatty():
        yield lambda _count: None
        return
    length = total() if callable(total) else total
    with click.progressbar(length=length, label=label, file=sys.stderr) as bar:
        yield bar.update


_SECONDS = re.compile(r"\d+(?:\.\d+)?")


_DURATION = re.compile(r"(?:\d+(?:\.\d+)?[dhms])+")


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([dhms])")


_UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(text: str) -> timedelta:
    """`90` (seconds), `90s`, `30m`, `2h`, `1d`, or a sum such as `1h30m`, as a timedelta."""
    value = text.strip().lower()
    if _SECONDS.fullmatch(value):
        seconds = float(value)
    elif _DURATION.fullmatch(value):
        seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(value))
    else:
        raise ValueError(f"{text!r} is not a duration: use e.g. 90s, 30m, 2h, 1d or 1h30m.")
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError(f"{text!r} is too long a duration.") from None


def format_duration(seconds: float) -> str:
    """A duration for people: its two largest units, e.g. `1d 2h`, `12m 5s`, `40s`."""
    rest = round(seconds)
    parts = []
    for unit, size in _UNIT_SECONDS.items():
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count}{unit}")
    return " ".join(parts[:2]) or "0s"


def when(iso: str | None) -> str:
    if iso is None:
        return "-"
    return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M:%SZ")


def _set_by(control: dict[str, Any]) -> str:
    """`by <who> since <when>[: <reason>]` of a stored control (a pause, a pace)."""
    text = f"by {control['by']} since {when(control['at'])}"
    return text + (f": {control['reason']}" if control["reason"] else "")


def _facts(report: dict[str, Any]) -> list[tuple[str, str]]:
    """The status table's label/value lines."""
    oldest = "-"
    if report["overdue"]:
        oldest = (
            f"{format_duration(report['oldest_overdue_seconds'])} past its deadline"
            f" (released {when(report['oldest_overdue_released_at'])})"
        )
    pause, ceiling = report["pause"], report.get("pace")
    person, carrier = report["upstream_refused_person"], report["upstream_refused_carrier"]
    paused = "yes, PURGE_PAUSED is set" if report["paused"] else "no"
    facts = [
        ("Paused", f"yes, {_set_by(pause)}" if pause else paused),
        ("Overdue (purgeable now)", _overdue(report)),
        ("Oldest overdue", oldest),
        ("On hold", f"{report['held']:,}"),
        ("Releasable", f"{report['releasable']:,}"),
        (
            "Upstream failed",
            f"{report['upstream_failed']:,} ({report['upstream_permanent']:,} need a person)",
        ),
        (
            "Refused by the carrier",
            f"{person + carrier:,} ({person:,} waiting on a person, {carrier:,} on the carrier)",
        ),
        ("Claimed, not yet called", f"{report['upstream_claimed']:,}"),
    ]
    if ceiling:  # shown only while set: most stores never have one
        facts.insert(
            1, ("Pace", f"at most {ceiling['rows_per_second']:,g} rows/s, set {_set_by(ceiling)}")
        )
    if "purge_last_success_at" in report:
        facts.append(("Last successful purge", when(report["purge_last_success_at"])))
    if report.get("publication") is not None:
        facts.append(("Last published", _published(report["publication"])))
    if "lagging" in report:
        verdict = "LAGGING" if report["lagging"] else "ok"
        if report["lagging"] and report["paused"]:
            verdict = "LAGGING (paused)"
        facts.append(("Lag limit", f"{format_duration(report['max_lag_seconds'])}: {verdict}"))
    return facts


def _overdue(report: dict[str, Any]) -> str:
    """What a run can take now; what waits on the provider or a person beside it."""
    waiting = report.get("overdue_waiting") or 0
    text = f"{report['overdue'] - waiting:,}"
    return text + (f" (+{waiting:,} waiting on the provider or a person)" if waiting else "")


def _run_note(run: dict[str, Any]) -> str:
    """A running run's rate and estimate; else the reason it ended as it did."""
    if run["status"] == "running" and run.get("rows_per_second"):
        eta = run.get("eta_seconds")
        left = f", ~{format_duration(eta)} left" if eta is not None else ""
        return f"{run['rows_per_second']:,.0f} rows/s{left}"
    return str(run["reason"] or "")


def status_table(report: dict[str, Any]) -> str:
    facts = _facts(report)
    lines = [f"Retention status at {when(report['now'])}", ""]
    lines += [f"  {label:<25}{printable(value)}" for label, value in facts]
    lines += ["", "Last purge runs"]
    if not report["last_runs"]:
        lines.append("  (none recorded yet)")
    runs = [
        (
            when(run["started_at"]),
            run["status"],
            f"{run['purged']:,}",
            f"{run['batches']:,}",
            "-" if run["remaining"] is None else f"{run['remaining']:,}",
            "-" if run["seconds"] is None else f"{run['seconds']:.1f}s",
            _run_note(run),
        )
        for run in report["last_runs"]
    ]
    if runs:
        lines += table(
            ("STARTED", "STATUS", "PURGED", "BATCHES", "REMAINING", "TOOK", "NOTE"),
            runs,
            numeric={2, 3, 4, 5},
        )
    dry = report.get("last_dry_run")
    if dry:
        lines.append(
            f"  Last dry run {when(dry['started_at'])}: {dry['remaining'] or 0:,} would be purged"
        )
    if report["upstream_stuck"]:
        lines += ["", "Kept because the provider did not release them (docs/runbook.md)"]
        stuck = [
            (
                number["phone_number"],
                _stuck_state(number),
                number["provider_code"] or "-",
                str(number["attempts"]),
                when(number["next_attempt_at"]),
                (number["message"] or "")[:60],
            )
            for number in report["upstream_stuck"]
        ]
        lines += table(
            ("NUMBER", "STATE", "PROVIDER CODE", "ATTEMPTS", "NEXT ATTEMPT", "ERROR"),
            stuck,
            numeric={3},
        )
    return "\n".join(lines)


def _stuck_state(number: dict[str, Any]) -> str:
    """A number kept upstream: refused by the carrier (waiting on whom), or failed."""
    if number["refused"]:
        return "refused, waits on " + ("a person" if number["waits_on"] == "person" else "carrier")
    return "permanent" if number["permanent"] else "retrying"


def _published(publication: dict[str, Any]) -> str:
    if not publication["reachable"]:
        return "unknown (Redis unreachable)"
    if publication["last_success_at"] is None:
        text = "never"
    else:
        text = (
            f"{when(publication['last_success_at'])}"
            f" ({format_duration(max(publication['age_seconds'], 0))} ago)"
        )
    if publication["failing"]:
        text += (
            f"; the latest attempt FAILED at {when(publication['last_failure_at'])}"
            f" ({publication['last_failure']})"
        )
    return text


def holds_table(held: list[dict[str, Any]]) -> str:
    """The numbers on hold, one line each (`holds`)."""
    if not held:
        return "No number is on hold."
    rows = [
        (
            number["phone_number"],
            number["account_id"],
            number["billing_status"] + (" (overdue)" if number["overdue"] else ""),
            when(number["at"]),
            number["by"] or "-",
            (number["reason"] or "")[:60],
        )
        for number in held
    ]
    return "\n".join(
        table(("NUMBER", "ACCOUNT", "STATE", "SINCE", "BY", "REASON"), rows, numeric=set())
    )


def printable(text: str) -> str:
    """`text` with every control or format character escaped (ESC as \\x1b): stored text
    (a reason, a carrier's message) never runs as a terminal escape sequence when shown."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def table(header: Sequence[str], rows: Sequence[Sequence[str]], *, numeric: set[int]) -> list[str]:
    """Aligned columns, numbers to the right; stored text escaped."""
    rows = [[printable(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    return [
        "  "
        + "  ".join(
            cell.rjust(width) if i in numeric else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in (header, *rows)
    ]


def event_line(stream_id: str, fields: dict[str, str], *, as_json: bool) -> str:
    if as_json:
        return json.dumps({"stream_id": stream_id, **fields})
    deadline = f"  deadline {fields['deadline']}" if "deadline" in fields else ""
    return (
        f"{stream_id}  {fields.get('occurred_at', '-')}  {fields.get('kind', '-'):<16}"
        f"{fields.get('phone_number', '-')}  {fields.get('account_id', '-')}{deadline}"
    )
