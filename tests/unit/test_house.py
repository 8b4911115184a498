"""The house rules of the package, checked rather than hoped for: functions and methods that fit on a screen (80
lines, docstring included); no class defined inside a function (such a class cannot be imported, named in a type hint
or read alone; a class that needs a heavy base lives at module level in a module its callers import lazily); no
facade (a module that imports a name it never uses itself, so that others can import it from there: only a
subpackage's ``__init__.py`` with an ``__all__`` is such a face); every import names the module that defines the name
(or such a face), in the package, the tests and the scripts; and no import circle among the package's modules
(an import inside a function, or under ``if TYPE_CHECKING``, is an arrow too). docs/contributing.md ("House rules")
names any exception with its reason; there is none today."""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "tunebench"
MAX_FUNCTION_LINES = 80
EXCEPTIONS: dict[str, str] = {}
"""``path`` or ``path:function`` -> the reason docs/contributing.md gives for it."""
FUNCTION = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _walk(node: ast.AST, path: str, in_function: bool, found: dict[str, list[str]]) -> None:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = child.end_lineno - child.lineno + 1
            if lines > MAX_FUNCTION_LINES and f"{path}:{child.name}" not in EXCEPTIONS:
                found["functions"].append(f"{path}:{child.lineno} {child.name} ({lines} lines)")
            _walk(child, path, True, found)
        elif isinstance(child, ast.ClassDef):
            if in_function:
                found["classes"].append(f"{path}:{child.lineno} {child.name}")
            _walk(child, path, in_function, found)
        else:
            _walk(child, path, in_function, found)


def _offenders() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {"functions": [], "classes": []}
    for p in _modules():
        _walk(_tree(p), str(p.relative_to(ROOT)), False, found)
    return found


# ----------------------------------------------------------------------------- imports


@cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), str(path))


def _name(path: Path) -> str:
    """``tunebench/core/io/read.py`` -> ``tunebench.core.io.read``; a package's ``__init__.py`` -> the package."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def _package() -> dict[str, Path]:
    return {_name(p): p for p in _modules()}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _declares_all(tree: ast.Module) -> bool:
    return any(
        isinstance(n, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in n.targets)
        for n in tree.body
    )


@cache
def _is_face(module: str) -> bool:
    """A subpackage's one face: its ``__init__.py``, declaring ``__all__``."""
    path = _package().get(module)
    return path is not None and path.name == "__init__.py" and _declares_all(_tree(path))


def _top_level(statements: list[ast.stmt], type_checking: bool) -> Iterator[ast.stmt]:
    """The statements that bind module names: nested blocks (if, try, with, for) included, function and class bodies
    not, ``if TYPE_CHECKING`` blocks only when ``type_checking``."""
    for s in statements:
        if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield s
        elif isinstance(s, ast.If) and _is_type_checking(s.test):
            yield from _top_level(s.body if type_checking else [], type_checking)
            yield from _top_level(s.orelse, type_checking)
        elif isinstance(s, (ast.If, ast.For, ast.AsyncFor, ast.While, ast.With, ast.AsyncWith, ast.Try)):
            yield s
            for block in ("body", "orelse", "finalbody"):
                yield from _top_level(getattr(s, block, []), type_checking)
            for handler in getattr(s, "handlers", []):
                yield from _top_level(handler.body, type_checking)
        else:
            yield s


def _absolute(module: str, node: ast.ImportFrom) -> str:
    """The module an ``ImportFrom`` names, relative imports resolved against ``module``."""
    if not node.level:
        return node.module or ""
    parts = module.split(".") if _package()[module].name == "__init__.py" else module.split(".")[:-1]
    parts = parts[: len(parts) - node.level + 1]
    return ".".join(parts + ([node.module] if node.module else []))


@cache
def _bindings(module: str) -> dict[str, tuple[str, str] | None]:
    """Module-level names of a package module: None where it defines the name, ``(module, name)`` where it imports
    it (a name both imported and assigned counts as defined)."""
    out: dict[str, tuple[str, str] | None] = {}
    for s in _top_level(_tree(_package()[module]).body, type_checking=False):
        if isinstance(s, ast.ImportFrom):
            source = _absolute(module, s)
            for a in s.names:
                out.setdefault(a.asname or a.name, (source, a.name))
        elif isinstance(s, ast.Import):
            for a in s.names:
                out.setdefault(a.asname or a.name.split(".")[0], (a.name, ""))
        elif isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out[s.name] = None
        else:
            targets = [getattr(s, "target", None), *getattr(s, "targets", [])]
            targets += [item.optional_vars for item in getattr(s, "items", [])]
            for t in filter(None, targets):
                out.update({n.id: None for n in ast.walk(t) if isinstance(n, ast.Name)})
    return out


def _facades() -> list[str]:
    """``module: name`` for each name a module imports at module level and never uses: there only to be imported
    from there. A face (``__init__.py`` with ``__all__``) may; imports under ``if TYPE_CHECKING`` are for type hints;
    an import inside a function binds nothing others can import."""
    found = []
    for module, path in _package().items():
        if _is_face(module):
            continue
        tree = _tree(path)
        used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        for s in _top_level(tree.body, type_checking=False):
            if isinstance(s, (ast.Import, ast.ImportFrom)) and getattr(s, "module", None) != "__future__":
                for a in s.names:
                    bound = a.asname or (a.name.split(".")[0] if isinstance(s, ast.Import) else a.name)
                    if bound not in used:
                        found.append(f"{module}: {bound}")
    return found


