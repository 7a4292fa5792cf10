# mnist-serving: the two set-up commands are `make run` and `make test` (see README.md).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
MODELS ?= models
RUNS ?= runs
SERVE_ARGS ?=

.PHONY: run model bytecode train export serve test test-fast compose-test images lint protos bench bench-ab bench-quick field soak reliability audit clean

# Main job: environment → data → train (if no run) → export with parity (if no model) → serve.
run: model bytecode
	$(BIN)/mnist-serve --model-repository $(MODELS) $(SERVE_ARGS)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-run: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install --quiet -c constraints.txt -e '.[train,serve,client]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@ $(VENV)/.installed-run

# Idempotent: reuses the data cache, the newest run and the newest published model.
model: $(VENV)/.installed-run
	@if ls $(MODELS)/mnist/*/model.onnx >/dev/null 2>&1 && [ -z "$(FORCE_TRAIN)" ]; then \
		echo "model already published: $$(ls -d $(MODELS)/mnist/* | sort -t/ -k3 -n | tail -1)/model.onnx"; \
	else \
		if [ -n "$(FORCE_TRAIN)" ] || ! ls $(RUNS)/*/model.pt >/dev/null 2>&1; then \
			$(BIN)/mnist-train --runs-dir $(RUNS) || exit 1; \
		fi; \
		$(BIN)/mnist-export --runs-dir $(RUNS) --model-repository $(MODELS) || exit 1; \
	fi

# The package's bytecode, as an installed wheel has it: the checkout is installed editable, and
# where the environment turns bytecode writing off (PYTHONDONTWRITEBYTECODE, as container
# images often do), every process the server and the batch tool start (decode workers too)
# would compile the package anew. Quick when nothing changed; a stale file is recompiled. A
# checkout it cannot write to still serves: its processes compile the package as they start.
# The folders come from pyproject.toml's package-dir (read only when this target runs).
PACKAGE_DIRS = $(shell $(BIN)/python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['tool']['setuptools']['package-dir'].values())")
bytecode: $(VENV)/.installed-run
	@$(BIN)/python -m compileall -qq $(PACKAGE_DIRS) || \
		echo "bytecode: could not write all of the package's bytecode (a read-only checkout?); going on without it" >&2

train: $(VENV)/.installed-run
	$(BIN)/mnist-train --runs-dir $(RUNS)

export: $(VENV)/.installed-run
	$(BIN)/mnist-export --runs-dir $(RUNS) --model-repository $(MODELS)

serve: $(VENV)/.installed-run bytecode
	$(BIN)/mnist-serve --model-repository $(MODELS) $(SERVE_ARGS)

# Tests: lint, then the whole suite (real training on small settings, real servers on loopback).
# The suites start subprocesses (fork, then exec) while their clients' calls are in flight:
# gRPC's fork handlers are for children that go on using gRPC, and can abort the parent there.
# Bytecode caches are written even where the environment turns them off (container images
# often do): each of the suite's hundreds of servers and CLI runs would compile the package anew.
# No process of the suite does linear algebra in numpy, yet OpenBLAS starts a spinning thread
# per core in each of them when numpy is imported (about 0.1 CPU-s a process).
TEST_ENV := env -u PYTHONDONTWRITEBYTECODE GRPC_ENABLE_FORK_SUPPORT=false OPENBLAS_NUM_THREADS=1
test: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(TEST_ENV) $(BIN)/python -m pytest -q

# The inner loop: everything but the tests marked slow (real training, Ray clusters, long
# soaks, compose), on parallel workers (most tests wait on real servers; tests are handed out
# as workers free up, and those that import torch share one worker), with the fixture model
# kept between runs (built anew when the training or export code changes).
FIXTURE_CACHE ?= $(HOME)/.cache/mnist-serving/test-fixtures
test-fast: $(VENV)/.installed-dev
	MNIST_SERVING_FIXTURE_CACHE=$(FIXTURE_CACHE) $(TEST_ENV) \
		$(BIN)/python -m pytest -q -n 4 --dist loadgroup -m 'not slow and not compose'

# Every image docker-compose.yml uses; offline stand-in bases when Docker Hub is unreachable.
images:
	docker/images.sh

# docker-compose.yml end to end on a real Docker engine (started here if installed and idle).
compose-test: $(VENV)/.installed-dev
	@engine=$$(docker/engine.sh start); echo "docker engine: $$engine"; \
	PATH="$(abspath $(BIN)):$$PATH" GRPC_ENABLE_FORK_SUPPORT=false $(BIN)/python -m pytest -q -m compose tests/integration/test_compose.py; rc=$$?; \
	if [ "$$engine" = started ]; then docker/engine.sh stop; fi; exit $$rc

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Regenerate the gRPC stubs from protos/ (a test fails when the committed ones are stale).
protos: $(VENV)/.installed-dev
	$(BIN)/python -m mnist_serving.protos.generate

# Benchmarks: one sitting against the in-process ceiling and the peers (minutes); see docs/benchmarks.md.
bench: model bytecode $(VENV)/.installed-dev
	bench/peers/setup.sh
	$(BIN)/python bench/run.py --docs docs/benchmarks.md
	$(BIN)/python bench/rest_bench.py --docs docs/benchmarks.md
	$(BIN)/python bench/batch_job.py --docs docs/batch.md
	$(BIN)/python bench/decode_pool.py
	$(BIN)/python bench/json_parse.py --docs docs/benchmarks.md
	$(BIN)/python bench/targets.py --docs docs/benchmarks.md
	$(BIN)/python bench/batch_budget.py --docs docs/benchmarks.md

# This tree against an earlier commit (BASELINE=<commit>), interleaved rounds; see docs/benchmarks.md.
bench-ab: model bytecode $(VENV)/.installed-dev
	$(BIN)/python bench/ab.py --baseline $(BASELINE) --docs docs/benchmarks.md

# The field set (photos, prints, pens, scans; bench/field/): regenerate it from its seed, check
# its hash, and print accuracy per condition for preprocessing v1 and v2 with the published model.
field: model bytecode $(VENV)/.installed-dev
	$(BIN)/python bench/field/generate.py
	$(BIN)/python bench/field/evaluate.py --preprocessing 2,3
	$(BIN)/python bench/field/speed.py

bench-quick: model bytecode $(VENV)/.installed-dev
	$(BIN)/python bench/run.py --quick --peers ""

# Reliability: the mixed-API soak for minutes (figures in docs/reliability.md), then the
# whole reliability and hostile-input suite.
soak: model bytecode $(VENV)/.installed-dev
	$(BIN)/python bench/soak.py --seconds $${SOAK_SECONDS:-300} --callers 32

reliability: soak
	$(BIN)/python -m pytest -q tests/integration/test_reliability.py tests/integration/test_bad_input.py \
		tests/unit/test_properties.py tests/integration/test_model_lifecycle.py \
		tests/integration/test_security.py tests/integration/test_server_lifecycle.py \
		tests/integration/test_heavy_input.py tests/integration/test_per_item.py

# Known vulnerabilities in the pinned dependencies (queries PyPI's advisory data).
audit: $(VENV)/.installed-dev
	$(BIN)/pip install --quiet pip-audit==2.10.1
	$(BIN)/pip-audit --skip-editable

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
