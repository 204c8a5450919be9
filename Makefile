# carpulse: `make demo` and `make test` work on a fresh Debian/Ubuntu machine as root.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= edge,stream,models,crm,vision,local,dashboards,dev
APT_PACKAGES := mosquitto influxdb postgresql victoria-metrics chromium prometheus
# fonts-noto-cjk: the browser tests and screenshots of the zh-CN member page render Chinese
APT_PACKAGES += fonts-noto-cjk
# fonts-dejavu-core, fonts-liberation, WenQuanYi and AR PL: Chinese characters, letters and digits
# in more fonts for the plate-line model's training plates and `carpulse plates synth --font` test
# sets (train_line.TRAIN_CJK / HELD_OUT_FONTS say which font is for which)
APT_PACKAGES += fonts-dejavu-core fonts-liberation fonts-wqy-zenhei fonts-wqy-microhei
APT_PACKAGES += fonts-arphic-uming fonts-arphic-ukai fonts-arphic-gbsn00lp fonts-arphic-gkai00mp
APT_PACKAGES += fonts-droid-fallback
# docker-compose: `docker-compose config` checks deploy/docker/compose.yaml (tests/unit/deploy)
APT_PACKAGES += docker-compose
# gcc + Python headers: `carpulse edge build-kernels` compiles the edge agent's kernels (kernels target)
APT_PACKAGES += gcc python3-dev
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup apt venv kafka kernels test test-full lint typecheck unit integration demo stack-up stack-down clean

setup: apt venv kafka kernels ## install everything: apt packages, .venv, the package with its extras, Kafka, AOT kernels

kafka: venv ## fetch the pinned Apache Kafka broker from Maven Central into the jar cache (once)
	@$(BIN)/carpulse stack fetch-kafka

kernels: venv ## the edge agent's kernels compiled ahead of time into .carpulse/edge/kernels (no LLVM at run time)
	@$(BIN)/carpulse edge build-kernels

apt:
	@missing=""; \
	for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	$(PYTHON) -c 'import ensurepip, venv' >/dev/null 2>&1 || missing="$$missing python3-venv"; \
	command -v java >/dev/null 2>&1 || missing="$$missing openjdk-17-jre-headless"; \
	command -v mvn >/dev/null 2>&1 || missing="$$missing maven"; \
	if [ -n "$$missing" ]; then \
	  echo "apt: installing$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "carpulse needs Python >= 3.11"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[$(EXTRAS)]'
	@touch $@

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

unit: setup
	$(BIN)/pytest -m "not integration and not reliability and not browser"

# make test runs pytest three times over the same tests/, the marker expressions complementary:
# 1. the tests that start no service, on TEST_JOBS processes (pytest-xdist; they only compute, so
#    the two cores halve them);
# 2. those that start services, on TEST_JOBS processes too, a file to a process (they mostly wait
#    for services, so two side by side take less time; each process has its own stack and picks
#    ports from a range of its own, CARPULSE_FREE_PORTS, set in tests/conftest.py);
# 3. alone: the reliability tests (kill -9, outages, failover: a busy neighbour slows recoveries
#    into their known stalls) and those that count work in a wall-clock window (`serial`).
# TEST_JOBS=0: no worker processes (pytest-xdist's -n 0), every test in one process as before
TEST_JOBS ?= 2
ALONE_TESTS := reliability or serial
SERIAL_TESTS := integration or browser or $(ALONE_TESTS)
# the kernel tests' files (a file that marks a test `kernel` names pytest.mark.kernel)
KERNEL_TESTS = $(shell grep -rl --include='*.py' 'mark\.kernel' tests)

test: setup ## every test: lint, types, unit, integration (starts its own stack on free ports)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest -n $(TEST_JOBS) -m "not ($(SERIAL_TESTS))"
	$(BIN)/pytest -n $(TEST_JOBS) --dist loadfile -m "(integration or browser) and not ($(ALONE_TESTS))"
	$(BIN)/pytest -m "$(ALONE_TESTS)"
	@# Kernels once more in plain Python, so coverage sees their bodies and a JIT-only bug shows.
	NUMBA_DISABLE_JIT=1 $(BIN)/pytest -q -n $(TEST_JOBS) -m "kernel and not slow" -p no:cacheprovider $(KERNEL_TESTS) || [ $$? -eq 5 ]

test-full: ## make test with the long extras: the faults eval also kills the KRaft controller
	CARPULSE_FAULTS_FULL=1 $(MAKE) test

demo: setup ## start the local stack and the pipeline, drive a simulated fleet; Ctrl-C stops all
	$(BIN)/carpulse demo

stack-up: setup
	$(BIN)/carpulse stack up

stack-down:
	$(BIN)/carpulse stack down

clean:
	-$(BIN)/carpulse stack down
	rm -rf .carpulse .pytest_cache .mypy_cache .ruff_cache
