# Everything a developer or CI runs. The virtualenv and the control-plane binaries
# live in a cache outside the checkout, so a second run starts in seconds.
CACHE ?= $(or $(DIGESTGUARD_CACHE),$(HOME)/.cache/digestguard)
PYTHON ?= python3
# Keyed by the dependency tables only: a lint-config edit must not rebuild the venv.
VENV ?= $(CACHE)/venv-$(shell sed -n '/^\[project\]/,/^\[project.scripts\]/p' pyproject.toml | sha256sum | cut -c1-12)
BIN := $(VENV)/bin
PYTEST_ARGS ?=
IMAGE_ARGS ?=

.PHONY: venv relink assets test lint chart-docs demo image clean-venv

venv: $(VENV)/.installed

# The venv's name carries the dependencies' hash, so changed dependencies get a new one.
$(VENV)/.installed:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,lint]'
	touch $@

# The editable install points at one checkout; re-point it at this one (cheap). Its
# build warnings go to a log, shown only if it fails.
relink: venv
	@$(BIN)/pip install --quiet --no-deps -e . >$(VENV)/relink.log 2>&1 || { cat $(VENV)/relink.log; exit 1; }

assets:
	@hack/envtest-assets.sh >/dev/null

## The whole test suite: unit, integration and end-to-end (with the local control plane).
test: relink assets
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: relink
	$(BIN)/ruff check webhook tests hack bench
	$(BIN)/ruff format --check webhook tests hack bench
	$(BIN)/mypy
	$(BIN)/lint-imports
	@helm_docs="$$(hack/helm-docs.sh | tail -n1)" && \
	  "$$helm_docs" --log-level warning --chart-search-root charts --sort-values-order file --dry-run \
	    | diff -u charts/digestguard/README.md - \
	  || { echo "charts/digestguard/README.md is out of date: run make chart-docs" >&2; exit 1; }

# The chart README's values table, from the `# --` comments of values.yaml.
chart-docs:
	@helm_docs="$$(hack/helm-docs.sh | tail -n1)" && \
	  "$$helm_docs" --log-level warning --chart-search-root charts --sort-values-order file

## The webhook's container image as an OCI image layout, without a container engine
## (needs mmdebstrap; the last line printed is <layout>@<digest>).
image: relink
	$(BIN)/python hack/image.py $(IMAGE_ARGS)

## A local cluster, an ECR emulator and the webhook, to try by hand until Ctrl-C.
demo: relink assets
	$(BIN)/python hack/demo.py

clean-venv:
	rm -rf $(VENV)
