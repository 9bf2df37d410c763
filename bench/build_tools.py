"""Build llama-bench and llama-server from the vendored llama.cpp, with the
same CPU instruction sets as the installed jv4 (read from build_info), into
build/llama-tools/bin. Same tree, same patches, same flags: the comparison
measures batching and overhead, not compilers.

    python bench/build_tools.py
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jv4

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "llama-tools"

ISA = ["SSE42", "AVX", "AVX2", "FMA", "F16C", "BMI2", "AVX_VNNI", "AVX512", "AVX512_VBMI",
       "AVX512_VNNI", "AVX512_BF16", "AMX_TILE", "AMX_INT8", "AMX_BF16"]


def main() -> int:
    feats = set(jv4.build_info()["cpu_features"])
    if "AVX" in feats:
        feats.add("SSE42")
    defs = [f"-DGGML_{o}={'ON' if o in feats else 'OFF'}" for o in ISA]
    subprocess.run([sys.executable, str(ROOT / "tools" / "fetch_llama_cpp.py")], check=True)
    cmd = ["cmake", "-S", str(ROOT / "bench" / "tools"), "-B", str(BUILD), "-G", "Ninja",
           "-DCMAKE_BUILD_TYPE=Release"] + defs
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    subprocess.run(["cmake", "--build", str(BUILD), "--target", "llama-bench", "llama-server",
                    "-j", str(os.cpu_count())], check=True)
    print(f"built into {BUILD / 'bin'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
