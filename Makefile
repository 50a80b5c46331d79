# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean offline-js

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/vilalign demo

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 -m "not slow and not gpu"

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

# d3 and jQuery for bertviz pages that open offline (`vilalign attention` inlines them from
# /usr/share/javascript, or from $VILALIGN_JS_DIR). Debian/Ubuntu packages, installed with
# sudo unless run as root; only when asked for, never by `make demo` or `make test`.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
offline-js:
	@if command -v apt-get >/dev/null 2>&1; then \
		$(SUDO) apt-get install -y libjs-d3 libjs-jquery; \
	else \
		echo "offline-js: no apt-get here; put d3/d3.min.js and jquery/jquery.min.js in a" \
			"folder and set VILALIGN_JS_DIR to it" >&2; exit 1; \
	fi

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
