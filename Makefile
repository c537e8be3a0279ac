# Two commands for a newcomer: `make demo` and `make test`. Both set up .venv on first use.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.pixelrefer-setup
# Every process of ours talks only over loopback (the default DDS discovery multicasts off-host).
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
export FASTDDS_DEFAULT_PROFILES_FILE := $(CURDIR)/config/fastdds_shm.xml
export AMENT_PREFIX_PATH := $(CURDIR)/$(VENV)

.PHONY: setup demo test lint clean

setup: $(STAMP)

$(STAMP): requirements.txt setup.py scripts/setup_env.sh msg/CMakeLists.txt $(wildcard msg/msg/*.msg msg/srv/*.srv)
	bash scripts/setup_env.sh
	touch $@

demo: setup
	$(PY) scripts/demo.py

test: setup
	$(PY) -m pytest -q tests

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf build install log $(VENV)
