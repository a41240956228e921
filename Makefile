# mechinterp_c: `make demo` runs the main job, `make test` the test suite.
# Both install what they need first and are safe to run again.
PYTHON ?= python3
PIP = $(PYTHON) -m pip install -q --disable-pip-version-check
STAMP = build/.stamp
# Wait up to 10 minutes for another apt/dpkg run to release its lock instead of failing.
APT_WAIT = -o DPkg::Lock::Timeout=600
# The oldest NumPy pyproject.toml admits, in a venv of its own: the tests that need
# nothing but NumPy run there, so the declared floor is a tested one.
OLDEST_NUMPY = 1.23.5
OLDEST_NUMPY_VENV = build/venv-numpy-$(OLDEST_NUMPY)
OLDEST_NUMPY_TESTS = tests/test_analysis_percentile.py tests/test_bridge.py tests/test_checkpoints.py \
  tests/test_gemm.py tests/test_gpt2.py tests/test_gpt2_zero_copy.py tests/test_hooked_transformer.py \
  tests/test_tokenizer.py tests/test_utils.py

.PHONY: demo demo-distributed deps-distributed test test-oldest-numpy build deps-system deps-test deps-notebooks sanitize bench clean fuzz deps-fuzz

deps-system:
	@if ! pkg-config --exists libcjson 2>/dev/null; then \
	  echo "installing libcjson-dev and pkg-config (apt-get)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get $(APT_WAIT) update -qq && $$SUDO apt-get $(APT_WAIT) install -y -qq libcjson-dev pkg-config; \
	fi

$(STAMP)-test: requirements-test.txt
	$(PIP) torch==2.13.0
	$(PIP) -r requirements-test.txt
	@mkdir -p build && touch $@

$(STAMP)-notebooks: requirements-notebooks.txt
	$(PIP) -r requirements-notebooks.txt
	@mkdir -p build && touch $@

deps-test: $(STAMP)-test
deps-notebooks: $(STAMP)-notebooks

build: deps-system
	$(PYTHON) -m pip install -q --disable-pip-version-check "numpy>=2.0" setuptools wheel
	$(PYTHON) setup.py -q build_ext --inplace

# The suite, then the runtime floor (oldest NumPy), then the sanitizer job.
test: deps-test deps-notebooks build
	$(PYTHON) -m pytest -q tests
	$(MAKE) test-oldest-numpy
	$(MAKE) sanitize

test-oldest-numpy: build
	@[ -x $(OLDEST_NUMPY_VENV)/bin/python ] || $(PYTHON) -m venv $(OLDEST_NUMPY_VENV)
	$(OLDEST_NUMPY_VENV)/bin/python -m pip install -q --disable-pip-version-check numpy==$(OLDEST_NUMPY) pytest
	$(OLDEST_NUMPY_VENV)/bin/python -m pytest -q -p no:cacheprovider $(OLDEST_NUMPY_TESTS)

demo: deps-notebooks build
	$(PYTHON) -m mechinterp_c.demo

# Corpus statistics on a Dask LocalCluster of 2 workers (the `distributed` extra).
deps-distributed:
	$(PIP) "dask[distributed]==2026.8.0" tqdm

demo-distributed: deps-distributed build
	$(PYTHON) -m mechinterp_c.demo_distributed

# The kernel and loader tests under AddressSanitizer + UBSan: a separate build
# in build/asan, the ASan runtime preloaded into the interpreter.
sanitize: deps-test deps-system
	rm -rf build/asan && mkdir -p build/asan
	cp -r mechinterp_c build/asan/
	# Drop the copied in-place _core: build_ext would find it newer than the
	# sources and skip the instrumented build. --force for the same reason.
	rm -f build/asan/mechinterp_c/*.so
	MI_SANITIZE=1 $(PYTHON) setup.py -q build_ext --force --build-temp build/asan/tmp --build-lib build/asan
	@nm -D build/asan/mechinterp_c/_core*.so | grep -q __asan_init \
	  || { echo "sanitize: build/asan/mechinterp_c/_core is not instrumented"; exit 1; }
	cd build/asan && ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	  PYTHONPATH=. MI_SANITIZE=1 $(PYTHON) -m pytest -q -p no:cacheprovider $(CURDIR)/tests -m "not slow" -k "not parity" \
	  --ignore=$(CURDIR)/tests/test_notebooks.py --ignore=$(CURDIR)/tests/test_notebook_reve.py

bench: build deps-test
	for f in bench/*.py; do PYTHONPATH=$(CURDIR) $(PYTHON) $$f || exit 1; done

# libFuzzer targets: every csrc/fuzz/fuzz_*.c (entry point LLVMFuzzerTestOneInput),
# each linked with all of csrc/io and csrc/common + cJSON, built with clang
# -fsanitize=fuzzer,address,undefined into build/fuzz/ and run FUZZ_SECONDS
# seconds. A target NAME may bring seeds (csrc/fuzz/NAME.seeds.py CORPUS_DIR)
# and a dictionary (csrc/fuzz/NAME.dict). Crashes land in build/fuzz/NAME-*.
FUZZ_SECONDS ?= 60
FUZZ_CC ?= clang
FUZZ_DIR = build/fuzz
FUZZ_CFLAGS = -std=gnu11 -g -O1 -fno-omit-frame-pointer -fopenmp \
  -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -Icsrc

deps-fuzz:
	@if ! command -v $(FUZZ_CC) >/dev/null 2>&1 || \
	    ! ls /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a >/dev/null 2>&1 || \
	    ! ls /usr/lib/llvm-*/lib/libomp.so >/dev/null 2>&1; then \
	  echo "installing clang, libFuzzer and libomp (apt-get)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get $(APT_WAIT) update -qq && $$SUDO apt-get $(APT_WAIT) install -y -qq clang libclang-rt-14-dev libomp-14-dev; \
	fi

fuzz: deps-system deps-fuzz
	@mkdir -p $(FUZZ_DIR)
	@set -e; for src in csrc/fuzz/fuzz_*.c; do \
	  name=$$(basename $$src .c); \
	  echo "== $$name: build"; \
	  $(FUZZ_CC) $(FUZZ_CFLAGS) $$(pkg-config --cflags libcjson) $$src csrc/io/*.c csrc/common/*.c \
	    $$(pkg-config --libs libcjson) -lm -o $(FUZZ_DIR)/$$name; \
	  corpus=$(FUZZ_DIR)/corpus/$$name; mkdir -p $$corpus; \
	  if [ -f csrc/fuzz/$$name.seeds.py ]; then $(PYTHON) csrc/fuzz/$$name.seeds.py $$corpus; fi; \
	  dict=; if [ -f csrc/fuzz/$$name.dict ]; then dict=-dict=csrc/fuzz/$$name.dict; fi; \
	  echo "== $$name: fuzz for $(FUZZ_SECONDS) s"; \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ASAN_OPTIONS=detect_leaks=1 \
	  OMP_NUM_THREADS=1 $(FUZZ_DIR)/$$name $$corpus $$dict -max_total_time=$(FUZZ_SECONDS) \
	    -rss_limit_mb=2048 -artifact_prefix=$(FUZZ_DIR)/$$name- -print_final_stats=1; \
	done

clean:
	rm -rf build mechinterp_c/*.so
