# The two commands a new user needs: `make demo` and `make test`. Both create
# .venv and install everything on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
# A CPU build of torch: plain `torch` would pull a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: venv test test-fast test-field lint demo bench bench-quick soak schema dist clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "trainledger needs Python >= 3.11 (set PYTHON=python3.11)")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[train,dev]'
	rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP) lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The unit and in-memory tiers: pure logic, real git only in tmp repos, the
# worker and reconciler loops on fake time (reconciler/git/memory.py); no daemons,
# no sshd, no sleeps. Under a minute on 2 cores.
test-fast: $(STAMP)
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

# The guide run as a test: Unix users, sshd on loopback, the wheel built here.
test-field: $(STAMP)
	$(BIN)/python -m pytest -m field $(PYTEST_ARGS)

# The wheel an operator installs on the Pi and the hosts (no checkout needed there).
dist: $(STAMP)
	rm -rf build dist
	$(BIN)/python -m pip wheel --quiet --no-deps --no-build-isolation -w dist .
	@ls dist/*.whl

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

bench: $(STAMP)
	$(BIN)/python -m bench

bench-quick: $(STAMP)
	$(BIN)/python -m bench --quick

soak: $(STAMP)
	$(BIN)/python -m pytest tests/faults -s --timeout=0 --soak-minutes=$${SOAK_MINUTES:-10} $(PYTEST_ARGS)

schema: $(STAMP)
	$(BIN)/python -m reconciler.protocol.schema docs

clean:
	rm -rf $(VENV) .trainledger-demo .pytest_cache .ruff_cache build dist
