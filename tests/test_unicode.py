"""Unicode normalisation as the reference: Qwen2's tokenizer turns text into
NFC before tokenizing, so composed and decomposed forms of one text are one
text. The reference here is a `tokenizers` tokenizer with the NFC normalizer
Qwen2's tokenizer.json declares, over the same vocabulary."""

from __future__ import annotations

import unicodedata

import numpy as np
import pytest

import jv4
import modelgen as mg

# decomposed accents (as macOS file names and PDF extraction give them),
# Hangul jamo, a compatibility character NFC keeps, mixed scripts
TEXTS = [
    "Café crème brûlée à Montréal",
    "Ångström, Øresund, naïve résumé",
    "한국어 텍스트 임베딩",
    "Straße ﬁ ligature stays (NFC keeps compatibility forms)",
    "Ελληνικά: ά έ ή ί ό ύ ώ",
    "Tiếng Việt có dấu",
    "plain ASCII stays as it is",
]


@pytest.fixture(scope="module")
def nfc_reference(vocab):
    from tokenizers import normalizers

    tok = vocab.reference_tokenizer()
    tok.normalizer = normalizers.NFC()
    return tok


@pytest.fixture(scope="module")
def model(load):
    return load()


def test_the_model_says_it_normalises_to_nfc(model):
    assert model.info["normalization"] == "NFC" and model.info["tokenizer_pre"] == "qwen2"


@pytest.mark.parametrize("form", ["NFD", "NFC", "NFKD"])
def test_tokenize_equals_the_nfc_reference_tokenizer(model, nfc_reference, form):
    for text in TEXTS:
        given = unicodedata.normalize(form, text)
        want = nfc_reference.encode(given, add_special_tokens=False).ids
        assert model.tokenize(given, add_prefix=False).tolist() == want, (form, text)


def test_composed_and_decomposed_forms_give_identical_ids_and_vectors(model):
    nfc = [unicodedata.normalize("NFC", t) for t in TEXTS]
    nfd = [unicodedata.normalize("NFD", t) for t in TEXTS]
    assert nfc != nfd  # the forms really differ as strings
    for a, b in zip(nfc, nfd):
        assert np.array_equal(model.tokenize(a, role="passage"), model.tokenize(b, role="passage"))
    assert np.array_equal(model.embed(nfc, role="passage"), model.embed(nfd, role="passage"))
    assert np.array_equal(model.embed(nfd[2]), model.embed(nfc[2]))  # a single str too
    # a tuple, a mix of forms, and a numpy array of str
    mixed = tuple(nfd[:3]) + tuple(nfc[3:])
    assert np.array_equal(model.embed(mixed), model.embed(nfc))
    assert np.array_equal(model.embed(np.array(nfd)), model.embed(nfc))


def test_vectors_of_decomposed_text_match_the_reference_model(model, reference, nfc_reference):
    nfd = [unicodedata.normalize("NFD", t) for t in TEXTS]
    got = model.embed(nfd, role="passage")
    # the reference tokenizes the NFC text (what its normalizer makes of nfd)
    want = reference([unicodedata.normalize("NFC", t) for t in nfd], "Passage: ")
    assert np.abs(got - want).max() <= 2e-4


def test_bad_input_errors_are_unchanged(model):
    with pytest.raises(TypeError, match=r"texts\[1\] must be str"):
        model.embed(["Cafe\u0301", 3])
    with pytest.raises(TypeError, match="decode bytes first"):
        model.embed(b"bytes")


def test_other_families_keep_their_own_tokenizer(vocab, weights, tmp_path):
    """A GGUF whose pre-tokenizer is not qwen2 is not normalised by jv4."""
    path = tmp_path / "tiny-other-pre.gguf"
    mg.write_gguf(path, weights, mg.TINY, vocab, name="tiny-other-pre", pre="gpt-4o")
    m = jv4.Model(path)
    assert m.info["normalization"] == "" and m.info["tokenizer_pre"] == "gpt-4o"
    nfd = unicodedata.normalize("NFD", TEXTS[0])
    assert not np.array_equal(m.tokenize(nfd), m.tokenize(unicodedata.normalize("NFC", nfd)))
