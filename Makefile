# django-container-jobs: developer entry points.
#
#   make demo    install, start an engine if needed, run one real job, show its record
#   make test    install, engine, ruff, mypy, pytest on SQLite (+ PostgreSQL when it answers), coverage gates
#   make kubernetes  a one-node Kubernetes v1.20.2 cluster on loopback (built once, offline)
#   make lint    ruff check, mypy, the package built and checked (build, twine check)
#   make docs    the documentation site (Sphinx), warnings as errors
#   make clean   remove caches, coverage data and the demo database (make distclean: also .venv)
#
# Under CI (the CI variable set) a missing Docker engine, private registry, Kubernetes cluster
# or PostgreSQL is a failure; locally they are skipped with a warning.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON3     ?= python3
VENV        := .venv
PY          := $(VENV)/bin/python
MANAGE      := $(PY) manage.py
STAMP       := $(VENV)/.installed
DOCKER_SOCK ?= /var/run/docker.sock
REGISTRY_PORT ?= 5555
ENGINE_URL  := unix://$(DOCKER_SOCK)
PG_HOST     ?= 127.0.0.1
PG_PORT     ?= 5432
PG_URL      ?= postgres://postgres@$(PG_HOST):$(PG_PORT)/test
TEST_IMAGE  := container-jobs/busybox:latest
COV_GATE    ?= 90
DOCKER_GATE ?= 95
DOCKER_FILES := container_manager/executors/docker.py,container_manager/executors/docker_errors.py,container_manager/executors/docker_spec.py,container_manager/executors/docker_logs.py,container_manager/docker_service.py

# The test suite reads the engine URL from here.
export CONTAINER_JOBS_TEST_ENGINE := $(ENGINE_URL)
# ... and the private registry's port (tests/registry.py): 127.0.0.1:$(REGISTRY_PORT).
export REGISTRY_PORT
# ... and the test cluster's kubeconfig (scripts/ensure-kubernetes.sh prints it).
KUBE_STATE ?= /var/lib/container-jobs-kubernetes
export CONTAINER_JOBS_TEST_KUBECONFIG ?= $(KUBE_STATE)/admin.kubeconfig

SAY := @printf '\n==> %s\n'

.PHONY: help install engine registry kubernetes demo test lint docs screenshots package clean distclean

help:
	@sed -n '3,9p' Makefile | sed 's/^# *//'

# ---- install: a venv with the package (editable) and the test tools; quiet, idempotent ----

install: $(STAMP)
	@:

$(STAMP): pyproject.toml
	$(SAY) "install: $(VENV) with django-container-jobs[test,postgres,docs]"
	@$(PYTHON3) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "$(PYTHON3) is older than 3.11; set PYTHON3=python3.11 (or newer)" >&2; exit 1; }
	@test -x $(PY) || $(PYTHON3) -m venv $(VENV)
	@$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,postgres,docs]' \
		>$(VENV)/pip-install.log 2>&1 \
		|| { cat $(VENV)/pip-install.log >&2; echo "FAIL: pip install (log above)" >&2; exit 1; }
	@touch $(STAMP)
	@echo "installed: $$($(PY) -c 'import django, docker; print("Django", django.__version__, "/ docker SDK", docker.__version__)')"

# ---- engine: a Docker engine that answers, and the offline test image --------------------

