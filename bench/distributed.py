"""Benchmark: corpus statistics on Dask (mechinterp_c.distributed) against the plain loop.

GPT-2-small-shaped checkpoint (``checkpoints.load_or_create("gpt2", small=False)``:
the real one if cached, else random weights of the same shape), a random-token corpus
of ``--tokens`` tokens in sequences of ``--seq``, statistics ``Moments`` and ``TopK(10)``
at every ``hook_resid_post`` (12 hooks x 768 units), batches of 4 sequences, one
batch per partition.

- single-process loop: ``run_with_cache`` + accumulator updates in this process, 1
  C thread (what a researcher writes without Dask);
- Dask, 1 and 2 local workers (processes, 1 thread each), the model opened by each
  worker before timing (a warm cluster: model loading and cluster start excluded and
  printed apart);
- overhead of the distributed path at 1 worker (target under 10%): the loop and the
  1-worker run alternate for --rounds rounds, and the median per-round ratio is reported;
- merge cost: ``from_bytes`` + ``merge`` of one partition's states in the driver;
- a projection of the time for 10^9 tokens on N machines like this one (2 workers
  each), from the measured per-token cost and merge cost, with partitions of
  ``--partition-tokens`` tokens merged one after another in the driver.

    python3 bench/distributed.py [--tokens 2048] [--seq 128] [--rounds 5] [--partition-tokens 1000000]
"""
import argparse
import os
import statistics
import sys
import time

# this file's own name would shadow the `distributed` package: drop its folder from the path
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import numpy as np  # noqa: E402

from mechinterp_c import HookedTransformer, _core, checkpoints  # noqa: E402
from mechinterp_c import distributed as D  # noqa: E402
from mechinterp_c import stats as S  # noqa: E402


def warm(spec, tokens):
    """Open the model (kept for later tasks in this process) and run one pass, so the
    timed runs start with the weights' pages and the activation arena in place."""
    D._open_model(spec).run_with_cache(tokens, return_type=None, return_cache_object=False,
                                        names_filter="blocks.0.hook_resid_post")
    return True


def templates():
    return [S.Moments(), S.TopK(10)]


def plain_loop(model, corpus, hooks, batch):
    """One timed pass of the loop a researcher writes without Dask: (seconds, accumulators)."""
    accs = {h: templates() for h in hooks}
    t0 = time.perf_counter()
    for s in range(0, len(corpus), batch):
        tokens = corpus[s:s + batch]
        _, cache = model.run_with_cache(tokens, names_filter=hooks, return_type=None,
                                        return_cache_object=False)
        b, n = tokens.shape
        idx = (np.arange(s, s + b)[:, None] * n + np.arange(n)).ravel()
        for h in hooks:
            for a in accs[h]:
                a.update(cache[h].reshape(b * n, -1), idx)
    return time.perf_counter() - t0, accs


