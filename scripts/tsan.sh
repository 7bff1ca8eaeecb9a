#!/bin/bash
# ThreadSanitizer run of the engine and manager tests (`make tsan`): clang, -fsanitize=thread and
# the thread-safety analysis as errors, in a build directory of its own; only the test targets
# are built. Fails on any report TSan makes.
#
# Debian's abseil is not instrumented, and absl::Mutex takes and releases its lock inside it: TSan
# would not see those locks at all and would call every ABSL_GUARDED_BY member a race. So this
# builds Debian's own abseil source (same version, same options, same sonames) with TSan once,
# into $TSAN_BUILD_DIR/absl, and every library of the process (gRPC's too) loads that copy.
# gRPC and protobuf stay uninstrumented: tsan.supp names what of theirs TSan cannot judge.
#
# `scripts/tsan.sh deps` stops once the dependencies are ready.
# Environment: TSAN_BUILD_DIR (default build-tsan), TSAN_TARGETS (default: the four test binaries
# below), JOBS (default: nproc). Needs root: apt-get for clang and the abseil source, and the
# engine tests make their own network namespace.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TSAN_DIR=$(realpath -m "${TSAN_BUILD_DIR:-$ROOT/build-tsan}")
JOBS=${JOBS:-$(nproc)}
ABSL_DIR=$TSAN_DIR/absl
PROJECT_DIR=$TSAN_DIR/project
LOG_DIR=$TSAN_DIR/logs
SANITIZE=(-fsanitize=thread -fno-omit-frame-pointer)

start=$(date +%s)
step() { echo "tsan: $* ($(($(date +%s) - start)) s)"; }

WITH_TSAN_DEPS=1 "$ROOT/scripts/install-deps.sh"

# ---- abseil, instrumented ------------------------------------------------------------------
# The installed version's source, through apt with a private deb-src list (the system's apt
# configuration is left as it is).
absl_version=$(dpkg-query -W -f='${Version}' libabsl-dev)
absl_stamp=$ABSL_DIR/install/.built-$absl_version
if [ ! -e "$absl_stamp" ]; then
  step "building abseil $absl_version with ThreadSanitizer (once; some minutes)"
  rm -rf "$ABSL_DIR"
  mkdir -p "$ABSL_DIR/apt/lists/partial" "$ABSL_DIR/apt/archives/partial" "$ABSL_DIR/src"
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
  cat >"$ABSL_DIR/apt/sources.list" <<EOF
deb-src http://deb.debian.org/debian $codename main
deb-src http://deb.debian.org/debian $codename-updates main
deb-src http://deb.debian.org/debian-security $codename-security main
EOF
  apt_private=(-o "Dir::Etc::SourceList=$ABSL_DIR/apt/sources.list"
    -o "Dir::Etc::SourceParts=$ABSL_DIR/apt/none" -o "Dir::State::Lists=$ABSL_DIR/apt/lists"
    -o "Dir::Cache::Archives=$ABSL_DIR/apt/archives" -o "APT::Sandbox::User=root")
  apt-get "${apt_private[@]}" update -qq
  (cd "$ABSL_DIR/src" && apt-get "${apt_private[@]}" source -qq "abseil=$absl_version" >/dev/null)
  absl_src=$(find "$ABSL_DIR/src" -mindepth 1 -maxdepth 1 -type d -name 'abseil-*' | head -n 1)
  # As debian/rules configures its shared build (C++17, so the std:: options are the same).
  cmake -S "$absl_src" -B "$ABSL_DIR/build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_CXX_STANDARD=17 -DBUILD_SHARED_LIBS=ON \
    -DBUILD_TESTING=OFF -DCMAKE_INSTALL_PREFIX="$ABSL_DIR/install" -DCMAKE_INSTALL_LIBDIR=lib -DCMAKE_CXX_FLAGS="${SANITIZE[*]}" >"$ABSL_DIR/configure.log" 2>&1
  cmake --build "$ABSL_DIR/build" -j "$JOBS" >"$ABSL_DIR/build.log" ||
    { tail -n 40 "$ABSL_DIR/build.log"; exit 1; }
  cmake --install "$ABSL_DIR/build" >/dev/null
  touch "$absl_stamp"
