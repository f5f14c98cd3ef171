# Everything a fresh machine needs (Python >= 3.11, JDK >= 17, Maven) is installed from here.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install jars test demo bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,bench]'
	touch $@

# The Kafka broker's jars, fetched once from Maven Central into ~/.cache/meterline.
jars: install
	$(BIN)/meterline stack fetch

test: install jars
	$(BIN)/pytest

demo: install jars
	$(BIN)/meterline demo

bench: install jars
	$(BIN)/python -m meterline.benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
