"""The thread count is one process-wide setting, and the core works in forked children.

- set_num_threads from any Python thread sets the team size of every parallel
  region started from any other thread (OpenMP's own setting is per thread).
- A child forked after the parent ran multi-threaded passes computes the same
  results, single-threaded: GNU libgomp's thread pool does not survive fork, and
  a multi-threaded region there would wait forever for the parent's workers.
  Tested with multiprocessing's 'fork' start method and with os.fork; every wait
  on a child is bounded, so a hang fails its test instead of stalling the suite.
- The parent keeps its threads after forking.
- Every parallel region in csrc/ passes num_threads(...), which both rely on.

Results are compared bitwise with the parent's: every kernel is bitwise identical
for any thread count (no reduction is split across threads).
"""
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import mechinterp_c
from mechinterp_c import _core
from mechinterp_c.config import HookedTransformerConfig
from mechinterp_c.hooked_transformer import HookedTransformer

CHILD_TIMEOUT = 60.0   # seconds; a working child needs well under one

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")

# Big enough that GEMMs, attention and norms take their multi-threaded paths.
CFG = dict(n_layers=2, d_model=128, n_ctx=64, d_head=32, n_heads=4, d_vocab=100, act_fn="gelu", seed=3)


@pytest.fixture
def two_threads():
    """At least two threads in the parent for the test, the count restored after."""
    n = mechinterp_c.get_num_threads()
    mechinterp_c.set_num_threads(max(2, n))
    yield max(2, n)
    mechinterp_c.set_num_threads(n)


@pytest.fixture(scope="module")
def model():
    return HookedTransformer(HookedTransformerConfig(**CFG))


def _tokens(seed):
    return np.random.default_rng(seed).integers(0, CFG["d_vocab"], (4, 64))


