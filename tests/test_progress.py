"""Progress: the engine's counters reach Python while one embed call runs."""

from __future__ import annotations

import numpy as np
import pytest

import jv4
from corpus import CORPUS

MANY = (CORPUS * 40)[:4000]


@pytest.fixture(scope="module")
def model(load):
    return load(batch_tokens=64)


def test_one_call_reports_progress_many_times_while_it_runs(model):
    calls = []
    out = model.embed_float32(MANY, role="passage", progress=lambda *c: calls.append(c))
    texts = [c[0] for c in calls]
    tokens = [c[1] for c in calls]
    total = sum(len(model.tokenize(t, role="passage")) for t in MANY)
    assert len([t for t in texts if 0 < t < len(MANY)]) >= 2, calls  # moved inside the call
    assert texts == sorted(texts) and tokens == sorted(tokens)
    assert calls[-1] == (len(MANY), total, total)
    assert np.array_equal(out, model.embed(MANY, role="passage"))  # counting changes no vector


def test_show_progress_draws_one_tqdm_bar_on_stderr(model, capfd):
    model.embed(MANY[:500], show_progress=True)
    err = capfd.readouterr().err
    assert "500/500" in err and "tok/s" in err and "text" in err
    model.embed(MANY[:500])
    assert capfd.readouterr().err == ""


def test_show_progress_bar_advances_within_one_call(model, monkeypatch):
    import tqdm.auto

    updates = []

    class Recording(tqdm.auto.tqdm):
        def update(self, n=1):
            updates.append(self.n + n)
            return super().update(n)

    monkeypatch.setattr(tqdm.auto, "tqdm", Recording)
    model.embed(MANY, show_progress=True)
    assert len([u for u in updates if u < len(MANY)]) >= 2
    assert updates[-1] == len(MANY)


def test_an_exception_in_the_progress_hook_stops_the_call(model):
    def boom(*_):
        raise RuntimeError("hook failed")

    with pytest.raises(RuntimeError, match="hook failed"):
        model.embed_float32(MANY, progress=boom)
    assert model.embed(["still works"]).shape == (1, 256)
