"""Run the code cells of the original seed notebooks (``../shared/seeds/*.ipynb.txt``, the
notebooks as text: ``In [n]:`` then the cell's code, then its printed output) in a plain
namespace, with chosen import lines swapped.

A cell's code is the longest run of its lines, ending before a blank line, that parses as
Python (IPython's ``%`` and ``!`` lines become ``pass``), stopping at a paragraph that
starts like printed output (``tensor(``, ``array(``, a number, a bracket): the text
export has no other marker between a cell's code and its output.
"""
import ast
import re
import types
from pathlib import Path

SEEDS = Path(__file__).resolve().parents[2] / "shared" / "seeds"
_OUTPUT_START = re.compile(r"^(tensor\(|torch\.Size|array\(|\(|\[|\d|-\d|\{)")


def _ipython_to_python(lines):
    return [(l[:len(l) - len(l.lstrip())] + "pass  # " + l.lstrip())
            if l.lstrip().startswith(("%", "!")) else l for l in lines]


def code_cells(name):
    """The code of every ``In [..]:`` cell of seed notebook ``name``, in order."""
    lines = (SEEDS / f"{name}.ipynb.txt").read_text(encoding="utf-8").split("\n")
    starts = [i for i, l in enumerate(lines) if re.match(r"^In \[[^\]]*\]:\s*$", l)]
    cells = []
    for k, s in enumerate(starts):
        body = lines[s + 1:(starts[k + 1] if k + 1 < len(starts) else len(lines))]
        best = 0
        for j in range(1, len(body) + 1):
            if j < len(body) and body[j].strip() != "":
                continue
            p = j - 1                      # first line of the paragraph ending here
            while p > 0 and body[p - 1].strip() != "":
                p -= 1
            if p > 0 and _OUTPUT_START.match(body[p]):
                break
            try:
                ast.parse("\n".join(_ipython_to_python(body[:j])))
                best = j
            except SyntaxError:
                pass
        cells.append("\n".join(_ipython_to_python(body[:best])))
    return cells


def swap_imports(code, swaps):
    """``code`` with each line equal (stripped) to a key of ``swaps`` replaced by its
    value (same indentation); only import lines are meant to be swapped."""
    out = []
    for line in code.split("\n"):
        key = line.strip()
        if key in swaps:
            assert key.startswith(("import ", "from ")), key
            ind = line[:len(line) - len(line.lstrip())]
            out.extend(ind + s for s in swaps[key].split("\n"))
        else:
            out.append(line)
    return "\n".join(out)


def stub_module(name, **attrs):
    """A module object standing in for a plotting library: every function returns an
    object whose methods do nothing."""
    class _Fig:
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return self

        def __call__(self, *a, **k):
            return self

        def __getitem__(self, key):
            return self
    mod = types.ModuleType(name)
    for k, v in attrs.items():
        setattr(mod, k, v)
    def attr(name):
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *a, **k: _Fig()
    mod.__getattr__ = attr
    return mod


def run(cells, ns, skip=(), subs=None, after=None, record_errors=False):
    """Execute ``cells`` in namespace ``ns``. ``skip``: {index: reason} of cells not run;
    ``subs``: {index: [(old, new)]} text substitutions (local paths, synthetic data);
    ``after``: {index: fn(ns)} run after that cell. Returns the indices run; with
    ``record_errors`` a failing cell does not stop the run and the result is
    {index: None or the exception's type name}."""
    ran = []
    outcome = {}
    for i, code in enumerate(cells):
        if i in skip:
            continue
        for old, new in (subs or {}).get(i, ()):
            assert old in code, f"cell {i}: {old!r} not in the cell"
            code = code.replace(old, new)
        try:
            exec(compile(code, f"<seed cell {i}>", "exec"), ns)
            outcome[i] = None
        except Exception as e:
            if record_errors:
                outcome[i] = type(e).__name__
                continue
            raise AssertionError(f"seed cell {i} failed: {type(e).__name__}: {e}\n--- cell ---\n{code}") from e
        ran.append(i)
        if after and i in after:
            after[i](ns)
    return outcome if record_errors else ran
