"""The engine's pure stages alone (jv4._core._stages), against plain Python /
numpy references: the batch planner and the output stage; and the
multi-vector container and late-interaction scorer."""

from __future__ import annotations

import numpy as np
import pytest

import jv4
from jv4 import _core

stages = _core._stages


# --- the batch planner -----------------------------------------------------------
def check_plan(lengths, batch_tokens, max_seqs):
    empty, decodes, longest = stages.plan_decodes(lengths, batch_tokens, max_seqs)
    assert longest == (max(lengths) if lengths else 0)
    assert sorted(empty) == [i for i, n in enumerate(lengths) if n == 0]
    covered = {i: [] for i in range(len(lengths))}
    finished = []
    open_text = None  # a text split over decodes continues in the very next decode
    for clear, spans in decodes:
        assert spans, "a decode with nothing in it"
        assert sum(e - b for _, _, b, e, _ in spans) <= batch_tokens
        assert len(spans) <= max_seqs
        assert sorted(s for _, s, _, _, _ in spans) == list(range(len(spans)))  # distinct, dense
        if open_text is not None:
            assert not clear and len(spans) == 1 and spans[0][0] == open_text
        else:
            assert clear  # a new group never sees another's KV cache
        for text, _, b, e, last in spans:
            covered[text].append((b, e))
            assert last == (e == lengths[text])
            if last:
                finished.append(text)
        t, _, _, e, last = spans[-1]
        open_text = None if last else t
    assert open_text is None
    for i, n in enumerate(lengths):
        parts = covered[i]
        if n == 0:
            assert parts == []
            continue
        # every token exactly once, in order
        assert parts[0][0] == 0 and parts[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
        # only a text over the budget is split
        assert (len(parts) > 1) == (n > batch_tokens)
    assert sorted(finished) == [i for i, n in enumerate(lengths) if n > 0]
    # longest first: texts are taken in non-increasing length
    seen = [lengths[t] for _, spans in decodes for t, _, b, _, _ in spans if b == 0]
    assert seen == sorted(seen, reverse=True)
    return decodes


@pytest.mark.parametrize("seed", range(40))
def test_planner_covers_every_token_once(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 60))
    lengths = [int(x) for x in rng.choice([0, 1, 2, 5, 17, 60, 200, 513, 1500], size=n)]
    check_plan(lengths, int(rng.choice([1, 7, 64, 512])), int(rng.choice([1, 3, 256])))


def test_planner_keeps_input_order_for_equal_lengths_and_packs_greedily():
    decodes = check_plan([3, 3, 3, 3, 3], 7, 256)
    assert [[s[0] for s in spans] for _, spans in decodes] == [[0, 1], [2, 3], [4]]


@pytest.mark.parametrize("seed", range(20))
def test_segmented_plan_decodes_each_segment_alone_in_order(seed):
    # an image prompt: text tokens, the image's rows, text tokens - no decode
    # may mix two segments (tokens and rows cannot share a llama.cpp batch)
    rng = np.random.default_rng(seed)
    batch = int(rng.integers(1, 40))
    seqs = [[int(n) for n in rng.integers(0, 90, size=int(rng.integers(1, 4)))] for _ in range(int(rng.integers(0, 5)))]
    empty, decodes, longest = stages.plan_segmented(seqs, batch)
    assert longest == max((sum(s) for s in seqs), default=0)
    assert empty == [i for i, s in enumerate(seqs) if sum(s) == 0]
    walked = []  # (sequence, begin, end) in decode order
    for clear, spans in decodes:
        assert len(spans) == 1
        ((seq, slot, b, e, last),) = spans
        assert slot == 0 and 0 < e - b <= batch
        assert clear == (b == 0)  # the cache cleared exactly where a sequence starts
        assert last == (e == sum(seqs[seq]))
        bounds = np.cumsum([0] + seqs[seq])
        k = int(np.searchsorted(bounds, b, side="right")) - 1
        assert e <= bounds[k + 1]  # inside one segment
        walked.append((seq, b, e))
    # every position of every sequence once, sequences in input order
    expect = []
    for i, s in enumerate(seqs):
        at = 0
        for n in s:
            expect += [(i, at + o, at + min(n, o + batch)) for o in range(0, n, batch)]
            at += n
    assert walked == expect
    with pytest.raises(ValueError, match="batch_tokens must be >= 1"):
        stages.plan_segmented([[3]], 0)


def test_planner_refuses_empty_budgets():
    with pytest.raises(ValueError, match="batch_tokens and max_seqs must be >= 1"):
        stages.plan_decodes([1], 0, 1)


# --- cross-call batching: which queued calls share the next decode ------------------
def check_group(queue, batch_tokens, max_seqs):
    group, wait = stages.pick_group(queue, batch_tokens, max_seqs)
    lead_text, lead_task, lead_tokens, lead_texts = queue[0]
    assert group[0] == 0 and group == sorted(set(group))
    alone = not lead_text or lead_tokens > batch_tokens or lead_texts > max_seqs
    if alone:
        assert group == [0] and wait is False
        return group
    members = [queue[i] for i in group]
    assert all(text and task == lead_task for text, task, _, _ in members)
    tokens = sum(m[2] for m in members)
    texts = sum(m[3] for m in members)
    assert tokens <= batch_tokens and texts <= max_seqs
    # nothing left behind that would still have fitted (the group only grows,
    # so a call skipped for want of room does not fit the final group either)
    for i, (text, task, n_tok, n_txt) in enumerate(queue):
        if i not in group and text and task == lead_task:
            assert tokens + n_tok > batch_tokens or texts + n_txt > max_seqs
    assert wait == (tokens < batch_tokens and texts < max_seqs)
    # off: the oldest alone
    assert stages.pick_group(queue, batch_tokens, max_seqs, coalesce=False)[0] == [0]
    return group


