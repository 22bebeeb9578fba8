"""The package's import graph has no circles (layout.md: imports only go downwards), and its command lines run."""
import ast
import os
import subprocess
import sys

import stafast

ROOT = os.path.dirname(stafast.__file__)


def module_name(path: str) -> str:
    rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
    return rel.removesuffix(".__init__")


def imports(path: str, name: str) -> set[str]:
    """stafast modules that `name` imports anywhere in its file (functions included)."""
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            # `from pkg import mod` imports the module pkg.mod when there is one
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        out |= {t for t in targets if t.split(".")[0] == "stafast"}
    return out


def graph() -> dict[str, set[str]]:
    files = {}
    for folder, _, names in os.walk(ROOT):
        for n in names:
            if n.endswith(".py"):
                path = os.path.join(folder, n)
                files[module_name(path)] = path
    return {m: {t for t in imports(p, m) if t in files and t != m} for m, p in files.items()}


def test_no_import_circles():
    g = graph()
    # a package imports its own submodules (to re-export them); a submodule importing its package
    # back is the circle that matters, so edges into one's own package are kept and the others
    # of a package's __init__ are followed
    state, stack, circles = {}, [], []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for t in sorted(g[m]):
            if m.startswith(t + "."):
                continue  # stafast.data.loader -> stafast.data: a name from its own package's __init__
            if state.get(t) == "open":
                circles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = "done"

    for m in sorted(g):
        if m not in state:
            visit(m)
    assert circles == [], "import circles: " + "; ".join(" -> ".join(c) for c in circles)


def test_lower_floors_do_not_import_the_upper_ones():
    g = graph()
    top = {"stafast.train", "stafast.evaluate", "stafast.visualize", "stafast.embed", "stafast.export",
           "stafast.config", "stafast.checkpoint"}
    for m, targets in g.items():
        if m.startswith(("stafast.data", "stafast.losses", "stafast.metrics", "stafast.models", "stafast.ops")):
            assert not targets & top, (m, targets & top)
    for cli in ("stafast.evaluate", "stafast.visualize", "stafast.embed"):
        assert "stafast.train" not in g[cli], cli


def test_every_command_line_runs_as_a_module():
    """`python -m <cli> --help` for each module with a command line, with runpy's warning that the
    module was already imported by its package (it would then run twice, as two modules) an error."""
    clis = sorted(m for m, p in ((module_name(os.path.join(f, n)), os.path.join(f, n))
                                 for f, _, names in os.walk(ROOT) for n in names if n.endswith(".py"))
                  if '__name__ == "__main__"' in open(p).read())
    clis.append("stafast.kernels.aot")  # kernels/ is installed as stafast.kernels
    assert {"stafast.train", "stafast.data.synth"} <= set(clis)
    procs = {m: subprocess.Popen([sys.executable, "-W", "error:'stafast:RuntimeWarning", "-m", m, "--help"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for m in clis}
    for m, p in procs.items():
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0 and "usage:" in out, f"python -m {m} --help: exit {p.returncode}\n{err[-2000:]}"
