"""The house's shape: imports follow the data flow with no cycles, what reads a finished
experiment never loads Ray or the search package, and a wheel install finds the named
search spaces (they ship inside the package)."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "fer_ray"


def import_graph() -> dict[str, set[str]]:
    """module -> the fer_ray modules it imports anywhere in its source (function bodies too)."""
    modules: dict[str, Path] = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, *([base] if base else [])])
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                           for a in node.names]
            else:
                continue
            graph[module] |= {t for t in targets if t in modules and t != module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_package_has_no_import_cycles() -> None:
    graph = import_graph()
    assert "fer_ray.report.inputs" in graph and graph["fer_ray.ablate"]  # the graph is read
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_only_the_search_package_the_trainable_and_serve_import_ray() -> None:
    allowed = ("fer_ray.search", "fer_ray.trainable", "fer_ray.serve")
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if module.startswith(allowed):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not [n for n in names if n == "ray" or n.startswith(("ray.", "fer_ray.search"))
                        ], f"{module} imports {names}"


def test_nothing_outside_serve_imports_serve() -> None:
    graph = import_graph()
    assert "fer_ray.serve.app" in graph  # the serve package is part of the graph
    users = {m for m, targets in graph.items() if not m.startswith("fer_ray.serve")
             and any(t.startswith("fer_ray.serve") for t in targets)}
    assert users == set()


def test_serve_reads_a_finished_ensemble_without_search_or_training_code() -> None:
    # serve imports Ray (Ray Serve), but it is on the reading side of the house: it must not
    # reach back into the search, the trainable or the training loop.
    graph = import_graph()
    reached = {t for m, targets in graph.items() if m.startswith("fer_ray.serve")
               for t in targets
               if t.startswith(("fer_ray.search", "fer_ray.trainable", "fer_ray.train"))}
    assert reached == set()


def _loaded_after(imports: str, prefixes: tuple[str, ...]) -> list[str]:
    """The modules starting with ``prefixes`` that ``import {imports}`` loads, in a fresh
    interpreter."""
    code = (f"import sys\nimport {imports}\n"
            f"print(sorted(m for m in sys.modules if m.startswith({prefixes!r})))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return list(ast.literal_eval(proc.stdout.strip()))


def test_readers_of_a_finished_experiment_load_neither_ray_nor_search_nor_training() -> None:
    """The one no-Ray import check (it replaced four that each started an interpreter): what
    reads a finished experiment, and what a laptop without Ray runs."""
    readers = ("fer_ray.predict, fer_ray.ensemble.cli, fer_ray.ensemble.build, "
               "fer_ray.report, fer_ray.report.cli, fer_ray.report.figures, "
               "fer_ray.report.document")
    assert _loaded_after(readers, ("ray", "fer_ray.search", "fer_ray.trainable",
                                   "fer_ray.train")) == []
    assert _loaded_after("fer_ray.ablate, fer_ray.experiment",
                         ("ray", "fer_ray.search")) == []
    assert "fer_ray.search.tuner" in _loaded_after("fer_ray.search.run", ("fer_ray.search",))
    # The serve CLI refuses bad flags before Ray (or torch) is imported.
    assert _loaded_after("fer_ray.serve.cli", ("ray", "torch", "fer_ray.search")) == []


@pytest.mark.slow
def test_a_wheel_install_finds_the_named_search_spaces(tmp_path: Path) -> None:
    """``pip wheel`` + install into a bare folder: ``--space small`` resolves from there."""
    repo = PACKAGE.parent
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path / "dist"), str(repo)], check=True, timeout=600,
                   capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("fer_ray-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert "fer_ray/space/spaces/small.yaml" in archive.namelist()
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(site), str(wheel)], check=True, timeout=600, capture_output=True)
    code = ("import fer_ray, fer_ray.space as s\n"
            "print(fer_ray.__file__)\n"
            "print(s.load_space('small').name, s.load_space('paper').name)\n")
    proc = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, "
                           f"{str(site)!r})\n{code}"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    where, names = proc.stdout.strip().splitlines()
    assert where.startswith(str(site)) and names == "small paper"
