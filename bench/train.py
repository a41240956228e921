"""Benchmark: steps/s of the no-position training recipe (batch 256 x 50) with
mechinterp_c vs TransformerLens + PyTorch in the same run, and the peak RSS growth
of each (measured in fresh subprocesses).

Usage: python3 bench/train.py [steps]   (default 20 timed steps after 2 warm-up steps)
"""
import json
import os
import subprocess
import sys
import time

CFG = dict(n_layers=2, d_model=64, d_head=64, n_heads=1, d_mlp=256, d_vocab=300, n_ctx=50,
           act_fn="relu", normalization_type="LN", seed=0)


def batches(n):
    import numpy as np
    rng = np.random.default_rng(123)
    out = []
    for _ in range(n):
        tokens = rng.integers(1, CFG["d_vocab"], size=(256, CFG["n_ctx"]))
        tokens[:, 0] = 0
        targets = np.full_like(tokens, -100)
        targets[:, 1:] = tokens[:, :-1]
        out.append((tokens, targets))
    return out


def run_c(steps):
    import mechinterp_c as mi
    model = mi.HookedTransformer(mi.HookedTransformerConfig(**CFG))
    model.pos_embed.W_pos[:] = 0.0
    model.get_parameter("pos_embed.W_pos").requires_grad = False
    opt = mi.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    sched = mi.optim.LambdaLR(opt, lambda i: min(i / 100, 1.0))
    params = list(model.parameters())
    data = batches(steps + 2)
    for i, (t, y) in enumerate(data):
        if i == 2:
            t0 = time.perf_counter()
        model.backward(t, y)
        mi.optim.clip_grad_norm_(params, 1.0)
        opt.step(); opt.zero_grad(); sched.step()
    return steps / (time.perf_counter() - t0)


def run_torch(steps):
    import torch
    import torch.nn.functional as F
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    model = HookedTransformer(HookedTransformerConfig(**CFG))
    with torch.no_grad():
        model.pos_embed.W_pos.zero_()
    model.pos_embed.W_pos.requires_grad_(False)
    ps = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(ps, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(i / 100, 1.0))
    data = [(torch.tensor(t), torch.tensor(y)) for t, y in batches(steps + 2)]
    for i, (t, y) in enumerate(data):
        if i == 2:
            t0 = time.perf_counter()
        logits = model(t)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=-100)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ps, 1.0)
        opt.step(); opt.zero_grad(); sched.step()
    return steps / (time.perf_counter() - t0)


def child(which, steps):
    import resource
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rate = (run_c if which == "c" else run_torch)(steps)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"steps_per_s": rate, "peak_rss_mb": peak / 1024,
                      "rss_growth_mb": (peak - before) / 1024}))


def main():
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        return child(sys.argv[2], int(sys.argv[3]))
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    res = {}
    for which in ("c", "torch"):
        out = subprocess.run([sys.executable, __file__, "--child", which, str(steps)],
                             capture_output=True, text=True, check=True,
                             env=dict(os.environ, PYTHONWARNINGS="ignore"))
        res[which] = json.loads(out.stdout.strip().splitlines()[-1])
    c, t = res["c"], res["torch"]
    print(f"recipe step (batch 256 x 50), {steps} timed steps, threads={os.cpu_count()}")
    print(f"  mechinterp_c : {c['steps_per_s']:7.2f} steps/s  peak RSS {c['peak_rss_mb']:7.1f} MB")
    print(f"  TL + PyTorch : {t['steps_per_s']:7.2f} steps/s  peak RSS {t['peak_rss_mb']:7.1f} MB")
    print(f"  speed ratio (C / PyTorch): {c['steps_per_s'] / t['steps_per_s']:.2f}x   "
          f"peak RSS ratio (PyTorch / C): {t['peak_rss_mb'] / c['peak_rss_mb']:.2f}x")


if __name__ == "__main__":
    main()
