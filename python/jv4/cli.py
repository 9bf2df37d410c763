"""The `jv4` command (also `python -m jv4`).

    jv4 embed "some text" "another"                 # JSON Lines on stdout
    jv4 embed -i passages.txt -o passages.npy --role passage --dim 512
    jv4 embed -i docs.jsonl --field body -o docs.jsonl.out.jsonl --task code
    jv4 embed -m CONVERTED_DIR --image page1.png page2.jpg -o pages.npy
    jv4 embed -m CONVERTED_DIR -i pages.jsonl             # lines {"image": "path"} (or "text")
    jv4 info [MODEL]
    jv4 quantize SRC.gguf DST.gguf Q4_K_M [--imatrix FILE]
    jv4 imatrix MODEL -i calibration.txt -o imatrix.gguf
    jv4 convert CHECKPOINT_DIR OUT_DIR [--outtype f16] [--merge TASK]

Without -m, `embed` uses the official GGUF of --task (default retrieval) at
--quant (default Q4_K_M), downloaded through huggingface_hub on first use.
A user mistake prints one line `jv4: error: ...` and exits 2; Ctrl-C exits
130; an output file appears under its name only once it is complete.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

import jv4

from .checkpoint import OUTTYPES
from .hub import DEFAULT_QUANT
from .precision import PRECISIONS, calibration_ranges, output_dtype, output_width, quantize_embeddings
from .progress import Bar

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """A mistake in the command line or its input: one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage block
        raise UsageError(f"{message} (see '{self.prog} --help')")


# --- input -------------------------------------------------------------------
@dataclass
class Record:
    line: int                 # 1-based input line (0 for command-line texts)
    text: str                 # the text, or the image's path when `image`
    fields: Optional[dict]    # the JSON object of a JSON Lines input line
    image: bool = False       # an image file to embed (--image, or a JSON Lines "image" field)


