"""Layers import downward only.

Every module under ``omnijax/``, ``data_pipelines/``, ``experiments/`` (and ``tools/`` when there is one) is
read with ``ast``; every import it makes -- at module level or inside a function, ``import x``,
``from x import y`` and relative imports -- is checked against the layer order below. A module may import
its own layer and the layers under it, never one above. ``data_pipelines`` is a column beside ``models``
and ``training``: it sees only the batch contract and the token counts (``omnijax.batch``,
``omnijax.media_tokens``, ``omnijax.media_layouts``) and the damaged-file error (``omnijax.errors``), and only
the layers from ``hf`` up see it (the entry points wire a pipeline to
the trainer). No two modules import each other, directly or round a longer loop, even inside functions.
"""

from __future__ import annotations

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("omnijax", "data_pipelines", "experiments", "tools")

# Lowest first; a module belongs to the layer of its longest matching prefix.
LAYERS = (
    ("base contract", ("omnijax", "omnijax.batch", "omnijax.media_tokens", "omnijax.media_layouts",
                       "omnijax.sharding", "omnijax.outdir", "omnijax.hlo_cost", "omnijax.tpu_slices",
                       "omnijax.errors")),
    ("models", ("omnijax.models",)),
    ("training", ("omnijax.training",)),
    ("hf", ("omnijax.hf",)),
    ("checkpoint", ("omnijax.checkpoint",)),
    ("inference", ("omnijax.inference",)),
    ("evaluation", ("omnijax.eval", "omnijax.evaluate")),
    ("entry points", ("omnijax.launch", "omnijax.train", "omnijax.compile", "omnijax.recipe", "omnijax.mixing",
                      "omnijax.experiment", "omnijax.hf.convert", "omnijax.tools", "tools")),
    ("experiments", ("experiments",)),
    ("demo", ("omnijax.demo",)),
)
DATA = "data_pipelines"
# the batch contract, the token counts, the damaged-file error and the CLIs' error line
DATA_SEES = ("omnijax.batch", "omnijax.media_tokens", "omnijax.media_layouts", "omnijax.errors")
DATA_SEEN_FROM = "hf"  # the lowest layer that may import data_pipelines


