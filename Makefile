# azure_ai_sim: make install | uninstall | demo | test | bench (run as root on Debian/Ubuntu)

VENV := .venv
PYTHON := $(VENV)/bin/python

.PHONY: deps install uninstall demo test bench lint clean

deps:
	extension/deps.sh

install: deps
	extension/install.sh

uninstall:
	extension/uninstall.sh

# The developer environment: pytest, psycopg, ruff and the simulators' models, for the
# same Python as the server.
$(VENV)/.installed: pyproject.toml
	/usr/bin/python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e '.[dev,sim,models]'
	touch $@

demo: install $(VENV)/.installed
	$(PYTHON) tests/demo.py

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check python tests
	$(VENV)/bin/ruff format --check python tests

test: install lint
	$(PYTHON) -m pytest tests --ignore=tests/bench

# The whole suite against PostgreSQL 17: `make test` inside a Debian 13 (trixie) chroot
# (extension/chroot.sh). Not part of `make test`: a first run takes minutes more.
.PHONY: test-pg17
test-pg17:
	extension/chroot.sh trixie test

bench: install $(VENV)/.installed
	$(PYTHON) -m pytest tests/bench -s

clean:
	rm -rf $(VENV) build .pytest_cache .ruff_cache
