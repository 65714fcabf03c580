"""The package's layers, lowest first: a module imports only from its own layer and the ones below it."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "seedworker"
LAYERS = ["contract", "core", "broker", "store", "engine", "ops", "tools", "dev"]


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("seedworker."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("seedworker."))
    return found


def test_lower_layers_never_import_upper_ones():
    wrong = []
    for layer in LAYERS:
        rank = LAYERS.index(layer)
        for path in sorted((PACKAGE / layer).rglob("*.py")):
            for target in imports(path):
                if target in LAYERS and LAYERS.index(target) > rank:
                    wrong.append(f"{path.relative_to(PACKAGE)} imports seedworker.{target}")
    assert not wrong, "\n".join(wrong)


def test_every_module_is_in_a_layer():
    loose = {p.name for p in PACKAGE.glob("*.py")} - {"__init__.py", "__main__.py"}
    assert not loose, f"modules outside the layers: {sorted(loose)}"
