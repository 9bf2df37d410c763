"""Build llama-bench and llama-server from the vendored llama.cpp, with the
same CPU instruction sets as the installed jv4 (read from build_info), into
build/llama-tools/bin. Same tree, same patches, same flags: the comparison
measures batching and overhead, not compilers.

    python bench/build_tools.py             # from vendor/llama.cpp (jv4's patches applied)
    python bench/build_tools.py --upstream  # llama.cpp as released, into build/llama-tools-upstream
    python bench/build_tools.py --upstream --bench-only  # ... llama-bench alone (bench/formats.py)
    python bench/build_tools.py --variant avx2          # patched, AVX-512 off (build/llama-tools-avx2)
    python bench/build_tools.py --variant no-llamafile  # patched, GGML_LLAMAFILE=OFF
"""

from __future__ import annotations

import argparse
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
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--upstream", action="store_true",
                       help="llama.cpp exactly as released (no jv4 patches), for peers as users get them")
    which.add_argument("--variant", choices=["avx2", "no-llamafile"],
                       help="the patched tree built differently, llama-bench only (A/B runs)")
    ap.add_argument("--bench-only", action="store_true", help="build llama-bench alone")
    a = ap.parse_args()
    upstream, variant = a.upstream, a.variant
    llama_dir = ROOT / "build" / "llama.cpp-upstream" if upstream else ROOT / "vendor" / "llama.cpp"
    build = BUILD.with_name("llama-tools-upstream") if upstream else BUILD
    feats = set(jv4.build_info()["cpu_features"])
    if "AVX" in feats:
        feats.add("SSE42")
    extra = []
    if variant == "avx2":  # the same tree without AVX-512 (x86-64-v3-like)
        feats = {f for f in feats if not f.startswith("AVX512") and not f.startswith("AMX")}
    if variant == "no-llamafile":
        extra = ["-DGGML_LLAMAFILE=OFF"]
    if variant:
        build = BUILD.with_name(f"llama-tools-{variant}")
    defs = [f"-DGGML_{o}={'ON' if o in feats else 'OFF'}" for o in ISA] + extra
    fetch = [sys.executable, str(ROOT / "tools" / "fetch_llama_cpp.py"), "--dest", str(llama_dir)]
    subprocess.run(fetch + (["--no-patches"] if upstream else []), check=True)
    cmd = ["cmake", "-S", str(ROOT / "bench" / "tools"), "-B", str(build), "-G", "Ninja",
           "-DCMAKE_BUILD_TYPE=Release", f"-DLLAMA_DIR={llama_dir}"] + defs
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    targets = ["llama-bench"] if variant or a.bench_only else ["llama-bench", "llama-server"]  # variants: A/B only
    subprocess.run(["cmake", "--build", str(build), "--target", *targets,
                    "-j", str(os.cpu_count())], check=True)
    print(f"built into {build / 'bin'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
