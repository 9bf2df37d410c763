"""Images per second and peak memory of Model.embed_images at the v4 shape,
beside transformers on the same architecture.

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

With `--peers transformers-bf16,transformers-fp32` the same pages also go
through transformers' Qwen2_5_VLModel at the same configuration (random
weights, SDPA, torch.set_num_threads(threads)), fed by its PIL Qwen2-VL
image processor at the same token budget and the same jina-v4 image prompt:
each engine runs in a process of its own (one model in memory at a time),
the engines alternating over `--rounds` rounds; medians are reported. Each
row has the FLOPs of the page (vision tower and text model, counted from the
shapes) and the rates they ran at, beside jv4's text rate from the same
round (a text of as many tokens as the page's prompt, embedded by jv4) and
the time the page's FLOPs would take at that rate. `jv4-vdpbf16` is jv4 with
its BF16 kernel's AMX path turned off (JV4_BF16_AMX=0), for AMX CPUs;
`jv4-q8_0` is jv4 with the text model and the tower quantized to Q8_0 by
jv4.quantize (the tower's ffn_down stays F16: its 3420-value rows are not a
multiple of Q8_0's blocks), timed against its own text rate.

    python bench/images.py --shape v4 --sizes 448x448,896x896 --images 1 --rounds 2 \
        --peers transformers-bf16,transformers-fp32

Writes bench/results/images-<shape>.json (images-<shape>-peers.json with
peers). The models are cached in bench/models/ (the v4 text model is 6 GB).
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


def models(shape_name: str, outtype: str = "f16", quant: str = "F16") -> tuple:
    """The F16 text model and mmproj (made once); with quant="Q8_0", both
    written from them by jv4.quantize (the text model by llama.cpp's
    quantizer, the tower by jv4's mmproj quantizer)."""
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
    if quant != "F16":
        import jv4

        pair = []
        for src in (text, mmproj):
            dst = src.with_name(src.name.replace("-F16.gguf", f"-{quant}.gguf"))
            if not dst.exists():
                jv4.quantize(src, dst, quant)
            pair.append(dst)
        text, mmproj = pair
    return text, mmproj


def picture(w: int, h: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 1, w)[None, :, None]
    y = np.linspace(0, 1, h)[:, None, None]
    v = 0.5 + 0.4 * np.sin(9 * x + 5 * y + np.arange(3)) + 0.1 * rng.standard_normal((h, w, 3))
    return (255 * np.clip(v, 0, 1)).astype(np.uint8)


# the engines --peers takes: jv4 with its BF16 kernel's AMX path off
# (JV4_BF16_AMX=0), jv4 with the Q8_0 text model and Q8_0 tower,
# transformers in bf16 and in fp32
PEERS = ("jv4-vdpbf16", "jv4-q8_0", "transformers-bf16", "transformers-fp32")


def prompt_tokens(n_image: int) -> int:
    """The jina-v4 image prompt's length for an image of n_image tokens."""
    return n_image + 11


def page_flops(shape_name: str, w: int, h: int, n_image: int) -> dict:
    """Multiply-adds x 2 of one page through the tower (patch embedding,
    blocks with window attention over 8 x 8-patch windows, merger) and the
    text model (matrices and causal attention), from the shapes."""
    v = VISION_V4 if shape_name == "v4" else VISION_MINI
    s = mg.SHAPES[shape_name]
    e, ff, depth = v["hidden_size"], v["intermediate_size"], v["depth"]
    n = 4 * n_image  # patches
    full = len(v["fullatt_block_indexes"])
    tower = 2 * n * (3 * 2 * 14 * 14) * e  # patch embedding (2 frames x 3 x 14 x 14)
    tower += depth * 2 * n * (4 * e * e + 3 * e * ff)  # q, k, v, o and the gated FFN
    tower += full * 4 * n * n * e + (depth - full) * 4 * n * min(n, 64) * e  # attention
    tower += 2 * n_image * ((4 * e) ** 2 + 4 * e * s.hidden)  # merger
    return {"tower": tower, "text": text_flops(shape_name, prompt_tokens(n_image))}


def text_flops(shape_name: str, tokens: int) -> float:
    s = mg.SHAPES[shape_name]
    hd = s.hidden // s.heads
    per_token = s.layers * 2 * (2 * s.hidden * s.hidden + 2 * s.hidden * s.kv_heads * hd + 3 * s.hidden * s.ffn)
    return per_token * tokens + s.layers * 2 * tokens * tokens * s.hidden  # causal: half of 4 T^2 h


def smart_resize_tokens(w: int, h: int, min_tokens: int, max_tokens: int) -> int:
    """Tokens of an image after Qwen2-VL's smart resize (as mtmd and
    transformers' processor do)."""
    import math

    lo, hi = min_tokens * 784, max_tokens * 784
    hb, wb = max(28, round(h / 28) * 28), max(28, round(w / 28) * 28)
    if hb * wb > hi:
        beta = math.sqrt(h * w / hi)
        hb, wb = max(28, math.floor(h / beta / 28) * 28), max(28, math.floor(w / beta / 28) * 28)
    elif hb * wb < lo:
        beta = math.sqrt(lo / (h * w))
        hb, wb = math.ceil(h * beta / 28) * 28, math.ceil(w * beta / 28) * 28
    return hb * wb // 784


def worker_jv4(args, sizes) -> dict:
    import jv4

    text, mmproj = models(args.shape, quant="Q8_0" if args.worker == "jv4-q8_0" else "F16")
    m = jv4.Model(text, mmproj=mmproj, n_threads=args.threads, image_max_tokens=args.image_max_tokens)
    out = {"info": {"text_model": text.name, "mmproj": mmproj.name,
                    **{k: m.info.get(k) for k in ("n_threads", "image_f16_as_bf16", "image_repack")}}}
    for w, h in sizes:
        n_image = smart_resize_tokens(w, h, m.info["image_min_tokens"], m.info["image_max_tokens"])
        m.embed_images(picture(w, h, 99))  # warm
        t = time.perf_counter()
        m.embed_images([picture(w, h, k) for k in range(args.images)])
        page_s = (time.perf_counter() - t) / args.images
        tokens = prompt_tokens(n_image)
        txt = " ".join(["word"] * (tokens - 2))
        text_tokens = len(m.tokenize(txt))  # the prefix included
        m.embed([txt])
        t = time.perf_counter()
        m.embed([txt] * args.images)
        text_s = (time.perf_counter() - t) / args.images
        out[f"{w}x{h}"] = {"page_s": page_s, "text_s": text_s, "text_tokens": text_tokens, "n_image": n_image}
    return out


def worker_transformers(args, sizes, dtype_name: str) -> dict:
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLModel
    from transformers.initialization import no_init_weights
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    import ckptgen

    threads = args.threads or os.cpu_count()
    torch.set_num_threads(threads)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    s = mg.SHAPES[args.shape]
    v = VISION_V4 if args.shape == "v4" else VISION_MINI
    vocab = mg.Vocab().with_vision_tokens()
    cfg = Qwen2_5_VLConfig(
        text_config={"vocab_size": vocab.size, "hidden_size": s.hidden, "intermediate_size": s.ffn,
                     "num_hidden_layers": s.layers, "num_attention_heads": s.heads,
                     "num_key_value_heads": s.kv_heads, "max_position_embeddings": s.ctx, "rms_norm_eps": s.eps,
                     "rope_parameters": {"rope_type": "default", "rope_theta": s.rope_theta,
                                         "mrope_section": ckptgen._sections(s)}},
        vision_config={**v, "in_channels": 3, "out_hidden_size": s.hidden},
        image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653,
        attn_implementation="sdpa")
    with no_init_weights():
        model = Qwen2_5_VLModel(cfg)
    model = model.to(dtype).eval()
    with torch.no_grad():
        for p in model.parameters():  # random weights (the time does not depend on them)
            p.uniform_(-0.02, 0.02)
    proc = Qwen2VLImageProcessorPil(min_pixels=4 * 784, max_pixels=args.image_max_tokens * 784, patch_size=14,
                                    merge_size=2, temporal_patch_size=2)
    tower_s = [0.0]

    def pre(*_):
        tower_s.append(-time.perf_counter())

    def post(*_):
        tower_s[-1] += time.perf_counter()

    model.visual.register_forward_pre_hook(pre)
    model.visual.register_forward_hook(post)
    tok = vocab.reference_tokenizer()
    IMAGE_PROMPT = ckptgen.IMAGE_PROMPT

    def page(img) -> None:
        from PIL import Image

        enc = proc(images=[Image.fromarray(img)], return_tensors="pt")
        n = int(enc["image_grid_thw"].prod()) // 4
        ids = (tok.encode(IMAGE_PROMPT[0], add_special_tokens=False).ids + [151655] * n
               + tok.encode(IMAGE_PROMPT[1], add_special_tokens=False).ids)
        ids_t = torch.tensor([ids])
        with torch.no_grad():
            model(input_ids=ids_t, pixel_values=enc["pixel_values"].to(dtype), image_grid_thw=enc["image_grid_thw"],
                  mm_token_type_ids=(ids_t == 151655).long())
        return n

    out = {"info": {"threads": threads, "dtype": dtype_name, "torch": torch.__version__}}
    for w, h in sizes:
        page(picture(w, h, 99))  # warm
        del tower_s[1:]
        t = time.perf_counter()
        for k in range(args.images):
            n = page(picture(w, h, k))
        page_s = (time.perf_counter() - t) / args.images
        out[f"{w}x{h}"] = {"page_s": page_s, "tower_s": sum(tower_s[1:]) / args.images, "n_image": n}
    return out


def compare(args, sizes) -> None:
    """Every engine in a process of its own, alternating over rounds."""
    import statistics
    import subprocess

    engines = ["jv4"] + [p for p in args.peers.split(",") if p]
    runs: dict = {e: [] for e in engines}
    for r in range(args.rounds):
        for e in engines:
            cmd = [sys.executable, __file__, "--shape", args.shape, "--sizes", args.sizes, "--images",
                   str(args.images), "--image-max-tokens", str(args.image_max_tokens), "--worker", e]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            env = dict(os.environ, JV4_BF16_AMX="0") if e == "jv4-vdpbf16" else None
            res = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
            runs[e].append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1} {e}: " + json.dumps({k: v for k, v in runs[e][-1].items() if k != "info"}),
                  flush=True)
    rows = []
    for w, h in sizes:
        key = f"{w}x{h}"
        med = {e: {f: statistics.median(run[key][f] for run in runs[e]) for f in runs[e][0][key]}
               for e in engines}
        j = med["jv4"]
        fl = page_flops(args.shape, w, h, int(j["n_image"]))
        row = {"size": key, "image_tokens": int(j["n_image"]), "tower_tflop": round(fl["tower"] / 1e12, 3),
               "text_tflop": round(fl["text"] / 1e12, 3)}
        mine = [e for e in engines if e.startswith("jv4")]
        for e in mine:  # each jv4 engine against its own text rate, same round
            p, tag = med[e], e.replace("-", "_")
            if int(p["n_image"]) != int(j["n_image"]):
                raise SystemExit(f"{e} made {p['n_image']} image tokens of {key}, jv4 {j['n_image']}")
            text_rate = text_flops(args.shape, int(p["text_tokens"])) / p["text_s"]
            row[f"{tag}_s"] = round(p["page_s"], 2)
            row[f"{tag}_page_tflops"] = round((fl["tower"] + fl["text"]) / p["page_s"] / 1e12, 3)
            row[f"{tag}_text_tflops"] = round(text_rate / 1e12, 3)
            row[f"{tag}_at_text_rate_s"] = round((fl["tower"] + fl["text"]) / text_rate, 2)
            row[f"{tag}_vs_text_rate"] = round(p["page_s"] / row[f"{tag}_at_text_rate_s"], 3)
        for e in engines:
            if e in mine:
                continue
            p = med[e]
            if int(p["n_image"]) != int(j["n_image"]):
                raise SystemExit(f"{e} made {p['n_image']} image tokens of {key}, jv4 {j['n_image']}")
            row[f"{e}_s"] = round(p["page_s"], 2)
            for m in mine:
                row[f"{m.replace('-', '_')}_speed_vs_{e}"] = round(p["page_s"] / med[m]["page_s"], 2)
            if "tower_s" not in p:
                continue
            row[f"{e}_tower_s"] = round(p["tower_s"], 2)
            row[f"{e}_tower_tflops"] = round(fl["tower"] / p["tower_s"] / 1e12, 3)
        rows.append(row)
        print(json.dumps(row), flush=True)
    import platform

    flags = open("/proc/cpuinfo").read().split("flags")[1].split("\n")[0].split() if sys.platform == "linux" else []
    res = {"shape": args.shape, "rounds": args.rounds, "images": args.images,
           "image_max_tokens": args.image_max_tokens, "engines": {e: runs[e][0]["info"] for e in engines},
           "cpu": platform.processor() or platform.machine(),
           "cpu_flags": sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "f16c"))),
           "jv4_cpu": os.environ.get("JV4_CPU"), "rows": rows, "runs": runs,
           "command": "python bench/images.py " + " ".join(sys.argv[1:])}
    level = f"-{os.environ['JV4_CPU']}" if os.environ.get("JV4_CPU") else ""
    out = ROOT / "bench" / "results" / f"images-{args.shape}-peers{level}.json"
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {out}")


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
    ap.add_argument("--peers", default="",
                    help="also time these engines, alternating: " + ", ".join(PEERS))
    ap.add_argument("--rounds", type=int, default=2, help="rounds of every engine, with --peers")
    ap.add_argument("--make-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.make_only:
        models(args.shape)
        if "jv4-q8_0" in args.peers.split(","):
            models(args.shape, quant="Q8_0")
        return
    sizes = [tuple(int(x) for x in size.lower().split("x")) for size in args.sizes.split(",")]
    if args.worker:
        res = (worker_jv4(args, sizes) if args.worker.startswith("jv4")
               else worker_transformers(args, sizes, args.worker.split("-")[1]))
        print(json.dumps(res), flush=True)
        return
    for p in filter(None, args.peers.split(",")):
        if p not in PEERS:
            ap.error(f"--peers: unknown engine {p!r} ({', '.join(PEERS)})")
    # the models are made in a child process, so that this one's peak RSS is the engine's
    import subprocess

    subprocess.run([sys.executable, __file__, "--shape", args.shape, "--make-only", "--peers", args.peers],
                   check=True)
    if args.peers:
        compare(args, sizes)
        return
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
    budget = f"-{args.image_max_tokens}" if args.image_max_tokens != 1280 else ""
    out = ROOT / "bench" / "results" / f"images-{args.shape}{budget}.json"
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))


def _tokens_of(m, w: int, h: int) -> int:
    """Tokens of one image's prompt."""
    return prompt_tokens(smart_resize_tokens(w, h, m.info["image_min_tokens"], m.info["image_max_tokens"]))


if __name__ == "__main__":
    main()
