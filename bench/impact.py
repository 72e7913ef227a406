"""What a backlog purge costs the API: list and write latency, idle and during the purge.

    python bench/impact.py [--rows 1000000] [--idle-seconds 15] [--repeat 1]
    python bench/impact.py --lanes telnyx,twilio [--rows 300000]

With `--lanes`, the overdue numbers are split between those carriers (alternately, by id) and
each window runs one purge per carrier's lane at once, in two threads of the child (as two
workers would), each with its own lock, budget and pace, against the tests' fake Telnyx and
Twilio servers on loopback (the numbers carry no provider id: no per-number call is made, the
lanes go through the two-phase claim / settle transactions).

On a fresh copy of the purge benchmark's store (about a third of it overdue), two client
threads work as the API service would, each call with a session from the pool:

  list   `released_numbers_body` for accounts with listed numbers, in turn;
  write  `release_number` then `repurchase_number` of active numbers of paid accounts, in turn
         (each its own transaction).

They run idle for `--idle-seconds`, then while `purge_expired` (default settings, in a child
process, so it has its own interpreter as the worker does) purges the backlog, then idle again.
The purge runs in windows of `--window` seconds (runs bounded by `max_seconds`, as a
scheduled run is by PURGE_MAX_SECONDS) with idle windows as long in between: on a shared
machine whose load drifts, the idle and the purge samples then meet the same background. A
call belongs to the window it started in. The closing line:

  impact: list_p99_ratio=<purge p99 / idle p99> write_p99_ratio=<...> purge_rows_s=<>
          worst_batch_ms=<> worst_transaction_ms=<>

`worst_transaction_ms` is what the 250 ms lock promise is about: the longest single
transaction of every run. Single-phase, a batch is one transaction (the same figure as
`worst_batch_ms`); in a two-phase lane (`--lanes`) a batch is several (the claim, the settle,
the progress record; the marks of carrier calls, none here), and its `worst_batch_ms` spans
them all and what happens between them.
"""

from __future__ import annotations

import argparse
import bisect
import os
import sys
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import (
    NOW,
    add_database_arguments,
    add_store_arguments,
    child_result,
    drop,
    fresh_copy,
    in_child,
    machine,
    median,
    percentile,
    purge_settings,
    scratch_name,
    store_engine,
    store_template,
)
from sqlalchemy import Engine, case, func, select, update
from sqlalchemy.orm import Session, sessionmaker
from structlog.testing import capture_logs

from shared import release_number, released_numbers_body, repurchase_number
from shared.db import make_session_factory
from shared.models import Account, PhoneNumber
from shared.purge import purge_expired
from shared.purge.config import PurgeConfig
from shared.purge.probe import interference_on
from shared.retention import repurchasable_numbers
from shared.settings import get_settings
from worker.connections import engine as worker_engine

LIST_ACCOUNTS = 50
WRITE_NUMBERS = 50


