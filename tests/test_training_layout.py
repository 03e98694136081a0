"""The training package's import graph: the config module imports none of the modules that read
the config, and no module of the package imports itself back through others."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "training"


def imports_of(path: Path) -> set[str]:
    """The sibling modules a file of the package imports (``from .x``, ``from training.x``,
    ``from . import x``), type-checking-only imports included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:
                found.update(alias.name for alias in node.names)
            elif node.module and node.module.startswith("training."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("training."))
    return found


def import_graph() -> dict[str, set[str]]:
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    return {m: imports_of(PACKAGE / f"{m}.py") & modules - {m} for m in modules}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, done = [], set()

    def visit(module: str, path: list[str]) -> None:
        for dep in sorted(graph[module]):
            if dep in path:
                found.append(path[path.index(dep):] + [dep])
            elif dep not in done:
                visit(dep, path + [dep])
        done.add(module)

    for module in sorted(graph):
        if module not in done:
            visit(module, [module])
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_training_modules_import_no_cycle_and_config_imports_none_of_them():
    graph = import_graph()
    assert {"config", "objectives", "state", "run", "guards", "logs"} <= graph.keys()
    assert graph["config"] == set()
    assert cycles(graph) == []
