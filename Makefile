# caffeseg — the two commands a fresh machine needs are `make serve` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 5000
# empty: the default data folder of every caffeseg command ($CAFFESEG_DATA or ~/.caffeseg)
DATA   ?=
PYTEST_ARGS ?=

.PHONY: install serve test proto check-proto browser-deps graphviz-deps lint-py39 bench clean caffe

install: $(STAMP)

# Re-install only when the project description changes; torch comes from the CPU wheel on disk.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test]'
	touch $(STAMP)

serve: install
	$(VENV)/bin/caffeseg serve --host $(HOST) --port $(PORT) $(if $(DATA),--data $(DATA))

# Chromium for the browser tests comes from Debian; installed only when missing.
browser-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian chromium for browser tests"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "WARNING: could not install chromium; browser tests will be skipped"; }

# Real BVLC Caffe (CPU, pycaffe) for the pycaffe backend, built once per machine into
# ~/.cache/caffeseg/ (docker/build_caffe.sh; Debian packages installed when missing).
caffe:
	docker/build_caffe.sh

# Graphviz's `dot` renders caffe.draw's graphs (BVLC's test_draw); from Debian, only when missing.
graphviz-deps:
	@command -v dot >/dev/null 2>&1 || { \
	  echo "installing Debian graphviz for caffe.draw"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq graphviz >/dev/null) \
	  || echo "WARNING: could not install graphviz; caffe.draw rendering tests will fail"; }

test: install browser-deps graphviz-deps
	$(PY) -m pytest $(PYTEST_ARGS)

# Regenerate engine/proto/caffe_pb2.py from engine/proto/caffe.proto with the pinned protoc.
proto: install
	$(PY) -m grpc_tools.protoc -Iengine/proto --python_out=engine/proto engine/proto/caffe.proto

bench: install
	$(PY) bench/engine_speed.py

clean:
	rm -rf $(VENV) .pytest_cache