@dataclass
class Client:
    """One API client thread: calls `call` in a loop, keeping (start, ms) per call."""

    name: str
    call: Callable[[int], None]
    samples: list[tuple[float, float]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        turn = 0
        while not self.stop.is_set():
            started = time.time()
            clock = time.perf_counter()
            self.call(turn)
            self.samples.append((started, (time.perf_counter() - clock) * 1000))
            turn += 1

    def between(self, start: float, end: float) -> list[float]:
        return [ms for at, ms in self.samples if start <= at < end]


def clients(engine: Engine) -> list[Client]:
    factory = make_session_factory(engine)
    with factory() as session:
        listed = func.count().label("listed")
        accounts = list(
            session.scalars(
                select(PhoneNumber.account_id)
                .where(repurchasable_numbers(NOW))
                .group_by(PhoneNumber.account_id)
                .having(listed >= 5)
                .order_by(PhoneNumber.account_id)
                .limit(LIST_ACCOUNTS)
            )
        )
        numbers = session.execute(
            select(PhoneNumber.account_id, PhoneNumber.phone_number)
            .join(Account, Account.id == PhoneNumber.account_id)
            .where(PhoneNumber.billing_status == "active", Account.plan == "paid")
            .order_by(PhoneNumber.id)
            .limit(WRITE_NUMBERS)
        ).all()
    if not accounts or not numbers:
        raise SystemExit("the store has no listed numbers or no active numbers of paid accounts")

    def list_call(turn: int) -> None:
        with factory() as session:
            released_numbers_body(session, account_id=accounts[turn % len(accounts)], now=NOW)

    def write_call(turn: int) -> None:
        account_id, number = numbers[(turn // 2) % len(numbers)]
        change = release_number if turn % 2 == 0 else repurchase_number
        with factory.begin() as session:
            change(session, account_id=account_id, phone_number=number, now=NOW)

    return [Client("list", list_call), Client("write", write_call)]


def _lane_runs(
    factory: sessionmaker[Session], window: float, lanes: list[str], carriers: dict[str, Any]
) -> list[Any]:
    """One window: a run per lane, at once (one thread each), or the whole store's run."""
    if not lanes:
        return [
            purge_expired(
                factory,
                config=PurgeConfig.from_settings(get_settings()),
                now=NOW,
                max_seconds=window,
            )
        ]
    found: list[Any] = []

    def lane_run(lane: str) -> None:
        found.append(
            purge_expired(
                factory,
                config=PurgeConfig.from_settings(get_settings()),
                now=NOW,
                max_seconds=window,
                carrier=lane,
                carriers=carriers,
            )
        )

    threads = [threading.Thread(target=lane_run, args=(lane,)) for lane in lanes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return found


def _fake_carriers(stack: ExitStack) -> dict[str, Any]:
    """The tests' fake Telnyx and Twilio servers, running in this process, and adapters."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from shared.carriers.telnyx import TelnyxProvider
    from shared.carriers.twilio import TwilioProvider
    from tests import fake_twilio
    from tests.fake_telnyx import API_KEY, FakeTelnyx

    telnyx = stack.enter_context(FakeTelnyx().running())
    twilio = stack.enter_context(fake_twilio.FakeTwilio().running())
    return {
        "telnyx": TelnyxProvider(base_url=telnyx.url, api_key=API_KEY),
        "twilio": TwilioProvider(
            base_url=twilio.url,
            account_sid=fake_twilio.ACCOUNT_SID,
            auth_token=fake_twilio.AUTH_TOKEN,
        ),
    }


def _stamped(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """The wall-clock time an event was logged: a batch's span ends there."""
    event["at"] = time.time()
    return event


def _probed(engine: Engine) -> dict[str, Any]:
    """What the purge's probe found (shared/purge/probe.py): its reads' p50 / p99 in a batch
    and between batches, the share a batch pushed past 1.5 times, the duty it allowed."""
    found = interference_on(engine)
    inside, outside = list(found.inside), list(found.outside)
    return {
        "in": [len(inside), median(inside), percentile(inside, 0.99)] if inside else [],
        "out": [len(outside), median(outside), percentile(outside, 0.99)] if outside else [],
        "slowed": found.slowed(),
        "duty": round(found.duty(), 4),
    }


def child(url: str, window: float, lanes: list[str]) -> None:
    # The engine the worker's tasks purge on: its sessions carry the worker's name.
    engine = worker_engine(url)
    factory: sessionmaker[Session] = make_session_factory(engine)
    windows, reports = [], []
    # The batch events, kept rather than printed: their times are part of the result.
    with ExitStack() as stack, capture_logs(processors=[_stamped]) as logs:
        carriers = _fake_carriers(stack) if lanes else {}
        done = False
        while not done:
            started = time.time()
            runs = _lane_runs(factory, window, lanes, carriers)
            reports.extend(runs)
            windows.append((started, time.time()))
            for report in runs:
                if report.status not in ("completed", "limit_reached"):
                    raise SystemExit(f"purge ended {report.status}: {report.reason}")
            done = all(report.status == "completed" for report in runs)
            time.sleep(window)
    engine.dispose()
    events = [e for e in logs if e["event"] == "purge.batch"]
    batches = [(e["batch"], e["size"], e["ms"]) for e in events]
    slowest = sorted(batches, key=lambda b: -b[2])[:5]
    # Each batch's longest transaction: the batch itself single-phase; in a two-phase lane the
    # longest of its claim, marks, settle and progress (the carrier calls are between them).
    transactions = [e["transaction_ms"] for e in events]
    sizes = [r.batch_sizes for r in reports if r.batch_sizes]
    child_result(
        windows=windows,
        rows=sum(r.purged for r in reports),
        seconds=sum(end - start for start, end in windows),
        runs=len(reports),
        worst_batch_ms=max(r.worst_batch_ms for r in reports),
        worst_transaction_ms=max(r.worst_transaction_ms for r in reports),
        transaction_ms_p99=percentile(transactions, 0.99),
        transactions_over_250_ms=sum(1 for ms in transactions if ms > 250),
        batches=len(batches),
        batch_sizes={"min": min(b["min"] for b in sizes), "max": max(b["max"] for b in sizes)},
        paced_seconds=round(sum(r.paced_seconds for r in reports), 3),
        batch_ms_p50=median([ms for _, _, ms in batches]),
        batch_ms_p99=percentile([ms for _, _, ms in batches], 0.99),
        slowest_batches=slowest,
        batch_spans=[(e["at"] - e["ms"] / 1000, e["at"]) for e in events],
        probe=_probed(engine),
    )


def split_lanes(url: str, lanes: list[str]) -> None:
    """Give the store's numbers the carriers of `lanes`, alternately by id, and no provider
    id (no per-number call: what is measured is the lanes' claim and settle transactions)."""
    engine = store_engine(url)
    with engine.begin() as connection:
        connection.execute(
            update(PhoneNumber).values(
                provider_number_id=None,
                carrier=case(
                    *((PhoneNumber.id % len(lanes) == i, lane) for i, lane in enumerate(lanes))
                ),
            )
        )
    engine.dispose()


def _within(spans: list[tuple[float, float]]) -> Callable[[float], bool]:
    """Whether an instant lies in any of `spans` (merged, then found by bisection)."""
    merged: list[list[float]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    starts = [start for start, _ in merged]

    def inside(at: float) -> bool:
        i = bisect.bisect_right(starts, at) - 1
        return i >= 0 and at < merged[i][1]

    return inside


def one_round(url: str, idle_seconds: float, window: float, lanes: list[str]) -> dict[str, Any]:
    if lanes:
        split_lanes(url, lanes)
    engine = store_engine(url)
    threads_of = clients(engine)
    threads = [threading.Thread(target=c.run, name=c.name) for c in threads_of]
    for thread in threads:
        thread.start()
    try:
        began = time.time()
        time.sleep(idle_seconds)
        purge = in_child(__file__, [url, str(window), ",".join(lanes)])
        time.sleep(idle_seconds)
        finished = time.time()
    finally:
        for c in threads_of:
            c.stop.set()
        for thread in threads:
            thread.join()
        engine.dispose()
    result: dict[str, Any] = {"purge": purge}
    windows = purge["windows"]
    # Idle: before the first purge window, between two, and after the last.
    gaps = [began, *(edge for window in windows for edge in window), finished]
    # The purge windows' calls that started while a batch was in flight, and the others (the
    # runs' rests, their starts and ends): which of them the purge slows.
    in_batch, in_window = _within(purge["batch_spans"]), _within(windows)
    for c in threads_of:
        busy: list[float] = []
        during: list[float] = []
        outside: list[float] = []
        for at, ms in c.samples:
            if in_window(at):
                busy.append(ms)
                (during if in_batch(at) else outside).append(ms)
        idle = [
            ms
            for start, end in zip(gaps[::2], gaps[1::2], strict=True)
            for ms in c.between(start, end)
        ]
        result[c.name] = {
            "idle_calls": len(idle),
            "busy_calls": len(busy),
            "idle_p50": median(idle),
            "idle_p99": percentile(idle, 0.99),
            "busy_p50": median(busy),
            "busy_p99": percentile(busy, 0.99),
        }
        result[c.name]["p99_ratio"] = result[c.name]["busy_p99"] / result[c.name]["idle_p99"]
        result[c.name]["in_batch_share"] = len(during) / max(len(busy), 1)
        result[c.name]["in_batch_p99"] = percentile(during, 0.99) if during else 0.0
        result[c.name]["out_batch_p99"] = percentile(outside, 0.99) if outside else 0.0
    return result


def main(argv: list[str]) -> None:
    if argv[:1] == ["--child"]:
        child(argv[1], float(argv[2]), [lane for lane in argv[3].split(",") if lane])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_store_arguments(parser, rows=1_000_000)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--window", type=float, default=3.0, help="seconds per purge window")
    parser.add_argument("--repeat", type=int, default=1, help="rounds (default %(default)s)")
    parser.add_argument(
        "--lanes",
        default="",
        help="carriers whose lanes purge at once, e.g. telnyx,twilio (default: one run)",
    )
    add_database_arguments(parser)
    args = parser.parse_args(argv)
    print(machine(args.url))
    print(
        f"# purge settings: {purge_settings()} "
        f"max_rows_per_second={get_settings().purge_max_rows_per_second} "
        f"PURGE_* in env: {sorted(k for k in os.environ if k.startswith('PURGE_'))}"
    )
    source = store_template(args)
    copy = scratch_name(args.url, "impact_copy")
    rounds = []
    try:
        for round_ in range(args.repeat):
            url = fresh_copy(args.url, source, copy)
            lanes = [lane for lane in args.lanes.split(",") if lane]
            result = one_round(url, args.idle_seconds, args.window, lanes)
            rounds.append(result)
            purge = result["purge"]
            seconds = purge["seconds"]
            print(
                f"# round {round_ + 1} load1={os.getloadavg()[0]:.2f} purge: runs={purge['runs']} "
                f"rows={purge['rows']} seconds={seconds:.2f} "
                f"rows_per_s={purge['rows'] / seconds:.0f} batches={purge['batches']} "
                f"sizes={purge['batch_sizes']} worst_batch_ms={purge['worst_batch_ms']} "
                f"worst_transaction_ms={purge['worst_transaction_ms']} "
                f"transaction_ms_p99={purge['transaction_ms_p99']} "
                f"batches_with_a_transaction_over_250_ms={purge['transactions_over_250_ms']} "
                f"paced_seconds={purge['paced_seconds']} "
                f"batch_ms_p50={purge['batch_ms_p50']} batch_ms_p99={purge['batch_ms_p99']} "
                f"slowest(batch,size,ms)={purge['slowest_batches']} probe={purge['probe']}",
                flush=True,
            )
            for name in ("list", "write"):
                r = result[name]
                print(
                    f"#   {name}: idle p50={r['idle_p50']:.3f} p99={r['idle_p99']:.3f} "
                    f"({r['idle_calls']} calls) | purge p50={r['busy_p50']:.3f} "
                    f"p99={r['busy_p99']:.3f} ({r['busy_calls']} calls) "
                    f"p99_ratio={r['p99_ratio']:.2f} | in a batch: {r['in_batch_share']:.0%} "
                    f"of the purge's calls, p99={r['in_batch_p99']:.3f}; between batches: "
                    f"p99={r['out_batch_p99']:.3f}",
                    flush=True,
                )
    finally:
        drop(args.url, copy)
    rate = median([r["purge"]["rows"] / r["purge"]["seconds"] for r in rounds])
    print(
        f"impact: list_p99_ratio={median([r['list']['p99_ratio'] for r in rounds]):.2f} "
        f"write_p99_ratio={median([r['write']['p99_ratio'] for r in rounds]):.2f} "
        f"purge_rows_s={rate:.0f} "
        f"worst_batch_ms={max(r['purge']['worst_batch_ms'] for r in rounds):.1f} "
        f"worst_transaction_ms={max(r['purge']['worst_transaction_ms'] for r in rounds):.1f}"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
