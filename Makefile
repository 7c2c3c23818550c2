# The two commands the README promises, plus benchmarks.
#   make demo   - the whole scenario on embedded defaults (test:///default, a temp dir)
#   make test   - installs what it needs (apt as root, a venv, pip), then every test + ruff + mypy
#   make bench  - benchmarks; figures are ratios against a baseline from the same run
#   make deb    - the Debian packages xen-channel-backend and xen-channel-guest, in
#                 $(DEB_OUT) (lintian-checked; docs/packaging.md)
VENV   ?= .venv
PY     := $(VENV)/bin/python
DEB_OUT ?= build/deb
export VENV

.PHONY: deps demo test lint unit bench clean deb

deps:
	sh scripts/install-deps

demo: deps
	$(PY) scripts/demo.py

lint: deps
	$(VENV)/bin/ruff check xen_channel_backend tests bench scripts
	$(VENV)/bin/mypy

# pytest's exit 5 ("no tests ran") must fail CI, and does: it is non-zero.
test: deps lint
	$(PY) -m pytest -p no:cacheprovider

deb: deps
	sh scripts/build-deb $(DEB_OUT)

bench: deps
	@set -e; for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b; done

clean:
	rm -rf $(VENV) build *.egg-info tests/_build
