"""The scheduler alone (csrc/engine/scheduler.cpp through
jv4._core._stages.SchedulerProbe): jobs that only sleep, submitted from
Python threads, no model. What it must do (docs/usage.md, "Concurrent
calls"): calls queue oldest first; with coalescing on, the oldest takes
every later text call of its task that fits one decode beside it; images and
other work run alone; a call still queued when its caller's Ctrl-C arrives is
withdrawn without running; one call's failure is its own; the counters add
up."""

from __future__ import annotations

import threading
import time

import pytest

from jv4 import _core

Probe = _core._stages.SchedulerProbe


def submit_all(probe, jobs, gap=0.02):
    """Each job (kwargs of submit) from its own thread, `gap` seconds apart;
    returns {id: result}."""
    results: dict = {}

    def run(kw):
        results[kw["id"]] = probe.submit(**kw)

    threads = []
    for kw in jobs:
        t = threading.Thread(target=run, args=(kw,))
        t.start()
        threads.append(t)
        time.sleep(gap)
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    return results


def test_calls_queued_behind_a_running_one_share_the_next_group():
    probe = Probe(batch_tokens=100, max_seqs=8, coalesce=True)
    jobs = [dict(id=0, task="a", n_tokens=10, work_ms=300)]  # runs alone while the others queue
    jobs += [dict(id=i, task="a", n_tokens=10, work_ms=10) for i in range(1, 6)]
    res = submit_all(probe, jobs)
    assert set(res.values()) == {"done"}
    assert probe.groups() == [[0], [1, 2, 3, 4, 5]]
    st = probe.stats()
    assert (st["calls"], st["groups"], st["texts"], st["tokens"]) == (6, 2, 6, 60)
    assert st["group_sizes"][:4] == [1, 0, 0, 1]  # one group of 1, one of 5 (<= 8)


def test_a_group_holds_one_task_within_one_decode():
    probe = Probe(batch_tokens=25, max_seqs=8, coalesce=True)
    jobs = [dict(id=0, task="a", n_tokens=10, work_ms=300),
            dict(id=1, task="a", n_tokens=10), dict(id=2, task="b", n_tokens=10),
            dict(id=3, task="a", n_tokens=10),  # 1 + 3 = 20 tokens: fits
            dict(id=4, task="a", n_tokens=10),  # would make 30 > 25: the next group
            dict(id=5, task="a", n_tokens=5)]   # a later, smaller one still joins
    submit_all(probe, jobs)
    groups = probe.groups()
    assert groups[0] == [0]
    assert groups[1] == [1, 3, 5]
    assert sorted(map(sorted, groups[2:])) == [[2], [4]]


def test_without_coalescing_or_for_work_that_runs_alone_every_call_runs_alone():
    for coalesce, text in ((False, True), (True, False)):
        probe = Probe(batch_tokens=100, max_seqs=8, coalesce=coalesce)
        jobs = [dict(id=0, work_ms=200, text=text)] + [dict(id=i, text=text) for i in range(1, 4)]
        submit_all(probe, jobs)
        assert probe.groups() == [[0], [1], [2], [3]]
        assert probe.stats()["groups"] == 4
        if not text:
            assert probe.stats()["images"] == 4 and probe.stats()["texts"] == 0


def test_the_oldest_call_waits_batch_wait_ms_for_company():
    probe = Probe(batch_tokens=100, max_seqs=8, coalesce=True, batch_wait_ms=400)
    jobs = [dict(id=i, task="a", n_tokens=10) for i in range(4)]
    submit_all(probe, jobs, gap=0.05)  # all within the first call's wait
    assert probe.groups() == [[0, 1, 2, 3]]
    # a full group does not wait
    probe = Probe(batch_tokens=20, max_seqs=8, coalesce=True, batch_wait_ms=5000)
    t0 = time.monotonic()
    submit_all(probe, [dict(id=0, task="a", n_tokens=20)])
    assert time.monotonic() - t0 < 2


def test_a_queued_call_is_withdrawn_on_ctrl_c_and_never_runs():
    probe = Probe(batch_tokens=100, max_seqs=8, coalesce=False)
    jobs = [dict(id=0, work_ms=400), dict(id=1, cancel_after_ms=100), dict(id=2)]
    res = submit_all(probe, jobs)
    assert res == {0: "done", 1: "cancelled", 2: "done"}
    assert probe.groups() == [[0], [2]]
    assert probe.stats()["calls"] == 2  # withdrawn: not counted


def test_a_failing_group_fails_its_own_calls_only():
    probe = Probe(batch_tokens=100, max_seqs=8, coalesce=False)
    res = submit_all(probe, [dict(id=0, work_ms=200), dict(id=1, fail=True), dict(id=2)])
    assert res == {0: "done", 1: "the group failed", 2: "done"}


def test_bad_limits_are_refused():
    with pytest.raises(ValueError, match="batch_tokens and max_seqs must be >= 1"):
        Probe(batch_tokens=0, max_seqs=8, coalesce=True)
