"""Fuzzes jv4's model loading with mutated GGUF files.

    python tools/fuzz_gguf.py --cases 10000 --seed 1 --jobs 2   # the long run
    python tools/fuzz_gguf.py --replay 1:4711 --keep /tmp/case  # one case again

Every case is a small valid file (four bases: models qwen2 F32, qwen2vl F16,
qwen2 Q4_K_M with a cut-down Qwen2 vocabulary so that a load takes
milliseconds, and a vision tower mmproj loaded beside its text model)
changed by one mutation, deterministic from (seed, case number):

- header: magic, version, tensor and key counts that lie;
- kv_int / kv_float / kv_bool / kv_string / kv_array: one metadata value of
  that kind set to an edge value (0, -1, the type's extremes, NaN, huge
  lengths, invalid UTF-8, array counts and element types that lie);
- kv_key / kv_type / kv_drop / kv_dup: a key renamed, emptied or duplicated,
  a value's type changed, a key removed;
- vocab: duplicate or empty token strings, token types out of range, broken
  merges, token/score/type arrays of different lengths, special-token ids
  out of range;
- hparams: the model's own keys (layers, widths, heads, context, RoPE,
  epsilon, pooling) set to edge values;
- tensor_info: dimensions, type, offset, name of one tensor, a tensor
  dropped or duplicated;
- alignment: general.alignment set to 0, odd, huge;
- data: the file cut anywhere, bytes of the tensor data changed (NaN, inf);
- bytes: plain byte mutations anywhere in the file (overwrite 1-8 bytes,
  insert, delete).

Each case runs in a child process (a worker that loads case after case and
is replaced when it dies): load, and when the model loads, embed three texts
and tokenize one. Outcomes: `refused` (a Python exception from jv4.Model),
`loaded` (embed gave finite vectors), `embed_error` (embed raised cleanly),
and the failures - `crash` (the worker died: signal or abort), `hang` (no
answer within the timeout), `nonfinite` (vectors with NaN/inf), `memory`
(the case's peak resident memory above --max-rss-mb).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import math
import os
import random
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------- GGUF
SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<B", 10: "<Q", 11: "<q",
          12: "<d"}
STRING, ARRAY = 8, 9
INT_TYPES = (0, 1, 2, 3, 4, 5, 10, 11)
FLOAT_TYPES = (6, 12)


@dataclasses.dataclass
class KV:
    key: bytes
    vtype: int
    value: Any  # scalar; bytes for STRING; (element type, list) for ARRAY


@dataclasses.dataclass
class Tensor:
    name: bytes
    dims: list
    ttype: int
    offset: int


@dataclasses.dataclass
class Gguf:
    version: int
    kvs: list
    tensors: list
    data: bytes
    alignment: int = 32

    def find(self, key: str) -> Optional[KV]:
        for kv in self.kvs:
            if kv.key == key.encode():
                return kv
        return None


class _Reader:
    def __init__(self, b: bytes):
        self.b, self.pos = b, 0

    def take(self, fmt: str):
        (v,) = struct.unpack_from(fmt, self.b, self.pos)
        self.pos += struct.calcsize(fmt)
        return v

    def string(self) -> bytes:
        n = self.take("<Q")
        s = self.b[self.pos:self.pos + n]
        self.pos += n
        return s

    def value(self, t: int):
        if t == STRING:
            return self.string()
        if t == ARRAY:
            et, n = self.take("<I"), self.take("<Q")
            return (et, [self.value(et) for _ in range(n)])
        return self.take(SCALAR[t])


def parse(b: bytes) -> Gguf:
    r = _Reader(b)
    assert r.take("<I") == 0x46554747, "not a GGUF file"
    version, n_t, n_kv = r.take("<I"), r.take("<Q"), r.take("<Q")
    kvs = []
    for _ in range(n_kv):
        key = r.string()
        t = r.take("<I")
        kvs.append(KV(key, t, r.value(t)))
    tensors = []
    for _ in range(n_t):
        name = r.string()
        nd = r.take("<I")
        dims = [r.take("<Q") for _ in range(nd)]
        tensors.append(Tensor(name, dims, r.take("<I"), r.take("<Q")))
    g = Gguf(version, kvs, tensors, b"")
    al = g.find("general.alignment")
    g.alignment = al.value if al is not None and al.vtype == 4 else 32
    start = -(-r.pos // g.alignment) * g.alignment
    g.data = b[start:]
    return g


def _pack_value(t: int, v) -> bytes:
    if t == STRING:
        return struct.pack("<Q", len(v)) + v
    if t == ARRAY:
        et, items = v
        return struct.pack("<IQ", et, len(items)) + b"".join(_pack_value(et, x) for x in items)
    return struct.pack(SCALAR[t], v)


def serialize(g: Gguf, n_tensors: Optional[int] = None, n_kv: Optional[int] = None,
              magic: int = 0x46554747) -> bytes:
    out = [struct.pack("<IIQQ", magic, g.version,
                       len(g.tensors) if n_tensors is None else n_tensors,
                       len(g.kvs) if n_kv is None else n_kv)]
    for kv in g.kvs:
        out.append(struct.pack("<Q", len(kv.key)) + kv.key + struct.pack("<I", kv.vtype)
                   + _pack_value(kv.vtype, kv.value))
    for t in g.tensors:
        out.append(struct.pack("<Q", len(t.name)) + t.name + struct.pack("<I", len(t.dims))
                   + b"".join(struct.pack("<Q", d) for d in t.dims) + struct.pack("<IQ", t.ttype, t.offset))
    head = b"".join(out)
    al = g.alignment if isinstance(g.alignment, int) and 0 < g.alignment < 1 << 20 else 32
    return head + b"\0" * (-len(head) % al) + g.data


# ---------------------------------------------------------------- mutations
def edge_int(rng: random.Random, t: int, old: int = 0) -> int:
    fmt = SCALAR[t]
    bits = struct.calcsize(fmt) * 8
    signed = fmt[1].islower()
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    picks = [0, 1, 2, 3, 7, 64, 255, 256, 4096, 65535, 1 << 31, (1 << 31) - 1, 1 << 32, hi, lo, hi - 1,
             old + 1, old - 1, old * 2, old * 1000, old // 2, rng.randrange(lo, hi + 1)]
    if signed:
        picks += [-1, -2, -old]
    return min(hi, max(lo, rng.choice(picks)))


def edge_float(rng: random.Random) -> float:
    return rng.choice([0.0, -0.0, -1.0, 1.0, 1e-30, 1e30, 3.4e38, float("nan"), float("inf"), float("-inf"),
                       rng.uniform(-1e6, 1e6)])


def _kvs_of(g: Gguf, pred: Callable[[KV], bool]) -> list:
    return [kv for kv in g.kvs if pred(kv)]


def mut_header(rng, g, raw):
    choice = rng.randrange(4)
    if choice == 0:
        v = rng.choice([0, 1, 2, 4, 0xFFFFFFFF, rng.getrandbits(32)])
        g.version = v
        return serialize(g), f"version={v}"
    if choice == 1:
        n = edge_int(rng, 10, len(g.tensors))
        return serialize(g, n_tensors=n), f"n_tensors={n} (really {len(g.tensors)})"
    if choice == 2:
        n = edge_int(rng, 10, len(g.kvs))
        return serialize(g, n_kv=n), f"n_kv={n} (really {len(g.kvs)})"
    m = rng.choice([0, 0x46554748, 0x47475546, rng.getrandbits(32)])
    return serialize(g, magic=m), f"magic={m:#x}"


def mut_kv_scalar(types):
    def mut(rng, g, raw):
        cands = _kvs_of(g, lambda kv: kv.vtype in types)
        kv = rng.choice(cands)
        if kv.vtype in FLOAT_TYPES:
            kv.value = edge_float(rng)
        elif kv.vtype == 7:
            kv.value = rng.choice([0, 1, 2, 255])
        else:
            kv.value = edge_int(rng, kv.vtype, kv.value)
        return serialize(g), f"{kv.key.decode()}={kv.value!r}"
    return mut


def mut_kv_string(rng, g, raw):
    kv = rng.choice(_kvs_of(g, lambda kv: kv.vtype == STRING))
    choice = rng.randrange(5)
    if choice < 4:
        kv.value = [b"", b"\xff\xfe\x80", b"a\0b", kv.value * 1000][choice]
        return serialize(g), f"{kv.key.decode()}={kv.value[:20]!r}"
    # the length field lies: rewrite it in the serialized bytes
    b = bytearray(serialize(g))
    needle = struct.pack("<Q", len(kv.key)) + kv.key + struct.pack("<I", STRING)
    at = bytes(b).find(needle) + len(needle)
    n = edge_int(rng, 10, len(kv.value))
    b[at:at + 8] = struct.pack("<Q", n)
    return bytes(b), f"{kv.key.decode()} length field={n} (really {len(kv.value)})"


def mut_kv_array(rng, g, raw):
    kv = rng.choice(_kvs_of(g, lambda kv: kv.vtype == ARRAY))
    et, items = kv.value
    choice = rng.randrange(5)
    if choice == 0 and items:
        del items[rng.randrange(len(items)):]
        return serialize(g), f"{kv.key.decode()} cut to {len(items)} items"
    if choice == 1:
        kv.value = (et, [])
        return serialize(g), f"{kv.key.decode()} emptied"
    if choice == 2:
        new = rng.choice([t for t in list(SCALAR) + [STRING, ARRAY] if t != et])
        b = bytearray(serialize(g))
        needle = struct.pack("<Q", len(kv.key)) + kv.key + struct.pack("<I", ARRAY)
        at = bytes(b).find(needle) + len(needle)
        b[at:at + 4] = struct.pack("<I", new)
        return bytes(b), f"{kv.key.decode()} element type {et}->{new} (items unchanged)"
    if choice == 3:
        b = bytearray(serialize(g))
        needle = struct.pack("<Q", len(kv.key)) + kv.key + struct.pack("<I", ARRAY)
        at = bytes(b).find(needle) + len(needle) + 4
        n = edge_int(rng, 10, len(items))
        b[at:at + 8] = struct.pack("<Q", n)
        return bytes(b), f"{kv.key.decode()} count field={n} (really {len(items)})"
    if items and et in INT_TYPES:
        i = rng.randrange(len(items))
        items[i] = edge_int(rng, et, items[i])
        return serialize(g), f"{kv.key.decode()}[{i}]={items[i]}"
    if items and et in FLOAT_TYPES:
        i = rng.randrange(len(items))
        items[i] = edge_float(rng)
        return serialize(g), f"{kv.key.decode()}[{i}]={items[i]}"
    kv.value = (et, items + items)
    return serialize(g), f"{kv.key.decode()} doubled to {2 * len(items)} items"


def mut_kv_key(rng, g, raw):
    kv = rng.choice(g.kvs)
    old = kv.key
    kv.key = rng.choice([b"", old + b"x", old[:-1], old.upper(), b"\xff\xfe", rng.choice(g.kvs).key])
    return serialize(g), f"key {old.decode()} -> {kv.key!r}"


def mut_kv_type(rng, g, raw):
    kv = rng.choice(g.kvs)
    old = kv.vtype
    new = rng.choice([t for t in list(SCALAR) + [STRING, ARRAY, 13, 255] if t != old])
    # keep the old value's bytes: the reader must notice the mismatch
    b = bytearray(serialize(g))
    needle = struct.pack("<Q", len(kv.key)) + kv.key + struct.pack("<I", old)
    at = bytes(b).find(needle) + len(needle) - 4
    b[at:at + 4] = struct.pack("<I", new)
    return bytes(b), f"{kv.key.decode()} type {old}->{new}"


def mut_kv_drop(rng, g, raw):
    kv = g.kvs.pop(rng.randrange(len(g.kvs)))
    return serialize(g), f"dropped {kv.key.decode()}"


def mut_kv_dup(rng, g, raw):
    kv = rng.choice(g.kvs)
    twin = dataclasses.replace(kv, value=kv.value)
    if kv.vtype in INT_TYPES:
        twin.value = edge_int(rng, kv.vtype, kv.value)
    g.kvs.insert(rng.randrange(len(g.kvs) + 1), twin)
    return serialize(g), f"duplicated {kv.key.decode()}"


def mut_vocab(rng, g, raw):
    if g.find("tokenizer.ggml.tokens") is None:  # a vision tower has no vocabulary
        return mut_hparams(rng, g, raw)
    toks = g.find("tokenizer.ggml.tokens").value[1]
    types = g.find("tokenizer.ggml.token_type")
    merges = g.find("tokenizer.ggml.merges")
    n = len(toks)
    choice = rng.randrange(9)
    if choice == 0:
        i, j = rng.randrange(n), rng.randrange(n)
        toks[i] = toks[j]
        return serialize(g), f"token {i} = token {j} ({toks[j]!r})"
    if choice == 1:
        i = rng.randrange(n)
        toks[i] = rng.choice([b"", b"\xff", b"\0", b"<|endoftext|>", b"a" * 5000])
        return serialize(g), f"token {i} = {toks[i][:20]!r}"
    if choice == 2 and types is not None:
        i = rng.randrange(n)
        types.value[1][i] = edge_int(rng, types.value[0], types.value[1][i])
        return serialize(g), f"token_type[{i}]={types.value[1][i]}"
    if choice == 3 and merges is not None:
        m = merges.value[1]
        i = rng.randrange(len(m))
        m[i] = rng.choice([b"", b"nospace", b"a b c", b" ", b"zz\xff qq", m[i] + b" x", toks[0] + b" " + toks[0]])
        return serialize(g), f"merge {i} = {m[i]!r}"
    if choice == 4:
        del toks[rng.randrange(n):]
        return serialize(g), f"tokens cut to {len(toks)} (embedding rows unchanged)"
    if choice == 5 and types is not None:
        del types.value[1][rng.randrange(len(types.value[1])):]
        return serialize(g), f"token_type cut to {len(types.value[1])}"
    if choice == 6:
        toks.extend([b"extra%d" % k for k in range(rng.choice([1, 100]))])
        return serialize(g), f"tokens grown to {len(toks)} (embedding rows unchanged)"
    ids = _kvs_of(g, lambda kv: kv.key.endswith(b"_token_id"))
    if ids:
        kv = rng.choice(ids)
        kv.value = rng.choice([n, n + 1, 1 << 31, (1 << 32) - 1, -1 & 0xFFFFFFFF, 0])
        return serialize(g), f"{kv.key.decode()}={kv.value}"
    i = rng.randrange(n)
    toks[i] = toks[(i + 1) % n]
    return serialize(g), f"token {i} = token {(i + 1) % n}"


HPARAM_SUFFIXES = (b".context_length", b".embedding_length", b".block_count", b".feed_forward_length",
                   b".attention.head_count", b".attention.head_count_kv", b".rope.freq_base",
                   b".attention.layer_norm_rms_epsilon", b".pooling_type", b".rope.dimension_sections",
                   b".rope.dimension_count", b".attention.key_length", b".attention.value_length")


def mut_hparams(rng, g, raw):
    arch = g.find("general.architecture").value
    if rng.random() < 0.3:
        # a key the base lacks but llama.cpp reads
        suffix = rng.choice([b".rope.dimension_count", b".attention.key_length", b".attention.value_length",
                             b".pooling_type", b".attention.sliding_window", b".expert_count"])
        v = rng.choice([0, 1, 3, 1 << 31, (1 << 32) - 1, 7])
        g.kvs.append(KV(arch + suffix, 4, v))
        return serialize(g), f"added {(arch + suffix).decode()}={v}"
    kv = rng.choice(_kvs_of(g, lambda kv: kv.key.startswith(arch + b".")) or g.kvs)
    if kv.vtype in FLOAT_TYPES:
        kv.value = edge_float(rng)
    elif kv.vtype in INT_TYPES:
        kv.value = edge_int(rng, kv.vtype, kv.value)
    elif kv.vtype == ARRAY and kv.value[1]:
        et, items = kv.value
        if rng.random() < 0.5:
            items[rng.randrange(len(items))] = edge_int(rng, et, 1)
        else:
            del items[rng.randrange(len(items)):]
    return serialize(g), f"{kv.key.decode()}={kv.value!r}"


def mut_tensor_info(rng, g, raw):
    t = rng.choice(g.tensors)
    name = t.name.decode()
    choice = rng.randrange(8)
    if choice == 0:
        t.dims = [d for d in t.dims] + [1] * rng.choice([1, 3, 10]) if rng.random() < 0.5 else []
        return serialize(g), f"{name} n_dims={len(t.dims)}"
    if choice == 1:
        i = rng.randrange(len(t.dims))
        t.dims[i] = rng.choice([0, 1, t.dims[i] + 1, t.dims[i] * 2, 1 << 31, 1 << 40, (1 << 63) - 1,
                                (1 << 64) - 1])
        return serialize(g), f"{name} dims[{i}]={t.dims[i]}"
    if choice == 2:
        t.ttype = rng.choice([0, 1, 2, 3, 4, 5, 8, 12, 30, 39, 40, 41, 100, (1 << 32) - 1])
        return serialize(g), f"{name} type={t.ttype}"
    if choice == 3:
        t.offset = rng.choice([t.offset + 1, t.offset + 32, len(g.data), len(g.data) + 32, 1 << 40,
                               (1 << 64) - 32, 0, max(0, t.offset - 32)])
        return serialize(g), f"{name} offset={t.offset}"
    if choice == 4:
        t.name = rng.choice([b"", rng.choice(g.tensors).name, t.name + b"x", b"blk.999.attn_q.weight",
                             b"a" * 100])
        return serialize(g), f"{name} renamed {t.name[:40]!r}"
    if choice == 5:
        g.tensors.remove(t)
        return serialize(g), f"dropped tensor {name}"
    if choice == 6:
        g.tensors.append(dataclasses.replace(t, dims=list(t.dims)))
        return serialize(g), f"duplicated tensor {name}"
    t.dims = list(reversed(t.dims))
    return serialize(g), f"{name} dims reversed {t.dims}"


def mut_alignment(rng, g, raw):
    v = rng.choice([0, 1, 3, 7, 33, 1 << 20, (1 << 32) - 1, 64])
    kv = g.find("general.alignment")
    if kv is None:
        g.kvs.append(KV(b"general.alignment", 4, v))
    else:
        kv.value = v
    return serialize(g), f"general.alignment={v}"


def mut_data(rng, g, raw):
    choice = rng.randrange(3)
    if choice == 0:
        cut = rng.randrange(len(raw))
        return raw[:cut], f"file cut at {cut} of {len(raw)} bytes"
    b = bytearray(raw)
    start = len(raw) - len(g.data)
    t = rng.choice(g.tensors)
    at = start + min(t.offset, len(g.data) - 4)
    if choice == 1:
        b[at:at + 4] = struct.pack("<f", rng.choice([float("nan"), float("inf"), -float("inf"), 3e38]))
        return bytes(b), f"data of {t.name.decode()}: one float32 word set to NaN/inf/huge"
    for _ in range(rng.choice([1, 16, 256])):
        k = rng.randrange(start, len(b))
        b[k] = rng.randrange(256)
    return bytes(b), "random bytes in the tensor data"


def mut_bytes(rng, g, raw):
    b = bytearray(raw)
    # mostly where the structure is (the first 64 kB hold header, metadata, tensor infos)
    limit = len(b) if rng.random() < 0.2 else min(len(b), len(b) - len(g.data))
    choice = rng.randrange(4)
    at = rng.randrange(max(1, limit))
    if choice == 0:
        w = rng.choice([1, 2, 4, 8])
        b[at:at + w] = rng.getrandbits(8 * w).to_bytes(w, "little")
        return bytes(b), f"{w} bytes at {at} overwritten"
    if choice == 1:
        w = rng.choice([1, 4, 8])
        b[at:at + w] = struct.pack("<Q", rng.choice([0, (1 << 64) - 1, 1 << 32, 1 << 31]))[:w]
        return bytes(b), f"{w} bytes at {at} set to an edge value"
    if choice == 2:
        k = rng.choice([1, 3, 8, 100])
        return bytes(b[:at] + bytes(rng.getrandbits(8) for _ in range(k)) + b[at:]), f"{k} bytes inserted at {at}"
    k = rng.choice([1, 3, 8, 100])
    return bytes(b[:at] + b[at + k:]), f"{k} bytes deleted at {at}"


MUTATIONS: dict = {
    "header": mut_header,
    "kv_int": mut_kv_scalar(INT_TYPES),
    "kv_float": mut_kv_scalar(FLOAT_TYPES),
    "kv_bool": mut_kv_scalar((7,)),
    "kv_string": mut_kv_string,
    "kv_array": mut_kv_array,
    "kv_key": mut_kv_key,
    "kv_type": mut_kv_type,
    "kv_drop": mut_kv_drop,
    "kv_dup": mut_kv_dup,
    "vocab": mut_vocab,
    "hparams": mut_hparams,
    "tensor_info": mut_tensor_info,
    "alignment": mut_alignment,
    "data": mut_data,
    "bytes": mut_bytes,
}


# ---------------------------------------------------------------- base models
def make_bases(d: Path) -> list:
    """Four small valid files: models qwen2 F32, qwen2vl F16, qwen2 Q4_K_M,
    and a vision tower (mmproj F16, loaded beside its converted text model,
    VISION_TEXT)."""
    sys.path.insert(0, str(ROOT / "tests"))
    import jv4
    import modelgen as mg

    vocab = mg.Vocab().head(1000)
    small = mg.Shape(hidden=64, layers=1, heads=2, kv_heads=1, ffn=128, ctx=4096)
    q = mg.Shape(hidden=256, layers=1, heads=4, kv_heads=2, ffn=256, ctx=4096)
    name = "jina-embeddings-v4-text-retrieval"
    a = mg.write_gguf(d / "base-qwen2-F32.gguf", mg.random_weights(small, vocab.size, 1), small, vocab, name=name)
    b = mg.write_gguf(d / "base-qwen2vl-F16.gguf", mg.random_weights(small, vocab.size, 2), small, vocab,
                      arch="qwen2vl", name=name, dtype="F16")
    f32 = mg.write_gguf(d / "q-src.gguf", mg.random_weights(q, vocab.size, 3), q, vocab, name=name)
    c = d / "base-qwen2-Q4_K_M.gguf"
    jv4.quantize(f32, c, "Q4_K_M")
    f32.unlink()
    # the vision base's vocabulary holds the image prompt's control tokens (a
    # text model without them is refused before its mmproj is read further)
    return [a, b, c, make_vision_base(d, vocab.with_vision_tokens(), small)]


VISION_TEXT = "vision-text.gguf"  # beside a vision base: the text model it feeds


def make_vision_base(d: Path, vocab, shape) -> Path:
    import ckptgen as cg
    import jv4

    ck = cg.write_checkpoint(d / "vision-ckpt", vocab, shape=shape, pad_vocab=0, rank=2)
    files = jv4.convert(ck.root, d / "vision-out", outtype="f16", merge="retrieval")
    (d / "vision-out" / files["merged"]).rename(d / VISION_TEXT)
    out = d / "base-mmproj-F16.gguf"
    (d / "vision-out" / files["mmproj"]).rename(out)
    import shutil

    shutil.rmtree(d / "vision-ckpt")
    shutil.rmtree(d / "vision-out")
    return out


def text_model_for(base: Path) -> str:
    """'' for a model base; the text model path for a vision tower base."""
    return str(base.parent / VISION_TEXT) if "mmproj" in base.name else ""


def make_case(bases: list, seed: int, case: int) -> tuple:
    """(bytes, kind, description) of case `case` of run `seed`."""
    rng = random.Random(f"{seed}:{case}")
    base = bases[rng.randrange(len(bases))]
    raw = base.read_bytes()
    kind = rng.choice(sorted(MUTATIONS))
    data, what = MUTATIONS[kind](rng, parse(raw), raw)
    return data, kind, f"{base.name}: {what}", text_model_for(base)


# ---------------------------------------------------------------- child worker
WORKER = r"""
import json, os, sys, resource
import numpy as np
import jv4
if int(sys.argv[1]) > 0:  # 0: no address-space limit (ASan maps terabytes of shadow)
    resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[1]) << 20, int(sys.argv[1]) << 20))

