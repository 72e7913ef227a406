"""The released-numbers list through HTTP: the API against a hand-written floor, and during a
backlog purge.

    python bench/api.py [--rows 1000000] [--calls 1000] [--repeat 3] [--idle-seconds 10]
    python bench/api.py --smoke     # that it runs (tests/test_bench.py): a tiny store, few calls

On a fresh copy of the purge benchmark's store, two servers run side by side, each one uvicorn
process (same options: httptools, uvloop, one worker), each serving GET /numbers/released:

- project: `shared.api.create_app` as `numbers-retention serve` builds it: the key store's
  bearer authentication, the request id, the JSON log line per request (to /dev/null), the
  library's `released_numbers_body` on the engine's pool;
- floor: a bare Starlette route, no authentication and no log: the account from a header,
  `bench/list.py`'s hand-written query on a plain psycopg connection from a small pool
  (autocommit, one round trip), the body built by hand.

The bodies are checked to be identical. One HTTP client (keep-alive) calls both in turn, call
by call, so both meet the same load; after a warm-up, `--calls` calls of each per series.

Then the project's list alone, in a client thread, idle for `--idle-seconds`, during a backlog
purge (bench/impact.py's child: `purge_expired` in windows of `--window` seconds with idle
windows between), and idle again; a call belongs to the window it started in. Closing line:

  api: list_ratio=<project median / floor median> list_p99_ratio=<project p99 / floor p99>
       during_purge_p99_ratio=<list p99 during the purge / idle p99>
"""

from __future__ import annotations

import argparse
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from common import (
    NOW,
    add_database_arguments,
    add_store_arguments,
    drop,
    fresh_copy,
    in_child,
    machine,
    median,
    percentile,
    scratch_name,
    store_engine,
    store_template,
)

BENCH = Path(__file__).resolve().parent
WARM_UP = 100
# --smoke: seconds, not figures: what tests/test_bench.py runs to see that the script still works.
SMOKE = {"rows": 3000, "calls": 20, "repeat": 1, "warm_up": 5, "idle_seconds": 0.5, "window": 0.5}


def _port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def project_app(url: str, *, key_store: bool = True) -> Any:
    from shared.api import create_app
    from shared.settings import get_settings
    from worker.logs import configure_logging

    configure_logging(get_settings())
    if key_store:
        return create_app(engine=store_engine(url), clock=lambda: NOW)
    # --platform-auth: the account from a header, as a platform's own `authenticate` may
    # give it without a query: what the key store's look-up costs.
    return create_app(
        engine=store_engine(url),
        clock=lambda: NOW,
        authenticate=lambda request: request.headers["x-account"],
    )


def floor_app(url: str) -> Any:
    import psycopg
    from list import floor_body
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    conninfo = store_engine(url).url.set(drivername="postgresql")
    text = conninfo.render_as_string(hide_password=False)
    pool: queue.LifoQueue[psycopg.Connection[Any]] = queue.LifoQueue()
    for _ in range(5):
        pool.put(psycopg.connect(text, autocommit=True))

    def released(request: Request) -> JSONResponse:
        connection = pool.get()
        try:
            return JSONResponse(floor_body(connection, request.headers["x-account"]))
        finally:
            pool.put(connection)

    return Starlette(routes=[Route("/numbers/released", released, methods=["GET"])])


def serve(kind: str, url: str, port: int) -> None:
    """The child: one uvicorn server of `kind` on `port`."""
    import uvicorn

    app = floor_app(url) if kind == "floor" else project_app(url, key_store=kind == "project")
    uvicorn.run(app, host="127.0.0.1", port=port, log_config=None, access_log=False)