def _decode(raw: bytes, where: str, line: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UsageError(f"{where} line {line} is not valid UTF-8 (byte {err.start} of the line)") from None


def _read_records(stream: io.BufferedIOBase, where: str, jsonl: bool, field: str) -> Iterator[Record]:
    """One record per line ('\\n'; a trailing '\\r' is dropped). Text input
    keeps empty lines (one vector each, so row i is line i); JSON Lines skips
    blank lines."""
    for n, raw in enumerate(stream, start=1):
        line = _decode(raw, where, n)
        if line.endswith("\n"):
            line = line[:-1]
        if line.endswith("\r"):
            line = line[:-1]
        if not jsonl:
            yield Record(n, line, None)
            continue
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise UsageError(f"{where} line {n} is not JSON: {err.msg} (column {err.colno})") from None
        if not isinstance(obj, dict):
            raise UsageError(f"{where} line {n} is not a JSON object")
        image = field not in obj and field == "text" and "image" in obj
        key = "image" if image else field
        if key not in obj:
            raise UsageError(f"{where} line {n} has no field {field!r} (choose it with --field)"
                             + (" nor 'image' (a path)" if field == "text" else ""))
        if not isinstance(obj[key], str):
            raise UsageError(f"{where} line {n}: field {key!r} is {type(obj[key]).__name__}, not a string")
        yield Record(n, obj[key], obj, image)


class _Input:
    """The records to embed: command-line texts, or a file read twice - once
    to count and check every line before any output exists, once in chunks
    while embedding - so a file of millions of lines is never held whole.
    Standard input is first copied to a temporary file."""

    def __init__(self, a: argparse.Namespace) -> None:
        self.texts = a.texts
        self.images = a.image or []
        self.file = None
        if self.images:
            self.n = len(self.images)
            return
        if self.texts:
            self.n = len(self.texts)
            return
        self.jsonl = a.format == "jsonl" or (a.format is None and (
            a.field is not None or a.input.endswith((".jsonl", ".ndjson"))))
        self.field = a.field or "text"
        if a.input == "-":
            self.where = "stdin"
            self.file = tempfile.TemporaryFile()
            shutil.copyfileobj(sys.stdin.buffer, self.file)
        else:
            self.where = a.input
            try:
                self.file = open(a.input, "rb")
            except FileNotFoundError:
                raise UsageError(f"input file not found: {a.input}") from None
            except OSError as err:
                raise UsageError(f"cannot read {a.input}: {err.strerror}") from None
        self.n = sum(1 for _ in self._records())

    def _records(self) -> Iterator[Record]:
        if self.images:
            return (Record(0, p, None, True) for p in self.images)
        if self.file is None:
            return (Record(0, t, None) for t in self.texts)
        self.file.seek(0)
        return _read_records(self.file, self.where, self.jsonl, self.field)

    def chunks(self, size: int) -> Iterator[tuple]:
        records = self._records()
        start = 0
        while True:
            chunk = list(itertools.islice(records, size))
            if not chunk:
                return
            yield start, chunk
            start += len(chunk)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


# --- output ------------------------------------------------------------------
class _Output:
    """Where vectors go: a .npy (memory-mapped), a .jsonl, or JSON Lines on
    stdout. Files are written under a temporary name and renamed when
    complete, so an interrupted run leaves no file that looks finished."""

    def __init__(self, path: Optional[str], n: int, width: int, dtype: np.dtype, vector_field: str):
        self.path = path
        self.vector_field = vector_field
        self.kind = "stdout" if path in (None, "-") else Path(path).suffix.lower()
        if self.kind not in ("stdout", ".npy", ".jsonl"):
            raise UsageError(f"-o must end in .npy or .jsonl (or be omitted for JSON on stdout), got {path}")
        self.tmp: Optional[str] = None
        if self.kind != "stdout":
            out_dir = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(out_dir):
                raise UsageError(f"output folder does not exist: {out_dir}")
            self.tmp = os.path.join(out_dir, f".{os.path.basename(path)}.partial-{os.getpid()}")
        if self.kind == ".npy":
            self.array = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=dtype, shape=(n, width))
        elif self.kind == ".jsonl":
            self.file = open(self.tmp, "w", encoding="utf-8")
        else:
            self.file = sys.stdout

    def write(self, start: int, records: list[Record], vectors: np.ndarray) -> None:
        if self.kind == ".npy":
            self.array[start:start + len(records)] = vectors
            return
        lines = []
        for rec, vec in zip(records, vectors.tolist()):
            obj = dict(rec.fields) if rec.fields is not None else {"image" if rec.image else "text": rec.text}
            if rec.fields is not None and self.vector_field in rec.fields:
                raise UsageError(f"input line {rec.line} already has a field {self.vector_field!r}: "
                                 "name the vector's field with --vector-field")
            obj[self.vector_field] = vec
            lines.append(json.dumps(obj, ensure_ascii=False))
        self.file.write("\n".join(lines) + "\n")
        self.file.flush()

    def commit(self) -> None:
        if self.kind == ".npy":
            self.array.flush()
            del self.array
        elif self.kind == ".jsonl":
            self.file.close()
        if self.tmp is not None:
            os.replace(self.tmp, self.path)
            self.tmp = None

    def discard(self) -> None:
        if self.kind == ".npy" and hasattr(self, "array"):
            del self.array
        elif self.kind == ".jsonl":
            self.file.close()
        if self.tmp is not None and os.path.exists(self.tmp):
            os.remove(self.tmp)


# --- commands ----------------------------------------------------------------
def _model_kwargs(a: argparse.Namespace) -> dict:
    pairs = (("n_threads", a.threads), ("batch_tokens", getattr(a, "batch_tokens", None)),
             ("image_max_tokens", getattr(a, "image_max_tokens", None)),
             ("flash_attn", getattr(a, "flash_attn", None)), ("kv_cache_type", getattr(a, "kv_cache_type", None)))
    return {k: v for k, v in pairs if v is not None}


