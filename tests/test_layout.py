"""The project's shape: the import graph of its packages has no cycle (at package and at module
level), no module outside the network definitions grows past about 450 lines, and no script puts
the project on sys.path by hand."""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("difface", "models", "datapipe", "metrics", "training")
NETWORKS = {"models/unet.py", "models/swinir.py", "models/lama.py"}  # mirror the official definitions


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).glob("*.py")}


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `path` imports, at any depth of the file (function-level imports too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            candidates = [f"{base}.{a.name}" for a in node.names] + [base]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        found.update(c for c in candidates if c in modules)
    return found - {name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]):
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep, path + [dep])):
                return cycle
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node, [node])):
            return cycle
    return None


def test_no_import_cycle_between_packages_or_modules():
    modules = project_modules()
    graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
    # a package's __init__ re-exporting its own modules is not a dependency between modules
    module_graph = {n: {d for d in deps if not (d in PACKAGES and n.startswith(d + "."))} for n, deps in graph.items()}
    assert find_cycle(module_graph) is None, find_cycle(module_graph)
    package_graph: dict[str, set[str]] = {}
    for name, deps in graph.items():
        package_graph.setdefault(name.split(".")[0], set()).update(d.split(".")[0] for d in deps)
    package_graph = {p: deps - {p} for p, deps in package_graph.items()}
    assert find_cycle(package_graph) is None, find_cycle(package_graph)
    assert "difface" not in package_graph["models"] | package_graph["datapipe"], "the library sits on top"


def test_files_stay_readable():
    long = {str(p.relative_to(REPO)): n for p in REPO.glob("*/*.py") if p.parts[-2] in PACKAGES + ("scripts",)
            if (n := len(p.read_text().splitlines())) > 460 and str(p.relative_to(REPO)) not in NETWORKS}
    long.update({p.name: n for p in REPO.glob("*.py") if (n := len(p.read_text().splitlines())) > 460})
    assert not long, long


def test_scripts_do_not_edit_sys_path_for_the_project():
    offenders = [p.name for p in (REPO / "scripts").glob("*.py")
                 if "sys.path.insert(0, str(REPO" in p.read_text() or "parents[1]))" in p.read_text()]
    assert not offenders, offenders
