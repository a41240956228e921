"""run_over_corpus on a Dask LocalCluster against a single-process NumPy computation.

A tiny GPT-2-shaped checkpoint (8 layers, d_model 128) and a corpus of a few hundred
tokens. The reference runs the same model over the same sequences in this process
and computes every statistic with NumPy. The model's activations of a sequence are
bitwise the same whatever batch it runs in, so the comparisons are:
exact for counts, histograms, top-k, attention-entropy histograms, quantile-sketch
counts and reservoir samples; means and variances within 1e-9 relative (float64,
Chan's merge; atol 1e-9 of the unit's scale for means near zero).
"""
import os
import signal
import threading
import time

import numpy as np
import pytest

distributed = pytest.importorskip("distributed", reason="dask[distributed] is not installed")

from mechinterp_c import HookedTransformer, _core  # noqa: E402
from mechinterp_c import checkpoints as ck  # noqa: E402
from mechinterp_c import stats as S  # noqa: E402
from mechinterp_c.distributed import CorpusError, run_over_corpus  # noqa: E402

# The sanitizer job (make sanitize) preloads ASan into this interpreter; Dask's worker
# processes would inherit it under a scheduler's timeouts. The C accumulators they run
# are sanitized through tests/test_stats.py and the single-process tests here.
cluster = pytest.mark.skipif(bool(os.environ.get("MI_SANITIZE")),
                             reason="no Dask worker processes under the sanitizer runtime")

HOOKS = ["blocks.0.hook_resid_post", "blocks.2.attn.hook_pattern", "blocks.3.mlp.hook_post", "blocks.7.attn.hook_z"]
EDGES = np.linspace(-2.0, 2.0, 17)


def _templates():
    return [S.Moments(), S.Histogram(EDGES), S.TopK(4), S.AttentionEntropy(np.linspace(0, 3, 31)),
            S.QuantileSketch(rel_err=0.02), S.Reservoir(25, seed=7)]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return str(ck.create_checkpoint("gpt2", directory=tmp_path_factory.mktemp("dist-ckpt"), small=True))


@pytest.fixture(scope="module")
def corpus():
    rng = np.random.default_rng(18)
    items = [rng.integers(0, 2700, size=(3, 16)) for _ in range(6)]
    items += [rng.integers(0, 2700, size=11), rng.integers(0, 2700, size=(2, 11)), rng.integers(0, 2700, size=16)]
    return items


def _sequences(items):
    out = []
    for it in items:
        out += list(it) if np.ndim(it) == 2 else [it]
    return out


def _activations(ckpt, seqs):
    """{hook: (rows, row_index)} over the sequences, in corpus order (pattern: per sequence)."""
    model = HookedTransformer.from_pretrained(ckpt)
    rows = {h: [] for h in HOOKS}
    idx, start = [], 0
    for s in seqs:
        _, cache = model.run_with_cache(np.asarray(s)[None], names_filter=HOOKS, return_type=None,
                                        return_cache_object=False)
        for h in HOOKS:
            rows[h].append(cache[h][0].copy())
        idx.append(np.arange(start, start + len(s)))
        start += len(s)
    return rows, np.concatenate(idx)


