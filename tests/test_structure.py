"""The test suite's own layout: shared helpers live in tests/support.py and tests/support_kafka.py, so no test
module imports from another (a test module changed or deleted then breaks nobody else's tests)."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, relative imports resolved within tests/."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = f"tests.{node.module or ''}".rstrip(".") if node.level else node.module or ""
            out.append((node.lineno, base))
            out += [(node.lineno, f"{base}.{alias.name}") for alias in node.names if base == "tests"]
    return out


def test_no_test_module_imports_another_test_module():
    offending = [
        f"{path.name}:{line} imports {module}"
        for path in sorted(TESTS.glob("*.py"))
        for line, module in imported_modules(path)
        if module.startswith("tests.test_")
    ]
    assert not offending, "import shared helpers from tests/support*.py instead:\n" + "\n".join(offending)


def test_the_check_sees_every_import_form(tmp_path):
    path = tmp_path / "probe.py"
    path.write_text(
        "from tests.test_worker import request\nimport tests.test_worker_kafka\n"
        "from tests import test_replay\nfrom .test_faults import disk_full\nfrom tests.support import T0\n"
    )
    modules = [m for _, m in imported_modules(path)]
    assert [m for m in modules if m.startswith("tests.test_")] == [
        "tests.test_worker",
        "tests.test_worker_kafka",
        "tests.test_replay",
        "tests.test_faults",
    ]
