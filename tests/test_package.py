"""The package's own shape: no import cycle inside mechinterp_c/, lazy imports included,
and no optional dependency imported at ``import mechinterp_c``."""
import ast
import os
import subprocess
import sys

PKG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "mechinterp_c")


def _modules():
    """Dotted module name -> path for every .py file of the package."""
    mods = {}
    for dirpath, _, files in os.walk(PKG):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(dirpath, f), os.path.dirname(PKG))[:-3]
                name = rel.replace(os.sep, ".")
                mods[name[: -len(".__init__")] if name.endswith(".__init__") else name] = \
                    os.path.join(dirpath, f)
    return mods


def _import_graph():
    """module -> set of package modules it imports anywhere in its body (functions too).
    ``from X import Y`` names module X.Y when that is a module, else X; importing a
    package's submodule does not count as importing the package's __init__ here,
    since Python runs that __init__ before any submodule anyway."""
    mods = _modules()
    graph = {m: set() for m in mods}
    for mod, path in mods.items():
        is_pkg = path.endswith("__init__.py")
        base = mod.split(".") if is_pkg else mod.split(".")[:-1]
        for node in ast.walk(ast.parse(open(path).read(), path)):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parent = ".".join(base[: len(base) - node.level + 1])
                    src = f"{parent}.{node.module}" if node.module else parent
                else:
                    src = node.module or ""
                for a in node.names:
                    sub = f"{src}.{a.name}"
                    targets.append(sub if sub in mods else src)
            for t in targets:
                if t in mods and t != mod and not mod.startswith(t + "."):
                    graph[mod].add(t)
    return graph


def _cycle(graph):
    """One import cycle as a list of modules, or None."""
    state = {}

    def visit(m, stack):
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n, stack)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m, [])
            if found:
                return found
    return None


def test_no_import_cycle():
    cycle = _cycle(_import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_import_pulls_no_optional_dependency():
    code = ("import sys, mechinterp_c, mechinterp_c.transformers; "
            "print(sorted(m for m in ('torch', 'transformers', 'transformer_lens', 'scipy', "
            "'sklearn', 'pandas', 'dask', 'datasets', 'einops', 'tqdm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(PKG)).stdout.strip()
    assert out == "[]", f"import mechinterp_c imported {out}"


def _wait_settings(**env):
    """OMP_WAIT_POLICY and GOMP_SPINCOUNT after ``import mechinterp_c`` in a fresh process
    whose environment has neither, plus ``env``."""
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    code = ("import os, mechinterp_c; "
            "print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'))")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=os.path.dirname(PKG), env={**base, **env}).stdout.split()


def test_import_sets_a_short_spin_unless_the_user_chose():
    assert _wait_settings() == ["PASSIVE", "10000"]
    assert _wait_settings(OMP_WAIT_POLICY="ACTIVE") == ["ACTIVE", "None"]
    assert _wait_settings(OMP_WAIT_POLICY="PASSIVE") == ["PASSIVE", "None"]
    assert _wait_settings(GOMP_SPINCOUNT="0") == ["PASSIVE", "0"]
