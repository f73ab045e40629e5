# Two commands that work on a fresh machine:
#   make demo   set up everything and run the embedded default (emoji categories, EfficientNet-Lite0)
#   make test   set up everything and run the test suite
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-fast bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/transfuse demo

# two workers, one test file each at a time (module fixtures built once); the slowest files first
test: setup
	.venv/bin/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile --durations=15

test-fast: setup
	.venv/bin/python -m pytest -q -m "not real"

clean:
	rm -rf runs .pytest_cache
