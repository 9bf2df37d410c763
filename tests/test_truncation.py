"""Truncation tokenizes only what it keeps: embed() with truncation tokenizes
a head of a long text, cut where Qwen2's pre-tokenizer provably starts a new
piece (csrc/engine/truncation.hpp), instead of the whole text. The kept
tokens must be exactly the head of the whole text's tokens, as the reference
tokenizer (`tokenizers`, same vocabulary and split regex) gives them."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from corpus import CORPUS

R = random.Random(7)
PROSE = " ".join(CORPUS) + "\n"
# text kinds with and without piece boundaries: one character repeated (one
# piece of 300 kB, merged by BPE as a whole), whitespace runs, CJK without
# spaces, digits, control characters, special-token text, a random mix
LONG = {
    "prose": PROSE * 30,
    "one_char": "a" * 200_000,
    "spaces": " " * 200_000,
    "newlines": "\n" * 100_000 + "x",
    "cjk": "日本語の文章" * 20_000,
    "cjk_punct": "日本語の文章。" * 20_000,
    "digits": "7" * 200_000,
    "syllables": "bana" * 50_000,
    "letters": "".join(R.choice("abcdefghijklmnopqrstuvwxyzéü") for _ in range(200_000)),
    "control": "".join(chr(R.randrange(0, 32)) for _ in range(100_000)),
    "special": "word<|endoftext|> " * 3_000,
    "special_glued": "x<|im_start|>y" * 4_000,
    "mixed": "".join(R.choice(["Hello", " ", "世界", "!", "\n", "123", "ça", "<|im_start|>", "\t", "—",
                               "🙂", "x", "'s", "  ", "\r\n"]) for _ in range(60_000)),
}
LIMITS = [1, 2, 7, 100, 512, 4000]


@pytest.fixture(scope="module")
def model(load):
    return load()


def test_the_model_says_how_it_truncates(model):
    assert model.info["truncation"] == "head" and model.info["tokenizer_pre"] == "qwen2"


@pytest.mark.parametrize("kind", sorted(LONG))
def test_kept_tokens_are_the_head_of_the_reference_tokens(model, ref_tokenizer, kind):
    text = LONG[kind]
    want = ref_tokenizer.encode(text, add_special_tokens=False).ids
    assert model.tokenize(text, add_prefix=False).tolist() == want
    for limit in LIMITS:
        got = model.tokenize(text, add_prefix=False, max_length=limit).tolist()
        assert got == want[:limit], (kind, limit)


def test_random_texts_and_cut_points(model):
    # many short texts around the sizes where the cut search starts (16 kB)
    pieces = ["alpha", " ", "beta.", "\n", "γάμμα", "，", "数据", "42", "''", "<|endoftext|>", "ß", "\t ",
              "x" * 300, " " * 70]
    for seed in range(25):
        r = random.Random(seed)
        text = "".join(r.choice(pieces) for _ in range(r.randrange(2_000, 12_000)))
        whole = model.tokenize(text, role="passage")
        for limit in (1, r.randrange(2, 600), r.randrange(600, 5000), len(whole), len(whole) + 5):
            assert np.array_equal(model.tokenize(text, role="passage", max_length=limit), whole[:limit]), \
                (seed, limit)


def test_embed_keeps_the_same_tokens_as_a_truncated_whole_tokenization(make_gguf):
    import jv4

    m = jv4.Model(make_gguf(), max_length=64)
    text = PROSE * 200  # about 1 MB
    head = m.tokenize(text, max_length=64)
    assert len(head) == 64
    # the vector of the truncated 1 MB text is the vector of a short text
    # whose whole tokenization starts with the same 64 tokens
    short = text[:2000]
    assert np.array_equal(m.tokenize(short)[:64], head)
    assert np.array_equal(m.embed(text), m.embed(short))
    with pytest.raises(ValueError, match=r"index 0 has \d+ tokens, more than max_length=64"):
        m.embed([text], truncate=False)


def test_tokenize_max_length_is_checked(model):
    with pytest.raises(ValueError, match="max_length must be >= 1"):
        model.tokenize("text", max_length=0)
    with pytest.raises(TypeError, match="max_length must be an int or None"):
        model.tokenize("text", max_length=2.5)


def test_ctrl_c_during_huge_texts_returns_within_a_second(make_gguf):
    # twenty 10 MB texts: tokenization is where the time would go
    code = textwrap.dedent("""
        import os, signal, sys, threading, time, jv4
        m = jv4.Model(sys.argv[1], max_length=512)
        big = ("lorem ipsum dolor sit amet, " * 400_000)[:10_000_000]
        one = "a" * 10_000_000
        t0 = time.monotonic(); m.embed(big); m.embed(one); print(f"TWO {time.monotonic() - t0:.3f}")
        sent = {}
        def interrupt():
            sent["t"] = time.monotonic()
            os.kill(os.getpid(), signal.SIGINT)
        threading.Timer(0.5, interrupt).start()
        try:
            m.embed([big, one] * 200)
        except KeyboardInterrupt:
            print(f"LATENCY {time.monotonic() - sent['t']:.3f}")
        else:
            raise SystemExit("not interrupted")
    """)
    proc = subprocess.run([sys.executable, "-c", code, str(make_gguf())], capture_output=True, text=True,
                          timeout=300, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.returncode == 0, proc.stderr[-3000:]
    latency = float(proc.stdout.split("LATENCY")[1])
    assert latency < 1.0, proc.stdout
    print(proc.stdout)
