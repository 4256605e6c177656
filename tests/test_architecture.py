"""Import rules: the core is pure, services get adapters injected, bots never touch adapters."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "capbot"
STDLIB = sys.stdlib_module_names


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_core_imports_only_the_standard_library() -> None:
    """capbot.core depends on nothing but the standard library and itself."""
    bad = {
        (p.name, n)
        for p in (PKG / "core").rglob("*.py")
        for n in _imports(p)
        if n.split(".")[0] not in STDLIB and not n.startswith("capbot.core")
    }
    assert bad == set()


def test_services_and_bots_do_not_import_adapters() -> None:
    """Services receive adapters as arguments; bots never import adapters."""
    bad = {
        (str(p.relative_to(PKG)), n)
        for layer in ("services", "bots")
        for p in (PKG / layer).rglob("*.py")
        for n in _imports(p)
        if n.startswith("capbot.adapters") or n == "capbot.app"
    }
    assert bad == set()


def test_service_process_does_not_import_heavy_libraries_at_start() -> None:
    """Importing the CLI and app does not load matplotlib, discord or telegram."""
    code = (
        "import sys, capbot.cli, capbot.app\n"
        "heavy = [m for m in ('matplotlib', 'discord', 'telegram', 'apprise') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
