"""The layout tells the architecture: no import cycle between modules, no lower layer importing the API or the
dashboard, drivers and simulators free of the service, and a top level of `app/` that holds assembly only.

Imports are read from the source (every `import` and `from ... import`, also inside functions), not executed.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import get_args

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("app", "drivers", "simulators")


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The project modules `name` imports (a `from pkg import mod` counts as pkg.mod when that is a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in MODULES else base)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles() -> None:
    assert _cycles() == []


def test_the_graph_sees_the_imports_it_should() -> None:
    # a guard against a walker that finds nothing and so "proves" everything
    assert "app.core.clock" in GRAPH["drivers.supervisor"]
    assert "app.protocol.deviations" in GRAPH["app.protocol.engine"]
    assert "app.api.routes.runs" in GRAPH["app.main"]


def test_nothing_below_the_api_and_the_dashboard_imports_them() -> None:
    upper = ("app.api", "app.web", "app.main", "app.cli", "app.demo")
    offenders = {
        name: sorted(m for m in deps if m.startswith(("app.api", "app.web")))
        for name, deps in GRAPH.items() if not name.startswith(upper)
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_drivers_and_simulators_know_nothing_of_the_service() -> None:
    allowed = {"app", "app.core", "app.core.clock"}  # the one injected clock
    for name, deps in GRAPH.items():
        if name.startswith(("drivers", "simulators")):
            assert {m for m in deps if m.startswith("app")} <= allowed, name


def test_the_top_level_of_app_holds_assembly_only() -> None:
    top = sorted(p.name for p in (ROOT / "app").glob("*.py"))
    assert top == ["__init__.py", "main.py", "runtime.py", "settings.py"]


def test_one_logger_naming_scheme() -> None:
    """Every module logs under culturectl.<area>, so one logging setting covers a whole area."""
    names: dict[str, str] = {}
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "getLogger" and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Name) and arg.id == "__name__":
                    names[name] = "__name__"
                elif isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value not in (
                        "asyncua", "pymodbus", "asyncpg"):
                    names[name] = arg.value
    assert names, "no logger found: the walker is broken"
    wrong = {m: n for m, n in names.items() if not n.startswith("culturectl.")}
    assert wrong == {}


def test_the_schema_names_exactly_the_signable_record_types() -> None:
    import app.main  # noqa: F401  (imports every module that registers a signable type)
    from app.records import signatures

    assert set(get_args(signatures.SignableType)) == set(signatures.SIGNABLE)


def test_every_operation_declares_its_answers() -> None:
    """A typed contract: each success answer has a schema, each error answer is problem JSON with its schema."""
    from app.main import create_app

    doc = create_app().openapi()
    untyped, errors = [], []
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            for code, response in op["responses"].items():
                content = response.get("content") or {}
                if code.startswith("2"):
                    # JSON answers by their model; a binary one (a PDF) as {"type": "string", "format": "binary"}
                    schema = next((c["schema"] for c in content.values() if c.get("schema")), None)
                    if code != "204" and "text/event-stream" not in content and not schema:
                        untyped.append(f"{method.upper()} {path} {code}")
                elif path != "/readyz" and content != {
                        "application/problem+json": {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}}:
                    errors.append(f"{method.upper()} {path} {code}")
            if path.startswith("/api/") and not {"401", "422", "500", "503"} <= set(op["responses"]):
                errors.append(f"{method.upper()} {path}: common errors undocumented")
    assert (untyped, errors) == ([], [])