def _engine(a: argparse.Namespace):
    """(object with embed_float32, task to pass, loaded Model)."""
    if a.model is None:
        emb = jv4.Embedder(a.quant, **_model_kwargs(a))
        task = a.task or jv4.DEFAULT_TASK
        return emb, task, emb.model(task)
    if a.quant is not None and a.quant != DEFAULT_QUANT:
        raise UsageError("--quant applies only without -m (give -m repo:QUANT instead)")
    model = jv4.Model(a.model, **_model_kwargs(a))
    return model, a.task, model


def cmd_embed(a: argparse.Namespace) -> int:
    if sum(map(bool, (a.texts, a.input is not None, a.image))) > 1:
        raise UsageError("give texts as arguments, -i FILE or --image FILE..., one of them")
    if not a.texts and a.input is None and not a.image:
        raise UsageError("nothing to embed: give texts as arguments, -i FILE (- for stdin) or --image FILE...")
    if a.chunk < 1:
        raise UsageError(f"--chunk must be >= 1, got {a.chunk}")
    if a.image and a.model is None:
        raise UsageError("--image needs -m with the vision tower: a folder `jv4 convert` wrote "
                         "(the official GGUFs are text only)")
    if a.field is not None and (a.texts or a.format == "lines"):
        raise UsageError("--field applies to JSON Lines input (-i FILE.jsonl or --format jsonl)")
    ranges = None
    if a.ranges is not None:
        if not a.precision.endswith("int8"):
            raise UsageError("--ranges applies to --precision int8 or uint8")
        try:
            ranges = np.load(a.ranges)
        except (OSError, ValueError) as err:
            raise UsageError(f"cannot read --ranges {a.ranges}: {err}") from None
    if a.save_ranges is not None and not a.precision.endswith("int8"):
        raise UsageError("--save-ranges applies to --precision int8 or uint8")

    source = _Input(a)
    try:
        return _embed_all(a, source, ranges)
    finally:
        source.close()


def _embed_all(a: argparse.Namespace, source: _Input, ranges: Optional[np.ndarray]) -> int:
    engine, task, model = _engine(a)
    # the request policy checks task/role/dim before any output exists
    dim = model.check_request(task, a.role, a.dim)["dim"]
    n = source.n
    width = output_width(a.precision, dim)
    two_pass = a.precision.endswith("int8") and ranges is None
    if two_pass and n == 1:
        raise UsageError(f"--precision {a.precision} of a single text needs --ranges FILE.npy "
                         "(its own minimum and maximum are not a range)")
    out = _Output(a.output, n, width, output_dtype(a.precision), a.vector_field)
    bar = Bar(n, desc="embed") if a.progress else None

    def embed(start: int, chunk: list) -> np.ndarray:
        hook = bar.hook(start) if bar else None
        if not any(r.image for r in chunk):
            return engine.embed_float32([r.text for r in chunk], task, a.role, a.dim, progress=hook)
        # images (and any texts beside them), each kind in one call, rows in input order
        out = np.empty((len(chunk), dim), np.float32)
        texts = [i for i, r in enumerate(chunk) if not r.image]
        images = [i for i, r in enumerate(chunk) if r.image]
        if texts:
            out[texts] = engine.embed_float32([chunk[i].text for i in texts], task, a.role, a.dim)
        paths = [chunk[i].text for i in images]
        for p, r in zip(paths, (chunk[i] for i in images)):
            if not os.path.isfile(p):
                raise UsageError(f"image not found: {p}" + (f" (input line {r.line})" if r.line else ""))
        out[images] = engine.embed_images(paths, task, a.dim, show_progress=False)
        if hook is not None:
            hook(len(chunk), 0, 0)
        return out

    try:
        if two_pass:
            # the int kinds need the ranges of the whole input: float32 first, in
            # a temporary file so that a large input need not fit in memory
            scratch = np.memmap(tempfile.TemporaryFile(), dtype=np.float32, mode="w+", shape=(n, dim)) \
                if n else np.empty((0, dim), np.float32)
            for start, chunk in source.chunks(a.chunk):
                scratch[start:start + len(chunk)] = embed(start, chunk)
            ranges = calibration_ranges(scratch) if n else np.zeros((2, dim), np.float32)
            for start, chunk in source.chunks(a.chunk):
                out.write(start, chunk, quantize_embeddings(scratch[start:start + len(chunk)], a.precision,
                                                            ranges=ranges))
        else:
            for start, chunk in source.chunks(a.chunk):
                out.write(start, chunk, quantize_embeddings(embed(start, chunk), a.precision, ranges=ranges))
        if a.save_ranges is not None:
            np.save(a.save_ranges, ranges)
        out.commit()
    except BaseException:
        out.discard()
        raise
    finally:
        if bar is not None:
            bar.close()
    if out.kind != "stdout" and not a.quiet:
        print(f"wrote {a.output}: {n} x {width} {a.precision}", file=sys.stderr)
    return 0