@pytest.mark.parametrize("seed", range(60))
def test_group_takes_every_later_call_of_the_task_that_fits(seed):
    rng = np.random.default_rng(seed)
    queue = [(bool(rng.random() > 0.1), str(rng.choice(["retrieval", "code", ""])),
              int(rng.choice([0, 1, 9, 40, 300, 600])), int(rng.integers(1, 6)))
             for _ in range(int(rng.integers(1, 30)))]
    check_group(queue, int(rng.choice([64, 512])), int(rng.choice([4, 16, 256])))


def test_group_examples():
    q = [(True, "retrieval", 10, 1), (True, "code", 10, 1), (True, "retrieval", 500, 1),
         (False, "retrieval", 1, 1), (True, "retrieval", 20, 2)]
    assert check_group(q, 512, 256) == [0, 2]      # 10 + 500; the 20-token call no longer fits
    assert check_group(q, 100, 256) == [0, 4]      # the 500-token call skipped, a later small one joins
    assert check_group(q, 512, 2) == [0, 2]
    assert check_group([(True, "code", 600, 1), (True, "code", 1, 1)], 512, 256) == [0]  # too big: alone
    assert stages.pick_group([(True, "", 512, 1)], 512, 256) == ([0], False)  # a full decode waits for no one


def test_group_refuses_an_empty_queue_or_budget():
    with pytest.raises(ValueError, match="the queue is empty"):
        stages.pick_group([], 512, 256)
    with pytest.raises(ValueError, match="batch_tokens and max_seqs must be >= 1"):
        stages.pick_group([(True, "", 1, 1)], 0, 256)


# --- the output stage ---------------------------------------------------------------
@pytest.mark.parametrize("pooling", ["mean", "cls", "last"])
@pytest.mark.parametrize("dim", [1, 7, 32])
def test_pooling_matches_numpy(pooling, dim):
    rng = np.random.default_rng(1)
    h = rng.standard_normal((9, 32)).astype(np.float32)
    v = {"mean": h.astype(np.float64).mean(0), "cls": h[0].astype(np.float64), "last": h[-1].astype(np.float64)}[pooling]
    v = v / np.linalg.norm(v)
    v = v[:dim] / np.linalg.norm(v[:dim])
    np.testing.assert_allclose(stages.pool(h, pooling, dim), v, rtol=1e-6, atol=1e-7)


def test_pooling_refuses_unknown_kinds_and_non_finite_values():
    with pytest.raises(ValueError, match="pooling must be one of 'mean', 'cls', 'last'"):
        stages.pool(np.ones((2, 4), np.float32), "max", 4)
    bad = np.ones((2, 4), np.float32)
    bad[1, 2] = np.nan
    with pytest.raises(RuntimeError, match="non-finite"):
        stages.pool(bad, "mean", 4)


def test_projection_matches_numpy():
    rng = np.random.default_rng(2)
    h = rng.standard_normal((5, 70)).astype(np.float32)  # 70: not a multiple of the 16-wide sums
    w = rng.standard_normal((12, 70)).astype(np.float32)
    b = rng.standard_normal(12).astype(np.float32)
    want = h.astype(np.float64) @ w.T.astype(np.float64) + b
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(stages.project(h, w, b), want, rtol=1e-5, atol=1e-6)


# --- multi-vector container and maxsim ----------------------------------------------
def naive_maxsim(q, d):
    if len(q) == 0 or len(d) == 0:
        return 0.0
    return float(sum(max(float(np.dot(qt, dt)) for dt in d) for qt in q))


def test_maxsim_matches_the_definition():
    rng = np.random.default_rng(3)
    docs = [rng.standard_normal((int(n), 16)).astype(np.float32) for n in [3, 0, 1, 9, 4]]
    queries = [rng.standard_normal((int(n), 16)).astype(np.float32) for n in [2, 5, 0]]
    want = np.array([[naive_maxsim(q, d) for d in docs] for q in queries])
    got = jv4.maxsim(jv4.MultiVectors.from_arrays(queries), jv4.MultiVectors.from_arrays(docs))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # one query as an array: one row; tiny blocks give the same scores
    np.testing.assert_allclose(jv4.maxsim(queries[1], docs, block=7), want[1], rtol=1e-5, atol=1e-5)


def test_multivectors_indexing_and_validation():
    mv = jv4.MultiVectors(np.arange(12, dtype=np.float32).reshape(6, 2), np.array([0, 2, 2, 6]))
    assert len(mv) == 3 and mv.width == 2 and list(mv.lengths) == [2, 0, 4]
    assert mv[1].shape == (0, 2) and np.shares_memory(mv[2], mv.data)
    assert np.array_equal(mv[-1], mv.data[2:])
    assert [a.shape[0] for a in mv] == [2, 0, 4] and len(mv[0:2]) == 2
    with pytest.raises(IndexError):
        mv[3]
    with pytest.raises(ValueError, match="offsets"):
        jv4.MultiVectors(np.zeros((3, 2), np.float32), np.array([0, 2]))
    with pytest.raises(ValueError, match="wide"):
        jv4.maxsim(np.zeros((1, 3), np.float32), [np.zeros((2, 4), np.float32)])
