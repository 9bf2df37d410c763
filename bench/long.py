"""Long texts: tokens/s and peak memory from 512 to 32768 tokens a text, with
llama.cpp's attention settings, beside transformers (SDPA) on the same texts.

    python bench/long.py --shape v4 --format Q8_0 --lengths 512,2048,8192,32768 \
        --settings default,no-flash,kv-bf16,kv-q8_0 --transformers 512,2048,8192
    python bench/long.py --shape v4 --format F16,Q8_0,Q4_K_M --lengths 512 --transformers 512

Every length is measured on the same number of tokens (`--tokens`, default
8192: sixteen 512-token texts, four of 2048, one of 8192; one text when a text
is longer), so each rate is tokens/s over equal work. A text of exactly N
tokens is made by joining docstring passages and letting jv4 truncate at
`max_length=N` (the prefix counts). Each (setting, length) runs in its own
process; peak RSS is that process's VmHWM. Settings: `default` (llama.cpp
decides flash attention, F16 KV cache), `no-flash` (flash attention off),
`flash` (on), `kv-<type>` (KV cache type, flash attention on), `no-repack`
(weights in the file's layout: llama.cpp's own kernels, e.g. tinyBLAS for
BF16). transformers
runs bf16 with SDPA attention (the reference's own implementation) on the
same token ids. `--format` takes several formats (comma-separated) for one
table; IQ types use the files bench/formats.py made with an importance
matrix (run it first).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.append(str(HERE.parent / "tests"))

SETTINGS = {
    "default": {},
    "flash": {"flash_attn": True},
    "no-flash": {"flash_attn": False},
    "no-repack": {"repack": False},
    "kv-f16": {"flash_attn": True, "kv_cache_type": "f16"},
    "kv-bf16": {"flash_attn": True, "kv_cache_type": "bf16"},
    "kv-q8_0": {"flash_attn": True, "kv_cache_type": "q8_0"},
}
PREFIX = "Passage: "


def _texts(length: int, total: int, seed_passages: list) -> list:
    """Enough text for `max(1, total // length)` texts of at least `length`
    tokens each (cut to exactly `length` by max_length)."""
    count = max(1, total // length)
    # roughly 4 characters a token for English prose and code docs; doubled for safety
    body = "\n\n".join(seed_passages)
    reps = max(1, (length * 8) // max(1, len(body)) + 1)
    out = []
    for i in range(count):  # different texts: the passages rotated (i = 0: as they come)
        k = (i * 7) % len(seed_passages)
        out.append("\n\n".join(["\n\n".join(seed_passages[k:] + seed_passages[:k])] * reps))
    return out


def child_jv4(model: str, length: int, texts: list, threads: int, setting: str) -> dict:
    import jv4
    from run import _rss_mib

    m = jv4.Model(model, n_threads=threads, max_length=length, **SETTINGS[setting])
    m.embed(["warm-up " * 64], role="passage", truncate=True)
    n_tokens = sum(min(length, len(m.tokenize(t, role="passage"))) for t in texts)
    t = time.perf_counter()
    v = m.embed(texts, role="passage", truncate=True)
    s = time.perf_counter() - t
    return {"tok_s": n_tokens / s, "seconds": s, "n_tokens": n_tokens, "peak_mib": _rss_mib(),
            "flash_attn": m.info.get("flash_attn"), "kv_cache_type": m.info.get("kv_cache_type"),
            "finite": bool((v == v).all())}


def child_transformers(npz: str, shape: str, length: int, texts: list, threads: int) -> dict:
    import torch

    from run import _rss_mib, reference_setup

    model, tok = reference_setup(npz, shape, threads, "bfloat16")
    ids = [tok.encode(PREFIX + x, add_special_tokens=False).ids[:length] for x in texts]
    with torch.inference_mode():
        model(input_ids=torch.tensor([ids[0][:64]]))  # warm-up
        t = time.perf_counter()
        for x in ids:  # one text a call: equal lengths, no padding
            hs = model(input_ids=torch.tensor([x])).last_hidden_state.float()
            torch.nn.functional.normalize(hs.mean(1), dim=-1)
        s = time.perf_counter() - t
    n = sum(len(x) for x in ids)
    return {"tok_s": n / s, "seconds": s, "n_tokens": n, "peak_mib": _rss_mib()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="v4", choices=("tiny", "mini", "v4"))
    ap.add_argument("--format", default="Q8_0",
                    help="weights, comma-separated: F16, BF16 or jv4.quantize types")
    ap.add_argument("--lengths", default="512,2048,8192,32768")
    ap.add_argument("--settings", default="default")
    ap.add_argument("--transformers", default="", help="lengths to run transformers bf16 on (empty: none)")
    ap.add_argument("--tokens", type=int, default=8192, help="tokens measured per length")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--length", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--setting", help=argparse.SUPPRESS)
    ap.add_argument("--texts-file", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        texts = json.loads(Path(a.texts_file).read_text())
        r = child_jv4(a.model, a.length, texts, a.threads, a.setting) if a.child == "jv4" else \
            child_transformers(a.model, a.shape, a.length, texts, a.threads)
        print("RESULT " + json.dumps(r))
        return 0

    import tempfile

    import jv4
    from corpus import docstring_passages
    from run import make_model

    f16, npz = make_model(a.shape, "F16")
    paths = {}
    for fmt in [x for x in a.format.split(",") if x]:
        plain = f16.with_name(f16.name.replace("-F16", f"-{fmt}"))
        imat = f16.with_name(f16.name.replace("-F16", f"-{fmt}-imat"))  # bench/formats.py's IQ files
        if fmt == "F16":
            paths[fmt] = f16
        elif fmt.startswith("IQ") and imat.exists():
            paths[fmt] = imat
        elif fmt in jv4.IMATRIX_TYPES:
            raise SystemExit(f"{fmt} needs an importance matrix: run bench/formats.py first (it makes {imat.name})")
        else:
            if not plain.exists():
                jv4.quantize(f16, plain, fmt)
            paths[fmt] = plain
    lengths = [int(x) for x in a.lengths.split(",") if x]
    settings = [x for x in a.settings.split(",") if x]
    for s in settings:
        if s not in SETTINGS:
            raise SystemExit(f"unknown setting {s!r}; allowed: {', '.join(SETTINGS)}")
    hf_lengths = [int(x) for x in a.transformers.split(",") if x]
    passages = docstring_passages(300)
    scratch = tempfile.TemporaryDirectory()

    def child(kind: str, model: Path, length: int, setting: str = "") -> dict:
        tf = Path(scratch.name) / f"texts-{length}.json"
        if not tf.exists():
            tf.write_text(json.dumps(_texts(length, a.tokens, passages)))
        out = subprocess.run([sys.executable, __file__, "--child", kind, "--model", str(model), "--length",
                              str(length), "--setting", setting, "--texts-file", str(tf), "--shape", a.shape,
                              "--threads", str(a.threads)], capture_output=True, text=True)
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if out.returncode != 0 or not line:
            return {"error": (out.stderr or out.stdout)[-1500:]}
        return json.loads(line[-1][7:])

    rows = {}
    for fmt, path in paths.items():
        for s in settings:
            for n in lengths:
                rows[f"{fmt} {s} {n}"] = r = child("jv4", path, n, s)
                print(fmt, s, n, {k: v for k, v in r.items() if k != "error"} or r["error"], flush=True)
    hf = {}
    for n in hf_lengths:
        hf[n] = r = child("transformers", npz, n)
        print("transformers", n, r, flush=True)

    feats = jv4.build_info()["cpu_features"]
    print(f"\nshape {a.shape}, {a.threads} threads, {a.tokens} tokens per length; "
          f"ggml CPU features: {' '.join(feats)}\n")
    print(f"| format | setting | tokens a text | jv4 tok/s | vs {lengths[0]} | peak RSS − file MiB | "
          "transformers bf16 tok/s | jv4 / transformers |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    (HERE / "results").mkdir(exist_ok=True)
    for fmt, path in paths.items():
        file_mib = path.stat().st_size / 2**20
        for s in settings:
            base = rows.get(f"{fmt} {s} {lengths[0]}", {}).get("tok_s")
            for n in lengths:
                r = rows[f"{fmt} {s} {n}"]
                lead = f"| {fmt} | {s} | {n} |"
                if "error" in r:
                    print(f"{lead} failed: {r['error'].splitlines()[-1] if r['error'] else '?'} | | | | |")
                    continue
                h = hf.get(n, {}).get("tok_s")
                vs = f"{r['tok_s'] / base:.2f}" if base else ""
                print(f"{lead} {r['tok_s']:.1f} | {vs} | {r['peak_mib'] - file_mib:.0f} | " +
                      (f"{h:.1f} | {r['tok_s'] / h:.2f} |" if h else "| |"))
        out = HERE / "results" / f"long-{a.shape}-{fmt}.json"
        mine = {k[len(fmt) + 1:]: v for k, v in rows.items() if k.startswith(f"{fmt} ")}
        out.write_text(json.dumps({"rows": mine, "transformers": hf, "file_mib": file_mib, "cpu_features": feats,
                                   "tokens": a.tokens, "lengths": lengths}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
