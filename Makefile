# The two commands a newcomer needs: `make run` (the whole pipeline) and `make test` (the suite).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA := data/coveo

.PHONY: install run test serve collect screenshots bench lint clean help

help:
	@echo "make run    generate data, load it, run the flow end to end (creates .venv on first use)"
	@echo "make test   run the whole test suite"
	@echo "make serve  serve the latest deployed model on 127.0.0.1:8080 (the demo shop at /demo)"
	@echo "make collect  receive shopper events on 127.0.0.1:8090 (the demo shop's clicks, say)"
	@echo "make bench  run the benchmarks in bench/ (prints one JSON line each)"
	@echo "make lint   ruff check"

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $@

install: $(VENV)/.installed

$(DATA)/browsing_train.csv: | install
	$(BIN)/postmodern generate --output $(DATA)

# One load per generated dataset: the stamp is newer than the data once it is in the warehouse.
data/.loaded: $(DATA)/browsing_train.csv | install
	$(BIN)/postmodern load --path $(DATA)
	touch $@

run: install data/.loaded
	$(BIN)/python flows/recommender_flow.py run
	@$(BIN)/postmodern next-steps

test: install
	$(BIN)/pytest

serve: install
	$(BIN)/postmodern serve

collect: install
	$(BIN)/postmodern collect

# The README's pictures of the demo shop, taken by its browser test
screenshots: install
	POSTMODERN_SCREENSHOTS=docs $(BIN)/pytest -q tests/test_demo.py

bench: install
	@shopt -s nullglob; for script in bench/*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

lint: install
	$(BIN)/ruff check src flows tests bench

clean:
	rm -rf data .metaflow dbt/target
