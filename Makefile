# kairos developer entry points. `make run` and `make test` are all a new user needs.
PYTHON ?= python3
CONFIG ?= configs/demo.json
SHELL := /bin/bash
export PIP_DISABLE_PIP_VERSION_CHECK = 1
export PIP_ROOT_USER_ACTION = ignore

.PHONY: install run test test-unit test-integration bench compose-check validate

# Editable install with the test extras; skipped when already done since pyproject.toml last changed.
install:
	@if [ build/.installed -nt pyproject.toml ] && command -v kairos >/dev/null 2>&1; then \
		:; \
	else \
		$(PYTHON) -m pip install -q -e '.[test]' && mkdir -p build && touch build/.installed; \
	fi

# Demo users (:3001) and orders (:3002) services in the background, the gateway on :5900 in the
# foreground. The demo is stopped when the gateway exits or on Ctrl-C.
run: install
	@$(PYTHON) -m kairos.demo --users-port 3001 --orders-port 3002 & demo=$$!; \
	trap 'kill $$demo 2>/dev/null; wait $$demo 2>/dev/null' EXIT; \
	trap 'exit 130' INT; trap 'exit 143' TERM; \
	for i in $$(seq 150); do \
		kill -0 $$demo 2>/dev/null || { echo "demo services failed to start" >&2; exit 1; }; \
		(exec 3<>/dev/tcp/127.0.0.1/3001 && exec 4<>/dev/tcp/127.0.0.1/3002) 2>/dev/null && break; \
		sleep 0.1; \
	done; \
	echo "gateway on http://127.0.0.1:5900  (try: curl localhost:5900/api/users/42)"; \
	kairos serve --config $(CONFIG)

# Both tiers in one run, the fast one first (tests/conftest.py orders them): tests/unit (in process,
# no subprocesses, ~10 s), then tests/integration (real upstreams, gateway subprocesses, redis).
# A test file left directly in tests/ still runs (with the integration tier) and is named at the end.
test:
	$(PYTHON) -m pytest -q -p no:cacheprovider --timeout=120 tests

test-unit:
	$(PYTHON) -m pytest -q -p no:cacheprovider --timeout=60 tests/unit

test-integration:
	$(PYTHON) -m pytest -q -p no:cacheprovider --timeout=120 tests --ignore=tests/unit

# Installs nginx and wrk with apt-get when missing; results in bench/results/latest.json and docs/performance.png.
bench: install
	$(PYTHON) -m pip install -q -e '.[bench]'
	$(PYTHON) bench/run.py
	$(PYTHON) bench/websocket_echo.py
	$(PYTHON) bench/plot.py

compose-check:
	docker-compose -f docker-compose.yml config -q

validate:
	kairos validate $(CONFIG)

# The admin console's pictures in docs/images/ (docs/admin.md), taken by its browser test.
.PHONY: admin-screenshots
admin-screenshots:
	KAIROS_UPDATE_SCREENSHOTS=1 $(PYTHON) -m pytest -q -p no:cacheprovider tests/integration/test_admin_console.py
