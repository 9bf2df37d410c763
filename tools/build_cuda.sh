#!/usr/bin/env bash
# Builds the CUDA-enabled jv4 on a machine with no GPU and no system CUDA,
# from the package registry's CUDA 13 packages, and proves that the module
# imports, lists CUDA, and falls back to the CPU when no GPU is present.
#
#   bash tools/build_cuda.sh                 # architecture 75-virtual (PTX: JIT on any newer GPU)
#   JV4_CUDA_ARCHS="80;90" bash tools/build_cuda.sh
#
# Everything lives under build/cuda/ (a virtualenv with the toolkit, the CMake
# build directory, kept between runs so that a second run only relinks) and
# the log with its timing under build/cuda/build.log. Slow: all of ggml-cuda
# is compiled (about 75 minutes on 2 cores for one architecture) - a script,
# not part of every CI run.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
WORK="$ROOT/build/cuda"
ARCHS="${JV4_CUDA_ARCHS:-75-virtual}"
mkdir -p "$WORK"

if [ ! -x "$WORK/venv/bin/python" ]; then
  python3 -m venv "$WORK/venv"
fi
# shellcheck disable=SC1091
source "$WORK/venv/bin/activate"
python -m pip install -q --upgrade pip
python -m pip install -q scikit-build-core pybind11 numpy ninja cmake huggingface_hub tqdm gguf \
  "cuda-toolkit[nvcc,cccl,crt,cudart,cublas]==13.0.*"

# The toolkit's pip packages share one root: nvidia/cu13/{bin,include,lib,nvvm}.
CU="$(python -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')"
[ -x "$CU/bin/nvcc" ] || { echo "nvcc not found under $CU" >&2; exit 1; }
# nvcc and CMake's FindCUDAToolkit look in lib64 and for unversioned .so names,
# which the wheels do not ship.
[ -e "$CU/lib64" ] || ln -s lib "$CU/lib64"
for lib in "$CU"/lib/lib*.so.[0-9]*; do
  base="${lib%%.so.*}.so"
  [ -e "$base" ] || ln -s "$(basename "$lib")" "$base"
done

echo "== building jv4 with CUDA (architectures: $ARCHS) into $WORK/venv"
start=$(date +%s)
set +e
JV4_CUDA=1 CUDAToolkit_ROOT="$CU" PATH="$CU/bin:$PATH" \
  python -m pip install -v --no-build-isolation --no-deps "$ROOT" \
    -Cbuild-dir="$WORK/cmake" \
    -Ccmake.define.CMAKE_CUDA_COMPILER="$CU/bin/nvcc" \
    -Ccmake.define.CMAKE_CUDA_ARCHITECTURES="$ARCHS" \
    > "$WORK/build.log" 2>&1
rc=$?
set -e
end=$(date +%s)
echo "build: exit $rc after $(( (end - start) / 60 )) min $(( (end - start) % 60 )) s (log: $WORK/build.log)" \
  | tee -a "$WORK/build.log"
[ "$rc" -eq 0 ] || { tail -40 "$WORK/build.log"; exit "$rc"; }

echo "== the module: imports with no GPU, lists CUDA, embeds on the CPU"
cd /tmp
python - "$ROOT" <<'PY'
import json, sys
sys.path.insert(0, sys.argv[1] + "/tests")
import jv4
info = jv4.build_info()
print(json.dumps({k: info[k] for k in ("version", "backends", "devices", "cpu_baseline")}, indent=1))
assert "CUDA" in info["backends"], info["backends"]
import tempfile, pathlib, modelgen as mg
vocab = mg.Vocab()
tmp = tempfile.TemporaryDirectory()
path = pathlib.Path(tmp.name) / "jina-embeddings-v4-text-retrieval-F32.gguf"
mg.write_gguf(path, mg.random_weights(mg.TINY, vocab.size, seed=0), mg.TINY, vocab,
              arch="qwen2", name="jina-embeddings-v4-text-retrieval", dtype="F32")
v = jv4.Model(path).embed(["falls back to the CPU"])
print("embedded on", [d for d in info["devices"]] or "the CPU (no GPU device found)", "->", v.shape)
PY
