"""The package's shape, read from its source (nothing is imported): no import circle among gptq_nb's modules, and no
exported function longer than the project's limit. `gptq_nb/` is generated from the notebooks, so an offender named
here is fixed in the notebook whose `# %%` line stands above it."""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "gptq_nb"
MAX_LINES = 60   # "no exported function over ~60 lines" (the project's rules, issue 19)
LENGTH_EXEMPT = ("kernels",)   # the kernel room (Triton kernels), left to the kernels issue by issue 19

# Imports that may point up the graph, each with why: `{("gptq_nb.a", "gptq_nb.b"): "why a imports b"}`. An edge listed
# here must be a function-local import (a module-level one would make importing either module fail half-way) and must
# still exist (a stale entry fails). None now: the last one, quantize -> stream, went when 05's model loop became
# gptq_nb.loop and gptq_nb.quantize (16a) the front door above both the loop and the streaming driver.
UPWARD: dict = {}


def modules():
    "`{module name: path}` of every module in gptq_nb/ (a package's `__init__` is the package's name)."
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__": parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _targets(mod:str, is_pkg:bool, node, mods:dict):
    "gptq_nb modules that one import statement in `mod` names."
    if isinstance(node, ast.Import): return [a.name for a in node.names if a.name.split(".")[0] == PKG.name]
    if node.level:   # relative: `from . import x`, `from .x import y`
        base = mod.split(".") if is_pkg else mod.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)]
        src = ".".join(base + ([node.module] if node.module else []))
    else:
        src = node.module or ""
        if src.split(".")[0] != PKG.name: return []
    return [f"{src}.{a.name}" if f"{src}.{a.name}" in mods else src for a in node.names]


def import_graph():
    """`{(importer, imported): [(line, local)]}` of every import of one gptq_nb module by another, at module level or
    inside a function (`local`). A submodule's implicit import of its parent package (Python runs `gptq_nb/__init__.py`
    before any `gptq_nb.x`) is how packages load, not a dependency a module chose, so it is no edge; `from gptq_nb
    import name` is an edge to the package itself."""
    mods, edges = modules(), {}
    for mod, path in mods.items():
        def walk(node, local):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    for t in _targets(mod, path.name == "__init__.py", child, mods):
                        if t in mods and t != mod and (child.lineno, local) not in edges.setdefault((mod, t), []):
                            edges[mod, t].append((child.lineno, local))
                walk(child, local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))
        walk(ast.parse(path.read_text()), False)
    return edges


def find_cycle(edges):
    "One import circle `[m0, m1, ..., m0]` of `edges`, or `None`."
    graph = {}
    for a, b in edges: graph.setdefault(a, []).append(b)
    state, stack = {}, []   # state: 1 on the current path, 2 done
    def dfs(v):
        state[v] = 1; stack.append(v)
        for w in sorted(graph.get(v, [])):
            if state.get(w) == 1: return stack[stack.index(w):] + [w]
            if w not in state and (c := dfs(w)): return c
        state[v] = 2; stack.pop()
        return None
    for v in sorted(graph):
        if v not in state and (c := dfs(v)): return c
    return None


def _describe(cycle, edges):
    return " -> ".join(cycle) + "  (" + "; ".join(
        f"{a} imports {b} at line {', '.join(str(l) + (' (in a function)' if loc else '') for l, loc in edges[a, b])}"
        for a, b in zip(cycle, cycle[1:])) + ")"


def test_no_import_circle():
    edges = import_graph()
    for (a, b), why in UPWARD.items():
        assert (a, b) in edges, f"{a} no longer imports {b}: drop it from UPWARD ({why[:60]}...)"
        assert all(local for _, local in edges[a, b]), f"{a} imports {b} at module level: UPWARD allows only a function-local import"
    cycle = find_cycle({e: v for e, v in edges.items() if e not in UPWARD})
    assert cycle is None, "import circle among gptq_nb's modules: " + _describe(cycle, edges)


def test_find_cycle_reports_a_circle():
    "The checker itself: a circle is found and named, a DAG passes."
    edges = {("a", "b"): [(3, False)], ("b", "c"): [(7, True)], ("c", "a"): [(1, False)], ("a", "d"): [(4, False)]}
    c = find_cycle(edges)
    assert c is not None and c[0] == c[-1] and set(c) == {"a", "b", "c"}
    assert "(in a function)" in _describe(c, edges)
    assert find_cycle({k: v for k, v in edges.items() if k != ("c", "a")}) is None


def function_lengths():
    "`[(lines, 'path:line name')]` of every function and method in gptq_nb/ outside `LENGTH_EXEMPT`."
    out = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG)
        if rel.parts[0] in LENGTH_EXEMPT: continue
        def walk(node, owner):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    # the body, docstring to last line: a signature with one documented parameter a line doesn't count
                    out.append((child.end_lineno - child.body[0].lineno + 1, f"gptq_nb/{rel}:{child.lineno} {owner}{child.name}"))
                elif isinstance(child, ast.ClassDef): walk(child, f"{owner}{child.name}.")
        walk(ast.parse(path.read_text()), "")
    return out


def test_no_long_function():
    fs = function_lengths()
    assert len(fs) > 100, "no functions found: is PKG right?"
    long = sorted(((n, f) for n, f in fs if n > MAX_LINES), reverse=True)
    assert not long, f"functions over {MAX_LINES} lines (body, docstring to last line): " + "; ".join(f"{f}: {n}" for n, f in long)
