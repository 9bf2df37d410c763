"""Images per second and peak memory of Model.embed_images at the v4 shape.

Synthetic weights at jina-embeddings-v4's real sizes: the Qwen2.5-VL-3B text
model (36 layers, 2048 wide, qwen2vl architecture, F16) and the Qwen2.5-VL
vision tower (32 blocks, 1280 wide, full attention every 8th, F16 mmproj
written by jv4 convert's own writer). For each image size the script embeds
`--images` pictures in one call (after one warm-up image) and reports images/s,
tokens per image, the split between the vision tower and the text model
(timed separately: the text model alone on the same token count, by
embedding a text of that many tokens), and the process's peak RSS.

    python bench/images.py --shape v4 --sizes 448x448,896x896,1240x1754 --images 2
    python bench/images.py --shape mini --sizes 448x448 --images 4   # quick

Writes bench/results/images-<shape>.json. The models are cached in
bench/models/ (the v4 text model is 6 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import modelgen as mg  # noqa: E402

VISION_V4 = {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "patch_size": 14,
             "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
             "fullatt_block_indexes": [7, 15, 23, 31], "hidden_act": "silu"}
VISION_MINI = {**VISION_V4, "depth": 8, "hidden_size": 512, "intermediate_size": 1368, "num_heads": 8,
               "fullatt_block_indexes": [3, 7]}


class _VisionSource:
    """What jv4.checkpoint's mmproj writer reads (a checkpoint's vision tower),
    from synthetic weights."""

    def __init__(self, vision: dict, out: int, seed: int):
        import ckptgen as cg
        from jv4.checkpoint import _Vision

        self.weights = cg.vision_weights(out, seed, vision)
        self.vision = _Vision(depth=vision["depth"], hidden=vision["hidden_size"],
                              ffn=vision["intermediate_size"], heads=vision["num_heads"], patch=14, merge=2,
                              temporal=2, window=112, out=out, n_wa=vision["fullatt_block_indexes"][0] + 1,
                              mean=cg.PREPROCESSOR["image_mean"], std=cg.PREPROCESSOR["image_std"],
                              min_pixels=4 * 784, max_pixels=1280 * 784, keys={})

    def read_vision(self, short: str) -> np.ndarray:
        return self.weights[short]


def models(shape_name: str, outtype: str = "f16") -> tuple:
    import gguf

    from jv4 import checkpoint as ckp

    shape = mg.SHAPES[shape_name]
    d = ROOT / "bench" / "models"
    d.mkdir(parents=True, exist_ok=True)
    text = d / f"jina-embeddings-v4-vision-text-{shape_name}-F16.gguf"
    mmproj = d / f"jina-embeddings-v4-mmproj-{shape_name}-{outtype.upper()}.gguf"
    vocab = mg.Vocab().with_vision_tokens()
    if not text.exists():
        w = mg.random_weights(shape, vocab.size, seed=1, dtype=np.float16)
        mg.write_gguf(text.with_suffix(".partial"), w, shape, vocab, arch="qwen2vl", dtype="F16",
                      name="jina-embeddings-v4-text-retrieval")
        del w
        text.with_suffix(".partial").rename(text)
    if not mmproj.exists():
        src = _VisionSource(VISION_V4 if shape_name == "v4" else VISION_MINI, shape.hidden, seed=2)
        part = mmproj.with_suffix(".partial")
        ckp._write(gguf, part, "clip", ckp._mmproj_kv(gguf, src, outtype), ckp._mmproj_tensors(gguf, src, outtype))
        part.rename(mmproj)
    return text, mmproj


def picture(w: int, h: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 1, w)[None, :, None]
    y = np.linspace(0, 1, h)[:, None, None]
    v = 0.5 + 0.4 * np.sin(9 * x + 5 * y + np.arange(3)) + 0.1 * rng.standard_normal((h, w, 3))
    return (255 * np.clip(v, 0, 1)).astype(np.uint8)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", choices=("mini", "v4"), default="v4")
    ap.add_argument("--sizes", default="448x448,896x896,1240x1754", help="WxH,... image sizes")
    ap.add_argument("--images", type=int, default=2, help="images a size, embedded in one call")
    ap.add_argument("--image-max-tokens", type=int, default=1280,
                    help="the budget (default 1280 tokens: transformers' Qwen2-VL max_pixels)")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--make-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.make_only:
        models(args.shape)
        return
    # the models are made in a child process, so that this one's peak RSS is the engine's
    import subprocess

    subprocess.run([sys.executable, __file__, "--shape", args.shape, "--make-only"], check=True)
    import jv4

    text, mmproj = models(args.shape)
    rss0 = peak_rss_mb()
    t = time.perf_counter()
    m = jv4.Model(text, mmproj=mmproj, n_threads=args.threads, image_max_tokens=args.image_max_tokens)
    load_s = time.perf_counter() - t
    rows = []
    for size in args.sizes.split(","):
        w, h = (int(x) for x in size.lower().split("x"))
        m.embed_images(picture(w, h, 99))  # warm: contexts sized, pages touched
        pics = [picture(w, h, k) for k in range(args.images)]
        t = time.perf_counter()
        out = m.embed_images(pics)
        dt = time.perf_counter() - t
        # the text model alone on as many tokens: a text of that length
        tokens = _tokens_of(m, w, h)
        txt = " ".join(["word"] * (tokens - 2))
        t = time.perf_counter()
        m.embed([txt] * args.images)
        lm_s = time.perf_counter() - t
        rows.append({"size": f"{w}x{h}", "tokens_per_image": tokens, "images": args.images,
                     "images_per_s": round(args.images / dt, 4), "seconds_per_image": round(dt / args.images, 2),
                     "text_model_share": round(min(lm_s / dt, 1.0), 2), "peak_rss_mb": round(peak_rss_mb()),
                     "finite": bool(np.isfinite(out).all())})
        print(json.dumps(rows[-1]), flush=True)
    res = {"shape": args.shape, "text_model": text.name, "mmproj": mmproj.name, "threads": m.info["n_threads"],
           "image_max_tokens": m.info["image_max_tokens"], "load_s": round(load_s, 1),
           "rss_before_load_mb": round(rss0), "rows": rows,
           "command": "python bench/images.py " + " ".join(sys.argv[1:])}
    out = ROOT / "bench" / "results" / f"images-{args.shape}.json"
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))


def _tokens_of(m, w: int, h: int) -> int:
    """Tokens of one image's prompt (from its multi-vector rows would need a
    projector; recomputed here as mtmd's smart resize does)."""
    import math

    lo, hi = m.info["image_min_tokens"] * 784, m.info["image_max_tokens"] * 784
    hb, wb = max(28, round(h / 28) * 28), max(28, round(w / 28) * 28)
    if hb * wb > hi:
        beta = math.sqrt(h * w / hi)
        hb, wb = max(28, math.floor(h / beta / 28) * 28), max(28, math.floor(w / beta / 28) * 28)
    elif hb * wb < lo:
        beta = math.sqrt(lo / (h * w))
        hb, wb = math.ceil(h * beta / 28) * 28, math.ceil(w * beta / 28) * 28
    return hb * wb // 784 + 11


if __name__ == "__main__":
    main()
