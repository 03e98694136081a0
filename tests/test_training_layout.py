"""The training package's layout: the config module imports none of the modules that read the
config, no module of the package imports itself back through others, the objectives use the
project's pixel metrics, and comments point only to documents in the repository."""
import ast
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "training"


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


def test_objectives_import_the_pixel_metrics_without_a_fallback():
    """metrics.pixel is part of the project: validation scores are its PSNR / SSIM, never a
    silent stand-in when it cannot be imported."""
    blocked = "import sys; sys.modules['metrics.pixel'] = None; import training.objectives"
    proc = subprocess.run([sys.executable, "-c", blocked], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "metrics.pixel" in proc.stderr, proc.stderr[-1000:]
    import metrics.pixel
    from training.objectives import ImageScores
    assert ImageScores().fns == {"psnr": metrics.pixel.psnr, "ssim": metrics.pixel.ssim}


def test_comments_cite_only_documents_in_the_repository():
    """Pointers go to docs/ (training.md, method.md); no design or spec notes outside the tree."""
    files = [*PACKAGE.glob("*.py"), REPO / "trainer.py", *(REPO / "configs" / "train").glob("*.yaml")]
    cited = [(p.name, line.strip()) for p in files for line in p.read_text().splitlines()
             if re.search(r"\b(DESIGN|SPEC)\b", line)]
    assert cited == []
    for p in files:
        for doc in re.findall(r"docs/[\w/]+\.md", p.read_text()):
            assert (REPO / doc).is_file(), (p.name, doc)
