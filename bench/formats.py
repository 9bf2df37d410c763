"""Every official format on one shape: jv4 tokens/s, peak RSS and fidelity
against transformers' float32 forward pass of the same weights, beside
transformers fp32 and bf16 speed, all in one run, and the raw forward pass
of llama.cpp as released (the vendored tree without jv4's patches) where
`python bench/build_tools.py --upstream --bench-only` has built its
llama-bench: pp512 tokens/s at its defaults (weights repacked where llama.cpp
repacks them, F16 kept F16).

    python bench/formats.py --shape v4 --texts 16
    python bench/formats.py --shape mini --formats F16,Q8_0 --baseline-python /path/to/old/venv/bin/python

With --baseline-python, each format's jv4 child also runs in that interpreter
(another jv4 build: an older commit, other patches), rounds alternating, and
the table adds its tok/s, the ratio, and whether the two builds' vectors are
the same bytes.

The F16 model comes from bench/run.py's generator (bench/models/); the other
formats are made from it by jv4.quantize, the IQ ones with an importance
matrix computed by jv4.imatrix on calibration passages that are not among
the measured ones (as the official dynamic quants are made). Each engine runs
in its own process; peak RSS is that process's VmHWM.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
UPSTREAM_BENCH = HERE.parent / "build" / "llama-tools-upstream" / "bin" / "llama-bench"
sys.path.insert(0, str(HERE))
sys.path.append(str(HERE.parent / "tests"))

FORMATS = ("F16", "BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "IQ4_XS", "IQ2_XXS", "IQ1_S")
PREFIX = "Passage: "


def child_jv4(path: str, texts: list, threads: int) -> dict:
    import jv4
    from run import _rss_mib

    t = time.perf_counter()
    m = jv4.Model(path, n_threads=threads)
    load_s = time.perf_counter() - t
    m.embed(texts[:4], role="passage")  # warm-up
    n_tokens = sum(len(m.tokenize(x, role="passage")) for x in texts)
    t = time.perf_counter()
    v = m.embed(texts, role="passage")
    s = time.perf_counter() - t
    return {"tok_s": n_tokens / s, "load_s": load_s, "peak_mib": _rss_mib(), "vectors": v.tolist(),
            "f16_as_bf16": m.info["f16_as_bf16"], "repack": m.info["repack"]}


def child_reference(npz: str, shape: str, texts: list, threads: int) -> dict:
    """transformers float32, one text at a time: the fidelity reference."""
    import modelgen as mg
    from run import reference_setup

    model, tok = reference_setup(npz, shape, threads, "float32")
    ids = [tok.encode(PREFIX + x, add_special_tokens=False).ids for x in texts]
    return {"vectors": mg.reference_embed(model, ids).tolist()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="v4", choices=("tiny", "mini", "v4"))
    ap.add_argument("--texts", type=int, default=16)
    ap.add_argument("--calibration", type=int, default=32, help="passages for the importance matrix")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--baseline-python", help="an interpreter with another jv4 build, measured beside this one")
    ap.add_argument("--rounds", type=int, default=1, help="jv4 runs per format (median), alternating with the baseline")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--texts-file", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        texts = json.loads(Path(a.texts_file).read_text())
        r = child_jv4(a.model, texts, a.threads) if a.child == "jv4" else \
            child_reference(a.model, a.shape, texts, a.threads)
        print("RESULT " + json.dumps(r))
        return 0

    import numpy as np

    import jv4
    from corpus import docstring_passages
    from run import make_model, run_child

    f16, npz = make_model(a.shape, "F16")
    passages = docstring_passages(a.texts + a.calibration)
    texts, calibration = passages[:a.texts], passages[a.texts:]
    import tempfile

    scratch = tempfile.TemporaryDirectory()  # the texts, for the children
    texts_file = Path(scratch.name) / "texts.json"
    texts_file.write_text(json.dumps(texts))
    (HERE / "results").mkdir(exist_ok=True)

    def child(kind: str, model: Path, python: str = sys.executable) -> dict:
        out = subprocess.run([python, __file__, "--child", kind, "--model", str(model), "--texts-file",
                              str(texts_file), "--shape", a.shape, "--threads", str(a.threads)],
                             capture_output=True, text=True)
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if out.returncode != 0 or not line:
            raise SystemExit(f"{kind} {model} failed:\n{out.stderr[-3000:]}")
        return json.loads(line[-1][7:])

    formats = [f.strip() for f in a.formats.split(",") if f.strip()]
    files = {"F16": f16}
    im = f16.with_name(f16.stem + "-imatrix.gguf")
    timing = {}
    if any(f in jv4.IMATRIX_TYPES or f.startswith("IQ") for f in formats) and not im.exists():
        t = time.perf_counter()
        jv4.imatrix(f16, calibration, im, role="passage")
        timing["imatrix"] = time.perf_counter() - t
    for f in formats:
        if f in files:
            continue
        imatrix = im if f.startswith("IQ") else None
        path = f16.with_name(f16.name.replace("-F16", f"-{f}" + ("-imat" if imatrix else "")))
        if not path.exists():
            t = time.perf_counter()
            jv4.quantize(f16, path, f, imatrix=imatrix)
            timing[f"quantize {f}"] = time.perf_counter() - t
        files[f] = path

    ref = np.array(child("reference", npz)["vectors"])
    rows = {}
    for f in formats:
        runs, base_runs = [], []
        builds = [(sys.executable, runs)] + ([(a.baseline_python, base_runs)] if a.baseline_python else [])
        for i in range(max(1, a.rounds)):  # alternating which build goes first
            for python, out in (builds if i % 2 == 0 else builds[::-1]):
                out.append(child("jv4", files[f], python))
        r = dict(runs[0], tok_s=statistics.median(x["tok_s"] for x in runs))
        v = np.array(r.pop("vectors"))
        cos = (v * ref).sum(1) / (np.linalg.norm(v, axis=1) * np.linalg.norm(ref, axis=1))
        rows[f] = dict(r, cos_mean=float(cos.mean()), cos_min=float(cos.min()),
                       file_mib=files[f].stat().st_size / 2**20, tok_s_runs=[x["tok_s"] for x in runs])
        if base_runs:
            bv = np.array(base_runs[0]["vectors"], dtype=np.float32)
            rows[f].update(baseline_tok_s=statistics.median(x["tok_s"] for x in base_runs),
                           baseline_tok_s_runs=[x["tok_s"] for x in base_runs],
                           same_vectors=bool(bv.tobytes() == v.astype(np.float32).tobytes()))
    if UPSTREAM_BENCH.exists():
        from run import llama_bench

        for f in formats:
            rows[f]["upstream_pp512"] = llama_bench(UPSTREAM_BENCH, files[f], a.threads, prompts=(512,))["pp512"]
    ns = argparse.Namespace(threads=a.threads, shape=a.shape, batch_tokens=0)
    hf = {e: run_child(e, ns, f16, npz, texts_file) for e in ("transformers-fp32", "transformers-bf16")}
    # one model for the count, memory-mapped as it is (F16 kept F16: only its vocabulary is used)
    counter = jv4.Model(f16, n_threads=1, f16_as_bf16=False, repack=False)
    n_tokens = sum(len(counter.tokenize(x, role="passage")) for x in texts)
    hf_tok = {e: n_tokens / r["seconds"] for e, r in hf.items()}
    best_hf = max(hf_tok.values())

    feats = jv4.build_info()["cpu_features"]
    print(f"shape {a.shape}, {a.texts} passages ({n_tokens} tokens), {a.threads} threads; ggml CPU features: "
          f"{' '.join(feats)}; IQ types with an imatrix of {len(calibration)} other passages\n")
    print("| format | jv4 tok/s | vs best transformers | llama.cpp as released, pp512 tok/s | peak RSS MiB | "
          "file MiB | cos vs fp32 reference (mean / min) |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for f, r in rows.items():
        note = " (held as BF16)" if r["f16_as_bf16"] else ""
        up = f"{r['upstream_pp512']:.1f}" if "upstream_pp512" in r else "not built"
        print(f"| {f}{note} | {r['tok_s']:.1f} | {r['tok_s'] / best_hf:.2f} | {up} | {r['peak_mib']:.0f} | "
              f"{r['file_mib']:.0f} | {r['cos_mean']:.6f} / {r['cos_min']:.6f} |")
    if a.baseline_python:
        print(f"\nbeside the baseline build ({a.baseline_python}), median of {a.rounds} alternating runs each:\n")
        print("| format | jv4 tok/s | baseline tok/s | x baseline | same vector bytes |")
        print("|---|---:|---:|---:|---|")
        for f, r in rows.items():
            print(f"| {f} | {r['tok_s']:.1f} | {r['baseline_tok_s']:.1f} | {r['tok_s'] / r['baseline_tok_s']:.3f} | "
                  f"{'yes' if r['same_vectors'] else 'no'} |")
    for e, t in hf_tok.items():
        print(f"| {e} | {t:.1f} | {t / best_hf:.2f} | | {hf[e]['peak_rss_mib']:.0f} | | |")
    if timing:
        print("\n" + ", ".join(f"{k} {v:.0f} s" for k, v in timing.items()))
    out = HERE / "results" / (f"formats-{a.shape}.json" if not a.baseline_python
                              else f"formats-{a.shape}-vs-baseline.json")
    out.write_text(json.dumps({"rows": rows, "transformers": hf_tok, "n_tokens": n_tokens, "cpu_features": feats,
                               "timing": timing}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
