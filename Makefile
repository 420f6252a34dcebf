# The two commands of the README: `make run` and `make test`. Both create .venv if missing.
PYTHON ?= python3
VENV ?= .venv
# A CPU build of torch by default; a GPU user overrides it, for example:
#   make run TORCH_SPEC='torch==2.13.0' TORCH_PIP_ARGS='--index-url <your CUDA wheel index>'
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# supervisord, for its integration test only (tests/system/test_supervisord.py), in a venv of its
# own: its import name, `supervisor`, is this project's too. Where it cannot be installed,
# that test is skipped and says why.
SUPERVISORD_VENV ?= .venv-supervisord
SUPERVISORD_STAMP := $(SUPERVISORD_VENV)/.installed

.PHONY: install run test bench example-config clean

install: $(STAMP)

# torch goes in first and pinned, so that the project's range (torch>=2.2) installs nothing more.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check '$(TORCH_SPEC)' $(TORCH_PIP_ARGS)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/docbrainctl start --foreground

$(SUPERVISORD_STAMP):
	-test -x $(SUPERVISORD_VENV)/bin/python || $(PYTHON) -m venv $(SUPERVISORD_VENV)
	-$(SUPERVISORD_VENV)/bin/python -m pip install -q --disable-pip-version-check 'supervisor==4.3.0' && touch $@

# The types, the import contracts of the rooms ([tool.importlinter] in pyproject.toml),
# then tests/unit (pure modules: seconds) and tests/system (real daemons and signals).
test: $(STAMP) $(SUPERVISORD_STAMP)
	$(BIN)/python -m mypy supervisor workers
	$(BIN)/lint-imports
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

# etc/docbrain.toml is generated from the settings' definitions (supervisor/conf/settings.py),
# the systemd units and launchd plist in etc/ by the code of install-service
# (supervisor/service/units.py).
example-config: $(STAMP)
	$(BIN)/docbrainctl config --example > etc/docbrain.toml
	$(BIN)/python -m supervisor.service.units etc

clean:
	rm -rf $(VENV) $(SUPERVISORD_VENV) *.egg-info
