# Everything a fresh machine needs (Python >= 3.11, JDK >= 17, Maven) is installed from here.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install jars tools test demo bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,bench]'
	touch $@

# The Kafka broker's jars, fetched once from Maven Central into ~/.cache/meterline.
jars: install
	$(BIN)/meterline stack fetch

# kcat (a Debian package) for the test that emits an event without the SDK.
tools:
	@command -v kcat >/dev/null || (apt-get update -qq && apt-get install -y -qq kcat)

test: install jars tools
	$(BIN)/pytest

demo: install jars
	$(BIN)/meterline demo

# valgrind (a Debian package) counts the instructions of the worker's own work (benchmarks/bench_batch.py).
bench: install jars
	@command -v valgrind >/dev/null || (apt-get update -qq && apt-get install -y -qq valgrind)
	$(BIN)/python -m meterline.benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