@pytest.fixture(scope="module")
def reference(ckpt, corpus):
    """Every statistic computed with NumPy from the activations."""
    rows, idx = _activations(ckpt, _sequences(corpus))
    ref = {}
    for h in HOOKS:
        if h.endswith("hook_pattern"):
            ents = []
            for p in rows[h]:   # [heads, q, k] per sequence
                p64 = p.astype(np.float64)
                terms = np.where(p64 > 0, p64 * np.log(np.where(p64 > 0, p64, 1.0)), 0.0)
                ents.append(-np.cumsum(terms, axis=-1)[..., -1])   # summed in key order, as the kernel
            ent = np.concatenate(ents, axis=1)   # [heads, all queries]
            ref[h] = {"attn_entropy": np.stack([np.histogram(e, np.linspace(0, 3, 31))[0] for e in ent])}
            continue
        x = np.concatenate(rows[h])                      # [tokens, *units]
        flat = x.reshape(len(x), -1)
        x64 = flat.astype(np.float64)
        order = np.lexsort((np.broadcast_to(idx[:, None], flat.shape).T, -flat.T))[:, :4]
        keys = np.array([_core._acc_reservoir_key(7, int(i)) for i in idx], dtype=np.uint64)
        pick = np.lexsort((idx, keys))[:25]
        ref[h] = {"mean": x64.mean(0), "var": x64.var(0), "scale": x64.std(0) + 1e-30,
                  "hist": np.stack([np.histogram(c, EDGES)[0] for c in flat.T]),
                  "top_values": np.take_along_axis(flat.T, order, 1), "top_index": idx[order],
                  "q": np.quantile(x64, [0.05, 0.5, 0.95], axis=0, method="lower").reshape(3, -1),
                  "res_index": np.sort(idx[pick]), "res_rows": flat[np.sort(pick)], "unit_shape": x.shape[1:]}
    return ref


def _check(result, ref, n_tokens):
    assert result.n_tokens == n_tokens and not result.failures
    for h in HOOKS:
        if h.endswith("hook_pattern"):
            np.testing.assert_array_equal(result[h, "attn_entropy"].counts, ref[h]["attn_entropy"])
            assert [a for a in result.stats[h] if a is not None] == [result[h, "attn_entropy"]]
            continue
        r = ref[h]
        m = result[h, "moments"]
        assert m.unit_shape == r["unit_shape"] and m.count == n_tokens
        np.testing.assert_allclose(m.mean.ravel(), r["mean"], rtol=1e-9, atol=0)
        np.testing.assert_allclose(m.var.ravel(), r["var"], rtol=1e-9, atol=0)
        np.testing.assert_array_equal(result[h, "histogram"].counts.reshape(len(r["hist"]), -1), r["hist"])
        t = result[h, "topk"]
        np.testing.assert_array_equal(t.values.reshape(-1, 4), r["top_values"])
        np.testing.assert_array_equal(t.index.reshape(-1, 4), r["top_index"])
        q = result[h, "quantiles"].quantile([0.05, 0.5, 0.95]).reshape(3, -1)
        assert np.all(np.abs(q - r["q"]) <= 0.02 * np.abs(r["q"]) * (1 + 1e-12) + 1e-4)
        res = result[h, "reservoir"]
        np.testing.assert_array_equal(res.index, r["res_index"])
        np.testing.assert_array_equal(res.samples.reshape(25, -1), r["res_rows"])


def _n_tokens(corpus):
    return sum(len(s) for s in _sequences(corpus))


@pytest.fixture(scope="module")
def client2():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=":0")
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


@cluster
@pytest.mark.parametrize("n_partitions,batch_size", [(3, 4), (7, 2)])
def test_two_workers_equal_single_process(ckpt, corpus, reference, client2, n_partitions, batch_size, capsys):
    r = run_over_corpus(ckpt, corpus, _templates(), batch_size=batch_size, hook_names=HOOKS, client=client2,
                        n_partitions=n_partitions)
    _check(r, reference, _n_tokens(corpus))
    assert r.computed == list(range(n_partitions)) and r.resumed == []
    assert "Dask dashboard: http" in capsys.readouterr().out


@cluster
def test_own_cluster_of_one_worker_and_serial(ckpt, corpus, reference):
    r = run_over_corpus(ckpt, corpus, _templates(), batch_size=3, hook_names=HOOKS, n_workers=1,
                        n_partitions=5, progress=False)
    _check(r, reference, _n_tokens(corpus))
    s = run_over_corpus(ckpt, corpus, _templates(), batch_size=8, hook_names=HOOKS, client="serial",
                        n_partitions=2, progress=False)
    _check(s, reference, _n_tokens(corpus))
    seq, pos = s.locate(s["blocks.0.hook_resid_post", "topk"].index)
    assert np.all((pos >= 0) & (pos < 16)) and np.all((seq >= 0) & (seq < len(_sequences(corpus))))


