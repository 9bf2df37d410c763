#!/usr/bin/env bash
# A checking build: jv4 and llama.cpp compiled with AddressSanitizer and
# UndefinedBehaviorSanitizer (JV4_SANITIZE=address,undefined), then the test
# suite - the fuzz subset included - run under them, with the sanitizer
# runtimes preloaded into an ordinary Python.
#   bash tools/sanitize.sh                 # the whole suite; results under build/sanitize/
#   bash tools/sanitize.sh tests/test_fuzz.py -k seeded   # a part of it
# Every process the tests start inherits the runtimes. Reports go to
# build/sanitize/logs/; tools/sanitize_report.py reads them and counts what
# comes from jv4, llama.cpp or ggml code (Python's own allocations, never
# freed at exit by design, do not count). Exit status: pytest's, or 1 when
# the report finds anything.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
OUT="$ROOT/build/sanitize"
mkdir -p "$OUT"
if [ ! -x "$OUT/venv/bin/python" ]; then
  python3 -m venv "$OUT/venv"
  "$OUT/venv/bin/python" -m pip install -q --upgrade pip
  "$OUT/venv/bin/python" -m pip install -q scikit-build-core pybind11 cmake ninja
fi
# shellcheck disable=SC1091
source "$OUT/venv/bin/activate"
echo "== build (JV4_SANITIZE=address,undefined)"
start=$(date +%s)
JV4_SANITIZE=address,undefined python -m pip install -q --no-build-isolation \
  -Cbuild-dir="$OUT/cmake" -Ccmake.build-type=RelWithDebInfo ".[test]"
echo "built in $(( $(date +%s) - start )) s"

ASAN_LIB="$(gcc -print-file-name=libasan.so)"
UBSAN_LIB="$(gcc -print-file-name=libubsan.so)"
rm -rf "$OUT/logs"
mkdir -p "$OUT/logs"
# pymalloc off, so that ASan sees every allocation; leaks are reported into
# the logs without changing exit codes, and judged by sanitize_report.py
export PYTHONMALLOC=malloc
export ASAN_OPTIONS="log_path=$OUT/logs/asan:detect_leaks=1:exitcode=66:strict_string_checks=0:detect_odr_violation=0:suppressions=$ROOT/tools/asan.supp"
export LSAN_OPTIONS="exitcode=0:max_leaks=200"
export UBSAN_OPTIONS="log_path=$OUT/logs/ubsan:print_stacktrace=1:halt_on_error=0"
export GGML_NO_BACKTRACE=1
export JV4_SANITIZED=1

echo "== tests under ASan + UBSan"
set +e
(cd "$OUT" && LD_PRELOAD="$ASAN_LIB $UBSAN_LIB" python -m pytest -q -p no:cacheprovider \
  --rootdir="$ROOT" -c "$ROOT/pyproject.toml" "${@:-$ROOT/tests}")
rc=$?
set -e
unset LD_PRELOAD
python "$ROOT/tools/sanitize_report.py" "$OUT/logs" | tee "$OUT/report.txt"
report=${PIPESTATUS[0]}
if [ "$rc" -ne 0 ]; then exit "$rc"; fi
exit "$report"