engine: install
	$(SAY) "engine: Docker at $(ENGINE_URL)"
	@DOCKER_SOCK=$(DOCKER_SOCK) bash scripts/ensure-docker.sh
	@if [ ! -f /bin/busybox ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing busybox-static (for the offline test image)"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static >/dev/null; \
		else echo "FAIL: /bin/busybox is missing: install a static busybox (busybox-static)" >&2; exit 1; fi; \
	fi
	@echo "building $(TEST_IMAGE) (offline, from /bin/busybox) if missing"
	@$(PY) -m container_manager.testing.images $(ENGINE_URL)

# ---- registry: a private registry with htpasswd auth, for the private-image tests ----------

registry:
	$(SAY) "registry: Debian's docker-registry on 127.0.0.1:$(REGISTRY_PORT)"
	@REGISTRY_PORT=$(REGISTRY_PORT) bash scripts/ensure-registry.sh

# ---- kubernetes: a one-node cluster (real apiserver, scheduler, controllers, kubelet) ------

kubernetes: engine
	$(SAY) "kubernetes: one-node v1.20.2 cluster on 127.0.0.1, pods on $(ENGINE_URL)"
	@DOCKER_SOCK=$(DOCKER_SOCK) KUBE_STATE=$(KUBE_STATE) bash scripts/ensure-kubernetes.sh

# ---- demo: one real job, start to end ---------------------------------------------------

demo: install engine
	$(SAY) "demo: migrate the SQLite database (db.sqlite3)"
	@$(MANAGE) migrate --noinput -v 0
	$(SAY) "demo: register this machine's engine as host 'local' (no image pulls)"
	@$(MANAGE) container_host add local --url $(ENGINE_URL) --executor docker --no-pull --update
	$(SAY) "demo: submit a job, run the worker until nothing is left, show the record"
	@JOB=$$($(MANAGE) container_job submit --host local --image $(TEST_IMAGE) --name demo-hello \
		-- sh -c 'echo "Hello from container $$(hostname)"; uname -a'); \
	echo "submitted job $$JOB"; \
	$(MANAGE) process_container_jobs --burst; \
	printf '\n$$ manage.py container_job show %s\n' "$$JOB"; \
	SHOW=$$($(MANAGE) container_job show "$$JOB"); echo "$$SHOW"; \
	printf '\n$$ manage.py container_job logs %s\n' "$$JOB"; \
	$(MANAGE) container_job logs "$$JOB"; \
	grep -q '^Status: *completed$$' <<<"$$SHOW" \
		|| { echo "FAIL: the demo job did not complete" >&2; exit 1; }
	$(SAY) "demo: done"

# ---- test: lint, tests on SQLite and PostgreSQL, coverage gates -------------------------

# pytest with coverage; its exit code 5 ("no tests collected") is a failure too.
pytest_run = rc=0; $(PY) -m pytest --cov=container_manager --cov-report= $(1) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "FAIL: pytest collected no tests" >&2; exit 1; fi; \
	if [ $$rc -ne 0 ]; then echo "FAIL: pytest exited $$rc" >&2; exit $$rc; fi

test: install
	$(SAY) "test: engine"
	@if [ -n "$${CI:-}" ]; then $(MAKE) --no-print-directory engine; \
	else $(MAKE) --no-print-directory engine \
		|| echo "WARNING: no Docker engine; tests that need one are skipped (under CI they fail)"; fi
	$(SAY) "test: private registry"
	@if [ -n "$${CI:-}" ]; then $(MAKE) --no-print-directory registry; \
	else $(MAKE) --no-print-directory registry \
		|| echo "WARNING: no private registry; private-image tests are skipped (under CI they fail)"; fi
	$(SAY) "test: Kubernetes cluster"
	@if [ -n "$${CI:-}" ]; then $(MAKE) --no-print-directory kubernetes; \
	else $(MAKE) --no-print-directory kubernetes \
		|| echo "WARNING: no Kubernetes cluster; the cluster tests are skipped (under CI they fail)"; fi
	$(SAY) "test: browser (Debian's Chromium for the Playwright tests)"
	@if [ -n "$${CI:-}" ]; then bash scripts/ensure-browser.sh; \
	else bash scripts/ensure-browser.sh || echo "WARNING: no Chromium; browser tests are skipped (under CI they fail)"; fi
	$(SAY) "test: ruff check"
	@$(VENV)/bin/ruff check .
	$(SAY) "test: mypy"
	@$(VENV)/bin/mypy container_manager
	@$(MAKE) --no-print-directory package docs
	$(SAY) "test: pytest on SQLite"
	@rm -f .coverage .coverage.*
	@$(call pytest_run,)
	$(SAY) "test: pytest on PostgreSQL ($(PG_URL))"
	@if $(PY) -c 'import psycopg, sys; psycopg.connect(sys.argv[1], connect_timeout=3).close()' \
			'postgres://postgres@$(PG_HOST):$(PG_PORT)/postgres' >/dev/null 2>&1; then \
		export DATABASE_URL='$(PG_URL)'; $(call pytest_run,--cov-append); \
	elif [ -n "$${CI:-}" ]; then \
		echo "FAIL: PostgreSQL does not answer at $(PG_HOST):$(PG_PORT) and CI is set" >&2; exit 1; \
	else \
		echo "WARNING: PostgreSQL does not answer at $(PG_HOST):$(PG_PORT): skipped (under CI this fails)"; \
	fi
	$(SAY) "test: coverage of container_manager (gate $(COV_GATE)%)"
	@$(VENV)/bin/coverage report --fail-under=$(COV_GATE)
	$(SAY) "test: coverage of the Docker executor and DockerService (gate $(DOCKER_GATE)%)"
	@$(VENV)/bin/coverage report --include='$(DOCKER_FILES)' --fail-under=$(DOCKER_GATE)
	$(SAY) "test: all passed"

lint: install
	$(SAY) "lint: ruff check"
	@$(VENV)/bin/ruff check .
	$(SAY) "lint: mypy"
	@$(VENV)/bin/mypy container_manager
	@$(MAKE) --no-print-directory package

# ---- package: the sdist and wheel, checked as PyPI would render them ----------------------

package: install
	$(SAY) "package: python -m build, twine check"
	@rm -rf dist
	@$(PY) -m build --no-isolation --outdir dist . >$(VENV)/build.log 2>&1 \
		|| { cat $(VENV)/build.log >&2; echo "FAIL: python -m build (log above)" >&2; exit 1; }
	@$(VENV)/bin/twine check --strict dist/*

# ---- docs: the documentation site (Sphinx, docs/), warnings as errors ---------------------

docs: install
	$(SAY) "docs: sphinx-build -W docs docs/_build/html"
	@$(PY) -m sphinx -W --keep-going -q -E -b html docs docs/_build/html
	@echo "built docs/_build/html/index.html"

# ---- screenshots: the admin's pages, as the browser tests take them, into the docs --------

screenshots: install engine
	$(SAY) "screenshots: browser tests, then artifacts/screenshots/*.png -> docs/screenshots/"
	@bash scripts/ensure-browser.sh
	@$(PY) -m pytest -q tests/browser
	@cp artifacts/screenshots/*.png docs/screenshots/
	@ls docs/screenshots

clean:
	$(SAY) "clean"
	rm -rf .coverage .coverage.* htmlcov .pytest_cache .ruff_cache build dist *.egg-info docs/_build
	rm -f db.sqlite3 db.sqlite3-wal db.sqlite3-shm
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -print0 | xargs -0 rm -rf

distclean: clean
	rm -rf $(VENV)

# ---- test-matrix: unit + integration suites on Django 6.1/Python 3.13 and 6.0/3.12 (nox) ----

.PHONY: test-matrix
test-matrix: install
	$(SAY) "test-matrix: engine and private registry"
	@$(MAKE) --no-print-directory engine
	@$(MAKE) --no-print-directory registry
	$(SAY) "test-matrix: nox (noxfile.py): Django 6.1 on Python 3.13, Django 6.0 on Python 3.12"
	@$(VENV)/bin/nox --no-color $(NOX_ARGS)