def peak_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024
    return 0

def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass

MARK = "@@jv4-fuzz@@ "
print(MARK + json.dumps({"ready": True}), flush=True)
image = (np.arange(60 * 90 * 3) % 251).astype(np.uint8).reshape(60, 90, 3)
for line in sys.stdin:
    path, _, text = line.rstrip("\n").partition("\t")
    reset_peak()
    out = {}
    try:
        # a vision tower case: the damaged file is the mmproj beside a good text model
        m = jv4.Model(text, mmproj=path, n_threads=1) if text else jv4.Model(path, n_threads=1)
    except Exception as e:
        out = {"outcome": "refused", "error": type(e).__name__, "message": str(e)[:300]}
    else:
        try:
            v = m.embed(["hello world", "", "Ωmega 123 <|endoftext|>"], truncate=True)
            m.tokenize("tokens, please")
            if text:
                v = np.concatenate([v.ravel(), m.embed_images([image, image[:30]]).ravel()])
            out = {"outcome": "loaded" if np.isfinite(v).all() else "nonfinite"}
        except Exception as e:
            out = {"outcome": "embed_error", "error": type(e).__name__, "message": str(e)[:300]}
        del m
    out["peak_mb"] = peak_mb()
    print(MARK + json.dumps(out), flush=True)
