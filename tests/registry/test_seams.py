"""The registry's seams: code outside registry/store.py and registry/backend.py reaches them
through their public names only (issue 12)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ["saekit", "schemas", "kernels", "registry", "harness", "matching", "releases", "benchmarks", "scripts"]
GUARDED = {"saekit.registry.store", "saekit.registry.backend"}
OWNERS = {ROOT / "registry" / "store.py", ROOT / "registry" / "backend.py"}


def private_uses(path: Path, root: Path = ROOT) -> list[str]:
    """``module._name`` and ``from module import _name`` for a guarded module, in one file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    aliases: set[str] = set()
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in GUARDED and a.asname:
                    aliases.add(a.asname)
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level and path.parent == root / "registry":  # from . import store / from .store import x
                mod = "saekit.registry" + (f".{mod}" if mod else "")
            for a in node.names:
                if f"{mod}.{a.name}" in GUARDED:
                    aliases.add(a.asname or a.name)
                elif mod in GUARDED and a.name.startswith("_"):
                    found.append(f"{path.relative_to(root)}:{node.lineno}: from {mod} import {a.name}")
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            found.append(f"{path.relative_to(root)}:{node.lineno}: {node.value.id}.{node.attr}")
    return found


def test_no_module_reaches_private_names_of_store_or_backend():
    files = [p for d in SCANNED for p in sorted((ROOT / d).rglob("*.py")) if p not in OWNERS]
    assert len(files) > 50
    found = [use for p in files for use in private_uses(p)]
    assert found == [], "use a public function of registry.store / registry.backend instead:\n" + "\n".join(found)


def test_the_scan_sees_a_private_use(tmp_path: Path):
    probe = tmp_path / "probe.py"
    probe.write_text("from saekit.registry import store\nfrom saekit.registry.backend import _x\n"
                     "import saekit.registry.backend as B\nstore._client()\nB._y\nstore.record_tags\n")
    assert sorted(private_uses(probe, tmp_path)) == ["probe.py:2: from saekit.registry.backend import _x",
                                                     "probe.py:4: store._client", "probe.py:5: B._y"]