fi
absl_lib=$ABSL_DIR/install/lib
if [ "${1:-}" = deps ]; then step "dependencies ready"; exit 0; fi

# ---- the project's tests -------------------------------------------------------------------
targets=(${TSAN_TARGETS:-dataplane_core_test dataplane_test dataplane_netns_test agent_test})
step "configuring $PROJECT_DIR"
# An RPATH, not a RUNPATH: it also holds for gRPC's own abseil dependencies.
cmake -S "$ROOT" -B "$PROJECT_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DTUNNEL_AGENT_TSAN=ON \
  -Dabsl_DIR="$absl_lib/cmake/absl" \
  -DCMAKE_EXE_LINKER_FLAGS="-Wl,--disable-new-dtags -Wl,-rpath,$absl_lib" >/dev/null
step "building ${targets[*]} (log $LOG_DIR/build.log)"
mkdir -p "$LOG_DIR"
if ! cmake --build "$PROJECT_DIR" -j "$JOBS" --target "${targets[@]}" >"$LOG_DIR/build.log" 2>&1
then
  grep -E -A3 'error:' "$LOG_DIR/build.log" | head -n 60
  echo "tsan: build failed, log $LOG_DIR/build.log"
  exit 1
fi
# The analysis's warnings that are not errors (see CMakeLists.txt): listed, once each.
grep -E 'warning: .*\[-Wthread-safety' "$LOG_DIR/build.log" | sort -u | sed 's/^/tsan: /' || true

# The analysis must reject state and functions of a thread role reached without the role
# (tests/dataplane/control/thread_role_test.cc's THREAD_ROLE_TEST_MISUSE part), or it checks nothing.
misuse_log=$LOG_DIR/thread_role_misuse.log
if clang++ -std=c++17 -fsyntax-only -Wthread-safety -Werror=thread-safety -DTHREAD_ROLE_TEST_MISUSE \
  -I"$ROOT" -isystem "$ABSL_DIR/install/include" "$ROOT/tests/dataplane/control/thread_role_test.cc" \
  >"$misuse_log" 2>&1 ||
  [ "$(grep -cE "requires holding mutex 'role_'" "$misuse_log")" != 2 ]; then
  echo "tsan: the thread-safety analysis let a thread role's misuse through, log $misuse_log" >&2
  exit 1
fi
step "the thread-safety analysis rejects a thread role's misuse"

# ---- runs ----------------------------------------------------------------------------------
export LD_LIBRARY_PATH=$absl_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export TSAN_OPTIONS="halt_on_error=1 exitcode=66 second_deadlock_stack=1 history_size=4 \
suppressions=$ROOT/scripts/tsan.supp ${TSAN_EXTRA_OPTIONS:-}"
failed=()
run() {  # run BINARY [gtest args...], bounded in time
  local name=$1 rc=0
  shift
  [[ " ${targets[*]} " == *" $name "* ]] || return 0
  step "running $name"
  timeout --kill-after=10 900 "$PROJECT_DIR/tests/$name" "$@" >"$LOG_DIR/$name.log" 2>&1 || rc=$?
  if [ "$rc" = 0 ]; then
    grep -E '^\[  (PASSED|SKIPPED) ' "$LOG_DIR/$name.log" || true
  else
    grep -E '^SUMMARY: ThreadSanitizer|^\[  FAILED  \]' "$LOG_DIR/$name.log" | head -n 20 || true
    echo "tsan: $name failed (exit $rc; 66: a ThreadSanitizer report; 124: timed out)," \
      "log $LOG_DIR/$name.log"
    failed+=("$name")
  fi
}
# Whole binaries: under TSan they take about two minutes together on two cores.
run dataplane_core_test   # the packet core, driven through a recording PacketIo
run dataplane_test        # the worker pool's sums, thread roles
run dataplane_netns_test  # both engines, pools of workers, netlink (its own namespace)
run agent_test            # the tunnel manager, metrics, the gRPC service

step "done"
if [ ${#failed[@]} -gt 0 ]; then
  echo "tsan: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "tsan: clean"