def cmd_info(a: argparse.Namespace) -> int:
    if a.model is None:
        print(json.dumps(jv4.build_info(), indent=2))
        return 0
    m = jv4.Model(a.model, n_threads=1)
    info = m.info
    path = m.path
    facts = {
        "path": path,
        "architecture": info.get("architecture"),
        "name": info.get("name") or None,
        "jina_v4": info.get("jina_v4"),
        "task": m.task,
        "tasks": m.tasks,
        "multivector_tasks": m.multivector_tasks,
        "n_embd": m.n_embd,
        "dims": m.dims,
        "pooling": info.get("pooling"),
        "file_type": info.get("file_type"),
        "n_params": info.get("n_params"),
        "n_layer": info.get("n_layer"),
        "n_ctx_train": info.get("n_ctx_train"),
        "max_length": m.max_length,
        "mmproj": info.get("mmproj"),
        "image_tokens": [info.get("image_min_tokens"), info.get("image_max_tokens")] if m.has_vision else None,
        "file_bytes": os.path.getsize(path),
    }
    print(json.dumps(facts, indent=2))
    return 0


def cmd_quantize(a: argparse.Namespace) -> int:
    from ._model import local_path

    jv4.quantize(local_path(a.src), a.dst, a.type, n_threads=a.threads, imatrix=a.imatrix)
    return 0


def cmd_imatrix(a: argparse.Namespace) -> int:
    if a.input == "-":
        raw = sys.stdin.buffer.read()
        where = "stdin"
    else:
        try:
            raw = Path(a.input).read_bytes()
        except OSError as err:
            raise UsageError(f"cannot read {a.input}: {err.strerror or err}") from None
        where = a.input
    texts = []
    for n, line in enumerate(raw.split(b"\n"), 1):
        if line.endswith(b"\r"):
            line = line[:-1]
        if line.strip():
            texts.append(_decode(line, where, n))
    if not texts:
        raise UsageError(f"{where} holds no calibration text (one text a line)")
    model = jv4.Model(a.model, n_threads=a.threads)
    seen = model.imatrix(texts, a.output, a.task, a.role, show_progress=a.progress)
    if not a.quiet:
        print(f"wrote {a.output}: {len(seen)} weights, {len(texts)} texts", file=sys.stderr)
    return 0


def cmd_convert(a: argparse.Namespace) -> int:
    from .checkpoint import convert

    from tqdm.auto import tqdm

    bar = tqdm(desc="convert", unit="tensor", file=sys.stderr, dynamic_ncols=True) if a.progress else None
    try:
        manifest = convert(a.checkpoint, a.out_dir, outtype=a.outtype, merge=a.merge, vision=not a.no_vision,
                           progress=(lambda name: bar.update(1)) if bar else None)
    finally:
        if bar is not None:
            bar.close()
    if not a.quiet:
        files = [manifest.get("base") or manifest.get("merged"), *manifest.get("adapters", {}).values(),
                 manifest["projector"], *([manifest["mmproj"]] if "mmproj" in manifest else [])]
        print(f"wrote {a.out_dir}: {', '.join(files)} (load it with jv4.Model({str(a.out_dir)!r}))",
              file=sys.stderr)
    return 0


