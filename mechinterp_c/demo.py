"""``python -m mechinterp_c.demo`` (``make demo``): the no-position experiment, end to end.

Executes ``notebooks/no_position_experiment.ipynb`` headless in a fresh ``python3``
kernel: a 2-layer transformer without positional embedding is trained in C (4000 AdamW
steps of batch 256, as the notebook; 150 steps of batch 64 with ``MI_NOTEBOOK_SMALL=1``),
then analysed (attention patterns, QK/OV circuits, LayerNorm folding, mean ablation of
every hook point). Writes to ``demo_out/`` (``--out``):

- ``no_position_experiment.ipynb``: the executed notebook, outputs and figures inline;
- ``figures/*.png``: every figure;
- ``no_position_experiment.json`` / ``.npz``: key numbers, weights and token batches.

Prints where they are and the training time. Needs nbclient, nbformat, ipykernel and
matplotlib (``requirements-notebooks.txt``); no torch.
"""
import argparse
import contextlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

NOTEBOOK = "no_position_experiment.ipynb"


def _find_notebook():
    """The notebook in the source checkout this package lives in (or $MI_DEMO_NOTEBOOK)."""
    if os.environ.get("MI_DEMO_NOTEBOOK"):
        return Path(os.environ["MI_DEMO_NOTEBOOK"])
    here = Path(__file__).resolve().parent
    for base in (here.parent, Path.cwd()):
        p = base / "notebooks" / NOTEBOOK
        if p.is_file():
            return p
    raise FileNotFoundError(f"notebooks/{NOTEBOOK} not found next to {here} nor in {Path.cwd()}; "
                            f"run from the source checkout or set MI_DEMO_NOTEBOOK")



@contextlib.contextmanager
def scoped_environ(values):
    """Set environment variables (the notebook kernel inherits them) for the block and
    restore the previous values, unset ones included, afterwards."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

def _first_line(src):
    for line in src.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            return line.strip()[:70]
    return src.strip().splitlines()[0][:70] if src.strip() else ""


def run(out_dir="demo_out", notebook=None, small=None, timeout=None):
    """Execute the no-position notebook into ``out_dir``; returns the key numbers (dict)."""
    try:
        import nbformat
        from nbclient import NotebookClient
    except ImportError as e:
        raise SystemExit(f"mechinterp_c.demo needs nbclient and nbformat ({e}): "
                         f"pip install -r requirements-notebooks.txt (or run `make demo`)")
    nb_path = Path(notebook) if notebook else _find_notebook()
    out = Path(out_dir).resolve()
    figdir = out / "figures"
    if figdir.exists():
        shutil.rmtree(figdir)                # no stale figures from an earlier run
    figdir.mkdir(parents=True)
    results_path = out / NOTEBOOK.replace(".ipynb", ".json")
    if results_path.exists():
        results_path.unlink()
    env = {"MI_NOTEBOOK_FIGDIR": str(figdir), "MI_NOTEBOOK_OUT": str(results_path),
           "MI_NOTEBOOK_PROGRESS": "1",      # training progress on this terminal
           # the kernel imports this very package, built in place or installed
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parent.parent)]
                                         + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))}
    if small is not None:
        env["MI_NOTEBOOK_SMALL"] = "1" if small else "0"
    size = "small (MI_NOTEBOOK_SMALL=1)" if env.get("MI_NOTEBOOK_SMALL", os.environ.get(
        "MI_NOTEBOOK_SMALL", "")).strip().lower() not in ("", "0", "false", "no") else "full size"

    nb = nbformat.read(nb_path, as_version=4)
    code_cells = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    print(f"mechinterp_c demo: executing {nb_path} ({size}, {len(code_cells)} code cells) ...",
          flush=True)

    def on_start(cell, cell_index):
        k = code_cells.index(cell_index) + 1 if cell_index in code_cells else 0
        print(f"  [{k:2d}/{len(code_cells)}] {_first_line(cell.source)}", flush=True)

    t0 = time.perf_counter()
    try:
        with scoped_environ(env):
            client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                    resources={"metadata": {"path": str(out)}},
                                    on_cell_execute=on_start)
            client.execute()
    finally:
        nbformat.write(nb, out / NOTEBOOK)     # also when a cell failed: the error is in it
    wall = time.perf_counter() - t0
    res = json.loads(results_path.read_text())
    figs = sorted(figdir.glob("*.png"))
    print()
    print(f"executed notebook: {out / NOTEBOOK}")
    print(f"figures ({len(figs)}): {figdir}/")
    print(f"key numbers:       {results_path} (+ .npz: weights and token batches)")
    print(f"training time:     {res['train_seconds']:.1f} s for {res['num_epochs']} steps of batch "
          f"{res['batch_size']} ({1e3 * res['train_seconds'] / res['num_epochs']:.1f} ms/step)")
    print(f"loss:              first step {res['train_losses'][0]:.4f}, last step "
          f"{res['train_losses'][-1]:.4f}, analysis batch {res['big_loss']:.4f}")
    print(f"total notebook time: {wall:.1f} s")
    return res


def main(argv=None):
    """Command line: ``python -m mechinterp_c.demo [--out DIR] [--small] [--timeout S]``."""
    ap = argparse.ArgumentParser(description="Execute the no-position notebook headless.")
    ap.add_argument("--out", default="demo_out", help="output directory (default demo_out)")
    ap.add_argument("--notebook", default=None, help="notebook to run (default: the checkout's)")
    ap.add_argument("--small", action="store_true", default=None,
                    help="short run (as MI_NOTEBOOK_SMALL=1)")
    ap.add_argument("--timeout", type=float, default=None, help="per-cell timeout in seconds")
    args = ap.parse_args(argv)
    try:
        run(args.out, args.notebook, args.small, args.timeout)
    except Exception as e:          # nbclient's CellExecutionError carries the traceback
        print(f"mechinterp_c demo failed: {type(e).__name__}: {e}", file=sys.stderr)
        print(f"the partly executed notebook is in {Path(args.out).resolve() / NOTEBOOK}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