def dask_run(client, ckpt, corpus, hooks, batch, n_partitions):
    """One timed run_over_corpus on the client's warm workers: (seconds, result)."""
    t0 = time.perf_counter()
    r = D.run_over_corpus(ckpt, [corpus], templates(), batch_size=batch, hook_names=hooks, client=client,
                          n_partitions=n_partitions, progress=False)
    return time.perf_counter() - t0, r


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--partition-tokens", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    ckpt = str(checkpoints.load_or_create("gpt2", small=False))
    load0 = os.getloadavg()[0]
    corpus = np.random.default_rng(0).integers(0, 50000, size=(args.tokens // args.seq, args.seq))
    n = corpus.size
    hooks = [f"blocks.{i}.hook_resid_post" for i in range(12)]
    n_parts = max(1, len(corpus) // args.batch)   # a batch per partition

    # The loop runs in this process with 1 C thread; each Dask worker is a process with
    # 1 thread. The 1-worker overhead is measured in alternating rounds (loop, Dask,
    # loop, Dask, ...) so a change of load on this shared machine hits both alike;
    # the figure is the median of the per-round ratios.
    from distributed import Client, LocalCluster
    model = D._MODELS[ckpt] = HookedTransformer.from_pretrained(ckpt)
    before = _core.get_num_threads()
    _core.set_num_threads(1)
    t0 = time.perf_counter()
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    client = Client(cluster)
    try:
        warm(ckpt, corpus[:args.batch])
        client.run(warm, ckpt, corpus[:args.batch])
        print(f"Dask LocalCluster start + model load in 2 workers: {time.perf_counter() - t0:.1f} s "
              f"(not in the rates below)")
        t2, r2 = dask_run(client, ckpt, corpus, hooks, args.batch, n_parts)
        client.retire_workers(list(client.scheduler_info()["workers"])[:1])   # the other stays warm
        rounds = []
        for _ in range(args.rounds):
            t_plain, accs = plain_loop(model, corpus, hooks, args.batch)
            t1, r1 = dask_run(client, ckpt, corpus, hooks, args.batch, n_parts)
            rounds.append((t_plain, t1))
    finally:
        client.close()
        cluster.close()
        _core.set_num_threads(before)
    same = all(np.array_equal(r[h, "topk"].index, accs[h][1].index) for r in (r1, r2) for h in hooks)
    for i, (tp, t1) in enumerate(rounds):
        print(f"round {i + 1}: single-process loop (1 thread) {n / tp:6.0f} tokens/s, "
              f"Dask 1 worker x 1 thread {n / t1:6.0f} tokens/s, overhead {100 * (t1 / tp - 1):+.1f}%")
    t_plain = statistics.median(tp for tp, _ in rounds)
    t1 = statistics.median(d for _, d in rounds)
    overhead = statistics.median(d / tp - 1 for tp, d in rounds)
    rates = {1: n / t1, 2: n / t2}
    print(f"single-process loop (1 thread): {n / t_plain:8.0f} tokens/s (median of {args.rounds}, {n} tokens)")
    print(f"Dask, 1 worker x 1 thread:      {rates[1]:8.0f} tokens/s ({n_parts} partitions)")
    print(f"Dask, 2 workers x 1 thread:     {rates[2]:8.0f} tokens/s ({rates[2] / rates[1]:.2f}x of 1 worker)")
    print(f"top-k indices equal to the loop's: {same}")
    print(f"overhead of the distributed path at 1 worker: {100 * overhead:+.1f}% "
          f"(median of the per-round ratios; target under 10%)")

    # merge cost: one partition's states, serialised and merged into a running total
    states = {h: [a.to_bytes() for a in accs[h]] for h in hooks}
    nbytes = sum(len(b) for lst in states.values() for b in lst)
    total = {h: [t.empty() for t in templates()] for h in hooks}
    reps = 5
    t0 = time.perf_counter()
    for _ in range(reps):
        total = {h: [a.merge(S.from_bytes(b)) for a, b in zip(total[h], states[h])] for h in hooks}
    merge = (time.perf_counter() - t0) / reps
    print(f"merge of one partition's states: {1e3 * merge:.1f} ms ({nbytes / 1e6:.2f} MB serialised)")

    per_token = 1 / rates[2]   # seconds per token on one machine of 2 workers
    parts = 1e9 / args.partition_tokens
    print(f"projection, 10^9 tokens, partitions of {args.partition_tokens:.0e} tokens ({parts:.0f}), "
          f"machines like this one (2 workers each):")
    for machines in (1, 8, 64, 512):
        compute = 1e9 * per_token / machines
        total_s = max(compute, parts * merge) + merge * min(parts, 2 * machines)   # merges overlap compute
        print(f"  {machines:4d} machine(s): {total_s / 3600:9.2f} h  (compute {compute / 3600:.2f} h, "
              f"driver merges {parts * merge / 60:.1f} min)")
    print(f"load average (1 min) {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the end, "
          f"{load0:.1f} at the start: other jobs share the machine, so the rates vary from run to run")


if __name__ == "__main__":
    main()