def modules() -> dict[str, str]:
    """Dotted module name -> file path, for every ``.py`` file of the packages."""
    out = {}
    for package in PACKAGES:
        for folder, _, files in os.walk(os.path.join(ROOT, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
                    out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(module: str, path: str, known: dict[str, str]) -> list[tuple[int, str]]:
    """(line, imported module) for every import of ``module``, inside functions too; ``from a import b``
    names module ``a.b`` when that is a module, else ``a``; relative imports are resolved."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                out.append((node.lineno, full if full in known else base))
    return list(dict.fromkeys(out))  # ``from a import b, c`` of module ``a``: one import


def layer_of(module: str) -> int | None:
    best, rank = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    return rank


def _ours(name: str) -> bool:
    return name.split(".")[0] in PACKAGES


def _top(name: str) -> str:
    return name.split(".")[0]


def violations(graph: dict[str, list[tuple[int, str]]], known: dict[str, str]) -> list[str]:
    names = [n for n, _ in LAYERS]
    seen_from = names.index(DATA_SEEN_FROM)
    out = []
    for module, edges in sorted(graph.items()):
        where = os.path.relpath(known[module], ROOT)
        for line, target in edges:
            if not _ours(target) or _top(target) == _top(module) == DATA:
                continue
            at = f"{where}:{line}: {module} imports {target}"
            if _top(module) == DATA:
                if not any(target == c or target.startswith(c + ".") for c in DATA_SEES):
                    out.append(f"{at}: data_pipelines may import only the batch contract and the token counts "
                               f"({', '.join(DATA_SEES)})")
                continue
            mine = layer_of(module)
            if _top(target) == DATA:
                if mine < seen_from:
                    out.append(f"{at}: layer {names[mine]!r} may not import data_pipelines (only layers from "
                               f"{DATA_SEEN_FROM!r} up do; data and training meet in {', '.join(DATA_SEES)})")
                continue
            theirs = layer_of(target)
            if theirs is not None and theirs > mine:
                out.append(f"{at}: layer {names[mine]!r} imports the higher layer {names[theirs]!r} (order: "
                           f"{' <- '.join(names)})")
    return out


def cycles(graph: dict[str, list[tuple[int, str]]]) -> list[list[str]]:
    """The import loops between modules (strongly connected components of more than one module)."""
    edges = {m: sorted({t for _, t in e if t in graph and t != m}) for m, e in graph.items()}
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def _graph():
    known = modules()
    return {m: imports(m, p, known) for m, p in known.items()}, known


def test_every_module_has_a_layer():
    known = modules()
    missing = sorted(m for m in known if _top(m) != DATA and layer_of(m) is None)
    assert not missing, f"modules with no layer: {missing}; add them to LAYERS in tests/test_layers.py"


def test_layers_import_downward_only():
    graph, known = _graph()
    bad = violations(graph, known)
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_no_import_cycles():
    graph, _ = _graph()
    loops = cycles(graph)
    assert not loops, "modules that import each other (a function-level import does not break a loop): " + \
        "; ".join(" <-> ".join(c) for c in loops)


def test_the_checker_sees_imports_inside_functions_and_relative_imports(tmp_path):
    path = tmp_path / "trainer.py"
    path.write_text("def f():\n    from omnijax.checkpoint import load_model\n    from .. import evaluate\n"
                    "    import data_pipelines.pipeline\n")
    known = {"omnijax.training.trainer": str(path), "omnijax.checkpoint": "", "omnijax.evaluate": ""}
    graph = {"omnijax.training.trainer": imports("omnijax.training.trainer", str(path), known)}
    assert graph["omnijax.training.trainer"] == [(2, "omnijax.checkpoint"), (3, "omnijax.evaluate"),
                                                 (4, "data_pipelines.pipeline")]
    bad = violations(graph, known)
    assert len(bad) == 3 and all("trainer.py:" in b and "layer 'training'" in b for b in bad), bad
    assert cycles({"a": [(1, "b")], "b": [(3, "a")], "c": [(1, "a")]}) == [["a", "b"]]


def _sizes(root: str) -> tuple[list[str], list[str]]:
    """Files over 500 lines, and functions over 60 lines that are not a CLI's ``main``, under omnijax/ and
    data_pipelines/ of ``root``."""
    long_files, long_functions = [], []
    for package in ("omnijax", "data_pipelines"):
        for folder, _, names in os.walk(os.path.join(root, package)):
            for name in sorted(n for n in names if n.endswith(".py")):
                path = os.path.join(folder, name)
                with open(path) as f:
                    text = f.read()
                rel = os.path.relpath(path, root)
                if len(text.splitlines()) > 500:
                    long_files.append(f"{rel}: {len(text.splitlines())} lines")
                for node in ast.walk(ast.parse(text)):
                    n = getattr(node, "end_lineno", 0) - getattr(node, "lineno", 0) + 1
                    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and n > 60 and node.name != "main":
                        long_functions.append(f"{rel}:{node.lineno} {node.name}: {n} lines")
    return long_files, long_functions


def test_files_and_functions_stay_small(tmp_path):
    """A file is one idea (at most 500 lines), a function one step (at most 60, a CLI's ``main`` aside); the check
    itself is shown to see both."""
    assert _sizes(ROOT) == ([], [])
    (tmp_path / "omnijax").mkdir()
    body = "".join(f"    x{i} = {i}\n" for i in range(61))
    (tmp_path / "omnijax" / "big.py").write_text("def main():\n" + body + "\n\ndef step():\n" + body + "\n" * 380)
    files, functions = _sizes(str(tmp_path))
    assert files == ["omnijax/big.py: 506 lines"], files
    assert functions == ["omnijax/big.py:65 step: 62 lines"], functions