def cmd_serve(a: argparse.Namespace) -> int:
    from . import server  # (needs no extra itself)

    try:
        import uvicorn  # noqa: F401 - the extra's presence, checked before loading anything
        import starlette  # noqa: F401
        import prometheus_client  # noqa: F401
    except ImportError:
        raise UsageError(server.SERVE_EXTRA) from None
    if a.model is not None and a.quant != DEFAULT_QUANT:
        raise UsageError("--quant applies only without MODEL (give MODEL as repo:QUANT instead)")
    for name in ("max_batch_texts", "max_request_bytes", "max_concurrency"):
        v = getattr(a, name)
        if v is not None and v < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    if not 0 < a.port < 65536:
        raise UsageError(f"--port must be 1..65535, got {a.port}")
    opts = server.ServerOptions(api_key=a.api_key or os.environ.get("JV4_API_KEY") or None, role=a.role)
    for name in ("max_batch_texts", "max_request_bytes", "max_concurrency"):
        if getattr(a, name) is not None:
            setattr(opts, name, getattr(a, name))
    kwargs = _model_kwargs(a)
    if a.batch_wait_ms is not None:
        kwargs["batch_wait_ms"] = a.batch_wait_ms
    kwargs["coalesce"] = not a.no_coalesce  # on: concurrent requests share decodes
    if a.batch_invariant:
        kwargs["batch_invariant"] = True
    server.serve(a.model, host=a.host, port=a.port, quant=a.quant, task=a.task, options=opts,
                 model_kwargs=kwargs, log_level=a.log_level)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import server  # its defaults (the module needs no extra)

    ap = _Parser(prog="jv4", description="Embeddings from jina-embeddings-v4 GGUF models, in process.")
    ap.add_argument("--version", action="version", version=f"jv4 {jv4.__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="{embed,info,quantize,imatrix,convert,serve}")

    e = sub.add_parser("embed", help="embed texts into vectors",
                       description="Embed texts (arguments, a text file with one text a line, or "
                                   "JSON Lines) into vectors: .npy, .jsonl, or JSON Lines on stdout.")
    e.add_argument("texts", nargs="*", metavar="TEXT", help="texts to embed (or use -i)")
    e.add_argument("--image", nargs="+", metavar="FILE",
                   help="image files to embed (needs -m with a vision tower: a folder jv4 convert wrote)")
    e.add_argument("-i", "--input", metavar="FILE",
                   help="a UTF-8 file, one text a line, or JSON Lines (.jsonl or --field); - for stdin")
    e.add_argument("--field", metavar="NAME", help="JSON Lines input: the field holding the text (default: text)")
    e.add_argument("--format", choices=("lines", "jsonl"), help="input format (default: by extension / --field)")
    e.add_argument("-m", "--model", metavar="MODEL",
                   help="a GGUF path or a Hugging Face name repo[:QUANT] (default: the official "
                        "jina-embeddings-v4 GGUF of --task)")
    e.add_argument("--quant", default=DEFAULT_QUANT, help=f"quant of the official model without -m (default {DEFAULT_QUANT})")
    e.add_argument("--task", choices=jv4.TASKS, help=f"jina-v4 task (default: {jv4.DEFAULT_TASK}, or the file's own)")
    e.add_argument("--role", choices=jv4.ROLES, default="query", help="query or passage (default query)")
    e.add_argument("--dim", type=int, help=f"Matryoshka width: {', '.join(map(str, jv4.MATRYOSHKA_DIMS))}")
    e.add_argument("--precision", choices=PRECISIONS, default="float32",
                   help="output precision (sentence-transformers' meanings; default float32)")
    e.add_argument("--ranges", metavar="FILE.npy",
                   help="int8/uint8: (2, dim) per-dimension min/max to quantize with "
                        "(default: from the whole input)")
    e.add_argument("--save-ranges", metavar="FILE.npy", help="int8/uint8: save the ranges used")
    e.add_argument("-o", "--output", metavar="OUT", help="OUT.npy or OUT.jsonl (default: JSON Lines on stdout)")
    e.add_argument("--vector-field", default="embedding", help="JSON output: the vector's field (default embedding)")
    e.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    e.add_argument("--batch-tokens", type=int, help=f"token budget of one decode (default {jv4._core.DEFAULT_BATCH_TOKENS})")
    e.add_argument("--flash-attn", action=argparse.BooleanOptionalAction, default=None,
                   help="llama.cpp's flash attention on or off (default: llama.cpp decides)")
    e.add_argument("--kv-cache-type", choices=jv4.KV_CACHE_TYPES, metavar="TYPE",
                   help="KV cache element type for long texts: " + ", ".join(jv4.KV_CACHE_TYPES) + " (default: bf16 on CPUs with AVX512-BF16 for BF16 and quantized weights, else f16)")
    e.add_argument("--image-max-tokens", type=int, metavar="N",
                   help="image budget: at most N tokens an image (default: the checkpoint's)")
    e.add_argument("--chunk", type=int, default=4096, help="texts per engine call (default 4096)")
    e.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr (default: when stderr is a terminal)")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no summary line")

    i = sub.add_parser("info", help="build facts, or a model's facts, as JSON")
    i.add_argument("model", nargs="?", metavar="MODEL", help="a GGUF path or repo[:QUANT]")

    q = sub.add_parser("quantize", help="quantize a GGUF with llama.cpp's quantizer (a text model or an mmproj)")
    q.add_argument("src", help="a GGUF path or repo[:QUANT]; an mmproj (the vision tower) too")
    q.add_argument("dst")
    q.add_argument("type", choices=jv4.QUANT_TYPES, metavar="TYPE",
                   help=", ".join(jv4.QUANT_TYPES) + "; an mmproj: " + ", ".join(jv4.MMPROJ_QUANT_TYPES))
    q.add_argument("--threads", type=int)
    q.add_argument("--imatrix", metavar="FILE",
                   help="an importance matrix (jv4 imatrix, or llama.cpp's GGUF imatrix); needed by "
                        + ", ".join(jv4.IMATRIX_TYPES))

    im = sub.add_parser("imatrix", help="compute an importance matrix for quantize --imatrix",
                        description="Run calibration texts (one a line) through the model's forward pass and "
                                    "write llama.cpp's importance matrix (GGUF) for jv4 quantize --imatrix.")
    im.add_argument("model", metavar="MODEL", help="a GGUF path, a converted folder or repo[:QUANT] (F16/F32 "
                                                   "is best: the matrix weighs the unquantized model)")
    im.add_argument("-i", "--input", required=True, metavar="FILE", help="calibration texts, one a line; - for stdin")
    im.add_argument("-o", "--output", required=True, metavar="OUT.gguf")
    im.add_argument("--task", choices=jv4.TASKS, help="jina-v4 task (default: the file's own)")
    im.add_argument("--role", choices=jv4.ROLES, default="passage", help="prefix role (default passage)")
    im.add_argument("--threads", type=int)
    im.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                    help="progress bar on stderr (default: when stderr is a terminal)")
    im.add_argument("-q", "--quiet", action="store_true")

    sv = sub.add_parser("serve", help="an OpenAI-compatible embeddings server (POST /v1/embeddings)",
                        description="Serve a model over HTTP with OpenAI's /v1/embeddings API (plus task, role, "
                                    "precision and multivector fields), /v1/models, /health and /metrics. "
                                    "Concurrent requests share decodes. Needs pip install 'jv4[serve]'.")
    sv.add_argument("model", nargs="?", metavar="MODEL",
                    help="a GGUF path, a folder jv4 convert wrote (every task from one base) or repo[:QUANT] "
                         "(default: the three official jina-embeddings-v4 GGUFs, by task)")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    sv.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    sv.add_argument("--api-key", metavar="KEY",
                    help="require 'Authorization: Bearer KEY' (default: $JV4_API_KEY, else no key)")
    sv.add_argument("--max-batch-texts", type=int, default=None, metavar="N",
                    help=f"most texts in one request (default {server.DEFAULT_MAX_BATCH_TEXTS}, OpenAI's limit)")
    sv.add_argument("--max-request-bytes", type=int, default=None, metavar="N",
                    help=f"largest request body (default {server.DEFAULT_MAX_REQUEST_BYTES // 2**20} MiB)")
    sv.add_argument("--max-concurrency", type=int, default=None, metavar="N",
                    help=f"requests in the engine at once, more wait (default {server.DEFAULT_MAX_CONCURRENCY})")
    sv.add_argument("--quant", default=DEFAULT_QUANT, help=f"quant of the official models without MODEL "
                                                             f"(default {DEFAULT_QUANT})")
    sv.add_argument("--task", choices=jv4.TASKS, help=f"task of requests that name none (default: {jv4.DEFAULT_TASK}, or "
                                                      "the file's own)")
    sv.add_argument("--role", choices=jv4.ROLES, default="query", help="role of requests that name none "
                                                                       "(default query)")
    sv.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    sv.add_argument("--batch-tokens", type=int, help=f"token budget of one decode (default {jv4._core.DEFAULT_BATCH_TOKENS})")
    sv.add_argument("--batch-wait-ms", type=float, metavar="MS",
                    help="how long a request waits for others to share its decode (default 0)")
    sv.add_argument("--no-coalesce", action="store_true", help="run requests one by one, no shared decodes")
    sv.add_argument("--batch-invariant", action="store_true",
                    help="a text's vector is the same bytes whatever shares its decode (CPU reference "
                         "kernels, no repacking; its cost: docs/benchmarks.md)")
    sv.add_argument("--flash-attn", action=argparse.BooleanOptionalAction, default=None,
                    help="llama.cpp's flash attention on or off (default: llama.cpp decides)")
    sv.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))

    c = sub.add_parser("convert", help="convert the jina-embeddings-v4 checkpoint (base + task adapters)",
                       description="Convert a jina-embeddings-v4 Hugging Face checkpoint folder into GGUF "
                                   "files: one base model, a LoRA adapter per task and the multi-vector "
                                   "projectors (or, with --merge, one merged single-task model and the "
                                   "projectors). Load the result with -m OUT_DIR / jv4.Model(OUT_DIR).")
    c.add_argument("checkpoint", metavar="CHECKPOINT_DIR",
                   help="config.json, *.safetensors, tokenizer.json, adapters/")
    c.add_argument("out_dir", metavar="OUT_DIR", help="a new (or empty) folder")
    c.add_argument("--outtype", choices=OUTTYPES, default="f16",
                   help="the base model's matrices (default f16)")
    c.add_argument("--merge", choices=jv4.TASKS, metavar="TASK",
                   help=f"write one model with this task's adapter merged ({', '.join(jv4.TASKS)})")
    c.add_argument("--no-vision", action="store_true",
                   help="leave the vision tower out (text only: no mmproj file, no embed_images)")
    c.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr (default: when stderr is a terminal)")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no summary line")
    return ap


def main(argv: Optional[list] = None) -> int:
    try:
        a = build_parser().parse_args(argv)
        if hasattr(a, "progress"):
            # the bar: as asked, else when stderr is a terminal; never with -q
            a.progress = not a.quiet and (sys.stderr.isatty() if a.progress is None else a.progress)
        commands = {"embed": cmd_embed, "info": cmd_info, "imatrix": cmd_imatrix, "convert": cmd_convert,
                    "quantize": cmd_quantize, "serve": cmd_serve}
        return commands[a.cmd](a)
    except KeyboardInterrupt:
        print("jv4: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader of stdout went away (e.g. `| head`): stop quietly
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (UsageError, ValueError, TypeError, FileNotFoundError, jv4.ModelLoadError) as err:
        print(f"jv4: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as err:  # e.g. disk full while writing
        print(f"jv4: error: {_one_line(err)}", file=sys.stderr)
        return 1


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
