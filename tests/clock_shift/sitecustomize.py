"""Moves this Python process's wall clock by TESTS_CLOCK_SHIFT_DAYS days (`make test-clock`).

On PYTHONPATH, Python imports this module at start-up, so pytest and every worker, beat or CLI
process a test starts (they inherit the environment) run on the same moved clock, as a host
whose calendar reads another year would; the monotonic clock and the database and Redis
servers are left alone. time-machine, not libfaketime: under Debian's faketime 0.9.10 a
Python 3.11 lock acquired with a timeout waits on the moved monotonic clock for a year.
"""

import os

_days = os.environ.get("TESTS_CLOCK_SHIFT_DAYS")
if _days:
    from datetime import UTC, datetime, timedelta

    import time_machine

    time_machine.travel(datetime.now(UTC) + timedelta(days=float(_days)), tick=True).start()
