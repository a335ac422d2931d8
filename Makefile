# kc_tasks: `make run` sets up and runs the service, `make test` sets up and runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run test setup browser services migrate lint node prometheus rules mutation mutation-db coverage

$(BIN)/kc-tasks: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

setup: $(BIN)/kc-tasks

# Debian's Chromium, for the browser tests (Playwright drives /usr/bin/chromium; no `playwright install`).
browser:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

# Debian's Prometheus, for promtool (the alert rules' checks and unit tests) and the metrics'
# end-to-end test; `kc-tasks dev` runs it too when it is installed.
prometheus:
	command -v promtool >/dev/null || (apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus)

# The scrape configuration and alert rules of docker/prometheus/, checked and unit-tested.
rules: prometheus
	promtool check config docker/prometheus/prometheus.yml
	promtool check rules docker/prometheus/kc_tasks.rules.yml
	promtool test rules docker/prometheus/kc_tasks.test.yml

services:
	scripts/services.sh

# The Node.js example (examples/node), run by the end-to-end tests against the real worker.
node:
	cd examples/node && npm ci --no-audit --no-fund --loglevel=error

migrate: setup services
	$(BIN)/kc-tasks migrate

# The four Procfile processes on the local PostgreSQL and RabbitMQ, or stand-ins for them.
run: setup
	scripts/services.sh --optional
	$(BIN)/kc-tasks dev

lint: setup
	$(BIN)/ruff check celeryconfig.py kc_tasks migrations tests bench
	$(BIN)/ruff format --check celeryconfig.py kc_tasks migrations tests bench
	$(BIN)/mypy

# The suite in parallel (pytest-xdist, TEST_PROCESSES at a time: each has its own databases,
# RabbitMQ vhost and Redis database, tests/conftest.py), then, alone, the few tests that restart
# or disturb a service the whole machine shares (`disruptive`), and those that run brokers of
# their own, started once (`cluster`: three clustered RabbitMQ nodes, a Redis Sentinel).
TEST_PROCESSES ?= 2
test: setup browser prometheus services node lint rules
	$(BIN)/pytest -n $(TEST_PROCESSES) -m "not disruptive and not cluster"
	$(BIN)/pytest -m "disruptive or cluster"

# Not run by CI (docs/testing.md). Mutation testing of the pure modules (tool.mutmut in
# pyproject.toml: providers/, signature, auth, payload, retry) against the unit tests, from
# scratch, at low priority: a few minutes on two cores.
mutation: setup
	$(BIN)/pip install --quiet -e '.[dev,quality]'
	rm -rf mutants
	nice -n 19 $(BIN)/mutmut run --max-children 2
	$(BIN)/mutmut results

# Not run by CI (docs/testing.md). Mutation testing of the database modules (purchases.py,
# revocations.py: tool.kc-tasks.mutmut-db in pyproject.toml, which scripts/mutmut_db.py hands
# to mutmut) against the integration tests, on the local services, from scratch, at low
# priority: about half an hour on two cores. It shares mutants/ with `make mutation`.
mutation-db: setup services
	$(BIN)/pip install --quiet -e '.[dev,quality]'
	rm -rf mutants
	nice -n 19 $(BIN)/python scripts/mutmut_db.py run --max-children 2
	$(BIN)/python scripts/mutmut_db.py results

# Branch coverage of kc_tasks/ by the unit and integration tests (the end-to-end tests run
# the code in other processes, which this does not measure).
coverage: setup services
	$(BIN)/pip install --quiet -e '.[dev,quality]'
	$(BIN)/pytest -q --cov=kc_tasks --cov-branch --cov-report=term-missing:skip-covered tests/unit tests/integration