class Server:
    """A child process serving `kind` on a free port, until `stop()`."""

    def __init__(self, kind: str, url: str) -> None:
        self.port = _port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = os.environ | {"LOG_FORMAT": "json", "LOG_LEVEL": "INFO"}
        self.popen = subprocess.Popen(
            [sys.executable, __file__, "--serve", kind, url, str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.kind = kind

    def wait(self) -> Server:
        """Returns once the server answers."""
        kind = self.kind
        deadline = time.monotonic() + 60
        while True:
            if self.popen.poll() is not None:
                raise SystemExit(f"the {kind} server exited with {self.popen.returncode}")
            try:
                httpx.get(self.url + "/", timeout=1)
                return self
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"the {kind} server did not start") from None
                time.sleep(0.1)

    def stop(self) -> None:
        self.popen.terminate()
        self.popen.wait(30)


def prepare(url: str) -> tuple[str, int, str]:
    """The account whose list is closest to 50 numbers, its list's length, and a key of it."""
    from list import pick_account
    from sqlalchemy.orm import Session

    from shared.api_keys import create_api_key

    engine = store_engine(url)
    account_id, count = pick_account(engine)
    with Session(engine) as session, session.begin():
        key = create_api_key(session, account_id=account_id, now=NOW)["key"]
    engine.dispose()
    return account_id, count, key


def compare(
    project: Server,
    floor: Server,
    *,
    account_id: str,
    key: str,
    calls: int,
    repeat: int,
    warm_up: int = WARM_UP,
) -> list[dict[str, float]]:
    """`repeat` series of `calls` calls of each server, interleaved: median and p99 of each."""
    headers = {
        "project": {"Authorization": f"Bearer {key}", "X-Account": account_id},
        "floor": {"X-Account": account_id},
    }
    urls = {"project": project.url, "floor": floor.url}
    series = []
    with httpx.Client(timeout=30) as client:
        bodies = {
            name: client.get(f"{urls[name]}/numbers/released", headers=headers[name]).json()
            for name in urls
        }
        assert bodies["project"] == bodies["floor"], "the floor's body differs from the project's"
        for number in range(repeat):
            timings: dict[str, list[float]] = {"project": [], "floor": []}
            for call in range(warm_up + calls):
                order = ("project", "floor") if call % 2 else ("floor", "project")
                for name in order:
                    started = time.perf_counter()
                    answer = client.get(f"{urls[name]}/numbers/released", headers=headers[name])
                    elapsed = (time.perf_counter() - started) * 1000
                    assert answer.status_code == 200, answer.text
                    if call >= warm_up:
                        timings[name].append(elapsed)
            result = {
                f"{name}_{stat}": fn(values)
                for name, values in timings.items()
                for stat, fn in (("median", median), ("p99", lambda v: percentile(v, 0.99)))
            }
            series.append(result)
            print(
                f"# series {number + 1} calls={calls} "
                f"project median_ms={result['project_median']:.3f} "
                f"p99_ms={result['project_p99']:.3f} "
                f"floor median_ms={result['floor_median']:.3f} "
                f"p99_ms={result['floor_p99']:.3f} "
                f"ratio={result['project_median'] / result['floor_median']:.2f}",
                flush=True,
            )
    return series


def during_purge(
    project: Server, *, headers: dict[str, str], url: str, idle: float, window: float
) -> float:
    """The list's p99 during the purge windows over its p99 in the idle ones."""
    samples: list[tuple[float, float]] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=30, headers=headers) as http:
            while not stop.is_set():
                started, clock = time.time(), time.perf_counter()
                answer = http.get(f"{project.url}/numbers/released")
                samples.append((started, (time.perf_counter() - clock) * 1000))
                assert answer.status_code == 200, answer.text

    thread = threading.Thread(target=client)
    thread.start()
    try:
        began = time.time()
        time.sleep(idle)
        # No lanes named: the purge of every carrier's lane, as beat runs it.
        purge = in_child(str(BENCH / "impact.py"), [url, str(window), ""])
        time.sleep(idle)
        finished = time.time()
    finally:
        stop.set()
        thread.join()
    windows = purge["windows"]
    gaps = [began, *(edge for window in windows for edge in window), finished]
    busy = [ms for start, end in windows for at, ms in samples if start <= at < end]
    quiet = [
        ms
        for start, end in zip(gaps[::2], gaps[1::2], strict=True)
        for at, ms in samples
        if start <= at < end
    ]
    ratio = percentile(busy, 0.99) / percentile(quiet, 0.99)
    print(
        f"# during purge: rows={purge['rows']} runs={purge['runs']} "
        f"worst_batch_ms={purge['worst_batch_ms']} | idle p50={median(quiet):.3f} "
        f"p99={percentile(quiet, 0.99):.3f} ({len(quiet)} calls) | purge p50={median(busy):.3f} "
        f"p99={percentile(busy, 0.99):.3f} ({len(busy)} calls) p99_ratio={ratio:.2f}",
        flush=True,
    )
    return ratio


def main(argv: list[str]) -> None:
    if argv[:1] == ["--serve"]:
        serve(argv[1], argv[2], int(argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_store_arguments(parser, rows=1_000_000)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3, help="series of calls")
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--window", type=float, default=3.0, help="seconds per purge window")
    parser.add_argument(
        "--platform-auth",
        action="store_true",
        help="the project without the key store: the account from a header (its cost)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a few seconds on a tiny store, to see that it runs (its figures mean nothing)",
    )
    add_database_arguments(parser)
    args = parser.parse_args(argv)
    args.warm_up = WARM_UP
    if args.smoke:
        vars(args).update(SMOKE)
    print(machine(args.url))
    source = store_template(args)
    copy = scratch_name(args.url, "api_copy")
    url = fresh_copy(args.url, source, copy)
    servers: list[Server] = []
    try:
        account_id, count, key = prepare(url)
        print(f"# account={account_id} listed={count}")
        # Started together, waited for together: each takes seconds to import.
        project = "project-platform-auth" if args.platform_auth else "project"
        servers = [Server(project, url), Server("floor", url)]
        for server in servers:
            server.wait()
        series = compare(
            *servers,
            account_id=account_id,
            key=key,
            calls=args.calls,
            repeat=args.repeat,
            warm_up=args.warm_up,
        )
        purge_ratio = during_purge(
            servers[0],
            headers={"Authorization": f"Bearer {key}", "X-Account": account_id},
            url=url,
            idle=args.idle_seconds,
            window=args.window,
        )
    finally:
        for server in servers:
            server.stop()
        drop(args.url, copy)
    list_ratio = median([s["project_median"] / s["floor_median"] for s in series])
    p99_ratio = median([s["project_p99"] / s["floor_p99"] for s in series])
    print(
        f"api: list_ratio={list_ratio:.2f} list_p99_ratio={p99_ratio:.2f} "
        f"during_purge_p99_ratio={purge_ratio:.2f}"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