def test_memmap_and_text_file_sources(ckpt, corpus, reference, tmp_path):
    seqs = _sequences(corpus)
    flat = np.concatenate([np.asarray(s, dtype=np.int32) for s in seqs[:18]])   # the 16-token rows
    path = tmp_path / "tokens.bin"
    flat.tofile(path)
    mm = np.memmap(path, dtype=np.int32, mode="r")
    r = run_over_corpus(ckpt, mm, [S.TopK(4), S.Moments()], hook_names=["blocks.0.hook_resid_post"],
                        client="serial", seq_len=16, n_partitions=3, progress=False)
    rows, idx = _activations(ckpt, seqs[:18])
    x = np.concatenate(rows["blocks.0.hook_resid_post"])
    order = np.lexsort((np.broadcast_to(idx[:, None], x.shape).T, -x.T))[:, :4]
    np.testing.assert_array_equal(r["blocks.0.hook_resid_post", "topk"].index, idx[order])
    with pytest.raises(ValueError, match="not a slice"):
        run_over_corpus(ckpt, mm[16:], [S.Moments()], client="serial", progress=False)
    texts = ["The cat sat on the mat. " * 9, "A second file, with other words in it."]
    files = []
    for i, t in enumerate(texts):
        files.append(tmp_path / f"doc{i}.txt")
        files[-1].write_text(t)
    from mechinterp_c.transformers import AutoTokenizer
    n = sum(len(AutoTokenizer.from_pretrained(ckpt).encode(t)) for t in texts)
    r = run_over_corpus(ckpt, [str(f) for f in files], [S.Moments()], hook_names=["blocks.0.hook_resid_post"],
                        client="serial", seq_len=32, progress=False)
    assert r.n_tokens == n and r["blocks.0.hook_resid_post", "moments"].count == n


def test_datasets_sources(ckpt, corpus, reference):
    """A `datasets` dataset: rows of token ids as they are, or a text column tokenized."""
    datasets = pytest.importorskip("datasets")
    seqs = _sequences(corpus)
    ds = datasets.Dataset.from_dict({"input_ids": [list(map(int, s)) for s in seqs]})
    r = run_over_corpus(ckpt, ds, _templates(), batch_size=8, hook_names=HOOKS, client="serial",
                        n_partitions=3, progress=False)
    _check(r, reference, _n_tokens(corpus))
    texts = ["The cat sat on the mat. " * 5, "Another row of text, and some more words."]
    from mechinterp_c.transformers import AutoTokenizer
    n = sum(len(AutoTokenizer.from_pretrained(ckpt).encode(t)) for t in texts)
    r = run_over_corpus(ckpt, datasets.Dataset.from_dict({"text": texts}), [S.Moments()],
                        hook_names=["blocks.0.hook_resid_post"], client="serial", seq_len=32, progress=False)
    assert r.n_tokens == n and r["blocks.0.hook_resid_post", "moments"].count == n


@cluster
def test_resume_after_client_restart(ckpt, corpus, reference, client2, tmp_path):
    d = tmp_path / "ckpt"
    first = run_over_corpus(ckpt, corpus, _templates(), hook_names=HOOKS, client=client2, n_partitions=6,
                            checkpoint_dir=d, progress=False)
    files = sorted(d.glob("partition-*.npz"))
    assert len(files) == 6 and first.computed == list(range(6))
    for f in files[:2]:
        f.unlink()
    with distributed.Client(client2.cluster) as again:   # a new client: nothing kept in memory
        r = run_over_corpus(ckpt, corpus, _templates(), hook_names=HOOKS, client=again, n_partitions=6,
                            checkpoint_dir=d, progress=False)
    assert len(r.computed) == 2 and len(r.resumed) == 4
    _check(r, reference, _n_tokens(corpus))
    # another statistic is another job: nothing resumed from the first one's files
    other = run_over_corpus(ckpt, corpus, [S.TopK(2)], hook_names=HOOKS[:1], client="serial", n_partitions=6,
                            checkpoint_dir=d, progress=False)
    assert other.resumed == []


