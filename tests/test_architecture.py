"""The house's shape: imports follow the data flow with no cycles, what reads a finished
experiment never loads Ray or the search package, and the named search spaces live in the
top-level search_spaces/ (one copy) while a wheel install finds them (package data)."""

from __future__ import annotations

import ast
import os
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


STATUS_KEYS = ("status", "status_flag")


def _outcome_literals(tree: ast.AST, words: set[str], anywhere: set[str]) -> list[ast.AST]:
    """String constants in ``words`` used as outcomes: compared (``==``, ``!=``, ``in (...)``),
    given as a status or status_flag (dict value, keyword, ``.get("status_flag", default)``),
    or, for the ``anywhere`` words that name nothing else, written at all."""
    def literal(node: ast.AST | None) -> str | None:
        return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) \
            else None

    found: dict[int, ast.AST] = {}
    for node in ast.walk(tree):
        candidates: list[ast.AST] = []
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            for op, left, right in zip(node.ops, operands, operands[1:], strict=False):
                if isinstance(op, (ast.Eq, ast.NotEq)):
                    candidates += [left, right]
                elif isinstance(right, (ast.Tuple, ast.List, ast.Set)):
                    candidates += right.elts
        elif isinstance(node, ast.Dict):  # {"status": "ok"} is the HTTP health answer
            candidates += [v for k, v in zip(node.keys, node.values, strict=True)
                           if literal(k) == "status_flag"
                           or (literal(k) == "status" and literal(v) != "ok")]
        elif isinstance(node, ast.keyword) and node.arg in STATUS_KEYS:
            candidates.append(node.value)
        elif isinstance(node, ast.Call) and node.args and literal(node.args[0]) in STATUS_KEYS:
            candidates += node.args[1:]
        elif literal(node) in anywhere:
            candidates.append(node)
        found.update({id(c): c for c in candidates if literal(c) in words})
    return list(found.values())


def test_trial_outcomes_are_spelled_only_where_they_are_defined() -> None:
    """TrialStatus and the epoch flag EPOCH_OK are written as literals only in
    fer_ray/experiment.py; elsewhere code names the members (parquet still holds the strings)."""
    from fer_ray.experiment import EPOCH_OK, TrialStatus

    words = {s.value for s in TrialStatus} | {EPOCH_OK}
    # "error", "invalid", "oom", "out_of_time" and "ok" also name columns, keys and messages.
    anywhere = {"completed", "early_stopped", "diverged"}
    sample = ('ok = h[h.get("status_flag", "ok") == "ok"]\nreport(status_flag="oom")\n'
              'r = {"status": "invalid", "completed": 1}\nif s in ("out_of_time",): pass\n'
              'health = {"status": "ok"}\nerror = {"error": "x"}\n')
    assert len(_outcome_literals(ast.parse(sample), words, anywhere)) == 6
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "experiment.py":
            continue
        for node in _outcome_literals(ast.parse(path.read_text()), words, anywhere):
            found.append(f"{path.relative_to(PACKAGE.parent)}:{getattr(node, 'lineno', 0)}: "
                         f"{getattr(node, 'value', '')!r}")
    assert found == []


def test_fault_injection_is_a_test_hook_not_a_parameter() -> None:
    """Tests arm faults through fer_ray.trainable.FAULT_ENV, read in one place; no production
    signature or type carries them."""
    hook = {"fault", "fail_at_epoch", "fail_mode"}
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = {a.arg for node in ast.walk(tree) if isinstance(node, ast.arguments)
                 for a in [*node.posonlyargs, *node.args, *node.kwonlyargs]}
        names |= {node.target.id for node in ast.walk(tree)
                  if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)}
        assert not hook & names, f"{path.relative_to(PACKAGE.parent)}: {hook & names}"
    readers = {p: p.read_text().count("os.environ.get(FAULT_ENV)") for p in PACKAGE.rglob("*.py")}
    assert {p: n for p, n in readers.items() if n} == {PACKAGE / "trainable.py": 1}


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


def test_the_named_spaces_live_in_search_spaces_and_nowhere_else() -> None:
    from fer_ray.space import SPACES_DIR, list_spaces

    repo = PACKAGE.parent
    assert SPACES_DIR.relative_to(repo).parts == ("search_spaces",)
    assert (SPACES_DIR / "small.yaml").is_file()
    named = {f"{name}.yaml" for name in list_spaces()}
    assert {"paper.yaml", "small.yaml", "smoke.yaml"} <= named
    copies = []
    for root, dirs, files in os.walk(repo):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("build", "runs")]
        copies += [Path(root, f) for f in files if f in named]
    assert sorted(copies) == sorted(SPACES_DIR / name for name in named)


def test_pyproject_lists_every_package_and_maps_the_spaces() -> None:
    """The package list is written out (the spaces come from outside fer_ray/), so a new
    package missing from it would be missing from the wheel."""
    tomllib = pytest.importorskip("tomllib")
    setuptools = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"][
        "setuptools"]
    packages = {".".join(p.parent.relative_to(PACKAGE.parent).parts)
                for p in PACKAGE.rglob("__init__.py")}
    assert set(setuptools["packages"]) == packages | {"fer_ray.space.spaces"}
    assert setuptools["package-dir"] == {"fer_ray.space.spaces": "search_spaces"}
    assert setuptools["package-data"]["fer_ray.space.spaces"] == ["*.yaml"]


@pytest.mark.slow
def test_a_wheel_install_finds_the_named_search_spaces(tmp_path: Path) -> None:
    """``pip wheel`` + install into a bare folder: ``--space small`` resolves from there,
    from the package data the wheel built from search_spaces/."""
    repo = PACKAGE.parent
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path / "dist"), str(repo)], check=True, timeout=600,
                   capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("fer_ray-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        spaces = sorted(n for n in archive.namelist() if n.endswith(".yaml"))
    assert spaces == [f"fer_ray/space/spaces/{n}.yaml"
                      for n in ("paper", "quick", "small", "smoke")]
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(site), str(wheel)], check=True, timeout=600, capture_output=True)
    code = ("import fer_ray, fer_ray.space as s\n"
            "print(fer_ray.__file__, s.SPACES_DIR)\n"
            "print(s.load_space('small').name, s.load_space('paper').name)\n")
    proc = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, "
                           f"{str(site)!r})\n{code}"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    where, names = proc.stdout.strip().splitlines()
    package, spaces = where.split()
    assert package.startswith(str(site))
    assert spaces == str((site / "fer_ray" / "space" / "spaces").resolve())
    assert names == "small paper"
