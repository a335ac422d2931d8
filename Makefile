# kc_tasks: `make run` sets up and runs the service, `make test` sets up and runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run test setup browser services migrate lint node prometheus pgbouncer rules mutation mutation-db \
	coverage image stack test-stack

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

# Debian's PgBouncer, for the tests that reach PostgreSQL through it in transaction pooling mode
# (tests/servers.py starts its own, on a free port).
pgbouncer:
	command -v pgbouncer >/dev/null || (apt-get update -qq && apt-get install -y -qq --no-install-recommends pgbouncer)

# The scrape configuration and alert rules of docker/prometheus/, checked and unit-tested.
rules: prometheus
	promtool check config docker/prometheus/prometheus.yml
	promtool check rules docker/prometheus/kc_tasks.rules.yml
	promtool test rules docker/prometheus/kc_tasks.test.yml

services:
	scripts/services.sh

# docker/Dockerfile built as kc-tasks:local with podman or docker, whichever works here (Debian's
# podman and runc installed when neither does). Its base is python:3.11-slim, or where that cannot
# be pulled a stand-in built from Debian's packages (docker/standins/). Cached: a second run
# builds nothing. scripts/containers.sh.
image:
	scripts/containers.sh image

# podman-compose (pyproject.toml's extra `stack`) in the virtualenv, for the two targets below.
$(VENV)/.stack: $(BIN)/kc-tasks pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev,stack]'
	touch $@

# docker/compose.yaml up on this machine's engine (Grafana's profile left out; the service images
# official where they can be pulled, else stand-ins from Debian's packages), every service healthy,
# a signed webhook through its web made a course the read API shows, Prometheus scraping every
# kc_tasks target with the alert rules loaded, every process stopped by SIGTERM, then down
# (tests/stack/test_compose.py).
stack: setup services image $(VENV)/.stack
	$(BIN)/pytest tests/stack/test_compose.py

# The image and the stack run for real (tests/stack): the image's web process and worker against
# this machine's services, then `make stack`. The last step of `make test`.
test-stack: setup services image $(VENV)/.stack
	$(BIN)/pytest tests/stack

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
	$(BIN)/ruff check celeryconfig.py kc_tasks tests bench
	$(BIN)/ruff format --check celeryconfig.py kc_tasks tests bench
	$(BIN)/mypy

# The suite in parallel (pytest-xdist, TEST_PROCESSES at a time: each has its own databases,
# RabbitMQ vhost and Redis database, tests/conftest.py); the tests that run brokers of their own
# (`cluster`: three clustered RabbitMQ nodes, started once, a Redis Sentinel) all in one of the
# processes (`--dist loadgroup`). Then, alone, the few tests that restart or disturb a service
# the whole machine shares (`disruptive`), and last the image and the compose stack.
TEST_PROCESSES ?= 2
test: setup browser prometheus pgbouncer services node lint rules
	$(BIN)/pytest -n $(TEST_PROCESSES) --dist loadgroup -m "not disruptive" --durations=25
	$(BIN)/pytest -m disruptive
	$(MAKE) test-stack

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
