# Convenience wrapper around CMake. The real build is CMakeLists.txt.
#
#   make deps     install missing Debian packages (scripts/deps.sh)
#   make          configure and build into build/ with -Werror
#   make test     deps + build + every test, then again under ASan/UBSan in
#                 build-asan/ (SANITIZE=0 make test skips the second pass)
#   make run      deps + build + a local cluster (scripts/run-local.sh);
#                 GAME=tag loads the example game (examples/tag) into the
#                 workers (GAME=/path/libmygame.so loads any module)
#   make bench    scripts/bench.sh, if present
#   make install  the binaries, tessera/game.h and tessera-game.pc under
#                 PREFIX (default /usr/local)
#   make format   clang-format -i on every C source and header
#   make format-check  fails if `make format` would change a file (CI runs it)
#   make clean    remove build/ and build-asan/
#   make image    container image of every tessera-* binary (Containerfile;
#                 podman, or docker; IMAGE=tessera:dev BASE_IMAGE=...)
#   make k8s-test the Helm chart on a real single-node Kubernetes brought up
#                 on this machine (tests/k8s/ci.sh), always torn down

BUILD_DIR    ?= build
ASAN_DIR     ?= build-asan
JOBS         ?= 2
SANITIZE     ?= 1
TEST_TIMEOUT ?= 1800
CMAKE_ARGS   ?=
PREFIX       ?= /usr/local

CTEST = timeout -k 30 $(TEST_TIMEOUT) ctest --output-on-failure -j$(JOBS) --timeout 300

FORMAT_SRCS = $(wildcard common/src/*.c common/src/*.h common/include/tessera/*.h \
                         services/*/*.c services/*/*.h tests/unit/*.c tests/unit/*/*.c \
                         tests/unit/*.h tests/integration/*.c tests/integration/*.h \
                         tests/bench/*.c tests/bench/*.h examples/*/*.c)

.PHONY: all build deps test run bench install format format-check clean image k8s-test

all: build

deps:
	scripts/deps.sh

build:
	cmake -S . -B $(BUILD_DIR) -DTS_WERROR=ON $(CMAKE_ARGS)
	cmake --build $(BUILD_DIR) -j$(JOBS)

test: deps
	$(MAKE) --no-print-directory build
	$(CTEST) --test-dir $(BUILD_DIR)
ifneq ($(SANITIZE),0)
	cmake -S . -B $(ASAN_DIR) -DTS_WERROR=ON -DTS_SANITIZE=address,undefined $(CMAKE_ARGS)
	cmake --build $(ASAN_DIR) -j$(JOBS)
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 LSAN_OPTIONS=suppressions=$(CURDIR)/tests/lsan.supp \
		UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
		$(CTEST) --test-dir $(ASAN_DIR)
endif

install: build
	cmake --install $(BUILD_DIR) --prefix $(PREFIX)

run: deps
	$(MAKE) --no-print-directory build
	BUILD_DIR=$(BUILD_DIR) GAME=$(GAME) scripts/run-local.sh

bench:
	@if [ -x scripts/bench.sh ]; then \
		$(MAKE) --no-print-directory build && BUILD_DIR=$(BUILD_DIR) scripts/bench.sh; \
	else \
		echo "make bench: scripts/bench.sh does not exist yet"; \
	fi

format:
	clang-format -i $(FORMAT_SRCS)

# fails (and names the files) if `make format` would change anything
format-check:
	@clang-format --dry-run --Werror $(FORMAT_SRCS) 2>/dev/null || \
		{ echo "make format-check: these files need 'make format':"; \
		  for f in $(FORMAT_SRCS); do clang-format --dry-run --Werror $$f >/dev/null 2>&1 || echo "  $$f"; done; \
		  exit 1; }

clean:
	rm -rf $(BUILD_DIR) $(ASAN_DIR)

# ---- container image and Kubernetes (Containerfile, charts/tessera, tests/k8s)
IMAGE          ?= tessera:dev
BASE_IMAGE     ?= debian:bookworm-slim
CONTAINER_TOOL ?= $(shell command -v podman >/dev/null 2>&1 && echo podman || echo docker)

image:
	$(CONTAINER_TOOL) build -f Containerfile -t $(IMAGE) --build-arg BASE_IMAGE=$(BASE_IMAGE) \
		--build-arg JOBS=$(JOBS) .

k8s-test:
	tests/k8s/ci.sh

# ---- fuzzing (tests/fuzz, scripts/fuzz.sh): libFuzzer targets built with
# clang, ASan and UBSan in build-fuzz/. `make fuzz` runs each target FUZZ_S
# seconds (600); `make fuzz-ci` 20 s each, what CI runs.
FUZZ_S ?= 600
FORMAT_SRCS += $(wildcard tests/fuzz/*.c tests/fuzz/*.h)

.PHONY: fuzz fuzz-ci
fuzz:
	FUZZ_S=$(FUZZ_S) scripts/fuzz.sh

fuzz-ci:
	FUZZ_S=20 scripts/fuzz.sh
