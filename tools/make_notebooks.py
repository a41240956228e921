"""Build ``notebooks/*.ipynb`` from their sources ``notebooks/src/*.py``.

The sources are plain Python in the "percent" format: a line ``# %%`` starts a
code cell, ``# %% [markdown]`` a markdown cell whose lines are ``# ``-commented
text. The generated notebooks are unexecuted (no outputs) and use the
``python3`` kernel. ``python tools/make_notebooks.py`` rewrites them all;
``--check`` exits 1 when a committed notebook differs from its source.
"""
import argparse
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "notebooks" / "src"
OUT = ROOT / "notebooks"


def parse_cells(text):
    """(kind, source) cells of a percent-format source."""
    cells, kind, lines = [], None, []

    def flush():
        if kind is not None:
            body = "\n".join(lines).strip("\n")
            if body:
                cells.append((kind, body))

    for line in text.splitlines():
        if line.startswith("# %%"):
            flush()
            kind = "markdown" if "[markdown]" in line else "code"
            lines = []
            continue
        if kind == "markdown":
            line = line[2:] if line.startswith("# ") else line.lstrip("#")
        lines.append(line)
    flush()
    return cells


def build(src):
    """The notebook object of one source file."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for i, (kind, body) in enumerate(parse_cells(src.read_text(encoding="utf-8"))):
        cell = nbformat.v4.new_code_cell(body) if kind == "code" else nbformat.v4.new_markdown_cell(body)
        cell["id"] = f"{src.stem[:40]}-{i}"
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def main(argv=None):
    """Write every notebook (or with --check, compare them with their sources)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail if a notebook is out of date")
    args = ap.parse_args(argv)
    stale = []
    for src in sorted(SRC.glob("*.py")):
        text = nbformat.writes(build(src)) + "\n"
        dst = OUT / (src.stem + ".ipynb")
        if args.check:
            if not dst.is_file() or dst.read_text(encoding="utf-8") != text:
                stale.append(dst.name)
        else:
            dst.write_text(text, encoding="utf-8")
            print(f"wrote {dst.relative_to(ROOT)}")
    if stale:
        print("out of date (run python tools/make_notebooks.py): " + ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