def _pass_throughs() -> list[str]:
    """``file:line module.name (defined in ...)`` for each import that takes a name from a package module which
    neither defines it nor is a face: in the package, the tests and the scripts, and (in the package) each
    ``module.name`` read through a module imported whole."""
    found = []
    files = _modules() + sorted((ROOT / "tests").rglob("*.py")) + sorted((ROOT / "scripts").rglob("*.py"))
    for path in files:
        rel = path.relative_to(ROOT)
        here = _name(path) if path.is_relative_to(PACKAGE) else ""
        modules_bound: dict[str, str] = {}
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.ImportFrom) and (here or not node.level):
                source = _absolute(here, node)
                for a in node.names:
                    if f"{source}.{a.name}" in _package():
                        modules_bound[a.asname or a.name] = f"{source}.{a.name}"
                    elif (where := _defined_in(source, a.name)) != source:
                        found.append(f"{rel}:{node.lineno} {source}.{a.name} (defined in {where})")
            elif isinstance(node, ast.Import):
                modules_bound.update({a.asname: a.name for a in node.names if a.asname and a.name in _package()})
        if not here:
            continue
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules_bound:
                source = modules_bound[node.value.id]
                if f"{source}.{node.attr}" not in _package() and (where := _defined_in(source, node.attr)) != source:
                    found.append(f"{rel}:{node.lineno} {source}.{node.attr} (defined in {where})")
    return found


def _defined_in(module: str, name: str) -> str:
    """The module that defines ``name`` as ``module`` sees it: ``module`` itself where it defines it, is a face or is
    no package module, else the module it imports the name from, followed down."""
    if module not in _package() or _is_face(module):
        return module
    binding = _bindings(module).get(name)
    if binding is None:
        return module
    source, original = binding
    if not original or f"{source}.{original}" in _package():  # a module imported whole
        return module
    return _defined_in(source, original) if source in _package() else source


def _arrows() -> dict[str, set[str]]:
    """Package module -> the package modules it imports, anywhere in it: module level, in a function, under
    ``if TYPE_CHECKING``."""
    graph: dict[str, set[str]] = {m: set() for m in _package()}
    for module, path in _package().items():
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                source = _absolute(module, node)
                targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in _package() else source for a in node.names]
            else:
                continue
            graph[module].update(t for t in targets if t in _package() and t != module)
    return graph


def _circles() -> list[str]:
    """Each import circle, one per strongly connected group of modules: ``a -> b -> ... -> a``, and the group's other
    modules."""
    graph, index, low, stack, on_stack, groups = _arrows(), {}, {}, [], set(), []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = {stack.pop()}
            while v not in group:
                group.add(stack.pop())
            on_stack.difference_update(group)
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    circles = []
    for group in groups:
        circle = _a_circle(graph, sorted(group)[0], group)
        rest = sorted(group - set(circle))
        circles.append(" -> ".join(circle) + (f" (in one circle with {', '.join(rest)})" if rest else ""))
    return circles


def _a_circle(graph: dict[str, set[str]], start: str, group: set[str]) -> list[str]:
    """The shortest path from ``start`` back to itself inside ``group``."""
    paths, seen = [[start]], {start}
    while paths:
        path = paths.pop(0)
        for w in sorted(graph[path[-1]] & group):
            if w == start:
                return [*path, start]
            if w not in seen:
                seen.add(w)
                paths.append([*path, w])
    return [start]


# ----------------------------------------------------------------------------- the rules


def test_no_function_over_80_lines():
    assert not _offenders()["functions"]


def test_no_class_defined_inside_a_function():
    assert not _offenders()["classes"]


def test_no_module_imports_a_name_only_for_others_to_import_it_from_there():
    assert not _facades(), "facades (import the name from the module that defines it):\n" + "\n".join(_facades())


def test_every_import_names_the_module_that_defines_the_name():
    assert not _pass_throughs(), "imports through another module:\n" + "\n".join(_pass_throughs())


def test_every_subpackage_has_a_face():
    """Each subpackage's ``__init__.py`` says what the package offers (its docstring) and holds nothing else but
    the names it offers (imports and ``__all__``): no code."""
    faceless, busy = [], []
    for init in sorted(PACKAGE.rglob("__init__.py")):
        tree = _tree(init)
        where = str(init.relative_to(ROOT))
        if not (ast.get_docstring(tree) or "").strip():
            faceless.append(where)
        allowed = (ast.Import, ast.ImportFrom, ast.Expr, ast.Assign, ast.AnnAssign)
        busy += [f"{where}:{node.lineno}" for node in tree.body if not isinstance(node, allowed)]
    assert not faceless, f"subpackages without a face (a docstring saying what they offer): {faceless}"
    assert not busy, f"code in a face (move it to a module of the package): {busy}"


def test_no_import_circle():
    assert not _circles(), "import circles:\n" + "\n".join(_circles())


def test_the_checks_see_the_whole_package():
    assert len(_modules()) > 100 and (PACKAGE / "evals" / "judge" / "stage.py") in _modules()


def test_the_checks_find_what_they_look_for(tmp_path, monkeypatch):
    """A facade, an import through it and a circle closed inside a function, in a package of three modules."""
    package = tmp_path / "tunebench"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "low.py").write_text("def f():\n    from tunebench.high import g\n    return g\n")
    (package / "mid.py").write_text("from tunebench.low import f  # a facade\n")
    (package / "high.py").write_text("from tunebench.mid import f\n\n\ndef g():\n    return f\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", package)
    for f in (_tree, _package, _is_face, _bindings):
        f.cache_clear()
    try:
        assert _facades() == ["tunebench.mid: f"]
        assert [p.split(" ", 1)[1] for p in _pass_throughs()] == ["tunebench.mid.f (defined in tunebench.low)"]
        assert _circles() == ["tunebench.high -> tunebench.mid -> tunebench.low -> tunebench.high"]
    finally:
        for f in (_tree, _package, _is_face, _bindings):
            f.cache_clear()
