"""``python -m mechinterp_c.demo``: the main job of ``make demo``.

For now a short end-to-end run of the kernels (a GPT-2-small-sized MLP block);
it becomes the executed no-position notebook once training lands.
"""
import time

import numpy as np

from . import cpu_isa, get_num_threads, ops


def main():
    """Run a small MLP block through the C kernels and report timing and accuracy."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((512, 768), dtype=np.float32)
    w_in = rng.standard_normal((768, 3072), dtype=np.float32) * 0.02
    w_out = rng.standard_normal((3072, 768), dtype=np.float32) * 0.02
    t0 = time.perf_counter()
    h = ops.layer_norm(x)
    h = ops.gelu(ops.matmul(h, w_in), approximate="tanh")
    y = ops.matmul(h, w_out)
    dt = time.perf_counter() - t0
    ref_h = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    ref_h = ref_h.astype(np.float64) @ w_in
    ref_h = 0.5 * ref_h * (1 + np.tanh(np.sqrt(2 / np.pi) * (ref_h + 0.044715 * ref_h ** 3)))
    ref = ref_h @ w_out
    err = np.abs(y - ref).max() / np.abs(ref).max()
    print(f"mechinterp_c demo: MLP block [512, 768] on {get_num_threads()} threads ({cpu_isa()}): "
          f"{dt * 1e3:.1f} ms, max relative error vs float64 NumPy {err:.2e}")


if __name__ == "__main__":
    main()