@cluster
def test_bad_partitions_named_and_others_kept(ckpt, corpus, client2, tmp_path):
    rng = np.random.default_rng(5)
    bad = [rng.integers(0, 2700, size=(2, 16)) for _ in range(9)]   # 9 partitions: one item each
    bad[1] = bad[1] + 3000                         # ids outside the vocabulary (2757)
    bad[4] = bad[4].astype(np.float32)             # wrong dtype
    kw = dict(hook_names=HOOKS[:1], n_partitions=9, progress=False)
    with pytest.raises(CorpusError) as e:
        run_over_corpus(ckpt, bad, [S.Moments(), S.TopK(3)], client=client2, checkpoint_dir=tmp_path, **kw)
    msg = str(e.value)
    assert "partition 1 " in msg and "outside the vocabulary [0, 2757)" in msg
    assert "partition 4 " in msg and "must be integers, got dtype float32" in msg
    res = e.value.result
    assert [f.index for f in e.value.failures] == [1, 4] and res.computed == [0, 2, 3, 5, 6, 7, 8]
    assert res["blocks.0.hook_resid_post", "moments"].count == 7 * 32
    assert len(list(tmp_path.glob("partition-*.npz"))) == 7   # the good ones are checkpointed
    with pytest.raises(CorpusError) as e2:                   # the same in one process
        run_over_corpus(ckpt, bad, [S.Moments(), S.TopK(3)], client="serial", **kw)
    a, b = res["blocks.0.hook_resid_post", "topk"], e2.value.result["blocks.0.hook_resid_post", "topk"]
    np.testing.assert_array_equal(a.index, b.index)
    # the workers are still usable
    good = run_over_corpus(ckpt, corpus[:2], [S.Moments()], client=client2, **kw)
    assert good["blocks.0.hook_resid_post", "moments"].count == 96


def test_bad_arguments(ckpt, corpus):
    with pytest.raises(TypeError, match="unsized"):
        run_over_corpus(ckpt, corpus, [S.Moments().update(np.zeros((1, 2)))], client="serial")
    with pytest.raises(ValueError, match="hook_pattern"):
        run_over_corpus(ckpt, corpus, [S.AttentionEntropy()], hook_names=HOOKS[:1], client="serial")
    with pytest.raises(ValueError, match="at least one hook name"):
        run_over_corpus(ckpt, corpus, [S.Moments()], hook_names=[], client="serial")
    with pytest.raises(ValueError, match="no tokens"):
        run_over_corpus(ckpt, [], [S.Moments()], client="serial")
    with pytest.raises(CorpusError, match="blocks.99.hook_resid_post'] are not hook points"):
        run_over_corpus(ckpt, corpus[:1], [S.Moments()], hook_names=["blocks.99.hook_resid_post"],
                        client="serial", n_partitions=1, progress=False)


@cluster
def test_worker_killed_mid_job(ckpt, corpus, reference, tmp_path):
    """SIGKILL one of two workers once the first partition is done; the job still
    finishes (Dask reschedules the lost worker's partitions) with the same result."""
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    client = distributed.Client(cluster)
    try:
        d = tmp_path / "ck"
        out = {}

        def job():
            try:
                out["r"] = run_over_corpus(ckpt, corpus, _templates(), hook_names=HOOKS, client=client,
                                           batch_size=1, n_partitions=14, checkpoint_dir=d, progress=False)
            except BaseException as e:   # reported by the assertion below
                out["e"] = e

        t = threading.Thread(target=job)
        t.start()
        deadline = time.monotonic() + 60
        while not list(d.glob("partition-*.npz")) and time.monotonic() < deadline:
            time.sleep(0.02)
        pids = client.run(os.getpid)
        victim = sorted(pids.values())[0]
        assert t.is_alive(), "the job ended before a worker could be killed"
        os.kill(victim, signal.SIGKILL)
        t.join(timeout=90)
        assert not t.is_alive(), "the job did not finish within 90 s of the kill"
        assert "e" not in out, out.get("e")
        assert len(list(d.glob("partition-*.npz"))) == 14
        _check(out["r"], reference, _n_tokens(corpus))
        assert victim not in client.run(os.getpid).values()   # the worker really died
    finally:
        client.close()
        cluster.close()
