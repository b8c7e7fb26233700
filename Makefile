# Two commands do all the set-up: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: run test install bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/torua up --sample samples

test: $(TEST_STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(TEST_STAMP)
	$(BIN)/python -m bench.ingest

# What durable acknowledgements cost: JetStream's sync_interval always (what torua up and compose
# use) against the server's default, on the log stream (1 server R1, 3 servers R3) and a cluster.
.PHONY: bench-durability bench-consistency
bench-durability: $(STAMP)
	$(BIN)/python -m bench.durability $(BENCH_ARGS)

bench-consistency: $(STAMP)
	$(BIN)/python -m bench.consistency $(BENCH_ARGS)

# Snapshots and log retention: snapshot and restore throughput, and the recovery time of a wiped
# node against the length of its shards' history, replaying the log or restoring a snapshot.
.PHONY: bench-snapshots
bench-snapshots: $(STAMP)
	$(BIN)/python -m bench.snapshots $(BENCH_ARGS)

# Query speed through the cluster beside embedded Kuzu, exact NumPy, NetworkX and a bare NATS round
# trip, on the same generated data (50k entities, 250k relations by default; sizes by flag).
.PHONY: bench-query
bench-query: $(TEST_STAMP)
	$(BIN)/python -m bench.query $(BENCH_ARGS)

# Multi-hop Cypher (2-, 3-hop pattern counts, shortest paths) through a cluster beside embedded Kuzu.
.PHONY: bench-cypher
bench-cypher: $(TEST_STAMP)
	$(BIN)/python -m bench.cypher $(BENCH_ARGS)

# Retrieval quality: on real documentation (bench/eval_docs.py says where the documentation goes),
# and on the harder generated multi-hop benchmark (bench/multihop.py).
.PHONY: eval-docs eval-multihop
eval-docs: $(STAMP)
	$(BIN)/python -m bench.eval_docs $(EVAL_ARGS)

eval-multihop: $(STAMP)
	$(BIN)/python -m bench.eval_multihop --hops 1,2,3 $(EVAL_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis data

# Python: ruff (style, imports, common bugs) and mypy (types) on the three packages, configured in
# pyproject.toml; then the Dockerfile with hadolint (from the test extras), and docker-compose.yml with a real compose
# implementation (Debian's docker-compose 1.29 in CI), in both NATS modes. Skipped with a message
# where no docker-compose is installed.
.PHONY: lint
lint: $(TEST_STAMP)
	$(BIN)/ruff check shared services
	$(BIN)/mypy
	$(BIN)/hadolint Dockerfile
	@if command -v docker-compose >/dev/null 2>&1; then \
		echo "docker-compose config -q (single NATS server, then the cluster profile)"; \
		docker-compose -f docker-compose.yml config -q && \
		docker-compose -f docker-compose.yml --env-file deploy/cluster.env config -q; \
	else \
		echo "lint: docker-compose not installed; compose file not validated" >&2; \
	fi
