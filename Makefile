# Every target installs what it needs into .venv first (python3 -m venv + the pinned requirements.lock).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-chaos lint validate-deploy bench bench-long bench-learn bench-replicas lock clean

install: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/cekura-worker demo

# Three pytest workers (pytest-xdist; each module stays on one), each with its own Redis database (15, 14, 13):
# most tests wait on Redis, real processes and the simulator, so three keep two cores busy.
test: $(STAMP)
	$(PY) -m pytest -q -n 3 --dist loadfile

test-chaos: $(STAMP)
	CHAOS_JOBS=$${CHAOS_JOBS:-400} $(PY) -m pytest -q -m chaos

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/hadolint Dockerfile

# Render deploy/overlays/* and check them, the alert rules and the dashboard offline (needs kubectl and promtool).
validate-deploy: $(STAMP)
	$(PY) deploy/validate.py

bench: $(STAMP)
	$(PY) -m bench --mode short

bench-long: $(STAMP)
	$(PY) -m bench --mode long

# Learned polling schedules against the declared ones, side by side, on log-normal per-kind durations (~4 min).
bench-learn: $(STAMP)
	$(PY) -m bench --mode learn

# CEKURA_REDIS_MIN_REPLICAS 1 against 0, both on a Redis with one replica, beside plain cekura-worker: 3 rounds
# in turn, medians (~10 min).
bench-replicas: $(STAMP)
	$(PY) -m bench --mode replicas --repeat 3 --out bench/out/replicas

# Re-pin requirements.lock after changing pyproject.toml (needs uv: pip install uv).
lock:
	uv pip compile pyproject.toml --extra dev --extra bench -o requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
