# Two commands do all setup on a fresh machine: `make search` (main job) and `make test`.
# Both create or reuse .venv and install fer-ray into it (editable) first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fer-ray-installed
# Pinned so the same wheels are used everywhere (on this machine torch comes from local disk).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: venv train search test test-fast test-quick lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PINS)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

# The main job: a Ray Tune + Optuna + ASHA search on the built-in synthetic faces.
search: $(STAMP)
	$(PY) -m fer_ray.search $(ARGS)

# One training run (no Ray).
train: $(STAMP)
	$(PY) -m fer_ray.train $(ARGS)

# Two passes: tests that start no Ray and are not slow (unit tests and the bad-input tables:
# hundreds of short CLI subprocesses, mostly Python start-up on one core) run two at a time
# (pytest-xdist); Ray clusters, searches, services and real-data training run one at a time,
# because they use both cores and some of them plan around the time they take.
QUICK := not slow and not ray

# The page test drives Debian's Chromium (no download at test time). Installed here when it
# is missing and this is a root shell with apt-get (CI); otherwise the page test says so.
CHROMIUM := /usr/bin/chromium

$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing chromium (Debian package) for tests/test_serve_page.py"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
	    >/dev/null 2>&1 || echo "note: apt-get install chromium failed"; \
	else echo "note: $(CHROMIUM) is missing (apt-get install chromium, as root)"; fi

# The whole suite (slow tests included), plus ruff and mypy.
test: $(STAMP) $(CHROMIUM)
	$(PY) -m ruff check fer_ray tests scripts
	$(PY) -m mypy fer_ray
	$(PY) -m pytest -m "$(QUICK)" -n 2 --durations=15 $(ARGS)
	$(PY) -m pytest -m "not ($(QUICK))" --durations=25 $(ARGS)

# Quick local loop: slow tests skipped.
test-fast: $(STAMP)
	$(PY) -m pytest $(ARGS)

# Quicker: no slow tests and nothing that starts Ray (unit tests, two at a time).
test-quick: $(STAMP)
	$(PY) -m pytest -m "$(QUICK)" -n 2 $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check fer_ray tests scripts
	$(PY) -m mypy fer_ray

clean:
	rm -rf runs .pytest_cache .mypy_cache .ruff_cache
