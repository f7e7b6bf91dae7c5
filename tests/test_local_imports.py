"""``hpff_dist/local`` is pure torch: it imports nothing from data, engine, distributed code."""

import ast
import sys
from pathlib import Path

LOCAL = Path(__file__).resolve().parents[1] / "hpff_dist" / "local"


def test_local_imports_only_torch_stdlib_and_itself():
    allowed_roots = {"torch", "__future__"} | set(sys.stdlib_module_names)
    for path in sorted(LOCAL.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                ok = name.split(".")[0] in allowed_roots or name.startswith("hpff_dist.local")
                assert ok, f"{path.name} imports {name}"
