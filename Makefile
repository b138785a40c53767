# The two commands of the README: `make run` (demo) and `make test` (the whole suite).
# Both install everything first; uv keeps a warm wheel cache, so repeated installs take seconds.

VENV ?= .venv
PY := $(VENV)/bin/python
UV_CACHE_DIR ?= $(HOME)/.cache/uv
export UV_CACHE_DIR
# Hard links from the cache: torch and its CUDA libraries are about 6 GB, and a copied venv per
# clone fills a CI disk (a fresh-clone CI failed so). Where the cache and the venv are on different
# filesystems uv falls back to copying on its own.
export UV_LINK_MODE ?= hardlink

.PHONY: install run test test-kafka soak lint typecheck check clean

$(VENV)/.installed: pyproject.toml
	@command -v uv >/dev/null 2>&1 || python3 -m pip install --quiet --user "uv>=0.5"
	@UV=$$(command -v uv || echo "$$(python3 -m site --user-base)/bin/uv"); \
	  test -x $(PY) || $$UV venv --quiet --python python3 $(VENV); \
	  $$UV pip install --quiet --python $(PY) -e '.[dev]'
	@touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/tagstream demo

test: install
	$(PY) -m pytest

# The broker-facing tests (tests/e2e) again on Apache Kafka 4.4 instead of the embedded Tansu, plus
# the tests only Kafka can host (scale-out, broker restart). Needs Java 17+ and Maven: the broker's
# jars come from Maven Central on first use and are cached in ~/.cache/tagstream. CI runs both.
test-kafka: install
	TAGSTREAM_TEST_BROKER=kafka $(PY) -m pytest tests/e2e

# Bounded soak (not in `make test`): SOAK_EVENTS (default 10000) and SOAK_RATE (events/s, default 25).
soak: install
	$(PY) -m pytest tests/e2e/soak -m soak -s -p no:cacheprovider

lint: install
	$(VENV)/bin/ruff check schemas inference streams workbench tests

typecheck: install
	$(VENV)/bin/mypy

check: lint typecheck test

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
