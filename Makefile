# Two commands on a fresh machine: `make demo` and `make test`.
# PyTorch is installed first and pinned (torch==2.13.0, the CPU wheel on this machine's disk);
# any looser spec may pull a multi-GB CUDA build.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.fedloom-installed

.PHONY: demo test lint docs bench proto clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev,docs]"
	touch $(STAMP)

# `make demo` is meant to be rerun: it replaces runs/demo (`fedloom demo` by itself refuses to
# replace an earlier run, as `fedloom run` does).
demo: $(STAMP)
	$(PY) -m fedloom demo --overwrite

# the suite runs only on linted code: `make test` fails when `make lint` does
test: lint
	$(PY) -m pytest tests

# ruff (rules in pyproject.toml) and mypy --strict on the package ([tool.mypy] in pyproject.toml)
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/mypy src/fedloom

# the documentation site (mkdocs.yml, docs/) into site/, warnings as errors; `make test` builds
# it too and runs every snippet of the site and the README (tests/docs/)
docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict

bench: $(STAMP)
	$(PY) benchmarks/overhead.py
	$(PY) benchmarks/fedavg_mnist.py

# Regenerate the gRPC modules from the committed .proto (the generated files are committed).
proto: $(STAMP)
	cd src/fedloom/runtime/proto && ../../../../$(PY) -m grpc_tools.protoc -I. \
		--python_out=. --grpc_python_out=. fedloom.proto
	sed -i 's/^import fedloom_pb2 as/from . import fedloom_pb2 as/' \
		src/fedloom/runtime/proto/fedloom_pb2_grpc.py

clean:
	rm -rf runs benchmarks/results .pytest_cache site
