# azure_ai_sim: make install | uninstall | demo | test | bench | docker (run as root on
# Debian/Ubuntu)

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

# Microsoft's Azure ML inference server, a real scoring server for the tests
# (tests/inference_server), in a venv of its own: its pins clash with ours (wrapt).
INFERENCE_VENV := $(HOME)/.cache/azure_ai_sim/inference-venv
$(INFERENCE_VENV)/.installed:
	/usr/bin/python3 -m venv $(INFERENCE_VENV)
	$(INFERENCE_VENV)/bin/pip install --quiet --disable-pip-version-check \
	    azureml-inference-server-http==1.5.1 'inference-schema[numpy-support,pandas-support]==1.8' \
	    numpy==2.4.6
	touch $@

demo: install $(VENV)/.installed
	$(PYTHON) tests/demo.py

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check python tests
	$(VENV)/bin/ruff format --check python tests

# The whole suite against the machine's PostgreSQL, then against PostgreSQL 17 (unless
# that is the machine's) in a Debian 13 (trixie) chroot: extension/chroot.sh; then
# against a container of our image, where a Docker engine can run (docker/test.sh).
test: test-here test-pg17 test-docker

.PHONY: test-here test-pg17 test-docker docker docker-test
test-here: install lint $(INFERENCE_VENV)/.installed
	$(PYTHON) -m pytest tests --ignore=tests/bench

test-pg17:
	@if "$$(extension/pg_config.sh)" --version | grep -q '^PostgreSQL 17'; then \
	    echo "==> the machine's PostgreSQL is 17: no second run"; \
	else \
	    echo "==> the whole suite again, against PostgreSQL 17 in a Debian 13 chroot"; \
	    extension/chroot.sh trixie test-here; \
	fi

test-docker: $(VENV)/.installed $(INFERENCE_VENV)/.installed
	PYTHON=$(PYTHON) docker/test.sh --or-skip

# The images of docker/Dockerfile (the database, the simulators), and the suite against them.
docker:
	docker/build.sh

docker-test: $(VENV)/.installed $(INFERENCE_VENV)/.installed
	PYTHON=$(PYTHON) docker/test.sh

bench: install $(VENV)/.installed
	$(PYTHON) -m pytest tests/bench -s

clean:
	rm -rf $(VENV) build .pytest_cache .ruff_cache