def _wait_bounded(pid, timeout=CHILD_TIMEOUT):
    """The exit code of child `pid`, or kill it and fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(f"forked child {pid} did not finish within {timeout:.0f} s (hung)")


def test_set_num_threads_from_another_thread_applies_to_every_thread(two_threads):
    seen = {}

    def setter(n):
        mechinterp_c.set_num_threads(n)

    def reader(key):
        seen[key] = (mechinterp_c.get_num_threads(), _core._omp_team_size())

    for n in (1, two_threads):
        t = threading.Thread(target=setter, args=(n,))
        t.start()
        t.join()
        assert mechinterp_c.get_num_threads() == n
        assert _core._omp_team_size() == n          # the main thread's regions
        t = threading.Thread(target=reader, args=(n,))
        t.start()
        t.join()
        assert seen[n] == (n, n)                     # a third thread's regions


def test_forward_in_another_thread_uses_the_count_and_same_results(model, two_threads):
    tokens = _tokens(0)
    want = model(tokens)
    out = {}

    def run():
        out["team"] = _core._omp_team_size()
        out["logits"] = model(tokens)

    mechinterp_c.set_num_threads(1)
    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert out["team"] == 1
    np.testing.assert_array_equal(out["logits"], want)


def test_set_num_threads_rejects_bad_counts():
    n = mechinterp_c.get_num_threads()
    for bad in (0, -3):
        with pytest.raises(ValueError, match="set_num_threads: n must be >= 1"):
            mechinterp_c.set_num_threads(bad)
    with pytest.raises(TypeError):
        mechinterp_c.set_num_threads("2")
    assert mechinterp_c.get_num_threads() == n


def test_os_fork_child_runs_after_a_multithreaded_parent(model, two_threads):
    tokens = _tokens(1)
    assert _core._omp_team_size() == two_threads     # the parent's pool exists now
    want = model(tokens)
    _, cache = model.run_with_cache(tokens)
    want_pattern = np.array(cache["blocks.1.attn.hook_pattern"])
    pid = os.fork()
    if pid == 0:   # child: report through the exit code only, never return into pytest
        code = 1
        try:
            mechinterp_c.set_num_threads(two_threads)   # cannot raise it in a forked child
            if mechinterp_c.get_num_threads() != 1 or _core._omp_team_size() != 1:
                code = 2
            else:
                logits, cache = model.run_with_cache(tokens)
                same = (np.array_equal(logits, want)
                        and np.array_equal(cache["blocks.1.attn.hook_pattern"], want_pattern))
                code = 0 if same else 3
        finally:
            os._exit(code)
    code = _wait_bounded(pid)
    assert code == 0, {1: "child raised", 2: "child is not single-threaded",
                       3: "child's results differ"}.get(code, code)
    # the parent keeps its threads and its results
    assert mechinterp_c.get_num_threads() == two_threads
    assert _core._omp_team_size() == two_threads
    np.testing.assert_array_equal(model(tokens), want)


def _forward_in_worker(seed):
    """A pool worker's job: logits of the module's model (inherited through fork)."""
    return _POOL_MODEL[0](_tokens(seed)), mechinterp_c.get_num_threads()


_POOL_MODEL = []


def test_multiprocessing_fork_pool(model, two_threads):
    seeds = [2, 3, 4, 5]
    want = [model(_tokens(s)) for s in seeds]   # multi-threaded passes before the fork
    _POOL_MODEL[:] = [model]
    ctx = multiprocessing.get_context("fork")
    try:
        with ctx.Pool(2) as pool:               # __exit__ terminates the workers
            res = pool.map_async(_forward_in_worker, seeds)
            try:
                got = res.get(timeout=CHILD_TIMEOUT)
            except multiprocessing.TimeoutError:
                pytest.fail(f"fork pool workers did not finish within {CHILD_TIMEOUT:.0f} s (hung)")
    finally:
        _POOL_MODEL.clear()
    for (logits, nthreads), w in zip(got, want):
        assert nthreads == 1
        np.testing.assert_array_equal(logits, w)
    assert _core._omp_team_size() == two_threads
    np.testing.assert_array_equal(model(_tokens(seeds[0])), want[0])


def test_child_forked_before_first_use_keeps_its_threads():
    """Only a fork after the core's first use of threads pins the child to one
    thread: a fresh interpreter that forks right after import keeps the count."""
    code = (
        "import os, mechinterp_c\n"
        "from mechinterp_c import _core\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os._exit(10 * _core._omp_team_size() + mechinterp_c.get_num_threads())\n"
        "_, st = os.waitpid(pid, 0)\n"
        "print(os.waitstatus_to_exitcode(st), _core._omp_team_size())\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="2")
    here = os.path.dirname(os.path.dirname(os.path.abspath(mechinterp_c.__file__)))  # this build
    env["PYTHONPATH"] = here + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=CHILD_TIMEOUT)
    assert out.returncode == 0, out.stderr
    child, parent = out.stdout.split()
    assert (child, parent) == ("22", "2")


def test_every_parallel_region_names_its_team_size():
    """The process-wide count and the fork fallback reach only regions that pass
    num_threads(...) (OpenMP's own count is per thread): every region in csrc/ must."""
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")
    if not os.path.isdir(root):
        pytest.skip("no csrc/ next to tests/ (installed package)")
    missing = []
    for dirpath, _, files in os.walk(root):
        for name in files:
            if not name.endswith((".c", ".h")):
                continue
            path = os.path.join(dirpath, name)
            with open(path, encoding="utf-8") as f:
                lines = f.read().split("\n")
            for i, line in enumerate(lines):
                if not line.lstrip().startswith("#pragma omp parallel"):
                    continue
                pragma = line
                while pragma.rstrip().endswith("\\") and i + 1 < len(lines):
                    i += 1
                    pragma = pragma.rstrip()[:-1] + " " + lines[i]
                if "num_threads(" not in pragma:
                    missing.append(f"{os.path.relpath(path, root)}:{i + 1}: {pragma.strip()}")
    assert not missing, "parallel regions without num_threads(mi_get_num_threads()):\n" + "\n".join(missing)
