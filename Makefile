# Thin wrapper: everything real is in CMake and scripts/. Needs root (apt-get, namespaces, TUN).
BUILD_DIR ?= build
CMAKE_BUILD_TYPE ?= RelWithDebInfo
FUZZ_BUILD_DIR ?= build-fuzz
FUZZ_RUNS ?= 10000000
TSAN_BUILD_DIR ?= build-tsan

.PHONY: all deps test-deps bench-deps fuzz-deps configure build demo demo-fleet test bench \
  microbench fuzz tsan clean format

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

# A fleet on etcd in network namespaces: a 3-member etcd, two controllers (one leads), agents
# registering themselves; a node joining, the leader killed, a node leaving, with timings.
demo-fleet: build test-deps
	@BIN_DIR=$(BUILD_DIR)/bin scripts/demo_fleet.sh

# The whole suite: unit, namespace and end-to-end tests (the demo included).
test: build test-deps
	@cd $(BUILD_DIR) && ctest --output-on-failure --timeout 300 -j1

bench-deps:
	@WITH_BENCH_DEPS=1 scripts/install-deps.sh

# Dataplane benchmark (not a test; exit 0 whatever the figures): plain veth, the naive GRE
# forwarder from ../shared/bench (when present) and the agent in GRE and IPIP, in namespaces of
# its own; iperf3, ping, the agent's CPU per gigabit, 1,000 tunnels; ratios to veth and naive.
# REPS (default 3) and DUR (seconds, default 5) from the environment; BENCH_JSON=path too.
bench: build bench-deps
	@BIN_DIR=$(BUILD_DIR)/bin tests/bench/dataplane_bench.sh

# Google Benchmark micro-benchmarks of the per-packet code; MICROBENCH_ARGS are passed on
# (e.g. MICROBENCH_ARGS=--benchmark_filter=Lookup).
microbench: build
	@$(BUILD_DIR)/tests/dataplane_microbench $(MICROBENCH_ARGS)

fuzz-deps:
	@WITH_FUZZ_DEPS=1 scripts/install-deps.sh

# libFuzzer on the receive path (Decapsulate, the tunnel demux, re-encapsulation) with ASan and
# UBSan: clang, its own build directory, only the fuzz target built. Runs on a copy of the
# checked-in seed corpus (tests/fuzz/receive_corpus/), which `make test` replays with g++.
fuzz: fuzz-deps
	@cmake -S . -B $(FUZZ_BUILD_DIR) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DTUNNEL_AGENT_FUZZ=ON >/dev/null
	@cmake --build $(FUZZ_BUILD_DIR) --target receive_fuzzer
	@rm -rf $(FUZZ_BUILD_DIR)/receive_corpus $(FUZZ_BUILD_DIR)/artifacts
	@cp -r tests/fuzz/receive_corpus $(FUZZ_BUILD_DIR)/receive_corpus
	@mkdir -p $(FUZZ_BUILD_DIR)/artifacts
	@echo "fuzz: receive_fuzzer, $(FUZZ_RUNS) runs, log in $(FUZZ_BUILD_DIR)/receive_fuzzer.log"
	@$(FUZZ_BUILD_DIR)/tests/receive_fuzzer -runs=$(FUZZ_RUNS) -print_final_stats=1 \
	  -artifact_prefix=$(FUZZ_BUILD_DIR)/artifacts/ $(FUZZ_BUILD_DIR)/receive_corpus \
	  >$(FUZZ_BUILD_DIR)/receive_fuzzer.log 2>&1 || \
	  { tail -n 60 $(FUZZ_BUILD_DIR)/receive_fuzzer.log; ls $(FUZZ_BUILD_DIR)/artifacts; exit 1; }
	@grep -E '^Done [0-9]+ runs|^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' \
	  $(FUZZ_BUILD_DIR)/receive_fuzzer.log

# ThreadSanitizer run of the engine tests (both backends, the worker pool) and the manager tests,
# with clang's thread-safety analysis as errors: clang, its own build directory (abseil rebuilt
# with TSan there once), only the test targets built. Fails on any race report. Needs root.
tsan:
	@TSAN_BUILD_DIR=$(TSAN_BUILD_DIR) scripts/tsan.sh

format:
	@git ls-files '*.cc' '*.h' | xargs clang-format -i

clean:
	rm -rf $(BUILD_DIR)
