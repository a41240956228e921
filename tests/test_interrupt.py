"""Ctrl-C during a long pass without hooks: KeyboardInterrupt between layers.

The forward and the training backward run in C with the GIL released; between
layers the core runs Python's signal handlers (rate-limited to one check per
50 ms of the pass), so SIGINT ends the pass early with KeyboardInterrupt instead
of after the whole pass, and the model stays usable: the next pass gives
bitwise the results it gave before (the weights are never touched).

"Early" is measured against a full pass of the same model and input size (the
batch is doubled until a pass takes at least 0.6 s; a layer takes a few ms to a
few tens of ms): the interrupt is sent 0.1 s in and must end the pass before
half of a full pass's time. In the backward, where layers run last to first,
"early" is also visible in the gradients: the last layers' are written, the
first layer's are still zero.
"""
import os
import signal
import threading
import time

import numpy as np
import pytest

from mechinterp_c.config import HookedTransformerConfig
from mechinterp_c.hooked_transformer import HookedTransformer

pytestmark = pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                                reason="signal handlers run on the main thread only")

# Many cheap layers: a check between layers comes often in a long pass.
CFG = dict(n_layers=48, d_model=128, n_ctx=128, d_head=32, n_heads=4, d_vocab=64, act_fn="gelu", seed=5)


@pytest.fixture(scope="module")
def model():
    return HookedTransformer(HookedTransformerConfig(**CFG))


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _long_batch(run, batch, warm=False, min_s=0.6, max_batch=512):
    """The smallest batch (doubling from `batch`) for which run(batch) takes min_s
    seconds: a pass long against the 50 ms check interval on any machine. warm:
    time the second run at each size (the first also allocates)."""
    while True:
        if warm:
            run(batch)
        _, took = _timed(lambda: run(batch))
        if took >= min_s or batch >= max_batch:
            return batch, took
        batch *= 2


def _sigint_after(delay):
    """A started timer that sends SIGINT to this process after `delay` seconds."""
    t = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGINT))
    t.start()
    return t


def _interrupted(fn, delay):
    """Run fn() with SIGINT sent after `delay` s; the seconds until KeyboardInterrupt."""
    t0 = time.perf_counter()
    timer = _sigint_after(delay)
    try:
        with pytest.raises(KeyboardInterrupt):
            fn()
        return time.perf_counter() - t0
    finally:
        timer.cancel()
        timer.join()


def test_sigint_ends_a_forward_early_and_the_model_stays_usable(model):
    rng = np.random.default_rng(0)
    small = rng.integers(0, CFG["d_vocab"], (2, 16))
    want_small = model(small)
    batch, full = _long_batch(lambda b: model(rng.integers(0, CFG["d_vocab"], (b, 128))), 8)
    tokens = rng.integers(0, CFG["d_vocab"], (batch, 128))

    took = _interrupted(lambda: model(tokens), 0.1)
    assert took < full / 2, f"interrupted pass took {took:.2f} s, a full one {full:.2f} s"
    np.testing.assert_array_equal(model(small), want_small)
    took = _interrupted(lambda: model.run_with_cache(tokens), 0.1)   # cached activations too
    assert took < full / 2
    np.testing.assert_array_equal(model(small), want_small)


def test_a_python_signal_handler_runs_during_the_pass_without_changing_it(model):
    """A handler that does not raise runs between layers, and the pass goes on."""
    rng = np.random.default_rng(1)
    batch, _ = _long_batch(lambda b: model(rng.integers(0, CFG["d_vocab"], (b, 64))), 8)
    tokens = rng.integers(0, CFG["d_vocab"], (batch, 64))
    want = model(tokens)
    calls = []
    old = signal.signal(signal.SIGALRM, lambda signum, frame: calls.append(time.perf_counter()))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.02, 0.02)
        t0 = time.perf_counter()
        got = model(tokens)
        t1 = time.perf_counter()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, old)
    np.testing.assert_array_equal(got, want)
    during = [c for c in calls if t0 <= c < t1]
    # handlers deferred to the end of the pass would all run after t1, as one call
    assert len(during) >= 3, f"{len(during)} handler calls during a {t1 - t0:.2f} s pass"


def test_sigint_ends_a_backward_early_and_the_next_step_is_exact(model):
    rng = np.random.default_rng(2)
    params = dict(model.named_parameters())
    first, last = params["blocks.0.attn.W_Q"], params["unembed.W_U"]

    def step_of(b):
        tokens = rng.integers(0, CFG["d_vocab"], (b, 64))
        model.backward(tokens, np.roll(tokens, 1, axis=1))
        model.zero_grad()

    batch, _ = _long_batch(step_of, 4, warm=True)   # a first step at a size faults in its workspace
    tokens = rng.integers(0, CFG["d_vocab"], (batch, 64))
    targets = np.roll(tokens, 1, axis=1)
    _, fwd = _timed(lambda: model(tokens))
    want_loss, step = _timed(lambda: model.backward(tokens, targets))
    want_first, want_last = first.grad.copy(), last.grad.copy()

    # SIGINT halfway through the backward half (layers run last to first). "Early" is
    # read from the gradients, not the clock: the unembedding's are written, layer 0's
    # are still zero. On a loaded machine the signal can miss the middle of the backward
    # (the step finished first, reached layer 0 first, or is still in the forward half):
    # that attempt says nothing, so it is repeated, at most 5 times, with the delay moved
    # accordingly; an interruption that never ends a step early fails.
    delay = (fwd + step) / 2
    for attempt in range(5):
        model.zero_grad()
        t0 = time.perf_counter()
        timer = _sigint_after(delay)
        try:
            model.backward(tokens, targets)
            raised = False
        except KeyboardInterrupt:
            raised = True
        finally:
            timer.cancel()
            timer.join()
        took = time.perf_counter() - t0
        if not raised:                          # the whole step ran before the signal
            delay = min(delay, fwd + (took - fwd) / 2) * 0.8
        elif not np.any(last.grad != 0):        # still in the forward half
            delay *= 1.25
        elif np.any(first.grad != 0):           # landed as the backward reached layer 0
            delay *= 0.85
        else:
            break
    else:
        pytest.fail(f"SIGINT never ended a backward half-way in 5 steps (last delay {delay:.2f} s)")

    # the step is void: zero the gradients and run it again
    model.zero_grad()
    assert model.backward(tokens, targets) == want_loss
    np.testing.assert_array_equal(first.grad, want_first)
    np.testing.assert_array_equal(last.grad, want_last)
    model.zero_grad()
