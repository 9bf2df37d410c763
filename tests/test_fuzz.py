"""A model file is untrusted input: jv4 refuses a damaged GGUF with a Python
exception, never a crash, an abort, a hang or NaN vectors.

The seeded fuzz subset runs tools/fuzz_gguf.py's mutations (every kind) in
child processes; the long run is `python tools/fuzz_gguf.py --cases 20000`
(docs/benchmarks.md). The targeted cases are the ones the fuzzer found
aborting the process before the fixes (csrc/engine/gguf_check.cpp and the
patch patches/llama.cpp/0007-loader-checks-throw.patch)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import fuzz_gguf as fz  # noqa: E402


@pytest.mark.long
def test_seeded_fuzz_subset_has_no_crash_hang_or_nan():
    res = fz.run(range(600), seed=11, jobs=2, timeout=60)
    assert res["failures"] == [], json.dumps(res["failures"][:5], indent=1)
    assert sum(res["counts"].values()) == 600
    # every mutation kind ran, and the mutations both break files and leave
    # some loadable (a fuzzer that only writes garbage tests only the magic)
    assert set(res["kinds"]) == set(fz.MUTATIONS)
    assert res["counts"].get("refused", 0) > 100 and res["counts"].get("loaded", 0) > 100
    assert set(res["errors"]) <= {"ModelLoadError", "RuntimeError"}, res["errors"]


def test_gguf_round_trip(bases):
    # the mutator edits a parsed file; unmutated, it must write the same bytes
    for base in bases:
        raw = base.read_bytes()
        assert fz.serialize(fz.parse(raw)) == raw


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    return fz.make_bases(tmp_path_factory.mktemp("bases"))


def _edited(tmp: Path, base: Path, edit) -> Path:
    g = fz.parse(base.read_bytes())
    edit(g)
    out = tmp / "edited.gguf"
    out.write_bytes(fz.serialize(g))
    return out


def _set(g, key, value):
    g.find(key).value = value


def _dup_token(g):
    toks = g.find("tokenizer.ggml.tokens").value[1]
    toks[300] = toks[400]


def _add(key, vtype, value):
    return lambda g: g.kvs.append(fz.KV(key.encode(), vtype, value))


def _misalign(g):
    # alignment 8, with the header padded so that the data starts off a
    # 32-byte boundary (the tensors are valid for the GGUF reader)
    g.alignment = 8
    g.kvs.append(fz.KV(b"general.alignment", 4, 8))
    pad = fz.KV(b"jv4.test.padding", fz.STRING, b"")
    g.kvs.append(pad)
    while (len(fz.serialize(g)) - len(g.data)) % 32 == 0:
        pad.value += b"x"


def _norm_bf16(g):
    next(t for t in g.tensors if t.name == b"output_norm.weight").ttype = 30


def _nan_weight(g):
    import struct
    t = next(t for t in g.tensors if t.name == b"blk.0.ffn_up.weight")
    data = bytearray(g.data)
    data[t.offset:t.offset + 4] = struct.pack("<f", float("nan"))
    g.data = bytes(data)


# (what the file says, its edit, the exception, a pattern of its message)
CASES = {
    "duplicate_token": (_dup_token, "ModelLoadError", r"tokenizer.ggml.tokens has the token .* twice \(ids 300 and 400\)"),
    "negative_rms_eps": (lambda g: _set(g, "qwen2.attention.layer_norm_rms_epsilon", -1.0), "ModelLoadError",
                         r"qwen2.attention.layer_norm_rms_epsilon = -1 \(must be a finite number >= 0\)"),
    "nan_rms_eps": (lambda g: _set(g, "qwen2.attention.layer_norm_rms_epsilon", float("nan")), "ModelLoadError",
                    r"layer_norm_rms_epsilon = nan"),
    "zero_rope_base": (lambda g: _set(g, "qwen2.rope.freq_base", 0.0), "ModelLoadError",
                       r"qwen2.rope.freq_base = 0 \(must be a finite number > 0\)"),
    "block_count_zero": (lambda g: _set(g, "qwen2.block_count", 0), "ModelLoadError", r"n_layer_all > 0"),
    "block_count_huge": (lambda g: _set(g, "qwen2.block_count", 65535), "ModelLoadError", r"LLAMA_MAX_LAYERS"),
    "experts_without_used": (_add("qwen2.expert_count", 4, 7), "ModelLoadError", r"n_expert_used_max > 0"),
    "rope_width": (_add("qwen2.rope.dimension_count", 4, 7), "ModelLoadError",
                   r"qwen2.rope.dimension_count = 7 \(this architecture needs the head width, 32\)"),
    "heads_do_not_divide": (lambda g: _set(g, "qwen2.attention.head_count", 3), "ModelLoadError",
                            r"head_count = 3 does not divide qwen2.embedding_length = 64"),
    "misaligned_data": (_misalign, "ModelLoadError", r"is not 32-byte aligned"),
    "bf16_norm": (_norm_bf16, "ModelLoadError", r"output_norm.weight is one-dimensional and of type bf16"),
    "nan_weight": (_nan_weight, "RuntimeError", r"non-finite values .* for the text at index 0"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_files_that_aborted_the_process_now_raise(tmp_path, bases, case):
    edit, exc, pattern = CASES[case]
    path = _edited(tmp_path, bases[0], edit)
    code = textwrap.dedent("""
        import re, sys, jv4
        try:
            m = jv4.Model(sys.argv[1], n_threads=1)
            m.embed(["hello world"])
        except Exception as e:
            print(type(e).__name__, "|", e)
        else:
            print("no error")
    """)
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "GGML_NO_BACKTRACE": "1"})
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-1500:]}"
    name, _, message = proc.stdout.strip().partition(" | ")
    assert name == exc, proc.stdout
    import re
    assert re.search(pattern, message), message
