"""Command line: `python -m jv4 {info,embed,quantize}`.

    python -m jv4 info
    python -m jv4 embed MODEL.gguf -i texts.txt -o vectors.npy [--role passage] [--dim 512]
    python -m jv4 quantize SRC.gguf DST.gguf Q4_K_M

`embed` reads one text per line (UTF-8; "-" for stdin), embeds in chunks and
writes a float32 (n, dim) .npy, memory-mapped so that millions of lines fit.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

import jv4


def _lines(path: str) -> list[str]:
    if path == "-":
        return sys.stdin.read().splitlines()
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


def cmd_embed(a: argparse.Namespace) -> int:
    texts = _lines(a.input)
    model = jv4.Model(a.model, n_threads=a.threads, batch_tokens=a.batch_tokens)
    dim = a.dim or model.n_embd
    out = np.lib.format.open_memmap(a.output, mode="w+", dtype=np.float32, shape=(len(texts), dim))
    t0 = time.monotonic()
    for start in range(0, len(texts), a.chunk):
        chunk = texts[start:start + a.chunk]
        out[start:start + len(chunk)] = model.embed(chunk, task=a.task, role=a.role, dim=a.dim)
        if not a.quiet:
            done = start + len(chunk)
            rate = done / max(time.monotonic() - t0, 1e-9)
            print(f"\r{done}/{len(texts)} texts, {rate:.1f} texts/s", end="", file=sys.stderr)
    out.flush()
    if not a.quiet:
        print(f"\nwrote {a.output}: {len(texts)} x {dim} float32", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m jv4", description="jv4 embeddings")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="print build_info() as JSON")
    e = sub.add_parser("embed", help="embed a file of lines into a .npy")
    e.add_argument("model")
    e.add_argument("-i", "--input", required=True, help="text file, one text per line; - for stdin")
    e.add_argument("-o", "--output", required=True, help=".npy file to write")
    e.add_argument("--task", choices=jv4.TASKS)
    e.add_argument("--role", choices=jv4.ROLES, default="query")
    e.add_argument("--dim", type=int)
    e.add_argument("--threads", type=int)
    e.add_argument("--batch-tokens", type=int)
    e.add_argument("--chunk", type=int, default=4096, help="texts per embed call")
    e.add_argument("-q", "--quiet", action="store_true")
    q = sub.add_parser("quantize", help="quantize a GGUF with llama.cpp's quantizer")
    q.add_argument("src")
    q.add_argument("dst")
    q.add_argument("type", choices=jv4.QUANT_TYPES)
    a = ap.parse_args(argv)
    try:
        if a.cmd == "info":
            print(json.dumps(jv4.build_info(), indent=2))
            return 0
        if a.cmd == "quantize":
            jv4.quantize(a.src, a.dst, a.type)
            return 0
        return cmd_embed(a)
    except (ValueError, TypeError, FileNotFoundError, jv4.ModelLoadError) as err:
        print(f"jv4: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
