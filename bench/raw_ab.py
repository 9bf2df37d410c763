"""A/B of the raw forward pass (llama-bench pp512), alternating two variants
round by round so that machine drift cancels; prints medians and the ratio.

    python bench/raw_ab.py patches --dtype BF16   # unpatched tree vs jv4's patched tree
    python bench/raw_ab.py repack --dtype Q4_K_M  # patched tree, --repack 1 vs 0
    python bench/raw_ab.py repack --tools build/llama-tools-avx2/bin --dtype Q4_K_M
    python bench/raw_ab.py llamafile --dtype Q8_0  # with vs without llamafile's tinyBLAS

`patches` needs both `bench/build_tools.py` and `bench/build_tools.py
--upstream`; `llamafile` needs `bench/build_tools.py --variant no-llamafile`. llama-bench runs without embeddings, so the lm_head patch is idle
there and the difference is the CPU kernel patches alone. `--model` takes any
GGUF instead of a generated one (e.g. a Q4_0 made with jv4.quantize).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import TOOLS, UPSTREAM_TOOLS, llama_bench, make_model  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["patches", "repack", "llamafile"])
    ap.add_argument("--tools", type=Path, default=TOOLS, help="llama-bench directory for repack")
    ap.add_argument("--shape", default="mini")
    ap.add_argument("--dtype", default="BF16")
    ap.add_argument("--model", type=Path, help="a GGUF to use instead of a generated one")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    model = a.model or make_model(a.shape, a.dtype)[0]
    if a.what == "patches":
        variants = {"unpatched": (UPSTREAM_TOOLS / "llama-bench", []),
                    "patched": (TOOLS / "llama-bench", [])}
    elif a.what == "llamafile":
        variants = {"llamafile": (TOOLS / "llama-bench", []),
                    "no llamafile": (TOOLS.parent.with_name("llama-tools-no-llamafile") / "bin"
                                     / "llama-bench", [])}
    else:
        variants = {"repack 1": (a.tools / "llama-bench", ["--repack", "1"]),
                    "repack 0": (a.tools / "llama-bench", ["--repack", "0"])}
    for name, (exe, _) in variants.items():
        if not exe.exists():
            print(f"{exe} is missing: run bench/build_tools.py (--upstream for the unpatched "
                  "tree, --variant avx2 / no-llamafile for those builds)", file=sys.stderr)
            return 2
    runs: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(a.rounds):
        for name, (exe, extra) in variants.items():
            runs[name].append(llama_bench(exe, model, a.threads, (512,), extra)["pp512"])
        print(f"round {r}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in runs.items()),
              file=sys.stderr)
    med = {k: statistics.median(v) for k, v in runs.items()}
    (first, m1), (second, m2) = med.items()
    print(f"{model.name}, {a.threads} threads, pp512 median of {a.rounds}: "
          f"{first} {m1:.0f} tok/s, {second} {m2:.0f} tok/s, {second} / {first} = {m2 / m1:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
