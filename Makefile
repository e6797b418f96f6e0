PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install browser test demo bench bench-quick bench-gpu bench-load clean

install: $(STAMP)

# Torch is pinned first so that pip takes the CPU build from this machine's disk;
# the package itself only asks for a range that 2.13.0 satisfies.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev,dask]'
	touch $(STAMP)

# The report's browser test drives Debian's Chromium through Playwright (no browser download).
# Install it when it is missing and we can (root with apt-get); otherwise that one test skips, saying why.
browser:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing chromium for the report's browser test (apt-get)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
	    || echo "warning: apt-get could not install chromium; tests/test_report_browser.py will skip"; \
	else echo "note: chromium is missing and cannot be installed here (needs root and apt-get); the browser test will skip"; fi

test: install browser
	$(BIN)/python -m pytest

demo: install
	$(BIN)/reglab demo

bench: install
	$(BIN)/python benchmarks/run.py

bench-quick: install
	$(BIN)/python benchmarks/run.py --quick

# Populations against a PyTorch loop and a torch.func ensemble on a CUDA GPU (says why and exits 0 without one).
bench-gpu: install
	$(BIN)/python benchmarks/gpu.py

# 2,000 one-member tasks through `reglab run`, local and on a 2-worker Dask cluster: wall time and peak RSS.
bench-load: install
	$(BIN)/python benchmarks/load.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
