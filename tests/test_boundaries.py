"""The shape of the package: what each layer may import (docs/architecture.md).

Import costs are checked in a fresh interpreter (``sys.modules`` after the import); who imports
whom is read from the source with ``ast``, function-level imports included, so that a lazy
import cannot hide a dependency the map forbids.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kdsearch"


def _loaded_after(module: str, heavy: tuple[str, ...]) -> list[str]:
    code = (f"import sys, {module}; "
            f"print(' '.join(m for m in {heavy!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


@pytest.mark.parametrize(("module", "forbidden"), [
    ("kdsearch", ("torch", "ray", "mlflow")),
    ("kdsearch.best", ("torch", "ray")),
    ("kdsearch.init", ("torch", "ray", "mlflow")),
    ("kdsearch.config", ("torch", "ray", "mlflow")),
    ("kdsearch.track.report", ("torch", "ray")),
    ("kdsearch.track.schema", ("torch", "ray", "mlflow")),
    ("kdsearch.search.space", ("torch", "ray")),
    ("kdsearch.data.layouts", ("torch", "av")),
    ("kdsearch.train.trial", ("ray", "mlflow")),
    ("kdsearch.train.teacher", ("ray", "mlflow")),
    ("kdsearch.train.cache", ("ray", "mlflow")),
])
def test_a_module_loads_only_what_its_layer_allows(module: str,
                                                   forbidden: tuple[str, ...]) -> None:
    assert _loaded_after(module, forbidden) == []


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its source (``TYPE_CHECKING``
    blocks excepted: they never run). ``from pkg import sub`` counts as importing ``pkg.sub``."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    base = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base
                for _ in range(node.level - 1):
                    anchor = anchor.rpartition(".")[0]
                module = f"{anchor}.{node.module}" if node.module else anchor
            else:
                module = node.module or ""
            subs = {f"{module}.{alias.name}" for alias in node.names}
            found |= {module} | subs
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycle() -> list[str] | None:
    """One import cycle among the package's modules, as the list of modules around it."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(GRAPH[node]):
            # A module imports its own package's __init__ first: not a cycle of this module's.
            if node.startswith(nxt + "."):
                continue
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(GRAPH):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_no_import_cycle_anywhere_in_the_package() -> None:
    cycle = _cycle()
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def _importers(of: str, within: str) -> list[str]:
    return sorted(f"{name} imports {target}" for name, targets in GRAPH.items()
                  if name == within or name.startswith(within + ".")
                  for target in targets if target == of or target.startswith(of + "."))


def test_data_and_models_do_not_import_each_other() -> None:
    assert _importers("kdsearch.models", "kdsearch.data") == []
    assert _importers("kdsearch.data", "kdsearch.models") == []


def test_training_imports_neither_search_nor_tracking() -> None:
    assert _importers("kdsearch.search", "kdsearch.train") == []
    assert _importers("kdsearch.track", "kdsearch.train") == []


def test_lower_layers_import_no_higher_one() -> None:
    for low in ("kdsearch.storage", "kdsearch.text", "kdsearch.config", "kdsearch.data",
                "kdsearch.models"):
        for high in ("kdsearch.train", "kdsearch.search", "kdsearch.track", "kdsearch.run",
                     "kdsearch.best", "kdsearch.init"):
            assert _importers(high, low) == []
    for middle in ("kdsearch.train", "kdsearch.search", "kdsearch.track"):
        for top in ("kdsearch.run", "kdsearch.best", "kdsearch.init"):
            assert _importers(top, middle) == []
    assert [t for t in GRAPH["kdsearch.storage"]] == []
    assert [t for t in GRAPH["kdsearch.text"]] == []


def test_the_package_never_imports_its_test_helpers() -> None:
    users = [name for name, targets in GRAPH.items()
             if not name.startswith("kdsearch.testing")
             and any(t.startswith("kdsearch.testing") for t in targets)]
    assert users == []


def test_the_cycle_finder_finds_a_cycle(monkeypatch: pytest.MonkeyPatch) -> None:
    # The check above must be able to fail: a two-module loop is named.
    monkeypatch.setitem(GRAPH, "kdsearch.storage", {"kdsearch.config.load"})
    cycle = _cycle()
    assert cycle and cycle[0] == cycle[-1]  # a loop, named from its first module back to it
    assert "kdsearch.storage" in cycle and "kdsearch.config.load" in cycle
