# Thin wrapper: everything real is in CMake and scripts/. Needs root (apt-get, namespaces, TUN).
BUILD_DIR ?= build
CMAKE_BUILD_TYPE ?= RelWithDebInfo

.PHONY: all deps test-deps configure build demo test clean format

all: build

deps:
	@scripts/install-deps.sh

test-deps:
	@WITH_TEST_DEPS=1 TOOLS_DIR=$(BUILD_DIR)/tools scripts/install-deps.sh

configure: deps
	@cmake -S . -B $(BUILD_DIR) -G Ninja -DCMAKE_BUILD_TYPE=$(CMAKE_BUILD_TYPE) >/dev/null

build: configure
	@cmake --build $(BUILD_DIR)

# Two agents in two network namespaces, a GRE tunnel created over gRPC, traffic, metrics.
demo: build test-deps
	@BIN_DIR=$(BUILD_DIR)/bin scripts/demo.sh

# The whole suite: unit, namespace and end-to-end tests (the demo included).
test: build test-deps
	@cd $(BUILD_DIR) && ctest --output-on-failure --timeout 300 -j1

format:
	@git ls-files '*.cc' '*.h' | xargs clang-format -i

clean:
	rm -rf $(BUILD_DIR)
