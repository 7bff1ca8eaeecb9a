#!/bin/bash
# Installs the Debian packages tunnel-agent builds and tests with, when missing, and the
# `buf` CLI (npm @bufbuild/buf) the integration tests use as a gRPC client nobody here wrote.
# Idempotent and quiet when everything is present. Needs root on a fresh machine.
set -euo pipefail

BUILD_PACKAGES=(cmake ninja-build g++ pkg-config make
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev
  prometheus-cpp-dev liburing-dev libmnl-dev libyaml-cpp-dev libgtest-dev libgmock-dev
  libbenchmark-dev golang-etcd-server-dev)
TEST_PACKAGES=(iproute2 iputils-ping iperf3 procps psmisc curl jq
  python3 python3-grpcio python3-protobuf tshark prometheus openssl
  yamllint systemd python3-seccomp util-linux python3-yaml shellcheck etcd-server etcd-client)
# `make bench` only: the traffic generator, the naive forwarder's compiler, the report.
BENCH_PACKAGES=(iproute2 iputils-ping iperf3 procps jq ethtool gcc libc6-dev python3)
# `make fuzz` only: clang and its runtime (libFuzzer, sanitizers), a Recommends of clang.
FUZZ_PACKAGES=(clang libclang-rt-14-dev)
# `make tsan` only: clang's ThreadSanitizer runtime, and dpkg-source to unpack the abseil source
# it instruments (scripts/tsan.sh).
TSAN_PACKAGES=(clang libclang-rt-14-dev dpkg-dev xz-utils)

missing=()
for p in "${BUILD_PACKAGES[@]}" ${WITH_TEST_DEPS:+"${TEST_PACKAGES[@]}"} \
  ${WITH_FUZZ_DEPS:+"${FUZZ_PACKAGES[@]}"} ${WITH_TSAN_DEPS:+"${TSAN_PACKAGES[@]}"} \
  ${WITH_BENCH_DEPS:+"${BENCH_PACKAGES[@]}"}; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# npm may come from Debian's package or with another Node.js build: only the command matters.
if [ -n "${WITH_TEST_DEPS:-}" ] && ! command -v npm >/dev/null; then missing+=(npm); fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "install-deps: missing packages ${missing[*]}; run as root (or: apt-get install ${missing[*]})" >&2
    exit 1
  fi
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ -n "${WITH_TEST_DEPS:-}" ]; then
  tools=${TOOLS_DIR:-build/tools}
  if [ ! -x "$tools/node_modules/.bin/buf" ]; then
    echo "install-deps: installing buf (npm @bufbuild/buf) into $tools"
    mkdir -p "$tools"
    (cd "$tools" && npm install --silent --no-audit --no-fund --prefix . @bufbuild/buf@1 >/dev/null)
  fi
  # deploy.* tests: Kubernetes schemas (kubernetes-models; 4.x runs on Debian's Node.js 18),
  # the ServiceMonitor CRD's, a YAML parser and a Dockerfile linter.
  if [ ! -d "$tools/node_modules/@kubernetes-models/prometheus-operator" ] ||
    [ ! -d "$tools/node_modules/dockerfile-utils" ]; then
    echo "install-deps: installing kubernetes-models, dockerfile-utils, yaml (npm) into $tools"
    mkdir -p "$tools"
    (cd "$tools" && npm install --silent --no-audit --no-fund --prefix . kubernetes-models@4.5.1 \
      @kubernetes-models/prometheus-operator@4.4.4 dockerfile-utils@0.16.3 yaml@2 >/dev/null)
  fi
fi
