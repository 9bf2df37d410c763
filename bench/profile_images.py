"""One page through Model.embed_images under a sampling profiler: the
profile that chose issue 29's changes (docs/benchmarks.md, "Page images").

Loads the v4-shape models of bench/images.py, embeds a warm-up image, writes
this process's id to --ready, then embeds --images pages of --size pixels;
attach the profiler to the id once the file appears:

    rm -f /tmp/jv4.ready; python bench/profile_images.py --size 896 --ready /tmp/jv4.ready &
    while [ ! -f /tmp/jv4.ready ]; do sleep 1; done
    perf record -F 199 -o /tmp/page.data -p "$(cat /tmp/jv4.ready)"   # --quant Q8_0: the Q8_0 models
    perf report -i /tmp/page.data --no-children --sort symbol

Symbols need the unstripped module of the build folder (scikit-build-core
strips the installed one): copy build/<tag>/_core*.so over the installed
jv4/_core*.so of the same build.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import images as B  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=896, help="a square page of this many pixels a side")
    ap.add_argument("--images", type=int, default=1)
    ap.add_argument("--shape", choices=("mini", "v4"), default="v4")
    ap.add_argument("--quant", choices=("F16", "Q8_0"), default="F16",
                    help="the text model and tower: F16, or both Q8_0 (bench/images.py's jv4-q8_0)")
    ap.add_argument("--ready", required=True, help="file to write this process's id to when warm")
    args = ap.parse_args()
    import jv4

    text, mmproj = B.models(args.shape, quant=args.quant)
    m = jv4.Model(text, mmproj=mmproj, image_max_tokens=1280)
    m.embed_images(B.picture(448, 448, 9))
    Path(args.ready).write_text(str(os.getpid()))
    t = time.perf_counter()
    for k in range(args.images):
        m.embed_images(B.picture(args.size, args.size, k))
    print(f"{(time.perf_counter() - t) / args.images:.2f} s/image", flush=True)


if __name__ == "__main__":
    main()
