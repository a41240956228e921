# mechinterp_c: `make demo` runs the main job, `make test` the test suite.
# Both install what they need first and are safe to run again.
PYTHON ?= python3
PIP = $(PYTHON) -m pip install -q --disable-pip-version-check
STAMP = build/.stamp

.PHONY: demo test build deps-system deps-test deps-notebooks sanitize bench clean

deps-system:
	@if ! pkg-config --exists libcjson 2>/dev/null; then \
	  echo "installing libcjson-dev and pkg-config (apt-get)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq libcjson-dev pkg-config; \
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

test: deps-test deps-notebooks build
	$(PYTHON) -m pytest -q tests

demo: deps-notebooks build
	$(PYTHON) -m mechinterp_c.demo

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
	  PYTHONPATH=. MI_SANITIZE=1 $(PYTHON) -m pytest -q -p no:cacheprovider $(CURDIR)/tests -m "not slow" -k "not parity"

bench: build deps-test
	for f in bench/*.py; do $(PYTHON) $$f || exit 1; done

clean:
	rm -rf build mechinterp_c/*.so
