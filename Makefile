# tickwire: `make run` starts the gateway with its embedded market (the settings of
# examples/tickwire.toml); `make test` runs lint, types and the whole suite. Both
# install what they need into .venv first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PORT   ?= 8765
SYMBOLS ?= BTC-USD,ETH-USD,SOL-USD
RATE   ?= 200
ADMIN_PORT ?= 8766
CHROMIUM ?= /usr/bin/chromium
# pytest-xdist workers for `make test` (the tests mostly wait on servers and sockets).
TEST_PROCS ?= 2

.PHONY: install run test lint typecheck format bench coverage clean browser nats interop config-docs node-example

$(VENV)/.installed: pyproject.toml setup.py src/tickwire/_market.c
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

install: $(VENV)/.installed

# Third-party implementations the tests compare tickwire with (cryptofeed's order_book
# checksums, ccxt, cryptofeed): a virtualenv of their own, because they pin exact
# versions of packages tickwire also uses. tests/helpers.py:interop_python() runs it.
INTEROP ?= .venv-interop
$(INTEROP)/.installed: tests/interop/requirements.txt
	test -x $(INTEROP)/bin/python || $(PYTHON) -m venv $(INTEROP)
	$(INTEROP)/bin/python -m pip install -q --disable-pip-version-check -r tests/interop/requirements.txt
	touch $@

interop: $(INTEROP)/.installed

run: install
	@echo "tickwire gateway on ws://127.0.0.1:$(PORT)/ws  (Ctrl-C stops it)"
	@echo "  dashboard:          http://127.0.0.1:$(ADMIN_PORT)/  (metrics: http://127.0.0.1:$(ADMIN_PORT)/metrics)"
	@echo "  watch a live book:  $(VENV)/bin/tickwire watch BTC-USD --url ws://127.0.0.1:$(PORT)/ws"
	@echo "  measure the feed:   $(VENV)/bin/tickwire bench ws://127.0.0.1:$(PORT)/ws"
	@echo "  as an exchange:     ws://127.0.0.1:$(PORT)/binance/stream, /okx/ws/v5/public, /kraken/v2; REST http://127.0.0.1:$(ADMIN_PORT)/binance/api/v3 (docs/dialects.md)"
	$(VENV)/bin/tickwire serve --config examples/tickwire.toml $(RUN_FLAGS)

# `make run` serves examples/tickwire.toml; PORT, ADMIN_PORT, SYMBOLS or RATE given to
# make (make run PORT=9000) become flags, which take precedence over the file.
override_flag = $(if $(filter-out file,$(origin $(1))),$(2) $($(1)))
RUN_FLAGS = $(strip $(call override_flag,PORT,--port) $(call override_flag,ADMIN_PORT,--admin-port) \
	$(call override_flag,SYMBOLS,--symbols) $(call override_flag,RATE,--rate))

# docs/configuration.md is generated from the settings' declarations (src/tickwire/settings.py).
config-docs: install
	$(VENV)/bin/tickwire config docs -o docs/configuration.md

lint: install
	$(VENV)/bin/ruff check src tests bench examples
	$(VENV)/bin/ruff format --check src tests bench examples

typecheck: install
	$(VENV)/bin/mypy --strict src

format: install
	$(VENV)/bin/ruff format src tests bench examples
	$(VENV)/bin/ruff check --fix src tests bench examples

test: lint typecheck browser nats interop node-example
	TICKWIRE_INTEROP_VENV=$(abspath $(INTEROP)) $(PY) -m pytest -q -ra -n $(TEST_PROCS)

# The scale-out tests (tests/test_nats.py, test_workers.py) start and stop a real
# nats-server themselves, on a free port; install Debian's nats-server when missing.
nats:
	@if ! command -v nats-server >/dev/null && [ ! -x /usr/sbin/nats-server ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y nats-server; \
		elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then \
			sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y nats-server; \
		else \
			echo "make: cannot install nats-server (not root): the NATS tests will fail"; \
		fi; \
	fi

# The dashboard tests drive Debian's chromium through Playwright (installed by pip with
# the test extra; Playwright never downloads a browser here). Install it when missing.
browser: install
	@$(PY) -c "import playwright" 2>/dev/null || \
		$(PY) -m pip install -q --disable-pip-version-check 'playwright>=1.40,<2'
	@if [ ! -x $(CHROMIUM) ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; \
		elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then \
			sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; \
		else \
			echo "make: cannot install chromium (not root): the dashboard tests will skip, or fail under CI"; \
		fi; \
	fi

# Branch coverage of the Sans-I/O core over the whole suite (reported, not enforced:
# the hub's NATS, encoding and private-channel paths are exercised by their own suites).
coverage: install nats
	$(PY) -m pytest -q --cov=tickwire.book --cov=tickwire.protocol --cov=tickwire.hub \
		--cov=tickwire.codec --cov=tickwire.engine --cov-branch --cov-report=term-missing

clean:
	rm -rf $(VENV) $(INTEROP) build *.egg-info .mypy_cache .ruff_cache .pytest_cache

# The Node.js ingest example's `nats` package (tests/test_ingest.py runs the example).
node-example:
	@if command -v npm >/dev/null 2>&1 && [ ! -d examples/ingest/node_modules/nats ]; then \
		cd examples/ingest && npm install --no-audit --no-fund --silent; fi
