# Two commands do everything on a fresh machine:  make demo  and  make test.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# A CPU build of torch; a plain "torch" requirement would pull a multi-GB CUDA build.
TORCH  ?= torch==2.13.0

.PHONY: setup lib demo test bench clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml CMakeLists.txt $(wildcard csrc/*.* csrc/snapshot/*.* interpose/*.*)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test,bench]"
	touch $@

# Rebuild libjitc.so after a C++ change and put it where the editable install loads it
# (serialised: several rebuilds in one build dir at once would trip over each other). A new
# file, renamed into place: overwriting the old one in place crashes every process that has it
# mapped (a running test suite).
lib: setup
	flock build/.lock sh -c 'cmake --build build/cp* && dest=$$($(PY) -c "import jitc._lib as l; print(l.lib_path())") && \
	  { cmp -s build/cp*/libjitc.so "$$dest" || { cp build/cp*/libjitc.so "$$dest.tmp" && mv -f "$$dest.tmp" "$$dest"; }; }'

demo: setup
	mkdir -p -m 700 jitc-runs
	$(VENV)/bin/jitc supervise --run-dir jitc-runs/demo --inject crash@rank=1,step=25 -- \
	  $(VENV)/bin/torchrun --nproc-per-node 2 --monitor-interval 0.1 examples/ddp_train.py --steps 60 --save jitc-runs/demo/final.pt

test: setup
	$(PY) -m pytest tests

clean:
	rm -rf $(VENV) build jitc-runs
