"""jv4.ray on a real local Ray instance (2 CPUs): actors holding a Model,
vectors equal to Model.embed, Parquet in and out."""

from __future__ import annotations

import numpy as np
import pytest

import jv4
from corpus import CORPUS

ray = pytest.importorskip("ray", reason="Ray Data is the ray extra: pip install '.[ray]' (in the test extra)")
import jv4.ray as jray  # noqa: E402

N = 1200
CHUNK = 100
TEXTS = [f"{CORPUS[i % len(CORPUS)]} #{i}" for i in range(N)]


@pytest.fixture(scope="module")
def cluster():
    # the workers import this module (for WithPid) from the tests folder
    tests = str(__import__("pathlib").Path(__file__).resolve().parent)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": tests}})
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def path(make_gguf):
    return make_gguf(task="retrieval")


def dataset():
    """N rows in blocks of CHUNK consecutive rows (so each batch of CHUNK
    rows holds the same texts as one Model.embed call over a chunk)."""
    rows = [{"id": i, "text": t, "lang": "en" if i % 3 else "xx", "score": i * 0.5} for i, t in enumerate(TEXTS)]
    return ray.data.from_items(rows, override_num_blocks=N // CHUNK)


def by_id(rows, column="embedding"):
    ids = np.array([r["id"] for r in rows])
    assert sorted(ids.tolist()) == list(range(N))
    out = np.zeros((N, len(rows[0][column])), dtype=np.asarray(rows[0][column]).dtype)
    for r in rows:
        out[r["id"]] = r[column]
    return out


class WithPid(jray.EmbedBatches):
    """EmbedBatches that also says which actor process embedded each row."""

    def __call__(self, batch):
        import os

        import pyarrow as pa

        out = super().__call__(batch)
        return out.append_column("pid", pa.array([os.getpid()] * out.num_rows))


def test_two_actors_one_thread_equal_model_embed(cluster, path):
    rows = dataset().map_batches(
        WithPid, fn_constructor_kwargs=dict(model=str(path), role="passage", dim=128),
        compute=ray.data.ActorPoolStrategy(size=2), num_cpus=1, batch_size=CHUNK,
        batch_format="pyarrow").take_all()
    assert len({r["pid"] for r in rows}) == 2  # two actors did the work
    assert {r["pid"] for r in rows}.isdisjoint({__import__("os").getpid()})
    got = by_id(rows)
    model = jv4.Model(path, n_threads=2)
    # the same texts in the same calls: the same vectors
    want = np.concatenate([model.embed(TEXTS[s:s + CHUNK], role="passage", dim=128) for s in range(0, N, CHUNK)])
    assert np.abs(got - want).max() <= 1e-6
    # one call over everything packs the texts otherwise: equal up to the
    # float rounding of another packing (see test_embed's batch-composition test)
    whole = model.embed(TEXTS, role="passage", dim=128)
    assert np.abs(got - whole).max() <= 2e-4
    # the other columns are kept
    for r in rows[:50]:
        i = r["id"]
        assert r["text"] == TEXTS[i] and r["score"] == i * 0.5 and r["lang"] == ("en" if i % 3 else "xx")


def test_embed_dataset_one_call(cluster, path):
    rows = jray.embed_dataset(dataset(), path, role="passage", dim=128, actors=2, threads_per_actor=1,
                              batch_size=CHUNK).take_all()
    want = jv4.Model(path).embed(TEXTS, role="passage", dim=128)
    assert np.abs(by_id(rows) - want).max() <= 2e-4


def test_parquet_round_trip_keeps_columns(cluster, path, tmp_path):
    import pyarrow.parquet as pq

    dataset().write_parquet(str(tmp_path / "in"))
    ds = ray.data.read_parquet(str(tmp_path / "in"))
    jray.embed_dataset(ds, path, task="retrieval", role="query", actors=2, threads_per_actor=1,
                       output_column="vec").write_parquet(str(tmp_path / "out"))
    table = pq.read_table(str(tmp_path / "out"))  # plain pyarrow: no Ray types needed
    assert set(table.column_names) == {"id", "text", "lang", "score", "vec"}
    assert table.schema.field("vec").type == ray_free_type(256)
    rows = table.to_pylist()
    got = by_id(rows, "vec")
    want = jv4.Model(path).embed(TEXTS, role="query")
    assert np.abs(got - want).max() <= 2e-4
    assert all(r["text"] == TEXTS[r["id"]] for r in rows)


def ray_free_type(dim):
    import pyarrow as pa

    return pa.list_(pa.float32(), dim)


def test_precision_and_batch_formats(path):
    """EmbedBatches outside Ray on each batch format."""
    import pandas as pd
    import pyarrow as pa

    texts = TEXTS[:40]
    ranges = jv4.calibration_ranges(jv4.Model(path).embed(TEXTS[:300], role="passage"))
    f = jray.EmbedBatches(path, precision="int8", ranges=ranges)
    want = jv4.Model(path).embed(texts, role="passage", precision="int8", ranges=ranges)
    t = f(pa.table({"text": texts}))
    assert t.schema.field("embedding").type == pa.list_(pa.int8(), want.shape[1])
    assert np.array_equal(np.array(t.column("embedding").to_pylist(), np.int8), want)
    d = f({"text": np.array(texts, dtype=object)})
    assert np.array_equal(d["embedding"], want)
    df = f(pd.DataFrame({"text": texts}))
    assert np.array_equal(np.stack(df["embedding"].to_list()), want)
    b = jray.EmbedBatches(path, precision="ubinary")(pa.table({"text": texts}))
    assert np.array_equal(np.array(b.column("embedding").to_pylist(), np.uint8),
                          jv4.Model(path).embed(texts, role="passage", precision="ubinary"))


def test_errors_are_clear_and_early(path):
    import pyarrow as pa

    with pytest.raises(ValueError, match="needs ranges="):
        jray.embed_dataset(None, path, precision="int8")
    with pytest.raises(ValueError, match="role must be one of 'query', 'passage'"):
        jray.embed_dataset(None, path, role="doc")
    with pytest.raises(ValueError, match="task must be one of"):
        jray.EmbedBatches(path, task="qa")
    f = jray.EmbedBatches(path)
    with pytest.raises(KeyError, match="text column 'text' is not in the dataset"):
        f(pa.table({"body": ["x"]}))
    with pytest.raises(TypeError, match="column 'text': row 1 of the batch is NoneType"):
        f(pa.table({"text": ["x", None]}))
    with pytest.raises(ValueError, match="output column 'embedding' already exists"):
        f(pa.table({"text": ["x"], "embedding": [1]}))


def test_a_bad_model_fails_the_job_not_hangs(cluster, tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(Exception, match="broken.gguf"):
        jray.embed_dataset(dataset().limit(10), bad, actors=1, threads_per_actor=1).take_all()


def test_default_layout():
    assert jray.default_layout(2) == (2, 1)
    assert jray.default_layout(4) == (2, 2)
    assert jray.default_layout(16) == (4, 4)
    assert jray.default_layout(64, node_cpus=8) == (16, 4)
    assert jray.default_layout(6, threads_per_actor=1) == (6, 1)
    assert jray.default_layout(1) == (1, 1)


def test_one_actor_with_every_cpu_does_not_starve_the_reads(cluster, path, tmp_path):
    """1 actor x 2 threads on 2 CPUs, reading Parquet: it reserves 1 CPU and
    runs 2 threads, so the read and write tasks get the other."""
    import pyarrow.parquet as pq

    dataset().limit(300).write_parquet(str(tmp_path / "in"))
    ds = ray.data.read_parquet(str(tmp_path / "in"))
    jray.embed_dataset(ds, path, actors=1, threads_per_actor=2).write_parquet(str(tmp_path / "out"))
    assert pq.read_table(str(tmp_path / "out")).num_rows == 300
    with pytest.raises(ValueError, match="no node of this cluster has that many CPUs"):
        jray.embed_dataset(ds, path, threads_per_actor=3)
