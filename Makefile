# tickwire: `make run` starts the gateway with its embedded market; `make test` runs
# lint, types and the whole suite. Both install what they need into .venv first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PORT   ?= 8765
SYMBOLS ?= BTC-USD,ETH-USD,SOL-USD
RATE   ?= 200

.PHONY: install run test lint typecheck format bench coverage clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

install: $(VENV)/.installed

run: install
	@echo "tickwire gateway on ws://127.0.0.1:$(PORT)/ws  (Ctrl-C stops it)"
	@echo "  watch a live book:  $(VENV)/bin/tickwire watch BTC-USD --url ws://127.0.0.1:$(PORT)/ws"
	@echo "  measure the feed:   $(VENV)/bin/tickwire bench ws://127.0.0.1:$(PORT)/ws"
	$(VENV)/bin/tickwire serve --port $(PORT) --symbols $(SYMBOLS) --rate $(RATE) --burst-every 30 --log-level INFO

lint: install
	$(VENV)/bin/ruff check src tests bench examples
	$(VENV)/bin/ruff format --check src tests bench examples

typecheck: install
	$(VENV)/bin/mypy --strict src

format: install
	$(VENV)/bin/ruff format src tests bench examples
	$(VENV)/bin/ruff check --fix src tests bench examples

test: lint typecheck
	$(PY) -m pytest -q -ra

# Branch coverage of the Sans-I/O core (100% at the time of writing; not enforced).
coverage: install
	$(PY) -m pytest -q tests/test_book.py tests/test_protocol.py tests/test_hub.py \
		--cov=tickwire.book --cov=tickwire.protocol --cov=tickwire.hub --cov-branch \
		--cov-report=term-missing

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
