# Two commands do all set-up on a fresh machine: `make app` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
PORT ?= 8501
# Loopback only by default; `make app HOST=0.0.0.0` serves a room (see README: Serving a class).
HOST ?= 127.0.0.1
CHROMIUM ?= /usr/bin/chromium

.PHONY: install install-dev app test test-fast bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# A torch already in the venv (e.g. a CUDA build the user installed first) is kept;
# otherwise torch==2.13.0 takes the CPU build.
$(VENV)/.installed: $(PY) requirements.txt requirements-embedded.txt pyproject.toml
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install torch==2.13.0
	$(PIP) install -r requirements.txt
	$(PIP) install --no-deps -r requirements-embedded.txt
	$(PIP) install --no-deps -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt requirements-distributed.txt
	$(PIP) install -r requirements-dev.txt -r requirements-distributed.txt
	test -x $(CHROMIUM) || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

app: install
	$(PY) -m streamlit run app.py --server.address $(HOST) --server.port $(PORT)

test: install-dev
	$(PY) -m pytest tests

# The inner loop: everything but the tests marked slow (browsers, real job processes, accelerate, Ray,
# the README's measured figures). `make test` still runs everything and is what CI runs.
test-fast: install-dev
	$(PY) -m pytest tests -m "not slow"

bench: install
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV)