"""

FAILURES = ("crash", "hang", "nonfinite", "memory")
MARK = "@@jv4-fuzz@@ "  # starts the worker's answers; anything else on its stdout is noise


class Worker:
    def __init__(self, rlimit_mb: int, env: dict):
        self.rlimit_mb, self.env = rlimit_mb, env
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER, str(self.rlimit_mb)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env)
        self._stderr: collections.deque = collections.deque(maxlen=40)
        threading.Thread(target=self._drain, args=(self.proc,), daemon=True).start()
        line = self._answer()
        if not line.startswith('{"ready"'):
            raise RuntimeError("fuzz worker did not start: " + "".join(self._stderr))

    def _answer(self) -> str:
        """The next answer line (without the mark); "" when the worker died."""
        while True:
            line = self.proc.stdout.readline()
            if not line or line.startswith(MARK):
                return line[len(MARK):]
            self._stderr.append(line)

    def _drain(self, proc) -> None:
        for line in proc.stderr:
            self._stderr.append(line)

    def run(self, path: Path, timeout: float, text: str = "") -> dict:
        """One case: the model file `path`, or the mmproj `path` beside text model `text`."""
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        self.proc.stdin.write(str(path) + ("\t" + text if text else "") + "\n")
        self.proc.stdin.flush()
        answer: list = []
        reader = threading.Thread(target=lambda: answer.append(self._answer()), daemon=True)
        reader.start()
        reader.join(timeout)
        if reader.is_alive():
            self.kill()
            return {"outcome": "hang", "message": f"no answer in {timeout:.0f} s"}
        if not answer or not answer[0]:
            rc = self.proc.wait()
            tail = "".join(self._stderr)[-600:]
            self.proc = None
            return {"outcome": "crash", "message": f"worker exit {rc}: {tail}"}
        return json.loads(answer[0])

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def run(cases: range, seed: int, jobs: int = 2, timeout: float = 30.0, max_rss_mb: int = 1024,
        rlimit_mb: int = 8192, keep: Optional[Path] = None, progress: bool = False) -> dict:
    """Runs the cases; returns {"counts": {outcome: n}, "kinds": {kind: {outcome: n}},
    "failures": [...], "errors": {exception type: n}}."""
    # no gdb backtrace on an abort (ggml would attach one): just the signal
    env = dict(os.environ, OMP_NUM_THREADS="1", GGML_NO_BACKTRACE="1")
    if os.environ.get("JV4_SANITIZED") == "1":
        # under tools/sanitize.sh: ASan needs its address space and its shadow
        # and quarantine memory count in every RSS
        rlimit_mb, max_rss_mb = 0, max(max_rss_mb, 4096)
    counts: collections.Counter = collections.Counter()
    kinds: dict = collections.defaultdict(collections.Counter)
    errors: collections.Counter = collections.Counter()
    failures: list = []
    peak = {"mb": 0}
    lock = threading.Lock()
    todo = iter(cases)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="jv4-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as d:
        d = Path(d)
        bases = make_bases(d)

        def loop(k: int) -> None:
            w = Worker(rlimit_mb, env)
            path = d / f"case-{k}.gguf"
            while True:
                with lock:
                    case = next(todo, None)
                if case is None:
                    break
                data, kind, what, text = make_case(bases, seed, case)
                path.write_bytes(data)
                res = w.run(path, timeout, text)
                if res["outcome"] in ("loaded", "refused", "embed_error") and res.get("peak_mb", 0) > max_rss_mb:
                    res["outcome"] = "memory"
                    res["message"] = f"peak RSS {res['peak_mb']} MB"
                with lock:
                    peak["mb"] = max(peak["mb"], res.get("peak_mb", 0))
                    counts[res["outcome"]] += 1
                    kinds[kind][res["outcome"]] += 1
                    if "error" in res:
                        errors[res["error"]] += 1
                    if res["outcome"] in FAILURES:
                        failures.append({"case": f"{seed}:{case}", "kind": kind, "mutation": what, **res})
                        if keep is not None:
                            keep.mkdir(parents=True, exist_ok=True)
                            (keep / f"case-{seed}-{case}.gguf").write_bytes(data)
                    done = sum(counts.values())
                    if progress and done % 200 == 0:
                        print(f"{done} cases, {time.monotonic() - t0:.0f} s: {dict(counts)}", file=sys.stderr,
                              flush=True)
            w.kill()

        threads = [threading.Thread(target=loop, args=(k,)) for k in range(jobs)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return {"seed": seed, "cases": len(cases), "seconds": round(time.monotonic() - t0, 1),
            "counts": dict(counts), "kinds": {k: dict(v) for k, v in sorted(kinds.items())},
            "errors": dict(errors), "max_peak_rss_mb": peak["mb"], "failures": failures}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=1000)
    ap.add_argument("--start", type=int, default=0, help="first case number")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds a case may take")
    ap.add_argument("--max-rss-mb", type=int, default=1024, help="peak RSS a case may reach")
    ap.add_argument("--keep", type=Path, help="save the files of failing cases here")
    ap.add_argument("--replay", help="SEED:CASE - run one case and print what it does")
    ap.add_argument("--json", type=Path, help="write the summary here")
    args = ap.parse_args()
    if args.replay:
        seed, case = (int(x) for x in args.replay.split(":"))
        res = run(range(case, case + 1), seed, jobs=1, timeout=args.timeout, max_rss_mb=args.max_rss_mb,
                  keep=args.keep)
        with tempfile.TemporaryDirectory() as d:
            _, kind, what, _ = make_case(make_bases(Path(d)), seed, case)
        print(json.dumps({"kind": kind, "mutation": what, **res}, indent=1))
        return
    res = run(range(args.start, args.start + args.cases), args.seed, jobs=args.jobs, timeout=args.timeout,
              max_rss_mb=args.max_rss_mb, keep=args.keep, progress=True)
    text = json.dumps(res, indent=1)
    if args.json:
        args.json.write_text(text)
    print(text)
    sys.exit(1 if res["failures"] else 0)


if __name__ == "__main__":
    main()
