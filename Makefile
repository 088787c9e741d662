# scipion-em-cryoralign: everyday commands. No activated venv needed: everything runs .venv/bin/python.
#
#   make venv    create .venv (with the python3 on PATH) and install the plugin + test tools + MPI
#   make test    run the whole test suite (slow tests included)
#   make demo    run the headless demo workflow (writes demo_output/)
#   make bench   run the search benchmark
#   make clean   remove build products and caches (keeps .venv; `make distclean` removes it too)

PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
STAMP  := $(VENV)/.cryoralign-installed

.PHONY: venv test demo bench clean distclean

venv: $(STAMP)
	@# Xvfb lets the GUI test open Scipion's windows headless; installed only as root with apt-get,
	@# never fatal (without it that one test is skipped).
	@command -v Xvfb >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Xvfb (for the GUI test)"; \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq xvfb >/dev/null; } || \
	      echo "warning: could not install xvfb; the GUI test will be skipped" >&2; \
	  else echo "note: Xvfb is missing (apt-get install xvfb); the GUI test will be skipped"; fi; }

# Re-installs only when the packaging files change; the stamp keeps `make venv` fast otherwise.
$(STAMP): setup.py requirements.txt
	@test -x $(VPY) || { \
	  $(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 8))' || \
	    { echo "error: $(PYTHON) is older than Python 3.8; run 'make venv PYTHON=python3.11' (3.8-3.11)" >&2; exit 1; }; \
	  $(PYTHON) -c 'import tkinter' 2>/dev/null || \
	    { echo "error: $(PYTHON) has no tkinter, which Scipion imports; install it (Debian/Ubuntu: apt-get install python3-tk) or pick another python: make venv PYTHON=/path/to/python3" >&2; exit 1; }; \
	  echo "creating $(VENV) with $$(command -v $(PYTHON))"; $(PYTHON) -m venv $(VENV); }
	$(VPY) -m pip install -e '.[test]' mpich
	@touch $(STAMP)

test: venv
	$(VPY) -m pytest -q cryoralign_plugin/tests

demo: venv
	$(VPY) -m cryoralign_plugin.demo

bench: venv
	$(VPY) benchmarks/bench_search.py

clean:
	rm -rf build dist .eggs *.egg-info .pytest_cache demo_output
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
