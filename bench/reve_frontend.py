"""Time the C REVE front end against the PyTorch reference (tests/reve_reference.py)
on the notebook's input: 10 epochs x 20 channels x 1000 samples, reve-base shapes.

Prints median times and the torch/C ratio (>1: C is faster). The two runs compute
the same thing (parity is checked once before timing). Noisy on a shared machine;
re-run on a quiet one for figures worth quoting.
Run: PYTHONPATH=. python3 bench/reve_frontend.py [--reps N]
"""
import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from reve_reference import random_reve  # noqa: E402

from mechinterp_c import reve  # noqa: E402


def median_time(fn, reps):
    fn()  # warm-up
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=10)
    args = ap.parse_args()
    model = random_reve(seed=0, depth=1)
    fe = reve.ReveFrontEnd.from_torch(model)
    rng = np.random.default_rng(0)
    eeg = rng.standard_normal((args.batch, 20, 1000)).astype(np.float32)
    pos = rng.uniform(-0.1, 0.1, (1, 20, 3)).astype(np.float32)
    teeg, tpos = torch.from_numpy(eeg), torch.from_numpy(pos)
    with torch.no_grad():
        ref = model.embed(teeg, tpos)["x"].numpy()
        err = float(np.abs(fe(eeg, pos) - ref).max())
        t_torch = median_time(lambda: model.embed(teeg, tpos), args.reps)
    t_c = median_time(lambda: fe(eeg, pos), args.reps)
    print(f"REVE front end, eeg {list(eeg.shape)}, pos {list(pos.shape)}, D=512, "
          f"torch threads {torch.get_num_threads()}")
    print(f"  max |C - torch| = {err:.2e}")
    print(f"  torch   {t_torch * 1e3:8.3f} ms")
    print(f"  C       {t_c * 1e3:8.3f} ms")
    print(f"  ratio torch/C = {t_torch / t_c:.2f}")


if __name__ == "__main__":
    main()
