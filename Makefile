# parkd: two commands on a fresh clone (README.md).
#   make test   create .venv, install parkd with its test extras, run the whole suite
#   make demo   create .venv, install parkd, run a local 3-node cluster + 3 cameras until Ctrl-C

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# compat mode puts the checkout on sys.path, so twisted/plugins/parkd_plugin.py is found.
INSTALL := $(BIN)/pip install --quiet --disable-pip-version-check --config-settings editable_mode=compat

.PHONY: test demo proto soak bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python setup.py
	$(INSTALL) -e .
	$(BIN)/python -m parkd.plugin_cache
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(INSTALL) -e '.[test]'
	touch $@

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest

demo: $(VENV)/.installed
	$(BIN)/python -m parkd.demo --config etc/parkd.toml

# Regenerate parkd/proto/parkd_pb2.py from proto/ (tests/test_proto.py checks it is current).
proto: $(VENV)/.installed-test
	$(BIN)/protoc -Iproto --python_out=parkd/proto proto/parkd.proto

# Long runs, not part of `make test`: the Raft simulation over 5,000 seeds each, then 50
# two-minute fault schedules on real clusters (summary table in run/soak-summary.md).
soak: $(VENV)/.installed-test
	$(BIN)/python -m parkd.raft.sim --seeds 5000 --steps 2000 --nodes 3
	$(BIN)/python -m parkd.raft.sim --seeds 5000 --steps 2000 --nodes 5
	mkdir -p run
	$(BIN)/python -m parkd.chaos.nemesis --seeds 50 --duration 120 --summary run/soak-summary.md

# Benchmarks (not part of `make test`): one table, every row measured in the same run;
# PySyncObj is installed into benchmarks/.venv-peer, etcd with apt-get (benchmarks/peer_etcd.py).
bench: $(VENV)/.installed-test
	mkdir -p run
	$(BIN)/python benchmarks/bench.py --json-out run/bench.json

clean:
	rm -rf $(VENV) build *.egg-info
