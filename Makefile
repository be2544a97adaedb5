# The README's two commands: `make demo` starts the app, `make test` runs the test suite.
# Both create the virtual environment (.venv) on first use and install requirements into it.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test browser clean checkpoint

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python app.py $(ARGS)

# Headless Chromium for the end-to-end browser test (Debian's package; Playwright's own browser
# download is never used). Without root or apt the browser test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null); } || \
		echo "chromium not installed: the browser test will be skipped"

test: $(STAMP) browser
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) test-output .pytest_cache

# Re-train the default checkpoint (12,000 steps: about an hour on one H100, days on a 2-core CPU),
# then re-pick the examples gallery (assets/) from held-out scenes the new model gets right.
checkpoint: $(STAMP)
	$(BIN)/python -m magnet train --config magnet/configs/small-synthetic.yaml --out-dir runs/small-synthetic
	$(BIN)/python -m magnet convert runs/small-synthetic/best.safetensors checkpoints/magnet-small-synthetic.safetensors --half
	$(BIN)/python -m magnet.gallery --checkpoint checkpoints/magnet-small-synthetic.safetensors --out assets
